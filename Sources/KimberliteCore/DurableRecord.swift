/// Everything a replica must not forget across restarts, as one record (the
/// counterpart of etcd's `HardState`). The replica is its only author: it
/// emits the whole record in `ReplicaAction.persistDurable` whenever a field
/// that must survive a crash changes, and the runtime writes it to the
/// superblock (after syncing the journal, which the record vouches for)
/// before it performs the next action. Nothing else writes these fields.
///
/// `commitNumber` is the one field allowed to lag: it is a lower bound used
/// at restart, refreshed by the runtime from `Replica.durableRecord` now and
/// then rather than with an fsync per commit.
public struct DurableRecord: Equatable, Sendable {
    /// The highest view this replica has seen (VRR §4.2: a replica must not
    /// vote in a view below one it already took part in).
    public var view: ViewNumber
    /// The latest view in which this replica's log was normal (VRR `log_view`).
    public var logView: ViewNumber
    /// A commit number known to be safe; never lowered.
    public var commitNumber: OpNumber
    /// Membership epoch (0 until membership changes exist).
    public var epoch: UInt64
    /// Every member's node id, ascending.
    public var members: [NodeID]
    /// The replica has joined its cluster: it formed it with the other
    /// members, or recovered from the primary of a cluster that had formed.
    /// False in a new data directory, so a wiped replica never passes for a
    /// member that simply holds nothing yet.
    public var formed: Bool
    /// The journal has held an entry. An empty journal where this is set lost
    /// its entries (`rm -rf log/*`): the replica recovers before it votes.
    public var logStarted: Bool
    /// The replica is recovering entries it lost (VRR §4.3); kept across
    /// restarts so a replica that crashes while recovering keeps recovering.
    public var recovering: Bool
    /// While `recovering`: the op its log must reach before it votes again.
    public var recoveryTarget: OpNumber
    /// Set once the replica found its committed log contradicts the
    /// cluster's: it stays `diverged` across restarts, until the operator
    /// rebuilds the data directory.
    public var divergence: Divergence?

    public init(view: ViewNumber = 0, logView: ViewNumber = 0, commitNumber: OpNumber = 0, epoch: UInt64 = 0,
                members: [NodeID], formed: Bool = false, logStarted: Bool = false, recovering: Bool = false,
                recoveryTarget: OpNumber = 0, divergence: Divergence? = nil) {
        self.view = view; self.logView = logView; self.commitNumber = commitNumber; self.epoch = epoch
        self.members = members.sorted(); self.formed = formed; self.logStarted = logStarted
        self.recovering = recovering; self.recoveryTarget = recoveryTarget; self.divergence = divergence
    }
}

/// What a replica had on disk when it started, as decided by `Startup.decide`.
public struct DurableState: Sendable {
    /// The durable record as start-up decided it (written back before the replica runs).
    public var record: DurableRecord
    /// The durable entries after `logFloor`, in op order (the journal's
    /// tail: ops through the floor stay on disk only).
    public var log: [LogEntry]
    /// The last op not loaded (0: the log is loaded from op 1). At most the
    /// projection's applied op, so everything not yet applied is in `log`.
    public var logFloor: OpNumber
    /// The checksum of op `logFloor` (`.zero` when it is 0).
    public var floorChecksum: Checksum
    /// A commit number known to be safe (superblock or projection); only a hint.
    public var commitHint: OpNumber

    public init(record: DurableRecord, log: [LogEntry] = [], logFloor: OpNumber = 0, floorChecksum: Checksum = .zero,
                commitHint: OpNumber = 0) {
        self.record = record; self.log = log; self.logFloor = logFloor; self.floorChecksum = floorChecksum
        self.commitHint = commitHint
    }

    /// The journal's last op.
    public var journalOp: OpNumber { logFloor + OpNumber(log.count) }
}

/// The start-up decision: from what the disk holds to the state the replica
/// starts from. One pure function, run by the server at start and by the
/// simulator at every restart, so the decision the simulator checks is the
/// one production takes.
public enum Startup {
    /// Something start-up found that the operator should hear about.
    public enum Finding: Equatable, Sendable {
        /// The log lost entries it may have acknowledged (deleted, corrupt or
        /// emptied): the replica recovers them before it takes part again.
        case recovering(journalOp: OpNumber, committedOp: OpNumber)
        /// A data directory that has not joined its cluster (new, or wiped).
        case notJoined(journalOp: OpNumber)
    }

    public struct Decision: Sendable {
        /// What the replica starts from.
        public var durable: DurableState
        /// What to log.
        public var findings: [Finding]
    }

    /// Decides how a replica starts.
    /// - Parameters:
    ///   - stored: the superblock's record, nil for a data directory that never had one.
    ///   - members: the configured members (used only when `stored` is nil).
    ///   - log: the journal's entries after `logFloor` (its open-time repair done).
    ///   - logFloor, floorChecksum: the last op not loaded and its checksum
    ///     (0 and `.zero` for a log loaded whole); at most the commit
    ///     number (ops through it are committed).
    ///   - appliedOp: the last op the projection applied (it survives a lost journal).
    ///   - journalLostEntries: the journal quarantined corrupt entries that may have been acknowledged.
    public static func decide(stored: DurableRecord?, members: [NodeID], log: [LogEntry], logFloor: OpNumber = 0,
                              floorChecksum: Checksum = .zero, appliedOp: OpNumber, journalLostEntries: Bool) -> Decision {
        // A one-node cluster forms on its own; larger ones at formation.
        var record = stored ?? DurableRecord(members: members, formed: members.count == 1)
        let commitHint = max(record.commitNumber, appliedOp)
        let journalOp = logFloor + OpNumber(log.count)
        var findings: [Finding] = []
        let journalEmptied = journalOp == 0 && record.logStarted
        // Entries made durable just before a crash, ahead of the flag.
        if journalOp > 0 { record.logStarted = true }
        if journalOp < commitHint || journalLostEntries || journalEmptied || record.recovering {
            // The log lost entries it may have acknowledged: the replica
            // neither votes nor leads until a primary has sent them again.
            record.recovering = true
            record.recoveryTarget = max(commitHint, record.recoveryTarget, journalOp)
            findings.append(.recovering(journalOp: journalOp, committedOp: commitHint))
        }
        record.commitNumber = commitHint
        if record.members.count > 1 && !record.formed { findings.append(.notJoined(journalOp: journalOp)) }
        return Decision(durable: DurableState(record: record, log: log, logFloor: logFloor, floorChecksum: floorChecksum,
                                              commitHint: commitHint), findings: findings)
    }
}
