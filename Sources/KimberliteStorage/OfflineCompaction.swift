import KimberliteCore
import Logging

/// `kimberlite-admin compact --data-dir D` (DESIGN.md §2b "compaction"):
/// offline, deletes the journal segments wholly below the older of the two
/// newest intact checkpoints, as the server does after each checkpoint with
/// `[storage] compaction = true`.
public enum OfflineCompaction {
    /// What a compaction did.
    public struct Outcome: Sendable {
        /// The op the log now starts after (unchanged when nothing was freed).
        public var baseOp: OpNumber
        public var bytesFreed: Int
        /// The checkpoint compacted below (nil: fewer than two intact ones).
        public var checkpointOp: OpNumber?
    }

    /// Why compaction refused; nothing was changed.
    public struct Refusal: Error, CustomStringConvertible {
        public let description: String
    }

    /// - Throws: `StorageError.locked` when a server holds the directory
    ///   (exit 75); `Refusal` for a directory that is not a stopped node's;
    ///   other `StorageError`s naming the file.
    public static func run(dataDir: String, logger: Logger) throws -> Outcome {
        guard FileIO.kind(dataDir + "/superblock") == .file else {
            throw Refusal(description: "\(dataDir) has no superblock: it is not the data directory of a node that has run; nothing was changed")
        }
        let data = try DataDirectory(path: dataDir)
        defer { data.unlock() }
        let superblock = try data.openSuperblock()
        guard var state = try superblock.read() else { throw Refusal(description: "\(dataDir) has no valid superblock; nothing was changed") }
        let journal = try data.openJournal(segmentSize: 64 << 20, syncMode: .fsync, logger: logger,
                                           base: (state.logBaseOp, state.logBaseChecksum))
        if let corruption = journal.recovery.corruption {
            throw Refusal(description: "the journal is damaged at \(corruption.segment) offset \(corruption.offset); start the node so it repairs from its peers first. Nothing was changed")
        }
        let store = CheckpointStore(dataDir: dataDir)
        // Only checkpoints that check whole and belong to this log count.
        var intact: [OpNumber] = []
        for op in try store.ops() where intact.count < 2 {
            if (try? store.check(op: op)) != nil, (try? store.belongs(op: op, to: journal)) == true { intact.append(op) }
        }
        guard intact.count == 2 else {
            return Outcome(baseOp: journal.base.op, bytesFreed: 0, checkpointOp: nil)
        }
        let freed = try journal.compact(through: intact[1]) { base in
            state.logBaseOp = base.op
            state.logBaseChecksum = base.checksum
            try superblock.write(state)
        }
        return Outcome(baseOp: journal.base.op, bytesFreed: freed, checkpointOp: intact[1])
    }
}
