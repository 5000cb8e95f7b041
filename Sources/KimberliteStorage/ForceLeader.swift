import Foundation
import KimberliteCore
import Logging

/// The audit record of a force-leader, kept in `<data_dir>/force-leader.json`
/// until the node has logged it as a `force_leader` entry.
public struct ForceLeaderRecord: Codable, Equatable, Sendable {
    public var clusterName: String
    public var nodeID: NodeID
    public var oldEpoch: UInt64
    public var newEpoch: UInt64
    public var oldMembers: [NodeID]
    public var newMembers: [NodeID]
    /// Who ran it (`user@host`) and when (ms since the Unix epoch).
    public var by: String
    public var atMs: Int64
    /// The node's last op and commit number when it was forced.
    public var op: OpNumber
    public var commitNumber: OpNumber
}

/// `kimberlite-admin force-leader` (DESIGN.md §2b "Force leader"): offline,
/// makes one node the whole membership at `epoch + 1`, keeping its log whole.
public enum ForceLeader {
    public static let pendingRecordName = "force-leader.json"

    /// Why force-leader refused; nothing was changed.
    public struct Refusal: Error, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    /// Rewrites the superblock of the stopped node in `dataDir` so that node
    /// `nodeID` alone is the membership at the next epoch, and leaves the
    /// audit record for the server to log as an entry at its next start.
    /// - Returns: the audit record.
    /// - Throws: `StorageError.locked` when a server holds the directory (exit
    ///   75); `Refusal` when the directory has no superblock, belongs to
    ///   another node, or is diverged (nothing changed); other `StorageError`s.
    public static func run(dataDir: String, nodeID: NodeID, by: String, nowMs: Int64) throws -> ForceLeaderRecord {
        guard FileIO.kind(dataDir + "/superblock") == .file else {
            throw Refusal("\(dataDir) has no superblock: it is not the data directory of a node that has run")
        }
        let data = try DataDirectory(path: dataDir)
        defer { data.unlock() }
        let superblock = try data.openSuperblock()
        guard var state = try superblock.read() else {
            throw Refusal("\(dataDir) has no valid superblock")
        }
        guard state.nodeID == nodeID else {
            throw Refusal("node id \(nodeID) does not match \(dataDir), which belongs to node \(state.nodeID) of cluster \"\(state.clusterName)\"; nothing was changed")
        }
        if let divergence = state.divergence {
            throw Refusal("node \(nodeID) is diverged (its committed log contradicts the cluster's at op \(divergence.op)); it must not lead. Nothing was changed")
        }
        let journal = try data.openJournal(segmentSize: 64 << 20, syncMode: .fsync, logger: .init(label: "kimberlite.force-leader"))
        let op = journal.lastOp
        journal.close()
        let record = ForceLeaderRecord(clusterName: state.clusterName, nodeID: nodeID, oldEpoch: state.epoch, newEpoch: state.epoch + 1,
                                       oldMembers: state.members, newMembers: [nodeID], by: by, atMs: nowMs, op: op,
                                       commitNumber: state.commitNumber)
        // The audit record first: a crash before the superblock write changes nothing.
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try FileIO.writeReplacing(Array(try encoder.encode(record)), to: data.path + "/" + pendingRecordName)
        state.epoch += 1
        state.members = [nodeID]
        state.logView = state.view
        state.formed = true
        state.recovering = false
        state.recoveryTarget = 0
        state.supersededByEpoch = 0
        try superblock.write(state)
        return record
    }

    /// The pending audit record of a force-leader, if any.
    public static func pendingRecord(dataDir: String) -> ForceLeaderRecord? {
        guard let bytes = try? FileIO.readWholeFile(dataDir + "/" + pendingRecordName) else { return nil }
        return try? JSONDecoder().decode(ForceLeaderRecord.self, from: Data(bytes))
    }

    /// Removes the pending record once its entry is in the log.
    public static func clearPendingRecord(dataDir: String) throws {
        try FileIO.remove(dataDir + "/" + pendingRecordName)
        try FileIO.syncDirectory(dataDir)
    }
}
