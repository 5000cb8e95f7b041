/// Static settings of one replica. Time is counted in ticks: the runtime
/// feeds `.tick` every `tickInterval` (10 ms in production), and the
/// configuration's durations are converted to ticks once.
public struct ReplicaConfiguration: Sendable {
    /// Every member's node id, sorted ascending. The primary of view `v` is
    /// `members[v % members.count]` (VRR §3). The replica replaces them with
    /// its durable record's at start and with each committed
    /// `Reconfiguration` (VRR §7); a replica not among them was removed.
    public var members: [NodeID]
    public var selfID: NodeID
    /// Ticks between heartbeats from the primary (`heartbeat_interval`).
    public var heartbeatTicks: Int
    /// Election timeout range in ticks (`election_timeout_min/max`); each
    /// timer is drawn uniformly from it.
    public var electionTimeoutMinTicks: Int
    public var electionTimeoutMaxTicks: Int
    /// Most entries sent in one prepare or entries message (`max_entries_per_rpc`).
    public var maxEntriesPerMessage: Int
    /// Ticks between repeats of an unanswered repair request.
    public var repairRetryTicks: Int
    /// Most payload bytes in one prepare or entries message (at least one entry goes).
    public var maxMessageBytes: Int = 8 << 20
    /// Pipeline bound: most ops the primary holds prepared but uncommitted.
    /// Client requests beyond it wait in the primary's request queue until
    /// commits make room, so a slow or absent quorum bounds the memory of
    /// the uncommitted log and the size of a do_view_change suffix instead
    /// of letting them grow with the request rate.
    public var maxUncommittedOps: Int = 1024
    /// Pipeline bound in payload bytes of uncommitted ops (at least one op is
    /// always let in, whatever its size).
    public var maxUncommittedBytes: Int = 64 << 20
    /// Most client requests waiting for room in the pipeline; more are
    /// refused as `.overloaded` (not logged). Their payload bytes are bounded
    /// by `maxUncommittedBytes` too.
    public var maxQueuedRequests: Int = 4096

    public init(members: [NodeID], selfID: NodeID, heartbeatTicks: Int = 10,
                electionTimeoutMinTicks: Int = 15, electionTimeoutMaxTicks: Int = 30,
                maxEntriesPerMessage: Int = 100, repairRetryTicks: Int? = nil) {
        precondition(!members.isEmpty, "a cluster has at least one member")
        precondition(Set(members).count == members.count, "member ids are unique")
        precondition(heartbeatTicks >= 1 && electionTimeoutMinTicks > heartbeatTicks
                     && electionTimeoutMaxTicks >= electionTimeoutMinTicks, "heartbeat < election timeouts")
        self.members = members.sorted()
        self.selfID = selfID
        self.heartbeatTicks = heartbeatTicks
        self.electionTimeoutMinTicks = electionTimeoutMinTicks
        self.electionTimeoutMaxTicks = electionTimeoutMaxTicks
        self.maxEntriesPerMessage = max(1, maxEntriesPerMessage)
        self.repairRetryTicks = repairRetryTicks ?? heartbeatTicks
    }

    /// A majority: f + 1 of 2f + 1 (n / 2 + 1 of an even n).
    public var quorum: Int { members.count / 2 + 1 }

    /// Answers a recovering replica needs from the other members (VRR §4.3:
    /// f + 1 of 2f + 1). It is the smallest number that meets every quorum
    /// in a member other than the recovering one, whose own past votes it
    /// cannot vouch for: n - quorum + 1. That is f + 1 for an odd n, and
    /// n / 2 for an even one: 1 of 2 (the other member, which must be the
    /// primary) and 2 of 4, where a quorum would wait for every other
    /// member (or, of 2, for more members than there are).
    public var recoveryQuorum: Int { members.count - quorum + 1 }
}

/// VRR status of a replica.
public enum ReplicaStatus: String, Sendable {
    case normal
    case viewChange = "view_change"
    case recovering
    /// This replica's committed log contradicts the cluster's (or it was told
    /// of a commit beyond any log a view change can choose). It serves
    /// nothing, votes in nothing and says so until its data directory is
    /// rebuilt (wiped, then recovered from the leader). Kept across restarts.
    case diverged
    /// A committed reconfiguration removed this replica (VRR §7): it takes
    /// part in nothing from then on. Kept across restarts (its durable
    /// members exclude it).
    case removed
}

/// Where a diverged replica's log contradicts the cluster's.
public struct Divergence: Sendable, Equatable, Codable {
    /// The op at which the logs differ (or the commit no chosen log holds).
    public var op: OpNumber
    /// The member whose message showed it.
    public var peer: NodeID
    public init(op: OpNumber, peer: NodeID) { self.op = op; self.peer = peer }
}

/// A write handed to the primary by the runtime; `id` is the runtime's token.
public struct ClientRequest: Sendable, Equatable {
    public var id: UInt64
    public var session: ClientSession?
    public var payload: [UInt8]

    public init(id: UInt64, session: ClientSession?, payload: [UInt8]) {
        self.id = id; self.session = session; self.payload = payload
    }
}

/// Why a request was not put in the log. Nothing was logged in every case.
public enum RequestRejection: Sendable, Equatable {
    /// This replica is not a primary in normal status; `leader` is the primary
    /// it knows of (to forward to), nil while there is no leader.
    case notPrimary(leader: NodeID?)
    /// The session already has request `outstanding` in the uncommitted log.
    case inProgress(outstanding: UInt64)
    /// The number is lower than the session's request in the uncommitted log.
    case stale(last: UInt64)
    /// The primary's pipeline and its queue of waiting requests are full
    /// (`maxQueuedRequests` requests, or `maxUncommittedBytes` bytes queued).
    case overloaded(queued: Int)
    /// A reconfiguration is already in the log, uncommitted (at `op`): one
    /// membership change at a time (VRR §7).
    case reconfigurationInProgress(op: OpNumber)
    /// The reconfiguration does not follow the current membership (`reason`
    /// says how: not the next epoch, or not exactly one member changed).
    case invalidReconfiguration(reason: String)
}

/// Input to the replica.
public enum ReplicaEvent: Sendable {
    /// A message from `from`, stamped with the sender's membership epoch
    /// (DESIGN.md §2b: every cluster message carries it).
    case message(Message, from: NodeID, epoch: UInt64)
    /// One tick of time has passed.
    case tick
    /// The journal is durable through `throughOp` (fsynced, or written under async).
    case persisted(throughOp: OpNumber)
    /// Writes to append; `nowMs` is the runtime's wall clock for timestamps.
    case clientRequests([ClientRequest], nowMs: Int64)
    /// A strong read wants a linearizable read point.
    case readRequest(id: UInt64)
    /// The projection has applied (and the journal holds) ops through
    /// `through`: the replica may drop them from memory, keeping the log
    /// after them. Older ops are then served from the journal on disk.
    case releaseMemory(through: OpNumber)
    /// An append failed for lack of space: the journal holds the log through
    /// `journalOp` and nothing after it (later appends of the same batch were
    /// not attempted). The replica drops the rest from memory and recovers.
    case appendFailed(journalOp: OpNumber)
    /// State transfer (DESIGN.md §2b; VRR §5.2 with checkpoints): the
    /// runtime installed a checkpoint of committed op `op` (the projection
    /// holds the state through it) and reset the journal to begin after it,
    /// chaining onto `checksum`. Send it only when `acceptsState(at: op)`
    /// said yes, on the same thread, before anything else reaches the replica.
    case stateInstalled(op: OpNumber, checksum: Checksum)
}

/// Things worth logging and counting; the core itself cannot log.
public enum ReplicaNote: Sendable, Equatable {
    case electionTimeout(view: ViewNumber)
    case viewChangeStarted(view: ViewNumber)
    case becamePrimary(view: ViewNumber, op: OpNumber, commit: OpNumber)
    case becameBackup(view: ViewNumber, primary: NodeID)
    /// The primary lost its quorum of heartbeat acknowledgements.
    case steppedDown(view: ViewNumber)
    /// Entries are missing or diverge; asked `from` for them.
    case repairRequested(from: NodeID, op: OpNumber)
    /// A message from an older view was ignored.
    case staleMessage(name: String, view: ViewNumber, from: NodeID)
    /// A message that contradicts itself (a commit beyond the op it reports,
    /// entries past its own last op) was refused unread.
    case refusedMessage(name: String, from: NodeID, reason: String)
    /// An entry failed its checksum or chain check and was discarded.
    case badEntry(op: OpNumber, from: NodeID)
    /// A recovering replica's log is whole again; it votes from now on.
    case recovered(view: ViewNumber, op: OpNumber)
    /// The log restarts after a checkpoint installed by state transfer.
    case stateInstalled(op: OpNumber)
    /// Every other member answered with an empty log: this replica joins the
    /// cluster with an empty log, in view 0 or in the view change at the
    /// highest view answered. The durable record now says `formed`.
    case formed
    /// This replica's committed log contradicts what `peer` sent about `op`
    /// (`reason` says how); it stops serving and voting.
    case diverged(op: OpNumber, peer: NodeID, reason: String)
    /// An append failed for lack of space; the log ends at `op` and the
    /// replica recovers (it counts as down) until appends succeed again.
    case diskFull(op: OpNumber)
    /// A fresh replica waits for cluster formation: `fresh` of the `needed`
    /// other members have answered that they hold nothing.
    case awaitingFormation(fresh: Int, needed: Int)
    /// The reconfiguration at `op` committed: this replica is in `epoch`
    /// with `members` now (VRR §7).
    case reconfigured(epoch: UInt64, members: [NodeID], op: OpNumber)
    /// `from` is in the newer `epoch`, which this replica moved to before
    /// committing the reconfiguration that began it (it was behind).
    case epochLearned(epoch: UInt64, from: NodeID)
    /// This replica is not a member of `epoch`: it stops taking part.
    case removed(epoch: UInt64)
}

/// Output of the replica; the runtime performs these in order.
public enum ReplicaAction: Sendable, Equatable {
    /// Send `message` stamped with `epoch` (the replica's epoch when it was
    /// emitted: a commit sent just before a reconfiguration takes effect
    /// still belongs to the old epoch).
    case send(Message, to: NodeID, epoch: UInt64)
    /// Durably record the whole record (superblock), after syncing the
    /// journal it vouches for, before the next action.
    case persistDurable(DurableRecord)
    /// Remove every entry above `after`, durably, before the next append.
    case truncateLog(after: OpNumber)
    /// Append to the journal; the runtime syncs later and feeds `.persisted`.
    case append([LogEntry])
    /// Answer a `request_entries` from the journal on disk (the ops are no
    /// longer in memory): send `to` an `entries(view, commit, lastOp, …)`
    /// message with the journal's entries `from ... through` (capped at
    /// `maxMessageBytes`, at least one).
    case sendEntriesFromJournal(to: NodeID, view: ViewNumber, commit: OpNumber, lastOp: OpNumber,
                                from: OpNumber, through: OpNumber)
    /// Ops through `through` are committed: apply them to the projection.
    case commit(through: OpNumber)
    /// The request is in the log as `op`; its reply comes when `op` is applied.
    case accepted(requestID: UInt64, op: OpNumber)
    case rejected(requestID: UInt64, RequestRejection)
    /// Serve the strong read once the projection has applied `atOp`.
    case readReady(id: UInt64, atOp: OpNumber)
    /// Leadership was lost before the read could be confirmed.
    case readFailed(id: UInt64)
    case note(ReplicaNote)
}

/// A small seeded generator (SplitMix64) so that a simulation seed replays
/// exactly; the runtime seeds it from the system generator.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A VSR replica (Viewstamped Replication Revisited, §4–5). Pure: no
/// sockets, no clocks, no files, no randomness of its own. The runtime, the
/// simulator and unit tests all drive it through `handle(_:)`.
///
/// Invariants (checked with `precondition` after every event):
/// - `log[i].op == i + 1` and every entry chains onto the one before it;
/// - `commitNumber <= op` and the commit number never decreases;
/// - `verifiedOp <= op`, `durableOp <= op`;
/// - a backup only acknowledges ops that are durable and verified against
///   the primary's log of the current view.
public struct Replica: Sendable {
    public private(set) var configuration: ReplicaConfiguration
    public private(set) var view: ViewNumber
    public private(set) var status: ReplicaStatus
    /// The latest view in which this replica's status was normal (VRR §4.2).
    public private(set) var logView: ViewNumber
    /// The log after `logFloor`, in memory: the entry for op `n` is
    /// `log[n - logFloor - 1]`. Ops through `logFloor` are committed and
    /// live only in the journal on disk (the runtime's projection may not
    /// have applied them yet: it reads them from the journal).
    public private(set) var log: [LogEntry]
    /// The last op no longer held in memory (0: the whole log is).
    public private(set) var logFloor: OpNumber
    /// The checksum of op `logFloor` (the anchor of `log`'s hash chain).
    private var floorChecksum: Checksum
    public private(set) var commitNumber: OpNumber
    /// The highest commit number heard of; `commitNumber` follows it as far
    /// as this replica's durable, verified log allows.
    private var knownCommit: OpNumber = 0
    /// The journal is durable through this op.
    public private(set) var durableOp: OpNumber
    /// The log is known equal to the current view's log through this op.
    public private(set) var verifiedOp: OpNumber

    /// While recovering: the op the log must reach before this replica votes again.
    public private(set) var recoveryTarget: OpNumber = 0
    /// The op through which `logView` vouches for this log: the log held the
    /// view's log through it when the claim was made. A log cut below it
    /// (a full disk) no longer backs the claim.
    private var logViewClaimOp: OpNumber = 0
    /// The tick of the last append refused by a full disk (nil once one succeeds).
    private var diskFullAt: UInt64? = nil
    /// Set in `diverged` status (op and peer are 0 when only the durable record remembers it).
    public private(set) var divergence: Divergence? = nil
    /// Fields of the durable record that only this replica changes (see `DurableRecord`).
    public private(set) var formed: Bool
    private var logStarted: Bool
    /// The durable record says this replica is recovering lost entries.
    private var recoveringLostEntries: Bool
    /// A commit number known safe at start (superblock or projection): the
    /// record's commit number never goes below it, though a recovering
    /// replica's own commit number restarts lower.
    private let commitFloor: OpNumber
    /// Membership epoch (VRR §7): bumped by each committed reconfiguration.
    public private(set) var epoch: UInt64
    private var recoveryNonce: UInt64 = 0
    private var recoveryResponses: [NodeID: (view: ViewNumber, op: OpNumber, isPrimary: Bool, isFresh: Bool, isNormal: Bool)] = [:]
    /// A fresh replica with nothing on disk, not yet told that the cluster
    /// formed without it: it may still start view 0 with the others.
    public private(set) var formationPending = false
    /// Set for a primary that formed the cluster, until every other member
    /// has acknowledged it (or a quorum has, and the rest had
    /// `formationGraceTicks` to form): until then it prepares nothing, so
    /// members still waiting for formation keep seeing an empty log and form
    /// too, instead of falling back to a recovery that needs this primary.
    private var unconfirmedFormation: (since: UInt64, acknowledgedBy: Set<NodeID>)? = nil
    private var viewConfirmed: Bool { unconfirmedFormation == nil }
    private var formationGraceTicks: UInt64 { UInt64(configuration.electionTimeoutMaxTicks) * 4 }
    private var recoveryLeader: NodeID? = nil
    private var recoveryStartedAt: UInt64 = 0

    private var rng: SplitMix64
    private var now: UInt64 = 0
    private var electionDeadline: UInt64 = 0
    private var lastHeartbeatSent: UInt64 = 0
    private var highestTimestamp: Int64

    // Backup state.
    private var lastAckedOp: OpNumber = 0
    private var repairRequestedAt: UInt64? = nil

    // Primary state.
    private var ackedOp: [NodeID: OpNumber] = [:]
    private var lastAckTick: [NodeID: UInt64] = [:]
    private var ackedSequence: [NodeID: UInt64] = [:]
    private var heartbeatSequence: UInt64 = 0
    private var pendingReads: [(id: UInt64, sequence: UInt64)] = []
    /// Op of the last entry of the log this primary started its view with.
    private var viewStartOp: OpNumber = 0
    /// Sessions with a request in the uncommitted log: client → (number, op).
    private var inflightSessions: [String: (requestNumber: UInt64, op: OpNumber)] = [:]
    /// Client requests waiting for room in the pipeline, in arrival order
    /// (`maxUncommittedOps` / `maxUncommittedBytes`). Non-empty only while
    /// this replica is a primary taking writes in `queuedInView`: a view
    /// change refuses them (never logged, so a retry is safe).
    private var queuedRequests = RequestQueue()
    private var queuedInView: ViewNumber = 0

    // View change state.
    private var startViewChangeFrom: Set<NodeID> = []
    private var doViewChanges: [NodeID: DoViewChange] = [:]
    private var sentDoViewChange = false
    /// While the new primary fetches the committed prefix the chosen log assumes.
    private var pendingViewStart: (chosen: DoViewChange, from: NodeID, commit: OpNumber)? = nil
    /// How far the new primary has checked its log against the chosen one.
    private var viewStartRepairOp: OpNumber = 0

    private var actions: [ReplicaAction] = []

    /// Restores a replica from what its disk held.
    ///
    /// A replica that was primary of its persisted view does not resume as
    /// primary: it may have lost entries it had not fsynced while backups
    /// acknowledged them, so it starts a view change instead (see DESIGN.md §3).
    public init(configuration: ReplicaConfiguration, durable: DurableState, seed: UInt64) {
        let record = durable.record
        self.configuration = configuration
        // Membership comes from the durable record once there is one.
        if !record.members.isEmpty { self.configuration.members = record.members }
        self.view = record.view
        self.logView = min(record.logView, record.view)
        self.log = durable.log
        self.logFloor = durable.logFloor
        self.floorChecksum = durable.floorChecksum
        for (index, entry) in durable.log.enumerated() {
            precondition(entry.op == durable.logFloor + OpNumber(index + 1), "durable log is contiguous after its floor")
        }
        precondition(durable.log.first.map { $0.parent == durable.floorChecksum } ?? true, "the log chains onto its floor")
        let op = durable.logFloor + OpNumber(durable.log.count)
        self.commitNumber = min(durable.commitHint, op)
        self.commitFloor = max(durable.commitHint, record.commitNumber)
        self.durableOp = op
        self.verifiedOp = record.logView == record.view ? op : min(durable.commitHint, op)
        self.rng = SplitMix64(seed: seed)
        self.highestTimestamp = durable.log.last?.timestampMs ?? 0
        self.status = record.logView == record.view ? .normal : .viewChange
        self.formed = record.formed || self.configuration.members.count == 1
        self.logStarted = record.logStarted || op > 0
        self.recoveringLostEntries = record.recovering
        self.epoch = record.epoch
        // Conservatively the whole durable log: it held at least the claim when it was persisted.
        self.logViewClaimOp = op
        resetElectionTimer()
        if let diverged = record.divergence {
            // Stays diverged until the operator rebuilds the data directory.
            status = .diverged
            divergence = diverged
        } else if !self.configuration.members.contains(configuration.selfID) {
            // Removed by a committed reconfiguration; the record stays as it was.
            status = .removed
            recoveryTarget = record.recoveryTarget
        } else if record.recovering || !formed {
            // Lost entries this replica may have acknowledged: it must not
            // vote with, or lead from, a log that forgot them (VRR §4.3).
            // A replica that never joined cannot tell a new cluster from a
            // wiped disk, so it recovers too, unless every other member
            // turns out to hold nothing either (cluster formation).
            status = .recovering
            recoveryTarget = max(record.recoveryTarget, op)
            verifiedOp = min(verifiedOp, op)
            formationPending = !formed && !record.recovering && op == 0 && record.view == 0
        } else if self.configuration.members.count == 1 {
            // A one-node cluster is its own quorum.
            status = .normal
            logView = view
            verifiedOp = op
            becomePrimaryState()
        } else if status == .normal && isPrimary {
            // Restarted as primary of its view: it may have lost entries it
            // had not fsynced, so it must not lead this view again. It waits
            // in view change; a newer primary's heartbeat or its own
            // election timeout moves it on.
            status = .viewChange
        }
    }

    /// The durable record as it stands: what `persistDurable` carries, and
    /// what the runtime writes when it refreshes the commit hint.
    public var durableRecord: DurableRecord {
        DurableRecord(view: view, logView: logView, commitNumber: max(commitFloor, commitNumber), epoch: epoch,
                      members: configuration.members, formed: formed, logStarted: logStarted,
                      recovering: recoveringLostEntries, recoveryTarget: recoveringLostEntries ? recoveryTarget : 0,
                      divergence: divergence)
    }

    private mutating func persistDurableRecord() { emit(.persistDurable(durableRecord)) }

    // MARK: - Derived state

    public var op: OpNumber { logFloor + OpNumber(log.count) }
    public var selfID: NodeID { configuration.selfID }
    public func primary(of view: ViewNumber) -> NodeID {
        configuration.members[Int(view % UInt64(configuration.members.count))]
    }
    public var isPrimary: Bool { primary(of: view) == selfID }
    /// The leader this replica knows of: the primary of its view in normal
    /// status (for the primary itself, once it may take writes).
    public var leader: NodeID? { status == .normal && (viewConfirmed || !isPrimary) ? primary(of: view) : nil }
    /// True when this primary may serve strong reads: it has committed the
    /// log it started its view with.
    public var hasCommittedViewStart: Bool { status == .normal && isPrimary && commitNumber >= viewStartOp }

    /// The entry for `op` if it is in memory (after `logFloor`).
    public func entry(_ op: OpNumber) -> LogEntry? {
        guard op > logFloor, op <= self.op else { return nil }
        return log[Int(op - logFloor - 1)]
    }

    /// Entries `from ... through`, clamped to what is in memory.
    public func entries(from: OpNumber, through: OpNumber) -> ArraySlice<LogEntry> {
        let low = max(from, logFloor + 1), high = min(through, op)
        guard low <= high else { return [] }
        return log[Int(low - logFloor - 1)..<Int(high - logFloor)]
    }

    private var others: [NodeID] { configuration.members.filter { $0 != selfID } }
    /// The checksum of op `op` when memory knows it: an op in memory, or
    /// the floor's (`.zero` otherwise, and for op 0).
    public func checksum(at op: OpNumber) -> Checksum { op == logFloor ? floorChecksum : entry(op)?.checksum ?? .zero }

    /// Whether this replica's entry at `op` has checksum `expected`. Below
    /// the memory floor the ops are committed and so agree with every
    /// committed log (the journal holds them; memory does not).
    private func agrees(at op: OpNumber, with expected: Checksum) -> Bool {
        op < logFloor ? op <= commitNumber : checksum(at: op) == expected
    }

    // MARK: - Driving

    /// Feeds one event; returns the actions to perform, in order.
    public mutating func handle(_ event: ReplicaEvent) -> [ReplicaAction] {
        actions.removeAll(keepingCapacity: true)
        if status == .diverged || status == .removed {
            onEventWhileDiverged(event)
            checkInvariants()
            return actions
        }
        switch event {
        case .tick: onTick()
        case .persisted(let through): onPersisted(through)
        case .clientRequests(let requests, let nowMs): onClientRequests(requests, nowMs: nowMs)
        case .readRequest(let id): onReadRequest(id)
        case .appendFailed(let journalOp): onAppendFailed(journalOp: journalOp)
        case .releaseMemory(let through): releaseMemory(through: through)
        case .stateInstalled(let op, let checksum): onStateInstalled(op: op, checksum: checksum)
        case .message(let message, let from, let messageEpoch):
            if from != selfID { receive(message, from: from, epoch: messageEpoch) }
        }
        // The one place the queue is refused: after any event that took this
        // replica out of taking writes, or through a view change (even one
        // that made it primary again within this event).
        if !queuedRequests.isEmpty && (!takesWrites || view != queuedInView) { refuseQueuedRequests() }
        checkInvariants()
        return actions
    }

    /// A diverged (or removed) replica answers nothing and takes nothing:
    /// writes and reads are refused, messages and time ignored.
    private mutating func onEventWhileDiverged(_ event: ReplicaEvent) {
        switch event {
        case .clientRequests(let requests, _):
            for request in requests { emit(.rejected(requestID: request.id, .notPrimary(leader: nil))) }
        case .readRequest(let id):
            emit(.readFailed(id: id))
        case .appendFailed(let journalOp):
            truncate(after: min(journalOp, op))
        case .releaseMemory(let through):
            releaseMemory(through: through)
        case .tick, .persisted, .message, .stateInstalled:
            break
        }
    }

    /// Whether this replica takes the committed state through `op` from a
    /// checkpoint instead of its log: a backup in normal status, or a
    /// recovering replica, whose verified log ends before `op` (it needs
    /// ops the primary no longer holds in its journal). A primary, a
    /// replica in a view change (its log may be the one a view change
    /// chooses) and a diverged one never do.
    public func acceptsState(at op: OpNumber) -> Bool {
        let role = status == .recovering || (status == .normal && !isPrimary)
        return role && op > commitNumber && op > verifiedOp && !formationPending
    }

    /// `ReplicaEvent.stateInstalled`. Every op through `base` is committed
    /// (a checkpoint is taken of applied state), and nothing this replica
    /// holds past its verified op was acknowledged in this view (a backup
    /// acknowledges only verified ops, and verified ops end before `base`),
    /// so the log restarts empty at `base` and repair goes on after it.
    private mutating func onStateInstalled(op base: OpNumber, checksum: Checksum) {
        precondition(acceptsState(at: base), "state installed at op \(base) that the replica did not accept")
        // The journal was reset by the runtime already (no truncation to emit).
        log.removeAll()
        logFloor = base
        floorChecksum = checksum
        commitNumber = base
        knownCommit = max(knownCommit, base)
        durableOp = base
        verifiedOp = base
        lastAckedOp = min(lastAckedOp, base)
        logStarted = true
        viewStartRepairOp = min(viewStartRepairOp, base)
        if recoveringLostEntries { recoveryTarget = max(recoveryTarget, base) }
        persistDurableRecord()
        emit(.note(.stateInstalled(op: base)))
        if status == .recovering {
            if let leader = recoveryLeader {
                recoveryStartedAt = now
                requestRepair(from: leader, op: base + 1)
            }
        } else {
            requestRepair(from: primary(of: view), op: base + 1)
        }
    }

    /// Drops committed, durable ops through `through` from memory; the
    /// journal keeps them (and serves repairs of them).
    private mutating func releaseMemory(through: OpNumber) {
        let target = min(through, commitNumber, durableOp)
        guard target > logFloor else { return }
        floorChecksum = checksum(at: target)
        log.removeFirst(Int(target - logFloor))
        logFloor = target
    }

    /// Enters `diverged`: never a crash on what a peer sends, never serving
    /// a log the cluster's committed log contradicts.
    private mutating func diverge(op divergedOp: OpNumber, peer: NodeID, reason: String) {
        guard status != .diverged else { return }
        failPendingReads()
        resetViewChangeState()
        status = .diverged
        divergence = Divergence(op: divergedOp, peer: peer)
        persistDurableRecord()
        emit(.note(.diverged(op: divergedOp, peer: peer, reason: reason)))
    }

    private func checkInvariants() {
        precondition(commitNumber <= op, "commit \(commitNumber) <= op \(op)")
        precondition(logFloor <= commitNumber, "only committed ops leave memory")
        precondition(verifiedOp <= op && durableOp <= op, "verified/durable within the log")
        precondition(commitNumber <= durableOp, "commit \(commitNumber) <= durable \(durableOp)")
        precondition(logView <= view, "log view <= view")
        precondition(!formationPending || (status == .recovering && holdsNothing && view == 0),
                     "only an empty, recovering replica in view 0 awaits formation")
        precondition(queuedRequests.isEmpty || (takesWrites && queuedInView == view),
                     "only a primary taking writes in this view queues requests")
        precondition((status == .diverged) == (divergence != nil), "diverged exactly when a divergence is recorded")
        precondition((status == .removed) == !configuration.members.contains(selfID) || status == .diverged,
                     "removed exactly when not a member")
        precondition(status == .recovering || status == .diverged || status == .removed || (formed && !recoveringLostEntries),
                     "a replica takes part only once it has joined and holds everything it acknowledged")
        precondition(logStarted || durableOp == 0, "a log with durable entries has started")
    }

    private mutating func emit(_ action: ReplicaAction) { actions.append(action) }
    private mutating func send(_ message: Message, to node: NodeID) { emit(.send(message, to: node, epoch: epoch)) }
    private mutating func broadcast(_ message: Message) { for node in others { send(message, to: node) } }

    /// View changes started in a row without reaching normal status; each
    /// doubles the next timeout (up to 8×) so replicas whose view changes
    /// keep outrunning the message delays slow down until one completes.
    private var failedViewChanges = 0

    private mutating func resetElectionTimer() {
        let low = configuration.electionTimeoutMinTicks, high = configuration.electionTimeoutMaxTicks
        let backoff = status == .viewChange ? 1 << min(failedViewChanges, 3) : 1
        electionDeadline = now + UInt64(Int.random(in: low...high, using: &rng) * backoff)
    }

    // MARK: - Time

    private mutating func onTick() {
        now += 1
        switch status {
        case .normal where isPrimary:
            if configuration.members.count > 1 && !hasQuorumOfRecentAcks() {
                emit(.note(.steppedDown(view: view)))
                startViewChange(to: view + 1)
                return
            }
            if now - lastHeartbeatSent >= UInt64(configuration.heartbeatTicks) { sendHeartbeat() }
        case .normal:
            if now >= electionDeadline {
                emit(.note(.electionTimeout(view: view)))
                startViewChange(to: view + 1)
                return
            }
            retryRepairIfDue()
        case .viewChange:
            if now >= electionDeadline {
                emit(.note(.electionTimeout(view: view)))
                startViewChange(to: view + 1)
                return
            }
            if let pending = pendingViewStart, let requested = repairRequestedAt,
               now - requested >= UInt64(configuration.repairRetryTicks) {
                requestRepair(from: pending.from, op: viewStartRepairOp + 1)
            }
        case .diverged, .removed:
            break
        case .recovering:
            // A round that has not finished within an election timeout
            // (no quorum of answers, or the leader went quiet) starts over.
            // `recoveryStartedAt` moves with every bit of progress, so only a
            // stalled round is abandoned.
            if recoveryNonce == 0 || now - recoveryStartedAt >= UInt64(configuration.electionTimeoutMaxTicks) * 2 {
                startRecoveryRound()
            } else if let leader = recoveryLeader, let requested = repairRequestedAt,
                      now - requested >= repairRetryInterval {
                requestRepair(from: leader, op: verifiedOp + 1)
            }
        }
    }

    private func hasQuorumOfRecentAcks() -> Bool {
        let window = UInt64(configuration.electionTimeoutMaxTicks)
        var count = 1
        for node in others where now - (lastAckTick[node] ?? 0) <= window { count += 1 }
        return count >= configuration.quorum
    }

    private mutating func sendHeartbeat() {
        heartbeatSequence += 1
        lastHeartbeatSent = now
        broadcast(.commit(view: view, commit: commitNumber, commitChecksum: checksum(at: commitNumber), op: op, sequence: heartbeatSequence))
    }

    // MARK: - Storage completions

    private mutating func onPersisted(_ through: OpNumber) {
        let newDurable = min(through, op)
        guard newDurable > durableOp else { return }
        durableOp = newDurable
        diskFullAt = nil
        if !logStarted {
            // Once, before the first prepare_ok: from now on an empty journal
            // here means lost entries, not a new replica.
            logStarted = true
            persistDurableRecord()
        }
        if status == .recovering {
            advanceBackupCommit(knownCommit)
            return
        }
        guard status == .normal else { return }
        if isPrimary {
            advancePrimaryCommit()
        } else {
            acknowledgeIfNew()
            advanceBackupCommit(knownCommit)
        }
    }

    /// The disk is full: entries past `journalOp` never reached the journal,
    /// and the runtime performed nothing of that action list after the
    /// failed append but its truncations (as if its messages were lost and
    /// its superblock writes not made). None of the dropped entries was
    /// acknowledged or committed here (both need them durable), so they leave
    /// memory too, and the replica counts as down meanwhile: it acknowledges
    /// only what is durable, and retries its repairs slowly.
    ///
    /// Two cases need more (VRR §4.2 relies on both):
    /// - a primary has sent prepares for the dropped ops: it must never
    ///   prepare other entries at those op numbers in this view, so it
    ///   starts a view change;
    /// - a log cut below the op through which its log view vouches for it
    ///   (say, the committed prefix a new primary had fetched) must not vote
    ///   with that claim: the replica recovers (VRR §4.3), durably.
    private mutating func onAppendFailed(journalOp: OpNumber) {
        precondition(journalOp >= durableOp, "the journal keeps what was durable")
        let lostThrough = op
        truncate(after: min(journalOp, op))
        diskFullAt = now
        // A new primary fetching the committed prefix resumes from what it kept.
        viewStartRepairOp = min(viewStartRepairOp, op)
        if status != .recovering && op < logViewClaimOp {
            failPendingReads()
            resetViewChangeState()
            status = .recovering
            recoveringLostEntries = true
            recoveryNonce = 0
            recoveryLeader = nil
            repairRequestedAt = nil
            verifiedOp = min(verifiedOp, commitNumber)
        } else if status == .normal && isPrimary {
            startViewChange(to: view + 1)
        }
        if recoveringLostEntries { recoveryTarget = max(recoveryTarget, lostThrough) }
        // Whatever the runtime skipped (view, log view) is written now.
        persistDurableRecord()
        emit(.note(.diskFull(op: op)))
    }

    /// While appends fail for lack of space, repairs are retried once per
    /// two election timeouts instead of every `repairRetryTicks`.
    private var repairRetryInterval: UInt64 {
        if let diskFullAt, now - diskFullAt < UInt64(configuration.electionTimeoutMaxTicks) * 2 {
            return UInt64(configuration.electionTimeoutMaxTicks) * 2
        }
        return UInt64(configuration.repairRetryTicks)
    }

    /// Backup: send prepare_ok for what is durable and verified (§4.1 step 4).
    private mutating func acknowledgeIfNew() {
        guard status == .normal, logView == view else { return }
        let ackable = min(durableOp, verifiedOp)
        guard ackable > lastAckedOp else { return }
        lastAckedOp = ackable
        send(.prepareOK(view: view, op: ackable), to: primary(of: view))
    }

    // MARK: - Client requests (§4.1 steps 1–3)

    /// A primary in normal status whose view is confirmed.
    private var takesWrites: Bool { status == .normal && isPrimary && viewConfirmed }

    private mutating func onClientRequests(_ requests: [ClientRequest], nowMs: Int64) {
        guard takesWrites else {
            for request in requests {
                emit(.rejected(requestID: request.id, .notPrimary(leader: viewConfirmed ? leader : nil)))
            }
            return
        }
        // Requests prepared later from the queue carry at least this time.
        highestTimestamp = max(highestTimestamp, nowMs)
        if queuedRequests.isEmpty { queuedInView = view }
        var usage = pipelineUsage()
        var newEntries: [LogEntry] = []
        for request in requests {
            if let preparedOp = uncommittedOp(of: request.session) {
                // A retry of a request already prepared: answer at once, never prepare it twice.
                emit(.accepted(requestID: request.id, op: preparedOp))
                continue
            }
            if let pending = usage.reconfiguration, Reconfiguration.decode(request.payload) != nil {
                // One membership change at a time: refused now, not queued behind writes.
                emit(.rejected(requestID: request.id, .reconfigurationInProgress(op: pending)))
                continue
            }
            let outcome = queuedRequests.enqueue(request, maxRequests: configuration.maxQueuedRequests,
                                                 maxBytes: configuration.maxUncommittedBytes)
            if outcome == .full { emit(.rejected(requestID: request.id, .overloaded(queued: queuedRequests.count))) }
            // Prepare as it arrives, so the queue holds only what the pipeline cannot.
            prepareFromQueue(&usage, into: &newEntries)
        }
        sendPrepares(newEntries)
    }

    /// The uncommitted op that carries exactly this session request, if any.
    private func uncommittedOp(of session: ClientSession?) -> OpNumber? {
        guard let session, let inflight = inflightSessions[session.clientID], inflight.op > commitNumber,
              inflight.requestNumber == session.requestNumber else { return nil }
        return inflight.op
    }

    /// Refuses every queued request: none was prepared, so none was accepted.
    private mutating func refuseQueuedRequests() {
        let reason = RequestRejection.notPrimary(leader: takesWrites || !viewConfirmed ? nil : leader)
        for item in queuedRequests.removeAll() {
            for id in item.ids { emit(.rejected(requestID: id, reason)) }
        }
    }

    /// Prepares queued requests while the pipeline has room (§4.1 steps 2–3):
    /// appends them to the log and broadcasts prepares.
    private mutating func prepareQueuedRequests() {
        guard takesWrites, !queuedRequests.isEmpty else { return }
        var usage = pipelineUsage()
        var newEntries: [LogEntry] = []
        prepareFromQueue(&usage, into: &newEntries)
        sendPrepares(newEntries)
    }

    /// Ops and payload bytes prepared but not committed, and the op of an
    /// uncommitted reconfiguration among them.
    private func pipelineUsage() -> PipelineUsage {
        var usage = PipelineUsage(ops: Int(op - commitNumber), bytes: 0, reconfiguration: nil)
        for entry in entries(from: commitNumber + 1, through: op) {
            usage.bytes += entry.payload.count
            if Reconfiguration.decode(entry.payload) != nil { usage.reconfiguration = entry.op }
        }
        return usage
    }

    private struct PipelineUsage {
        var ops: Int
        var bytes: Int
        /// Nothing is prepared after an uncommitted reconfiguration (VRR §7:
        /// no op of the old epoch follows it).
        var reconfiguration: OpNumber?
    }

    /// Moves queued requests into the log while `usage` leaves room,
    /// collecting the new entries for `sendPrepares`.
    private mutating func prepareFromQueue(_ usage: inout PipelineUsage, into newEntries: inout [LogEntry]) {
        while let next = queuedRequests.first {
            let change = Reconfiguration.decode(next.request.payload)
            if let pending = usage.reconfiguration {
                // Writes wait for the change to commit (then for the new
                // epoch's primary); a second change is refused at once.
                guard change != nil, let item = queuedRequests.popFirst() else { break }
                for id in item.ids { emit(.rejected(requestID: id, .reconfigurationInProgress(op: pending))) }
                continue
            }
            if let change, let problem = change.problem(after: configuration.members, epoch: epoch) {
                guard let item = queuedRequests.popFirst() else { break }
                for id in item.ids { emit(.rejected(requestID: id, .invalidReconfiguration(reason: problem))) }
                continue
            }
            let hasRoom = usage.ops == 0 || (usage.ops < configuration.maxUncommittedOps
                && usage.bytes + next.request.payload.count <= configuration.maxUncommittedBytes)
            guard hasRoom, let item = queuedRequests.popFirst() else { break }
            let request = item.request
            if let preparedOp = uncommittedOp(of: request.session) {
                // A retry queued apart from its original (a newer number of
                // the session was queued in between): never prepare it twice.
                for id in item.ids { emit(.accepted(requestID: id, op: preparedOp)) }
                continue
            }
            if let session = request.session, let inflight = inflightSessions[session.clientID], inflight.op > commitNumber {
                if session.requestNumber < inflight.requestNumber {
                    for id in item.ids { emit(.rejected(requestID: id, .stale(last: inflight.requestNumber))) }
                    continue
                } else if entry(inflight.op)?.view == view {
                    // Two requests of one session prepared concurrently by this primary.
                    for id in item.ids { emit(.rejected(requestID: id, .inProgress(outstanding: inflight.requestNumber))) }
                    continue
                }
                // The outstanding one came from the previous view's log: it
                // precedes the new one in the log and is committed first, and
                // its client may already have had its reply.
            }
            let entry = LogEntry(op: op + 1, view: view, timestampMs: highestTimestamp, session: request.session,
                                 payload: request.payload, parent: checksum(at: op))
            log.append(entry)
            verifiedOp = op
            usage.ops += 1
            usage.bytes += entry.payload.count
            if change != nil { usage.reconfiguration = entry.op }
            newEntries.append(entry)
            if let session = request.session {
                inflightSessions[session.clientID] = (session.requestNumber, entry.op)
            }
            for id in item.ids { emit(.accepted(requestID: id, op: entry.op)) }
        }
    }

    /// Appends `newEntries` to the journal and broadcasts them in prepares.
    private mutating func sendPrepares(_ newEntries: [LogEntry]) {
        guard !newEntries.isEmpty else { return }
        emit(.append(newEntries))
        var start = 0
        while start < newEntries.count {
            let chunk = Self.prefix(newEntries[start..<min(start + configuration.maxEntriesPerMessage, newEntries.count)],
                                    maxBytes: configuration.maxMessageBytes)
            broadcast(.prepare(view: view, commit: commitNumber, entries: chunk))
            start += chunk.count
        }
        if configuration.members.count == 1 { advancePrimaryCommit() }
    }

    // MARK: - Strong reads

    private mutating func onReadRequest(_ id: UInt64) {
        guard status == .normal, isPrimary else {
            emit(.readFailed(id: id))
            return
        }
        if configuration.members.count == 1 {
            if hasCommittedViewStart { emit(.readReady(id: id, atOp: commitNumber)) } else {
                pendingReads.append((id, 0))
            }
            return
        }
        // Confirm leadership with a heartbeat sent after the read arrived.
        sendHeartbeat()
        pendingReads.append((id, heartbeatSequence))
    }

    private mutating func serveConfirmedReads() {
        guard !pendingReads.isEmpty, hasCommittedViewStart else { return }
        var waiting: [(id: UInt64, sequence: UInt64)] = []
        for read in pendingReads {
            var confirmations = 1
            for node in others where (ackedSequence[node] ?? 0) >= read.sequence { confirmations += 1 }
            if confirmations >= configuration.quorum {
                emit(.readReady(id: read.id, atOp: commitNumber))
            } else {
                waiting.append(read)
            }
        }
        pendingReads = waiting
    }

    private mutating func failPendingReads() {
        for read in pendingReads { emit(.readFailed(id: read.id)) }
        pendingReads.removeAll()
    }

    // MARK: - Messages

    /// Why `message` cannot be true of any replica, or nil. Such a message
    /// is refused before it can reach an invariant: a peer's bytes never
    /// crash a replica.
    static func contradiction(in message: Message) -> String? {
        switch message {
        case .prepare(_, let commit, let entries):
            guard let last = entries.last else { return "a prepare without entries" }
            if commit > last.op { return "commit \(commit) is beyond the prepared op \(last.op)" }
        case .commit(_, let commit, _, let op, _):
            if commit > op { return "commit \(commit) is beyond the sender's op \(op)" }
        case .entries(_, let commit, let lastOp, let entries):
            if commit > lastOp { return "commit \(commit) is beyond the sender's op \(lastOp)" }
            if let last = entries.last, last.op > lastOp { return "entry \(last.op) is beyond the sender's op \(lastOp)" }
        case .doViewChange(let dvc):
            if dvc.commit > dvc.op { return "commit \(dvc.commit) is beyond the sender's op \(dvc.op)" }
            if dvc.logView > dvc.view { return "log view \(dvc.logView) is beyond view \(dvc.view)" }
            if let last = dvc.suffix.last, last.op != dvc.op { return "the suffix ends at op \(last.op), not at op \(dvc.op)" }
            if let first = dvc.suffix.first, first.op != dvc.commit + 1 { return "the suffix starts at op \(first.op), not after commit \(dvc.commit)" }
        case .startView(let sv):
            if sv.commit > sv.op { return "commit \(sv.commit) is beyond op \(sv.op)" }
            if let last = sv.suffix.last, last.op != sv.op { return "the suffix ends at op \(last.op), not at op \(sv.op)" }
        case .recoveryResponse(_, _, let op, let commit, let isPrimary, _, _):
            if isPrimary && commit > op { return "commit \(commit) is beyond the primary's op \(op)" }
        case .epochStarted(_, let members, _, _):
            if members.isEmpty || members != members.sorted() || Set(members).count != members.count {
                return "members \(members) are not distinct ids in ascending order"
            }
        case .prepareOK, .commitAck, .startViewChange, .requestEntries, .recovery:
            break
        }
        return nil
    }

    private mutating func onMessage(_ message: Message, from: NodeID) {
        if status == .recovering {
            onMessageWhileRecovering(message, from: from)
            return
        }
        switch message {
        case .recovery(let nonce):
            answerRecovery(nonce: nonce, to: from)
            return
        case .recoveryResponse:
            return
        default:
            break
        }
        let messageView = message.view
        if messageView < view {
            // Tell a replica stuck in an old view where the cluster is.
            emit(.note(.staleMessage(name: message.name, view: messageView, from: from)))
            if status == .normal, isPrimary {
                send(.commit(view: view, commit: commitNumber, commitChecksum: checksum(at: commitNumber), op: op,
                             sequence: heartbeatSequence), to: from)
            }
            return
        }
        switch message {
        case .prepare(let v, let commit, let entries):
            guard adoptViewFromPrimary(v, from: from) else { return }
            acceptEntries(entries, primaryCommit: commit, primaryOp: entries.last?.op ?? 0, from: from)
        case .entries(let v, let commit, let lastOp, let entries):
            if status == .viewChange, v == view, let pending = pendingViewStart, from == pending.from {
                acceptViewStartRepair(entries)
                return
            }
            guard adoptViewFromPrimary(v, from: from) else { return }
            acceptEntries(entries, primaryCommit: commit, primaryOp: lastOp, from: from)
        case .commit(let v, let commit, let commitChecksum, let primaryOp, let sequence):
            guard adoptViewFromPrimary(v, from: from) else { return }
            if commit >= 1, commit <= commitNumber, commit >= logFloor, checksum(at: commit) != commitChecksum {
                // Committed here and at the primary, with different contents.
                diverge(op: commit, peer: from, reason: "committed op \(commit) differs from the leader's")
                return
            }
            send(.commitAck(view: view, sequence: sequence, op: logView == view ? min(durableOp, verifiedOp) : 0), to: from)
            if logView < view, verifiedOp >= primaryOp {
                // Our log already holds everything the primary has.
                claimLogView(primaryOp: primaryOp)
                acknowledgeIfNew()
            }
            advanceBackupCommit(commit)
            if primaryOp > verifiedOp, repairRequestedAt == nil { requestRepair(from: from, op: verifiedOp + 1) }
        case .prepareOK(let v, let ackOp):
            guard v == view, status == .normal, isPrimary else { return }
            recordAck(from: from, op: ackOp)
        case .commitAck(let v, let sequence, let ackOp):
            guard v == view, status == .normal, isPrimary else { return }
            ackedSequence[from] = max(ackedSequence[from] ?? 0, sequence)
            recordAck(from: from, op: ackOp)
        case .requestEntries(let v, let from_op):
            onRequestEntries(view: v, from: from_op, requester: from)
        case .startViewChange(let v):
            onStartViewChange(v, from: from)
        case .doViewChange(let dvc):
            onDoViewChange(dvc, from: from)
        case .startView(let sv):
            onStartView(sv, from: from)
        case .recovery, .recoveryResponse, .epochStarted:
            break
        }
    }

    // MARK: - Epochs (VRR §7)

    /// Every message passes here first: only messages of this replica's
    /// epoch from its members reach the protocol. A message of an older
    /// epoch is answered with `epochStarted` (its sender learns the epoch);
    /// one of a newer epoch is answered the same way, so that its sender
    /// answers with its own `epochStarted`, which this replica then adopts.
    private mutating func receive(_ message: Message, from: NodeID, epoch messageEpoch: UInt64) {
        if let reason = Self.contradiction(in: message) {
            emit(.note(.refusedMessage(name: message.name, from: from, reason: reason)))
            return
        }
        if case .epochStarted(let newer, let members, let commit, let commitChecksum) = message, newer > epoch {
            adoptEpoch(newer, members: members, commit: commit, commitChecksum: commitChecksum, from: from)
            return
        }
        if messageEpoch != epoch {
            send(.epochStarted(epoch: epoch, members: configuration.members, commit: commitNumber,
                               commitChecksum: checksum(at: commitNumber)), to: from)
            return
        }
        if case .epochStarted = message { return }  // same epoch: nothing to learn
        guard configuration.members.contains(from) else { return }
        onMessage(message, from: from)
    }

    /// `from` is in the newer `epoch` (VRR §7), with `commit` committed
    /// there. When this replica durably holds that very op (same checksum,
    /// so the same log through it), everything through it is committed here
    /// too, and the reconfigurations in it take effect as for any commit.
    /// When it is still behind, it moves to the epoch as it is: a lagging
    /// member keeps its log and its vote (its log view is older than that of
    /// any log holding the reconfiguration, and every quorum of the new
    /// members includes one that acknowledged it, so a view change never
    /// chooses a log without it); a recovering one goes on recovering.
    private mutating func adoptEpoch(_ newer: UInt64, members: [NodeID], commit: OpNumber, commitChecksum: Checksum,
                                     from: NodeID) {
        if commit <= durableOp, commit > commitNumber, commit >= logFloor, checksum(at: commit) == commitChecksum {
            let previous = commitNumber
            commitNumber = commit
            knownCommit = max(knownCommit, commit)
            verifiedOp = max(verifiedOp, commit)
            emit(.commit(through: commitNumber))
            adoptCommittedReconfigurations(after: previous)
        }
        guard epoch < newer, status != .removed else { return }
        emit(.note(.epochLearned(epoch: newer, from: from)))
        enterEpoch(newer, members: members)
    }

    /// Applies every reconfiguration committed after `previous` (VRR §7).
    /// A primary first tells the old epoch's members the new commit number
    /// (a heartbeat of the old epoch), so they switch too. Then each member
    /// of the new epoch starts a view change to the next view (its primary
    /// is chosen among the new members); a replica left out stops, and a
    /// recovering one recovers from the new epoch's primary.
    private mutating func adoptCommittedReconfigurations(after previous: OpNumber) {
        for entry in entries(from: previous + 1, through: commitNumber) {
            guard let change = Reconfiguration.decode(entry.payload), change.epoch > epoch else { continue }
            if status == .normal && isPrimary { sendHeartbeat() }
            emit(.note(.reconfigured(epoch: change.epoch, members: change.members, op: entry.op)))
            enterEpoch(change.epoch, members: change.members)
            if status == .removed { return }
        }
    }

    /// Moves this replica to `newEpoch` with `members`: left out, it is
    /// removed; recovering, it starts a new recovery round among the new
    /// members; otherwise it starts a view change to the next view, whose
    /// primary is chosen among them.
    private mutating func enterEpoch(_ newEpoch: UInt64, members: [NodeID]) {
        epoch = newEpoch
        configuration.members = members
        formationPending = false
        unconfirmedFormation = nil
        guard members.contains(selfID) else {
            failPendingReads()
            resetViewChangeState()
            becomeRemoved()
            return
        }
        if status == .recovering {
            recoveryNonce = 0
            recoveryLeader = nil
            recoveryResponses.removeAll()
            repairRequestedAt = nil
            persistDurableRecord()
        } else {
            startViewChange(to: view + 1)
        }
    }

    private mutating func becomeRemoved() {
        status = .removed
        recoveringLostEntries = false
        recoveryTarget = 0
        persistDurableRecord()
        emit(.note(.removed(epoch: epoch)))
    }

    /// Recovering (VRR §4.3, with the disk's help). The replica asks every
    /// member who leads (`recovery` with a fresh nonce); once
    /// `recoveryQuorum` members have answered in normal status, including
    /// the primary of the latest view they name, it
    /// follows that primary, fetches its log through the op the primary
    /// reported, and only then votes again. Answers to an older nonce, and
    /// every other message, are ignored (a delayed message could name a
    /// deposed primary or an old op number), except `recovery` itself, which
    /// a replica awaiting formation answers with "fresh".
    private mutating func onMessageWhileRecovering(_ message: Message, from: NodeID) {
        switch message {
        case .recovery(let nonce):
            answerRecovery(nonce: nonce, to: from)
        case .recoveryResponse(let v, let nonce, let primaryOp, _, let isPrimary, let isFresh, let isNormal):
            guard nonce == recoveryNonce, recoveryLeader == nil else { return }
            recoveryResponses[from] = (v, primaryOp, isPrimary, isFresh, isNormal)
            if formationPending {
                if !isFresh {
                    // The cluster formed without this replica: recover from its primary.
                    formationPending = false
                } else {
                    let fresh = recoveryResponses.values.filter(\.isFresh).count
                    emit(.note(.awaitingFormation(fresh: fresh, needed: others.count)))
                    if fresh == others.count { formCluster(view: recoveryResponses.values.map(\.view).max()!) }
                    return
                }
            }
            // §4.3 counts only replicas in normal status: a replica waiting
            // for formation (maybe wiped) or changing views vouches for nothing.
            let normal = recoveryResponses.values.filter(\.isNormal)
            guard normal.count >= configuration.recoveryQuorum else { return }
            let latest = normal.map(\.view).max()!
            let leader = primary(of: latest)
            guard let answer = recoveryResponses[leader], answer.isNormal, answer.view == latest, answer.isPrimary else { return }
            let before = durableRecord
            view = latest
            logView = min(logView, latest)
            recoveryTarget = max(recoveryTarget, answer.op)
            if durableRecord != before { persistDurableRecord() }
            verifiedOp = min(verifiedOp, commitNumber, op)
            recoveryLeader = leader
            recoveryStartedAt = now
            requestRepair(from: leader, op: verifiedOp + 1)
        case .entries(let v, let commit, let lastOp, let entries):
            guard let leader = recoveryLeader, from == leader, v == view else { return }
            let before = verifiedOp
            acceptEntries(entries, primaryCommit: commit, primaryOp: lastOp, from: from)
            if verifiedOp > before || logView == view { recoveryStartedAt = now }
            if logView == view, verifiedOp >= recoveryTarget {
                status = .normal
                recoveryTarget = 0
                recoveryLeader = nil
                lastAckedOp = 0
                formed = true
                recoveringLostEntries = false
                resetElectionTimer()
                persistDurableRecord()
                emit(.note(.recovered(view: view, op: op)))
                emit(.note(.becameBackup(view: view, primary: from)))
                acknowledgeIfNew()
            }
        default:
            break
        }
    }

    /// True when this replica's log is empty: it holds no op that anyone
    /// could have relied on.
    private var holdsNothing: Bool { op == 0 }

    /// §4.3: a replica in normal status answers `recovery`. One with an
    /// empty log answers in any status (a replica waiting for formation
    /// needs every member's word that it holds nothing), except one that is
    /// itself recovering what it lost.
    private mutating func answerRecovery(nonce: UInt64, to requester: NodeID) {
        let isNormal = status == .normal
        guard isNormal || (holdsNothing && (status != .recovering || formationPending)) else { return }
        let answersAsPrimary = isNormal && isPrimary
        send(.recoveryResponse(view: view, nonce: nonce, op: answersAsPrimary ? op : 0, commit: commitNumber,
                               isPrimary: answersAsPrimary, isFresh: holdsNothing, isNormal: isNormal), to: requester)
    }

    /// Cluster formation: every other member answered this round that its
    /// log is empty. A committed op has f + 1 holders and at most f replicas
    /// are faulty (a wiped one answers "fresh" too), so if any op had been
    /// committed before these answers, some holder would have answered with
    /// it; hence every other member is required, not a quorum. Ops
    /// committed after the answers are harmless: this replica joins as an
    /// empty, lagging member and repairs like any backup. `view` is the highest view
    /// answered: 0 starts view 0 at once; a later one (members that changed
    /// views while waiting) joins the view change in progress.
    private mutating func formCluster(view latest: ViewNumber) {
        precondition(holdsNothing && formationPending, "only an empty replica forms a cluster")
        formationPending = false
        formed = true
        recoveryResponses.removeAll()
        resetElectionTimer()
        persistDurableRecord()
        emit(.note(.formed))
        if latest > view {
            startViewChange(to: latest)
            return
        }
        status = .normal
        if isPrimary {
            becomePrimaryState()
            unconfirmedFormation = (since: now, acknowledgedBy: [])
            emit(.note(.becamePrimary(view: view, op: op, commit: commitNumber)))
        } else {
            emit(.note(.becameBackup(view: view, primary: primary(of: view))))
        }
    }

    /// Starts (or restarts) a recovery round with a fresh nonce.
    private mutating func startRecoveryRound() {
        recoveryNonce = rng.next()
        recoveryResponses.removeAll()
        recoveryLeader = nil
        recoveryStartedAt = now
        repairRequestedAt = nil
        broadcast(.recovery(nonce: recoveryNonce))
    }

    /// A message from the primary of `v`: move into `v` as a backup in normal
    /// status if needed (§5.2: a replica that learns of a later view). Returns
    /// false when the message must be ignored.
    private mutating func adoptViewFromPrimary(_ v: ViewNumber, from: NodeID) -> Bool {
        guard primary(of: v) == from, !(v == view && isPrimary) else { return false }
        if v > view || status != .normal {
            let wasView = view
            failPendingReads()
            view = v
            status = .normal
            // The log is unverified in this view beyond what is committed.
            if wasView != v || logView < v { verifiedOp = min(verifiedOp, commitNumber) }
            lastAckedOp = 0
            repairRequestedAt = nil
            resetViewChangeState()
            persistDurableRecord()
            emit(.note(.becameBackup(view: view, primary: from)))
        }
        resetElectionTimer()
        return true
    }

    /// Takes contiguous entries from the primary of the current view (a
    /// prepare, a repair answer or a start_view suffix), checking checksums
    /// and the hash chain. `primaryOp` is the primary's op number as the
    /// message reports it (at least the op its view started with).
    ///
    /// Invariants kept (VRR §4.2 depends on them):
    /// - a replica claims `logView == view` only once its log holds the
    ///   primary's log through `primaryOp`, so it holds the whole log the
    ///   view started with (everything committed before the view);
    /// - a backup sends prepare_ok only when `logView == view`;
    /// - entries are replaced only from the first one that differs; every
    ///   entry after a differing one is uncommitted, so dropping it is safe.
    private mutating func acceptEntries(_ received: [LogEntry], primaryCommit: OpNumber, primaryOp: OpNumber, from: NodeID) {
        // Ops through the memory floor are committed here (and on disk).
        let entries = received.first.map { $0.op > logFloor } ?? true ? received : received.filter { $0.op > logFloor }
        if let first = entries.first, entriesAreWellFormed(entries, from: from) {
            let anchor = first.op - 1
            if anchor >= 1, anchor <= commitNumber, checksum(at: anchor) != first.parent {
                // The primary's log holds every committed op: ours differs at a committed one.
                diverge(op: anchor, peer: from, reason: "committed op \(anchor) does not chain into the leader's next entry")
                return
            }
            if anchor <= op, checksum(at: anchor) == first.parent {
                var index = 0
                while index < entries.count, let mine = entry(entries[index].op),
                      mine.checksum == entries[index].checksum {
                    index += 1
                }
                if index < entries.count, entries[index].op <= commitNumber {
                    diverge(op: entries[index].op, peer: from, reason: "committed op \(entries[index].op) differs from the leader's")
                    return
                }
                if index < entries.count {
                    truncate(after: entries[index].op - 1)
                    let fresh = Array(entries[index...])
                    log.append(contentsOf: fresh)
                    emit(.append(fresh))
                    highestTimestamp = max(highestTimestamp, fresh.last!.timestampMs)
                }
                verifiedOp = max(verifiedOp, entries.last!.op)
                repairRequestedAt = nil
                if logView < view, verifiedOp >= primaryOp { claimLogView(primaryOp: primaryOp) }
                acknowledgeIfNew()
            } else if repairRequestedAt == nil {
                requestRepair(from: from, op: verifiedOp + 1)
            }
        } else if entries.isEmpty, logView < view, verifiedOp >= primaryOp {
            // Nothing to send: our verified log (a checkpoint installed by
            // state transfer, say) already holds everything the primary has.
            claimLogView(primaryOp: primaryOp)
            acknowledgeIfNew()
        }
        if primaryOp > verifiedOp, repairRequestedAt == nil { requestRepair(from: from, op: verifiedOp + 1) }
        advanceBackupCommit(primaryCommit)
    }

    /// Our log equals the primary's through `primaryOp`: from now on it is
    /// this view's log. Entries past `primaryOp` are leftovers of an older
    /// view (the primary's log ends there, and holds every committed op), so
    /// they go first: the claim is about the whole log.
    private mutating func claimLogView(primaryOp: OpNumber) {
        precondition(verifiedOp >= primaryOp)
        guard primaryOp >= commitNumber else { return }  // a stale message; wait for a fresher one
        truncate(after: primaryOp)
        logView = view
        logViewClaimOp = op
        persistDurableRecord()
    }

    private mutating func entriesAreWellFormed(_ entries: [LogEntry], from: NodeID) -> Bool {
        var previous: LogEntry? = nil
        for entry in entries {
            let chained = previous.map { entry.op == $0.op + 1 && entry.parent == $0.checksum } ?? (entry.op >= 1)
            guard entry.isIntact, chained else {
                emit(.note(.badEntry(op: entry.op, from: from)))
                return false
            }
            previous = entry
        }
        return true
    }

    /// The longest prefix of `entries` under `maxBytes` (payload plus a
    /// header estimate), never empty: one message stays a bounded frame.
    public static func prefix(_ entries: ArraySlice<LogEntry>, maxBytes: Int) -> [LogEntry] {
        var bytes = 0
        var count = 0
        for entry in entries {
            bytes += entry.payload.count + 128
            if count > 0 && bytes > maxBytes { break }
            count += 1
        }
        return Array(entries.prefix(count))
    }

    /// Drops every entry above `after` (never a committed one).
    private mutating func truncate(after: OpNumber) {
        guard after < op else { return }
        precondition(after >= commitNumber, "never truncate committed ops (\(after) < \(commitNumber))")
        log.removeSubrange(Int(after - logFloor)...)
        durableOp = min(durableOp, after)
        verifiedOp = min(verifiedOp, after)
        lastAckedOp = min(lastAckedOp, after)
        emit(.truncateLog(after: after))
        if after == 0 && logStarted {
            // Emptied by the protocol, not lost: a restart finds a member with an empty log.
            logStarted = false
            persistDurableRecord()
        }
    }

    private mutating func requestRepair(from node: NodeID, op: OpNumber) {
        repairRequestedAt = now
        emit(.note(.repairRequested(from: node, op: op)))
        send(.requestEntries(view: view, from: op), to: node)
    }

    private mutating func retryRepairIfDue() {
        guard let requested = repairRequestedAt, now - requested >= repairRetryInterval,
              status == .normal || primary(of: view) != selfID else { return }
        repairRequestedAt = nil
        requestRepair(from: primary(of: view), op: verifiedOp + 1)
    }

    /// Commits (and so lets the projection apply) only what this replica
    /// holds durably and verified: after a power loss, its projection never
    /// runs ahead of its own journal.
    private mutating func advanceBackupCommit(_ primaryCommit: OpNumber) {
        knownCommit = max(knownCommit, primaryCommit)
        let target = min(knownCommit, verifiedOp, durableOp)
        guard target > commitNumber else { return }
        let previous = commitNumber
        commitNumber = target
        emit(.commit(through: commitNumber))
        adoptCommittedReconfigurations(after: previous)
    }

    private mutating func onRequestEntries(view v: ViewNumber, from first: OpNumber, requester: NodeID) {
        guard v == view, first >= 1 else { return }
        let normalPrimary = status == .normal && isPrimary
        // In a view change, the sender of the chosen log serves the new
        // primary the committed prefix it is missing.
        let viewChangeServer = status == .viewChange && requester == primary(of: view)
        guard normalPrimary || viewChangeServer else { return }
        let through = normalPrimary ? op : commitNumber
        let last = min(through, first + OpNumber(configuration.maxEntriesPerMessage) - 1)
        if first <= logFloor {
            // Out of memory: the runtime reads them from the journal.
            emit(.sendEntriesFromJournal(to: requester, view: view, commit: commitNumber, lastOp: through,
                                         from: first, through: min(last, logFloor)))
            return
        }
        let chunk = Self.prefix(entries(from: first, through: last), maxBytes: configuration.maxMessageBytes)
        send(.entries(view: view, commit: commitNumber, lastOp: through, entries: chunk), to: requester)
    }

    private mutating func recordAck(from node: NodeID, op ackOp: OpNumber) {
        lastAckTick[node] = now
        if var formation = unconfirmedFormation {
            formation.acknowledgedBy.insert(node)
            let acknowledged = formation.acknowledgedBy.count
            let confirmed = acknowledged == others.count
                || (acknowledged + 1 >= configuration.quorum && now - formation.since >= formationGraceTicks)
            unconfirmedFormation = confirmed ? nil : formation
        }
        if ackOp > ackedOp[node] ?? 0 { ackedOp[node] = min(ackOp, op) }
        advancePrimaryCommit()
        serveConfirmedReads()
    }

    /// §4.1 step 5: commit what a quorum (this primary's durable log included) holds.
    private mutating func advancePrimaryCommit() {
        var acks = [durableOp]
        for node in others { acks.append(ackedOp[node] ?? 0) }
        acks.sort(by: >)
        // What a quorum holds now, or what was committed before this view
        // (known from the do_view_change messages) once it is durable here.
        // Applied here only once durable here too.
        let quorumOp = min(max(acks[configuration.quorum - 1], knownCommit), durableOp)
        if quorumOp > commitNumber {
            let previous = commitNumber
            commitNumber = quorumOp
            emit(.commit(through: commitNumber))
            inflightSessions = inflightSessions.filter { $0.value.op > commitNumber }
            adoptCommittedReconfigurations(after: previous)
            guard status == .normal, isPrimary else { return }
            prepareQueuedRequests()
        }
        serveConfirmedReads()
    }

    // MARK: - View change (§4.2)

    private mutating func resetViewChangeState() {
        startViewChangeFrom.removeAll()
        doViewChanges.removeAll()
        sentDoViewChange = false
        pendingViewStart = nil
    }

    private mutating func startViewChange(to newView: ViewNumber) {
        precondition(newView > view || (newView == view && status != .normal))
        failedViewChanges = status == .viewChange ? failedViewChanges + 1 : 0
        failPendingReads()
        view = newView
        status = .viewChange
        resetViewChangeState()
        repairRequestedAt = nil
        resetElectionTimer()
        persistDurableRecord()
        emit(.note(.viewChangeStarted(view: view)))
        broadcast(.startViewChange(view: view))
        checkStartViewChangeQuorum()
    }

    private mutating func onStartViewChange(_ v: ViewNumber, from: NodeID) {
        if v > view { startViewChange(to: v) }
        guard v == view, status == .viewChange else { return }
        startViewChangeFrom.insert(from)
        checkStartViewChangeQuorum()
    }

    private mutating func checkStartViewChangeQuorum() {
        guard status == .viewChange, !sentDoViewChange,
              startViewChangeFrom.count + 1 >= configuration.quorum else { return }
        sentDoViewChange = true
        let dvc = makeDoViewChange()
        if isPrimary {
            doViewChanges[selfID] = dvc
            checkDoViewChangeQuorum()
        } else {
            send(.doViewChange(dvc), to: primary(of: view))
        }
    }

    /// Our whole log is a prefix of the log of `logView`; send what lies
    /// past our commit number.
    private func makeDoViewChange() -> DoViewChange {
        DoViewChange(view: view, logView: logView, op: op, commit: commitNumber,
                     commitChecksum: checksum(at: commitNumber),
                     suffix: Array(entries(from: commitNumber + 1, through: op)))
    }

    private mutating func onDoViewChange(_ dvc: DoViewChange, from: NodeID) {
        if dvc.view > view { startViewChange(to: dvc.view) }
        guard dvc.view == view, status == .viewChange, isPrimary else { return }
        doViewChanges[from] = dvc
        // A do_view_change means the sender saw a quorum of start_view_change.
        startViewChangeFrom.insert(from)
        checkStartViewChangeQuorum()
        checkDoViewChangeQuorum()
    }

    private mutating func checkDoViewChangeQuorum() {
        guard status == .viewChange, isPrimary, pendingViewStart == nil,
              doViewChanges[selfID] != nil, doViewChanges.count >= configuration.quorum else { return }
        // §4.2 step 4: the log with the largest log view, then the largest op.
        let (chosenFrom, chosen) = doViewChanges.max { a, b in
            (a.value.logView, a.value.op, a.key) < (b.value.logView, b.value.op, b.key)
        }!
        let newCommit = doViewChanges.values.map(\.commit).max()!
        if chosen.commit <= op, agrees(at: chosen.commit, with: chosen.commitChecksum) {
            completeViewStart(chosen: chosen, commit: newCommit)
        } else {
            // We lack (or hold a different copy of) the committed prefix the
            // chosen log builds on: fetch it from the sender first.
            // Entries are compared as they arrive; nothing is dropped before
            // its replacement is here, so a crash meanwhile loses nothing.
            pendingViewStart = (chosen, chosenFrom, newCommit)
            viewStartRepairOp = commitNumber
            requestRepair(from: chosenFrom, op: commitNumber + 1)
        }
    }

    /// The new primary fetches the committed prefix the chosen log builds
    /// on, from `viewStartRepairOp + 1`, keeping entries it already holds
    /// identically and replacing from the first that differs.
    private mutating func acceptViewStartRepair(_ entries: [LogEntry]) {
        guard let pending = pendingViewStart, let first = entries.first, first.op == viewStartRepairOp + 1,
              first.parent == checksum(at: viewStartRepairOp) else { return }
        var parent = first.parent
        var expected = first.op
        for entry in entries where entry.op <= pending.chosen.commit {
            guard entry.isIntact, entry.parent == parent, entry.op == expected else { break }
            if self.entry(entry.op)?.checksum != entry.checksum {
                if entry.op <= commitNumber {
                    diverge(op: entry.op, peer: pending.from, reason: "committed op \(entry.op) differs from the chosen log's")
                    return
                }
                truncate(after: entry.op - 1)
                log.append(entry)
                emit(.append([entry]))
            }
            parent = entry.checksum
            expected += 1
            viewStartRepairOp = entry.op
        }
        repairRequestedAt = nil
        if viewStartRepairOp >= pending.chosen.commit {
            guard agrees(at: pending.chosen.commit, with: pending.chosen.commitChecksum) else { return }
            completeViewStart(chosen: pending.chosen, commit: pending.commit)
        } else {
            requestRepair(from: pending.from, op: viewStartRepairOp + 1)
        }
    }

    private mutating func completeViewStart(chosen: DoViewChange, commit newCommit: OpNumber) {
        guard newCommit <= chosen.op else {
            // A member reports a commit no log of this quorum holds:
            // acknowledged writes were lost (a node restored from an old
            // copy voted, say). Refuse to lead rather than serve a log that
            // forgot them.
            let reporter = doViewChanges.first { $0.value.commit == newCommit }?.key ?? selfID
            diverge(op: newCommit, peer: reporter, reason: "node \(reporter) reports commit \(newCommit) but the chosen log ends at op \(chosen.op)")
            return
        }
        // New log: our prefix through chosen.commit (proven equal by the
        // checksum), then the chosen suffix.
        var divergeAt = chosen.commit + 1
        for entry in chosen.suffix {
            // Ops through the memory floor are committed here: they agree.
            if entry.op > logFloor {
                guard let mine = self.entry(entry.op), mine.checksum == entry.checksum else { break }
            }
            divergeAt = entry.op + 1
        }
        divergeAt = max(divergeAt, logFloor + 1)
        if divergeAt <= commitNumber {
            let sender = doViewChanges.first { $0.value == chosen }?.key ?? selfID
            diverge(op: divergeAt, peer: sender, reason: "committed op \(divergeAt) differs from the chosen log's")
            return
        }
        truncate(after: divergeAt - 1)
        let fresh = chosen.suffix.filter { $0.op >= divergeAt }
        if !fresh.isEmpty {
            log.append(contentsOf: fresh)
            emit(.append(fresh))
        }
        precondition(op == chosen.op, "the new log ends at the chosen op")
        precondition(newCommit <= op, "the chosen log holds every committed op")
        for entry in fresh { highestTimestamp = max(highestTimestamp, entry.timestampMs) }
        let senderCommits = doViewChanges.values.map(\.commit)
        knownCommit = max(knownCommit, newCommit)
        status = .normal
        logView = view
        logViewClaimOp = op
        verifiedOp = op
        persistDurableRecord()
        becomePrimaryState()
        emit(.note(.becamePrimary(view: view, op: op, commit: newCommit)))
        // §4.2 step 5: start_view to the others, from the lowest commit we heard.
        let from = (senderCommits.min() ?? commitNumber) + 1
        // At least the last entry goes, so a backup can check its chain; at
        // most a few messages' worth, the rest is fetched by repair.
        let window = OpNumber(4 * configuration.maxEntriesPerMessage)
        let suffixStart = min(max(from, op >= window ? op - window + 1 : 1), max(op, 1))
        let startView = StartView(view: view, op: op, commit: newCommit,
                                  suffix: Array(entries(from: suffixStart, through: op)))
        broadcast(.startView(startView))
        resetViewChangeState()
        advancePrimaryCommit()
    }

    private mutating func becomePrimaryState() {
        unconfirmedFormation = nil
        ackedOp.removeAll()
        ackedSequence.removeAll()
        lastAckTick = Dictionary(uniqueKeysWithValues: others.map { ($0, now) })
        viewStartOp = op
        lastHeartbeatSent = now
        failPendingReads()
        inflightSessions.removeAll()
        for entry in entries(from: commitNumber + 1, through: op) {
            if let session = entry.session { inflightSessions[session.clientID] = (session.requestNumber, entry.op) }
        }
        highestTimestamp = max(highestTimestamp, log.last?.timestampMs ?? 0)
    }

    private mutating func onStartView(_ sv: StartView, from: NodeID) {
        guard primary(of: sv.view) == from, sv.view >= view else { return }
        if sv.view == view && status == .normal { return }
        view = sv.view
        status = .normal
        resetViewChangeState()
        repairRequestedAt = nil
        lastAckedOp = 0
        failPendingReads()
        if logView < view { verifiedOp = min(verifiedOp, commitNumber) }
        persistDurableRecord()
        emit(.note(.becameBackup(view: view, primary: from)))
        resetElectionTimer()
        // Entries past the new log's end are not part of it (the new log
        // holds every committed op, so this never drops a committed one).
        if op > sv.op { truncate(after: max(sv.op, commitNumber)) }
        if sv.op == 0 {
            logView = view
            logViewClaimOp = 0
            persistDurableRecord()
            return
        }
        acceptEntries(sv.suffix, primaryCommit: sv.commit, primaryOp: sv.op, from: from)
    }
}
