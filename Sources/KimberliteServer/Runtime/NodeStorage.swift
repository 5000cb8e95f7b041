import Foundation
import KimberliteCore
import KimberliteProjection
import KimberliteStorage
import Logging

/// A node's storage, opened and checked: the data directory (locked), the
/// superblock, the journal after its open-time repair, the projection, and
/// the start-up decision (`Startup.decide`) written back to the superblock.
struct NodeStorage {
    var dataDirectory: DataDirectory
    var superblock: Superblock
    /// What the superblock holds now (after the start-up write).
    var superblockState: SuperblockState
    var journal: Journal
    var projection: Projection
    /// `<data_dir>/projections/checkpoints`.
    var checkpoints: CheckpointStore
    /// The newest checkpoint's op (0: none).
    var newestCheckpointOp: OpNumber
    /// What the replica starts from.
    var durable: DurableState

    /// Opens and checks everything under `config.storage.dataDir`; logs what start-up found.
    /// - Throws: `StorageError` (`.locked` → exit 75, unreadable or corrupt files),
    ///   `NodeStartError.foreignDataDirectory`, projection errors.
    static func open(config: ServerConfig, members: [NodeID], logger: Logger,
                     layer: (String) -> Logger, dataDirectory opened: DataDirectory? = nil) throws -> NodeStorage {
        let selfID = config.server.nodeID
        let dataDirectory = try opened ?? DataDirectory(path: config.storage.dataDir)
        let superblock = try dataDirectory.openSuperblock()
        var stored = try superblock.read()
        if let stored, stored.clusterName != config.server.clusterName || stored.nodeID != selfID {
            throw NodeStartError.foreignDataDirectory(
                path: config.storage.dataDir,
                detail: "it belongs to node \(stored.nodeID) of cluster \"\(stored.clusterName)\", this is node \(selfID) of cluster \"\(config.server.clusterName)\"")
        }

        // Files written after the superblock in place: the directory was
        // restored from an older copy (rsync without --delete); they are not
        // this superblock's log.
        let setAside = try Journal.setAsideSegments(in: dataDirectory.logDirectory, after: stored?.newestSegmentOp ?? 0)
        if !setAside.isEmpty {
            logger.error("set aside journal segments written after this superblock (the data directory was restored from an older copy); kept as *\(Journal.setAsideSuffix). Safe when every member was restored from copies taken with the cluster stopped; if only this node was copied back while the others went on, stop it and use kimberlite-admin restore (or wipe it) instead",
                           metadata: ["segments": "\(setAside.joined(separator: ","))", "newest_announced_op": "\(stored?.newestSegmentOp ?? 0)"])
        }
        let journal = try dataDirectory.openJournal(segmentSize: config.storage.segmentSize,
                                                    syncMode: SyncMode(rawValue: config.storage.syncMode.rawValue) ?? .fsync,
                                                    logger: layer("storage"),
                                                    base: (stored?.logBaseOp ?? 0, stored?.logBaseChecksum ?? .zero))
        journal.slowFsyncThreshold = config.logging.slowFsyncThreshold
        let journalLostEntries = journal.recovery.corruption != nil
        if let corruption = journal.recovery.corruption {
            logger.error("Checksum mismatch: corrupt journal segment; quarantining it and recovering the lost entries from peers",
                         metadata: ["segment": "\(corruption.segment)", "offset": "\(corruption.offset)", "op": "\(corruption.op)"])
            try journal.quarantineCorruption()
        }
        let checkpoints = CheckpointStore(dataDir: dataDirectory.path)
        try rebuildMissingProjection(dataDirectory: dataDirectory, checkpoints: checkpoints, journal: journal, logger: logger)
        var projection = try Projection(directory: dataDirectory.projectionsDirectory, logger: layer("projection"))
        if !setAside.isEmpty && projection.appliedOp > journal.lastOp {
            // A restored directory whose projection is ahead of its log: a
            // write-ahead log of the later state (a node killed before the
            // copy went back) was replayed onto the restored file. Set it
            // aside and rebuild from this log's checkpoints.
            logger.error("the restored projection is ahead of the restored log (a write-ahead log from after the backup was left behind); setting it aside and rebuilding it",
                         metadata: ["applied_op": "\(projection.appliedOp)", "journal_op": "\(journal.lastOp)"])
            projection.close()
            let path = dataDirectory.projectionsDirectory + "/projection.sqlite"
            for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: path + suffix) {
                try? FileManager.default.removeItem(atPath: path + suffix + Journal.setAsideSuffix)
                try FileManager.default.moveItem(atPath: path + suffix, toPath: path + suffix + Journal.setAsideSuffix)
            }
            try rebuildMissingProjection(dataDirectory: dataDirectory, checkpoints: checkpoints, journal: journal, logger: logger)
            projection = try Projection(directory: dataDirectory.projectionsDirectory, logger: layer("projection"))
        }
        if projection.appliedOp < journal.base.op, var state = stored {
            // The log starts after ops the projection has not applied: only
            // a checkpoint at or above the log's base can bring it up.
            logger.error("the projection is behind the start of the compacted log; rebuilding it from a checkpoint",
                         metadata: ["applied_op": "\(projection.appliedOp)", "log_base_op": "\(journal.base.op)"])
            projection.close()
            let path = dataDirectory.projectionsDirectory + "/projection.sqlite"
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
            try rebuildMissingProjection(dataDirectory: dataDirectory, checkpoints: checkpoints, journal: journal, logger: logger)
            projection = try Projection(directory: dataDirectory.projectionsDirectory, logger: layer("projection"))
            if projection.appliedOp < journal.base.op {
                // No checkpoint covers it: the log is of no use without one;
                // the node recovers everything from its peers (state transfer).
                logger.error("no checkpoint covers the compacted log's base; emptying the log and recovering from the cluster",
                             metadata: ["log_base_op": "\(journal.base.op)"])
                try journal.reset(to: (0, .zero)) { base in
                    state.logBaseOp = base.op
                    state.logBaseChecksum = base.checksum
                    try superblock.write(state)
                }
                stored = state
            }
        }
        if var state = stored, !journalLostEntries {
            try finishInterruptedInstall(journal: journal, projection: projection, checkpoints: checkpoints, superblock: superblock,
                                         state: &state, logger: logger)
            stored = state
        }
        setAsideCheckpoints(checkpoints, journal: journal, appliedOp: projection.appliedOp, logger: logger)
        // Only the journal's tail is loaded (memory does not grow with the
        // log): the applied ops memory keeps, bounded in ops and bytes as
        // the driver bounds them, and every op after them. When committed
        // ops wait to be applied (a projection behind its log, or rebuilt),
        // only the ops after the last known commit are: the driver hands the
        // rest to the projection from the journal, a bounded step at a time.
        let applied = min(journal.lastOp, projection.appliedOp)
        var floor = journal.base.op
        if applied > floor {
            let lowest = max(floor + 1, applied >= ReplicaDriver.retainedAppliedOps ? applied - ReplicaDriver.retainedAppliedOps + 1 : 1)
            let sizes = try journal.frameSizes(from: lowest, through: applied)
            floor = ReplicaDriver.retainedSuffix(below: applied, floor: lowest - 1) { sizes[Int($0 - lowest)] }.fromOp - 1
        }
        if let committed = stored?.record.commitNumber, committed > applied {
            floor = max(floor, min(committed, journal.lastOp))
        }
        // One read: from the floor itself when it is an entry, for its checksum.
        var log = try journal.entries(from: max(floor, 1), through: journal.lastOp)
        let floorChecksum = floor == journal.base.op ? journal.base.checksum : log.removeFirst().checksum

        let start = Startup.decide(stored: stored?.record, members: members, log: log, logFloor: floor, floorChecksum: floorChecksum,
                                   appliedOp: projection.appliedOp, journalLostEntries: journalLostEntries)
        let durable = start.durable
        for finding in start.findings {
            switch finding {
            case .recovering(let journalOp, let committedOp):
                logger.warning("Recovering: the journal holds fewer ops than were committed; fetching them from the leader before taking part again",
                               metadata: ["journal_op": "\(journalOp)", "committed_op": "\(committedOp)"])
            case .notJoined(let journalOp):
                logger.notice("this data directory has not joined the cluster yet: it starts the cluster when every other member reports an empty data directory too, or recovers from the leader",
                              metadata: ["journal_op": "\(journalOp)", "members": "\(durable.record.members.count)"])
            }
        }
        // One write for everything start-up decided, before the replica acts on it.
        // Fields outside the replica's record (newest announced segment,
        // superseded epoch) carry forward unchanged.
        var superblockState = stored ?? SuperblockState(clusterName: config.server.clusterName, nodeID: selfID, record: durable.record)
        superblockState.record = durable.record
        if superblockState != stored { try superblock.write(superblockState) }
        return NodeStorage(dataDirectory: dataDirectory, superblock: superblock, superblockState: superblockState,
                           journal: journal, projection: projection, checkpoints: checkpoints,
                           newestCheckpointOp: (try? checkpoints.ops())?.first ?? 0, durable: durable)
    }

    /// A state transfer killed after the projection took the checkpoint and
    /// before the journal restarted after it: the projection is ahead of the
    /// log and holds exactly a checkpoint of this directory (same op, same
    /// anchor). The journal restarts after it now, as the transfer would
    /// have done; the replica fetches the rest from the leader.
    private static func finishInterruptedInstall(journal: Journal, projection: Projection, checkpoints: CheckpointStore,
                                                 superblock: Superblock, state: inout SuperblockState, logger: Logger) throws {
        let applied = projection.appliedOp
        guard applied > journal.lastOp, let manifest = try? checkpoints.manifest(op: applied),
              let anchor = Checksum(hex: manifest.anchor),
              let held = try? Projection.readCheckpointMetadata(path: projection.path), held.op == applied, held.anchor == anchor else { return }
        var updated = state
        // Whatever the log held past the checkpoint is gone (a log lost
        // after a checkpoint looks the same): the node recovers before it
        // votes, so nothing it acknowledged is forgotten (VRR §4.3).
        updated.recovering = true
        updated.recoveryTarget = max(updated.recoveryTarget, applied)
        try journal.reset(to: (applied, anchor)) { base in
            updated.logBaseOp = base.op
            updated.logBaseChecksum = base.checksum
            try superblock.write(updated)
        }
        state = updated
        logger.notice("finished a state transfer interrupted by a restart: the log now starts after the installed checkpoint",
                      metadata: ["op": "\(applied)"])
    }

    /// Checkpoints from a later state of this directory (it was restored
    /// from an older copy): past both the journal's last op and the
    /// projection's applied op, or not matching the journal's entry at their
    /// op. Set aside, so they are neither used nor counted as the newest.
    private static func setAsideCheckpoints(_ checkpoints: CheckpointStore, journal: Journal, appliedOp: OpNumber, logger: Logger) {
        for op in (try? checkpoints.ops()) ?? [] {
            let later: Bool
            if op > journal.lastOp {
                later = op > appliedOp
            } else {
                later = (try? checkpoints.belongs(op: op, to: journal)) == false
            }
            guard later else { continue }
            logger.warning("set aside a checkpoint this log never reached (the data directory was restored from an older copy)",
                           metadata: ["op": "\(op)", "journal_op": "\(journal.lastOp)", "applied_op": "\(appliedOp)"])
            do { try checkpoints.quarantine(op: op, suffix: Journal.setAsideSuffix) } catch {
                logger.error("cannot set the checkpoint aside", metadata: ["op": "\(op)", "error": "\(error)"])
            }
        }
    }

    /// A projection file that is gone (deleted to rebuild it, or lost) is
    /// rebuilt from the newest checkpoint that checks whole and belongs to
    /// this log (its anchor is the journal's entry at its op); the log after
    /// it is re-applied at start. Damaged or foreign checkpoints are skipped
    /// and logged; with none left the projection is rebuilt from op 1.
    private static func rebuildMissingProjection(dataDirectory: DataDirectory, checkpoints: CheckpointStore, journal: Journal,
                                                 logger: Logger) throws {
        let path = dataDirectory.projectionsDirectory + "/projection.sqlite"
        guard !FileManager.default.fileExists(atPath: path) else { return }
        // A write-ahead log left behind belongs to the file that is gone.
        for suffix in ["-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        for op in try checkpoints.ops() where op <= journal.lastOp {
            do {
                guard try checkpoints.belongs(op: op, to: journal) == true else {
                    logger.warning("checkpoint does not belong to this log (its anchor is not the journal's entry at its op); not used",
                                   metadata: ["op": "\(op)"])
                    continue
                }
                let manifest = try checkpoints.copy(op: op, to: path)
                logger.notice("projection rebuilt from checkpoint; re-applying the log after it",
                              metadata: ["op": "\(op)", "bytes": "\(manifest.bytes)", "path": "\(checkpoints.sqlitePath(op: op))"])
                return
            } catch let error as StorageError {
                if case .checkpointInvalid = error {
                    logger.error("Checksum mismatch: checkpoint is damaged; not used (trying an older one, or the log)",
                                 metadata: ["op": "\(op)", "error": "\(error)"])
                    continue
                }
                throw error
            }
        }
        if journal.lastOp > 0 {
            logger.notice("projection missing and no usable checkpoint: rebuilding it from the log", metadata: ["journal_op": "\(journal.lastOp)"])
        }
    }
}
