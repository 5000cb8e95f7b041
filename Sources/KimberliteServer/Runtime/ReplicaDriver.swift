import Foundation
import KimberliteCore
import KimberliteProjection
import KimberliteStorage
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore

/// The replica as others in the process see it, updated after every batch.
struct ReplicaSnapshot: Sendable {
    var view: ViewNumber = 0
    var status: ReplicaStatus = .normal
    var op: OpNumber = 0
    var commit: OpNumber = 0
    /// The checksum of this node's entry at `commit` (nil at 0).
    var commitChecksum: Checksum? = nil
    var isPrimary = false
    var leader: NodeID? = nil
    var recovering = false
    /// Set while appends fail for lack of space: what the operator should read.
    var diskFull: String? = nil
    /// Set in `diverged` status.
    var divergence: Divergence? = nil
    /// Set once a member of a newer epoch refused this node: (its epoch, the newer one).
    var superseded: (epoch: UInt64, newer: UInt64)? = nil
    /// The replica's membership epoch and its members' ids.
    var epoch: UInt64 = 0
    var members: [NodeID] = []

    /// Why this node is not taking part as usual, for `/status`; nil when nothing is wrong.
    var statusReason: String? {
        if let superseded { return supersededReason(epoch: superseded.epoch, newer: superseded.newer) }
        if status == .removed {
            return "removed from the cluster at epoch \(epoch) (members \(members.map(String.init).joined(separator: ","))): "
                + "this node serves nothing; wipe its data directory to join again"
        }
        if let divergence {
            let at = divergence.peer == 0 ? "" : " at op \(divergence.op) (shown by node \(divergence.peer))"
            return "diverged: this node's committed log contradicts the cluster's\(at); it serves nothing until its data directory "
                + "is rebuilt. Recovery: \(Divergence.recovery)"
        }
        return diskFull
    }
}

/// What a node left out of the membership says, the same in logs, `/status` and errors.
func supersededReason(epoch: UInt64, newer: UInt64) -> String {
    "Rejected by leader: epoch \(epoch) is older than the cluster's epoch \(newer); this node was left out of the "
        + "membership (force-leader) and serves and votes in nothing. Keep its data directory as evidence; a new member "
        + "starts from an empty one (joining a running cluster is not built yet)"
}

extension Divergence {
    /// The operator's way out of `diverged`, said the same in logs, `/status` and errors.
    static let recovery = "stop the node, move its data directory aside (keep it as evidence), start it with an empty one; "
        + "it recovers everything from the leader"
}

/// Inputs queued for the driver thread.
enum DriverInput: Sendable {
    case event(ReplicaEvent)
    case write(ClientRequest)
    case read(id: UInt64)
    /// Runs on the driver thread, between batches, with the journal and the
    /// replica's durable record (the journal has one owner thread).
    case inspect(@Sendable (Journal, DurableRecord) -> Void)
}

/// A journal handed to the driver thread (its one user from then on).
final class StagedJournal: @unchecked Sendable {
    let journal: Journal
    init(_ journal: Journal) { self.journal = journal }
}

/// Runs the pure `Replica` on one thread together with the journal:
/// queued events in, actions out, in order. All writes of one batch of
/// events share one fsync (group commit), and all client requests queued
/// together become one prepare.
final class ReplicaDriver: @unchecked Sendable {
    private let queue = BatchQueue<DriverInput>()
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)
    /// Set when the driver thread has ended: nothing queued runs any more.
    private let threadExited = NIOLockedValueBox(false)

    private var replica: Replica
    private let journal: Journal
    private let superblock: Superblock
    private var superblockState: SuperblockState
    private var lastSuperblockCommitWrite = ContinuousClock.now
    private let transport: ClusterTransport
    private let registry: RequestRegistry
    private let applier: ApplyEngine
    private let logger: Logger
    private let metrics: NodeMetrics
    /// The last op handed to the apply thread.
    private var enqueuedForApply: OpNumber
    /// Ops handed to the apply thread and not applied yet, oldest first,
    /// with their payload bytes (`applyAheadOps` / `applyAheadBytes`).
    private var handedToApplier = CircularBuffer<(op: OpNumber, bytes: Int)>()
    private var handedBytes = 0
    /// The last `enqueueCommitted` left committed ops for later: the apply
    /// thread is behind by more than it is handed at once.
    private var applyBacklog = false
    private var applyReadLog = LogThrottle(every: .seconds(5))
    /// Committed through this op in the current batch; handed to the apply
    /// thread only after the batch's snapshot is published, so a client that
    /// has its answer never reads an older `/status` than the op it got.
    private var committedThrough: OpNumber = 0
    private let published = NIOLockedValueBox(ReplicaSnapshot())
    private var lastLeader: NodeID?? = .none
    /// Since when appends have failed for lack of space (nil: they succeed).
    private var diskFullSince: Date?
    private var diskFullLog = LogThrottle(every: .seconds(5))
    /// Refused messages are logged at most once every 5 s (they are counted always).
    private var refusedLog = LogThrottle(every: .seconds(5))
    /// Runs on the driver thread after every batch (set before `start()`):
    /// the systemd watchdog ping, so a stuck replica loop stops the pings.
    var afterBatch: (@Sendable () -> Void)?
    /// Offers a checkpoint to a peer that asked for ops compacted away (set before `start()`).
    var stateTransferSource: StateTransferSource?

    init(replica: Replica, journal: Journal, superblock: Superblock, superblockState: SuperblockState,
         transport: ClusterTransport, registry: RequestRegistry, applier: ApplyEngine, appliedOp: OpNumber,
         logger: Logger, metrics: NodeMetrics) {
        self.replica = replica
        self.journal = journal
        self.superblock = superblock
        self.superblockState = superblockState
        self.transport = transport
        self.registry = registry
        self.applier = applier
        self.logger = logger
        self.metrics = metrics
        self.enqueuedForApply = appliedOp
        journal.willCreateSegment = { [unowned self] firstOp in
            // Announce the segment before it exists (see `Journal.setAsideSegments`).
            self.superblockState.newestSegmentOp = firstOp
            try self.superblock.write(self.superblockState)
        }
        publish()
        // Committed ops the projection has not applied yet (a restart).
        committedThrough = replica.commitNumber
        enqueueCommitted(through: committedThrough)
    }

    var snapshot: ReplicaSnapshot { published.withLockedValue { $0 } }

    func start() {
        let thread = Thread { [self] in run() }
        thread.name = "kimberlite-replica"
        thread.stackSize = 8 << 20
        self.thread = thread
        thread.start()
    }

    /// Stops after the current batch; the journal is synced before return.
    func stop() {
        queue.stop()
        if thread != nil { finished.wait() }
    }

    func submit(_ input: DriverInput) { queue.push([input]) }

    /// Writes the transport's address book to the superblock (DESIGN.md §2b:
    /// after the first start addresses come from there, not from the flags).
    /// The book is read when the write happens, so writes queued by
    /// concurrent changes never put an older book back.
    func persistAddresses() {
        submit(.inspect { [unowned self] _, _ in
            let addresses = transport.addresses
            guard superblockState.addresses != addresses else { return }
            superblockState.addresses = addresses
            writeSuperblock()
        })
    }

    /// Records, durably, that a member of `newerEpoch` refused this node
    /// (DESIGN.md §2b "Force leader"); the transport is already silenced.
    func markSuperseded(newerEpoch: UInt64, by peer: NodeID) {
        submit(.inspect { [unowned self] _, _ in
            guard superblockState.supersededByEpoch < newerEpoch else { return }
            superblockState.supersededByEpoch = newerEpoch
            writeSuperblock()
            logger.error("\(supersededReason(epoch: superblockState.epoch, newer: newerEpoch))", metadata: ["peer": "\(peer)"])
            publish()
        })
    }

    /// Whether the replica would take the committed state through `op` from
    /// a checkpoint now (`Replica.acceptsState`); false when the driver is
    /// stopping or does not answer within 10 s.
    func acceptsState(at op: OpNumber) -> Bool {
        onDriverThread { [unowned self] in replica.acceptsState(at: op) } ?? false
    }

    /// Installs a checkpoint of op `op` the projection already holds: the
    /// journal restarts after it (its base written to the superblock first)
    /// and the replica is told (`ReplicaEvent.stateInstalled`). Returns
    /// false when the replica no longer accepts it (nothing changes then).
    func installState(op: OpNumber, anchor: Checksum) -> Bool {
        onDriverThread { [unowned self] () -> Bool in
            guard replica.acceptsState(at: op) else { return false }
            do {
                try journal.reset(to: (op, anchor)) { base in try persistLogBase(base) }
            } catch {
                fatal("journal reset to the installed checkpoint at op \(op) failed: \(error)")
            }
            perform(replica.handle(.stateInstalled(op: op, checksum: anchor)))
            enqueuedForApply = max(enqueuedForApply, op)
            committedThrough = max(committedThrough, op)
            metrics.committed = max(metrics.committed, op)
            registry.setApplied(max(registry.appliedOp, op))
            publish()
            return true
        } ?? false
    }

    /// The op the journal starts after and its checksum; nil when the
    /// driver is stopping.
    func journalBase() -> (op: OpNumber, checksum: Checksum)? {
        onDriverThread { [unowned self] in journal.base }
    }

    /// Answers a peer's `backfillRead` from the journal (on the driver
    /// thread, the journal's owner): at most 4 MiB of entries from `from`.
    func serveBackfill(from: OpNumber, through: OpNumber, to peer: NodeID) {
        submit(.inspect { [unowned self] journal, _ in
            let base = journal.base.op
            var entries: [LogEntry] = []
            var error = ""
            if from <= base {
                error = "node \(transport.selfID) compacted its log through op \(base)"
            } else if from > journal.lastOp || from > through {
                error = "node \(transport.selfID) holds ops \(journal.firstOp)…\(journal.lastOp), not op \(from)"
            } else {
                do {
                    // About 4 MiB at most: entries can be up to max_batch_size, and this runs on the replica's thread.
                    entries = try journal.entries(from: from, through: through, maxBytes: 4 << 20)
                } catch let failure {
                    entries = []
                    error = "node \(transport.selfID) cannot read op \(from): \(failure)"
                }
            }
            let reply = Envelope.backfillEntries(from: from, entries: entries, error: error, compactedThrough: base)
            transport.send(reply, to: peer)
        })
    }

    /// Puts the backfilled ops 1…base below the journal (`Journal.adoptOlderLog`)
    /// and records the base (0) in the superblock. Throws why not (nothing changed).
    func adoptOlderLog(_ staged: StagedJournal) throws {
        // No timeout: the staged files must not move under a caller that gave up.
        // A stopping driver still runs what is queued, so this returns.
        // The closure answers what went wrong (nil: nothing); a nil outcome means it never ran.
        guard let problem = onDriverThread(waitingAtMost: nil, { [unowned self] () -> String? in
            do {
                try journal.adoptOlderLog(from: staged.journal) { base in try persistLogBase(base) }
                return nil
            } catch {
                return "\(error)"
            }
        }) else { throw APIError(.noLeader, "the node is shutting down") }
        if let problem { throw APIError(.operationFailed, problem) }
    }

    /// Deletes journal segments wholly at or below `op` (compaction; the
    /// caller picks an op the projection and a checkpoint cover), and lets
    /// the replica drop those ops from memory.
    func compact(through op: OpNumber) {
        submit(.inspect { [unowned self] journal, _ in
            do {
                try journal.compact(through: op) { base in try persistLogBase(base) }
                // Memory holds no more than the disk: ops at or below the
                // base are served by state transfer from now on.
                perform(replica.handle(.releaseMemory(through: journal.base.op)))
            } catch {
                logger.error("journal compaction failed; the log keeps its segments", metadata: ["through_op": "\(op)", "error": "\(error)"])
            }
        })
    }

    private func persistLogBase(_ base: (op: OpNumber, checksum: Checksum)) throws {
        superblockState.logBaseOp = base.op
        superblockState.logBaseChecksum = base.checksum
        try superblock.write(superblockState)
    }

    /// Runs `body` on the driver thread and waits (at most `seconds`, or
    /// for good when nil) for its result; nil when the driver is stopping or
    /// did not get to it in time.
    private func onDriverThread<T: Sendable>(waitingAtMost seconds: Int? = 10, _ body: @escaping @Sendable () -> T) -> T? {
        if queue.isStopping { return nil }
        let done = DispatchSemaphore(value: 0)
        let result = NIOLockedValueBox<T?>(nil)
        submit(.inspect { _, _ in
            result.withLockedValue { $0 = body() }
            done.signal()
        })
        if let seconds {
            guard done.wait(timeout: .now() + .seconds(seconds)) == .success else { return nil }
        } else {
            // Until it ran, or the driver thread ended without running it (it never will then).
            while done.wait(timeout: .now() + 1) == .timedOut {
                if threadExited.withLockedValue({ $0 }) { break }
            }
        }
        return result.withLockedValue { $0 }
    }

    /// Runs `body` on the driver thread with the journal and the durable record, and returns its result.
    func inspect<T: Sendable>(_ body: @escaping @Sendable (Journal, DurableRecord) throws -> T) async throws -> T {
        if queue.isStopping { throw APIError(.noLeader, "the node is shutting down") }
        return try await withCheckedThrowingContinuation { continuation in
            submit(.inspect { journal, record in continuation.resume(with: Result { try body(journal, record) }) })
        }
    }

    private func run() {
        while let batch = queue.next(drainOnStop: false) { process(batch) }
        do { try journal.sync() } catch { logger.error("final journal sync failed: \(error)") }
        // Inspections still queued are answered (their callers await them);
        // events and requests are dropped: the registry fails the requests.
        for case .inspect(let body) in queue.takeRemaining() { body(journal, replica.durableRecord) }
        threadExited.withLockedValue { $0 = true }
        finished.signal()
    }

    private func process(_ batch: [DriverInput]) {
        var writes: [ClientRequest] = []
        for input in batch {
            switch input {
            case .event(let event): perform(replica.handle(event))
            case .read(let id): perform(replica.handle(.readRequest(id: id)))
            case .inspect(let body): body(journal, replica.durableRecord)
            case .write(let request): writes.append(request)
            }
        }
        if !writes.isEmpty {
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            perform(replica.handle(.clientRequests(writes, nowMs: now)))
        }
        // Group commit: one fsync for everything this batch appended.
        if journal.lastOp > replica.durableOp {
            syncJournal()
            perform(replica.handle(.persisted(throughOp: journal.lastOp)))
        }
        releaseAppliedOps()
        publish()
        enqueueCommitted(through: committedThrough)
        // After the apply hand-off: its fsyncs delay no client.
        persistCommitHintIfDue()
        afterBatch?()
    }

    /// Applied ops kept in memory below the applied op, so recent repairs
    /// and view changes read memory; older ones are read from the journal.
    /// At most this many ops, and at most `retainedAppliedBytes` of them.
    static let retainedAppliedOps: OpNumber = 1024
    /// Payload bytes of the applied ops kept in memory (8 MiB): an entry
    /// may be as large as `max_batch_size`, so a bound in ops alone would
    /// let 1,024 entries of 10 MiB stay resident.
    static let retainedAppliedBytes = 8 << 20

    /// Payload bytes of the applied ops in memory, `(windowFloor, windowTop]`,
    /// summed as the applied op moves (each op is counted once), and summed
    /// again from scratch when the replica's floor moved for another reason.
    private var windowFloor: OpNumber = 0
    private var windowTop: OpNumber = 0
    private var windowBytes = 0

    /// Lets the replica drop applied ops from memory, keeping the newest
    /// `retainedAppliedOps` of them within `retainedAppliedBytes`: a node's
    /// memory grows neither with the number of entries it has written nor
    /// with their size. It waits until twice a bound is reached and then
    /// releases down to the bound, so the array shifts rarely and each op
    /// is looked at a bounded number of times. While the apply thread is
    /// behind by more than it is handed (`applyAheadOps`), every committed
    /// op goes.
    private func releaseAppliedOps() {
        if applyBacklog {
            // A backlog beyond what the apply thread is handed: memory lets
            // go of every committed op, which the journal serves when its
            // turn to be applied comes (`enqueueCommitted`).
            let through = min(replica.commitNumber, replica.durableOp)
            if through > replica.logFloor { perform(replica.handle(.releaseMemory(through: through))) }
            return
        }
        let applied = min(registry.appliedOp, replica.op)
        let floor = replica.logFloor
        guard applied > floor else { return }
        if windowFloor != floor || windowTop > applied {
            (windowFloor, windowTop, windowBytes) = (floor, floor, 0)
        }
        while windowTop < applied {
            windowTop += 1
            windowBytes += replica.entry(windowTop)?.payload.count ?? 0
        }
        guard applied - floor >= 2 * Self.retainedAppliedOps || windowBytes > 2 * Self.retainedAppliedBytes else { return }
        let keep = Self.retainedSuffix(below: applied, floor: floor) { replica.entry($0)?.payload.count ?? 0 }
        for op in (floor + 1)..<keep.fromOp { windowBytes -= replica.entry(op)?.payload.count ?? 0 }
        perform(replica.handle(.releaseMemory(through: keep.fromOp - 1)))
        // The replica may keep more (it never lets go of what is not durable
        // yet); then the sum starts over from its floor next time.
        windowFloor = replica.logFloor == keep.fromOp - 1 ? replica.logFloor : OpNumber.max
    }

    /// The lowest op of the newest run of ops through `applied` (above
    /// `floor`) that fits in `retainedAppliedOps` and `retainedAppliedBytes`
    /// as `size` counts them, and whether the byte bound is what stopped it.
    /// Used by the replica's memory and by start-up, which loads the log
    /// from the same point.
    static func retainedSuffix(below applied: OpNumber, floor: OpNumber,
                               size: (OpNumber) -> Int) -> (fromOp: OpNumber, cutByBytes: Bool) {
        var fromOp = applied + 1
        var bytes = 0
        while fromOp - 1 > floor, applied + 1 - fromOp < retainedAppliedOps {
            let next = size(fromOp - 1)
            if bytes + next > retainedAppliedBytes { return (fromOp, true) }
            bytes += next
            fromOp -= 1
        }
        return (fromOp, false)
    }

    private func perform(_ actions: [ReplicaAction]) {
        // After an append fails for lack of space, nothing more of the list
        // is done but its truncations (its messages count as lost, its
        // superblock writes as not made); the replica hears of it once the
        // list is done (`ReplicaEvent.appendFailed`).
        var appendFailed = false
        defer {
            if appendFailed { perform(replica.handle(.appendFailed(journalOp: journal.lastOp))) }
        }
        for action in actions {
            if appendFailed, case .truncateLog = action {} else if appendFailed { continue }
            switch action {
            case .send(let message, let to, let epoch):
                if case .requestEntries(_, from: 1) = message, journal.lastOp == 0, journal.base.op == 0, registry.appliedOp == 0 {
                    // A wiped or joining node: a checkpoint beats replaying the
                    // whole log. Sent first, on the same connection, so the
                    // primary knows it before it reads the request.
                    transport.send(.stateTransferWanted, to: to)
                }
                transport.send(.vsr(message, epoch: epoch), to: to)
            case .sendEntriesFromJournal(let to, let view, let commit, let lastOp, let from, let through):
                if from <= journal.base.op {
                    // Compacted away: the peer needs a checkpoint (state transfer).
                    stateTransferSource?.offer(to: to, atLeast: journal.base.op)
                    continue
                }
                if from == 1, let source = stateTransferSource, source.prefersCheckpoint(to), source.hasCheckpoint {
                    // An empty node asked for the whole log: the newest checkpoint, then
                    // the log after it; the older segments follow in the background.
                    source.offer(to: to, atLeast: 1)
                    continue
                }
                do {
                    let maxBytes = replica.configuration.maxMessageBytes
                    let entries = Replica.prefix(try journal.entries(from: from, through: through, maxBytes: maxBytes)[...], maxBytes: maxBytes)
                    transport.send(.vsr(.entries(view: view, commit: commit, lastOp: lastOp, entries: entries), epoch: replica.epoch), to: to)
                } catch {
                    // The requester asks again; the journal's own checks logged what failed.
                    logger.error("cannot read ops from the journal to repair a peer", metadata: [
                        "peer": "\(to)", "from_op": "\(from)", "through_op": "\(through)", "error": "\(error)"])
                }
            case .persistDurable(let record):
                // The record vouches for the log (log view): the entries it
                // vouches for must be durable first.
                syncJournal()
                superblockState.record = record
                writeSuperblock()
            case .truncateLog(let after):
                do { try journal.truncate(after: after) } catch { fatal("journal truncate failed: \(error)") }
            case .append(let entries):
                do {
                    try journal.append(entries)
                    diskFullSince = nil
                } catch StorageError.diskFull {
                    // A state, not an exit: the replica drops what did not
                    // fit, recovers, and retries with each recovery round.
                    appendFailed = true
                    if diskFullSince == nil { diskFullSince = Date() }
                } catch {
                    // The replica holds these entries in memory; a journal
                    // that cannot take them for another reason is a node that
                    // must restart from what is durable.
                    fatal("journal append failed: \(error)")
                }
            case .commit(let through):
                let previous = metrics.committed
                metrics.committed = through
                if through > previous { metrics.commits.increment(by: Int64(through - previous)) }
                committedThrough = max(committedThrough, through)
            case .accepted(let requestID, let op):
                if let entry = replica.entry(op) { registry.bind(requestID, op: op, checksum: entry.checksum) }
            case .rejected(let requestID, let reason):
                registry.reject(requestID, reason)
            case .readReady(let id, let atOp):
                registry.readReady(id, atOp: atOp)
            case .readFailed(let id):
                registry.readFailed(id)
            case .note(let note):
                log(note)
            }
        }
    }

    private func writeSuperblock() {
        do { try superblock.write(superblockState) } catch { fatal("superblock write failed: \(error)") }
    }

    /// fsync (a no-op when nothing is pending or under "async").
    private func syncJournal() {
        do { try journal.sync() } catch { fatal("journal sync failed: \(error)") }
    }

    /// Committed ops handed to the apply thread ahead of the projection, at
    /// most: 4,096 ops and 32 MiB of payload. The rest wait in the journal
    /// (and, once the replica lets them go, only there), so a projection far
    /// behind its log (a node catching up, a rebuilt projection, a slow
    /// disk) does not hold the whole backlog in memory.
    static let applyAheadOps = 4096
    static let applyAheadBytes = 32 << 20
    /// Ops read from the journal at once for the apply thread, at most.
    static let applyReadOps: OpNumber = 256

    /// Hands committed ops after `enqueuedForApply` through `through` to the
    /// apply thread, within `applyAheadOps` / `applyAheadBytes` of what it
    /// has applied (always at least one op when it has nothing). Ops the
    /// replica no longer holds in memory are read from the journal. Called
    /// after every batch, so the apply thread is topped up every tick.
    private func enqueueCommitted(through: OpNumber) {
        // The projection's own applied op too: after a checkpoint replaced
        // it, ops at or below it are dropped there without being answered.
        let applied = max(registry.appliedOp, applier.appliedOp)
        while let first = handedToApplier.first, first.op <= applied {
            handedBytes -= first.bytes
            handedToApplier.removeFirst()
        }
        var batch: [LogEntry] = []
        while enqueuedForApply < through {
            // Nothing is read that could not be handed over.
            let slots = Self.applyAheadOps - handedToApplier.count
            let room = handedToApplier.isEmpty ? Int.max : Self.applyAheadBytes - handedBytes
            guard slots > 0, room > 0 else { break }
            let next = enqueuedForApply + 1
            let upper = min(through, next + OpNumber(min(slots, Int(Self.applyReadOps))) - 1)
            let entries: [LogEntry]
            if next > replica.logFloor {
                entries = Array(replica.entries(from: next, through: upper))
            } else {
                do {
                    entries = try committedFromJournal(from: next, through: min(upper, replica.logFloor), room: room)
                } catch {
                    if applyReadLog.allow() {
                        logger.error("cannot read committed ops from the journal for the projection; it stays behind until they can be read",
                                     metadata: ["op": "\(next)", "error": "\(error)"])
                    }
                    break
                }
            }
            var taken = 0
            for entry in entries {
                guard handedToApplier.count < Self.applyAheadOps,
                      handedBytes + entry.payload.count <= Self.applyAheadBytes || handedToApplier.isEmpty else { break }
                batch.append(entry)
                handedToApplier.append((entry.op, entry.payload.count))
                handedBytes += entry.payload.count
                enqueuedForApply = entry.op
                taken += 1
            }
            guard taken > 0, taken == entries.count else { break }
        }
        applyBacklog = enqueuedForApply < through
        applier.enqueue(batch)
    }

    /// Committed ops from `from` through at most `through` (all in the
    /// journal, below the replica's memory floor) that fit in `room` bytes
    /// (at least one), read in one go.
    /// - Throws: what the journal throws; `StorageError.invalidArgument`
    ///   when the journal does not hold op `from`.
    private func committedFromJournal(from: OpNumber, through: OpNumber, room: Int) throws -> [LogEntry] {
        let entries = try journal.entries(from: from, through: through, maxBytes: room)
        guard entries.first?.op == from else {
            throw StorageError.invalidArgument("the journal does not hold committed op \(from) (it holds \(journal.firstOp)…\(journal.lastOp))")
        }
        return entries
    }

    /// The superblock's commit number is a lower bound used at restart;
    /// refreshing it once a second bounds the re-apply work without an
    /// fsync per commit.
    private func persistCommitHintIfDue() {
        let record = replica.durableRecord
        guard record.commitNumber > superblockState.commitNumber,
              ContinuousClock.now - lastSuperblockCommitWrite > .seconds(1) else { return }
        lastSuperblockCommitWrite = .now
        superblockState.record = record
        writeSuperblock()
    }

    private func publish() {
        let commit = replica.commitNumber
        let snapshot = ReplicaSnapshot(view: replica.view, status: replica.status, op: replica.op, commit: commit,
                                       commitChecksum: commit > 0 && commit >= replica.logFloor ? replica.checksum(at: commit) : nil,
                                       isPrimary: replica.isPrimary && replica.leader != nil,
                                       leader: replica.leader, recovering: replica.status == .recovering,
                                       diskFull: diskFullSince.map { since in
                                           "disk full: the journal in \(journal.directory) cannot grow (appends refused since \(since.ISO8601Format())); "
                                               + "this node counts as down and catches up by itself once space is freed (or compaction frees it)"
                                       },
                                       divergence: replica.divergence,
                                       superseded: superblockState.supersededByEpoch > 0
                                           ? (superblockState.epoch, superblockState.supersededByEpoch) : nil,
                                       epoch: replica.epoch, members: replica.configuration.members)
        published.withLockedValue { $0 = snapshot }
        if lastLeader == nil || lastLeader! != snapshot.leader {
            if snapshot.leader == nil {
                logger.warning("No leader elected", metadata: ["view": "\(snapshot.view)", "status": "\(snapshot.status.rawValue)"])
            } else {
                logger.info("leader elected", metadata: ["leader": "\(snapshot.leader!)", "view": "\(snapshot.view)"])
            }
            lastLeader = .some(snapshot.leader)
        }
    }

    private func log(_ note: ReplicaNote) {
        var metadata: Logger.Metadata = ["view": "\(replica.view)", "op": "\(replica.op)", "commit": "\(replica.commitNumber)"]
        switch note {
        case .electionTimeout(let view):
            metrics.electionTimeouts.increment()
            metadata["view"] = "\(view)"
            logger.warning("election timeout: no word from the leader; starting a view change", metadata: metadata)
        case .viewChangeStarted(let view):
            metrics.viewChanges.increment()
            metadata["view"] = "\(view)"
            logger.info("view change started", metadata: metadata)
        case .becamePrimary(let view, let op, let commit):
            logger.notice("became leader (primary)", metadata: ["view": "\(view)", "op": "\(op)", "commit": "\(commit)"])
        case .becameBackup(let view, let primary):
            logger.info("following leader", metadata: ["view": "\(view)", "leader": "\(primary)"])
        case .steppedDown(let view):
            metadata["view"] = "\(view)"
            logger.warning("leader lost its quorum of heartbeat acknowledgements; stepping down", metadata: metadata)
        case .repairRequested(let from, let op):
            metadata["peer"] = "\(from)"
            metadata["from_op"] = "\(op)"
            logger.debug("requesting missing log entries", metadata: metadata)
        case .diverged(let op, let peer, let reason):
            metadata["op"] = "\(op)"
            metadata["peer"] = "\(peer)"
            logger.critical("diverged: \(reason); this node stops serving and voting. Recovery: \(Divergence.recovery)", metadata: metadata)
        case .refusedMessage(let name, let from, let reason):
            metrics.messagesRefused.increment()
            guard refusedLog.allow() else { return }
            logger.warning("refused a cluster message that contradicts itself: \(reason)",
                           metadata: ["message": "\(name)", "peer": "\(from)"])
        case .staleMessage(let name, let view, let from):
            metrics.messagesRefused.increment()
            logger.trace("ignored message from an older view", metadata: ["message": "\(name)", "message_view": "\(view)", "peer": "\(from)"])
        case .stateInstalled(let op):
            logger.info("the replica's log restarts after the installed checkpoint", metadata: ["op": "\(op)", "view": "\(replica.view)"])
        case .recovered(let view, let op):
            logger.notice("Recovering complete: the log is whole again; taking part in the cluster", metadata: ["view": "\(view)", "op": "\(op)"])
        case .formed:
            logger.notice("cluster formed: every other member reported an empty log; joining with an empty log",
                          metadata: ["members": "\(replica.configuration.members.count)"])
        case .awaitingFormation(let fresh, let needed):
            logger.info("waiting for cluster formation: not every other member has reported an empty log yet",
                        metadata: ["empty_members": "\(fresh)", "needed": "\(needed)"])
        case .diskFull(let op):
            // At most once every 5 s: a full disk is retried with every recovery round.
            guard diskFullLog.allow() else { return }
            metadata["op"] = "\(op)"
            metadata["directory"] = "\(journal.directory)"
            logger.error("disk full: cannot append to the journal; this node stops acknowledging and recovers from the leader once space is freed",
                         metadata: metadata)
        case .reconfigured(let epoch, let members, let op):
            logger.notice("membership changed: the reconfiguration committed; this node is in the new epoch",
                          metadata: ["epoch": "\(epoch)", "members": "\(members)", "op": "\(op)"])
            // A member added by a join: where it listens is in the entry.
            if let payload = replica.entry(op)?.payload, let change = Reconfiguration.decode(payload),
               let added = MembershipDetail(json: change.detail)?.addedMember {
                transport.learn(MemberAddress(nodeID: added.nodeID, host: added.host, port: added.port, sinceEpoch: epoch))
            }
        case .epochLearned(let epoch, let from):
            logger.warning("Recovering: node \(from) is in the newer epoch \(epoch) and this node's log lacks what it committed; fetching it before taking part again",
                           metadata: ["epoch": "\(epoch)", "peer": "\(from)"])
        case .removed(let epoch):
            logger.critical("this node is not a member of epoch \(epoch): it was removed from the cluster and takes part in nothing; wipe its data directory to join again",
                            metadata: ["epoch": "\(epoch)", "members": "\(replica.configuration.members)"])
        case .badEntry(let op, let from):
            metrics.checksumFailures.increment()
            metrics.messagesRefused.increment()
            logger.error("Checksum mismatch in entry received from peer; discarded (corrupt in transit or at the sender)",
                         metadata: ["peer": "\(from)", "op": "\(op)"])
        }
    }

    private func fatal(_ message: String) -> Never {
        logger.critical("\(message); stopping so the node restarts from what is durable")
        exit(1)
    }
}

/// Applies committed entries to the projection, in op order, on its own
/// thread, and answers the waiting requests.
final class ApplyEngine: @unchecked Sendable {
    /// Committed entries applied per SQLite transaction, at most.
    static let entriesPerTransaction = 256
    /// Payload bytes applied per SQLite transaction, at most (one entry
    /// always goes): a transaction's pages stay in SQLite's page cache
    /// until it commits, and 256 entries of 500 KB made it 128 MB.
    static let bytesPerTransaction = 8 << 20
    /// Committed entries to apply, and projection replacements (state
    /// transfer), in order.
    enum Item {
        case entry(LogEntry)
        case replace(checkpoint: String, done: (Result<(op: OpNumber, anchor: Checksum), Error>) -> Void)
    }
    private let queue = BatchQueue<Item>()
    private let projection: Projection
    private let registry: RequestRegistry
    private let logger: Logger
    private let finished = DispatchSemaphore(value: 0)
    private var started = false
    /// Told after every applied chunk (set before `start()`).
    var checkpointer: Checkpointer?

    init(projection: Projection, registry: RequestRegistry, logger: Logger) {
        self.projection = projection
        self.registry = registry
        self.logger = logger
    }

    func start() {
        started = true
        let thread = Thread { [self] in run() }
        thread.name = "kimberlite-apply"
        thread.stackSize = 8 << 20
        thread.start()
    }

    func stop() {
        queue.stop()
        if started { finished.wait() }
    }

    /// The last op the projection applied (or holds from a checkpoint).
    var appliedOp: OpNumber { projection.appliedOp }

    func enqueue(_ entries: [LogEntry]) {
        guard !entries.isEmpty else { return }
        queue.push(entries.map(Item.entry))
    }

    /// Replaces the projection's contents by the checkpoint at `path`, on
    /// the apply thread between two chunks, and waits (at most 10 min).
    /// - Returns: the op and anchor the projection holds now.
    /// - Throws: what `Projection.replaceContents` throws; `CheckpointRefusal` when stopping.
    func replaceProjection(withCheckpointAt path: String) throws -> (op: OpNumber, anchor: Checksum) {
        let done = DispatchSemaphore(value: 0)
        let outcome = NIOLockedValueBox<Result<(op: OpNumber, anchor: Checksum), Error>?>(nil)
        queue.push([.replace(checkpoint: path, done: { result in
            outcome.withLockedValue { $0 = result }
            done.signal()
        })])
        guard done.wait(timeout: .now() + 600) == .success, let result = outcome.withLockedValue({ $0 }) else {
            throw CheckpointRefusal("the apply thread did not take the checkpoint within 10 minutes")
        }
        return try result.get()
    }

    private func run() {
        while let batch = queue.next(drainOnStop: true) {
            var entries: [LogEntry] = []
            for item in batch {
                switch item {
                case .entry(let entry):
                    entries.append(entry)
                case .replace(let path, let done):
                    applyInChunks(entries)
                    entries.removeAll()
                    done(Result { try projection.replaceContents(withCheckpointAt: path) })
                }
            }
            applyInChunks(entries)
        }
        finished.signal()
    }

    private func applyInChunks(_ batch: [LogEntry]) {
        let pending = batch.drop(while: { $0.op <= projection.appliedOp })
        // One SQLite transaction per chunk; chunks bound how long readers
        // wait to see the first entry of a large batch.
        var start = pending.startIndex
        while start < pending.endIndex {
            var end = start, bytes = 0
            while end < pending.endIndex, end - start < Self.entriesPerTransaction,
                  end == start || bytes + pending[end].payload.count <= Self.bytesPerTransaction {
                bytes += pending[end].payload.count
                end += 1
            }
            applyRetryingWhileTheDiskIsFull(Array(pending[start..<end]))
            checkpointer?.applied(through: projection.appliedOp)
            start = end
        }
    }

    /// Applies `chunk` in one transaction. A full disk (SQLITE_FULL) is a
    /// state, not an exit: the transaction rolled back, so the chunk is
    /// tried again every second (logged at most every 5 s) until space is
    /// freed; projection lag grows meanwhile. Any other failure stops the
    /// node, which re-applies from its log at restart.
    private func applyRetryingWhileTheDiskIsFull(_ chunk: [LogEntry]) {
        var diskFullLog = LogThrottle(every: .seconds(5))
        while true {
            do {
                let outcomes = try projection.apply(chunk)
                for (entry, outcome) in zip(chunk, outcomes) { registry.applied(entry, outcome: outcome) }
                return
            } catch ProjectionError.storage(let operation, let failure) where failure.primaryCode == 13 /* SQLITE_FULL */ {
                if diskFullLog.allow() {
                    logger.error("disk full: the projection cannot apply committed entries; retrying until space is freed",
                                 metadata: ["op": "\(chunk[0].op)", "operation": "\(operation)", "error": "\(failure)"])
                }
                // A shutdown meanwhile ends the wait: the entries are re-applied from the log at restart.
                if queue.isStopping { return }
                Thread.sleep(forTimeInterval: 1)
            } catch {
                logger.critical("projection apply failed; stopping so the node restarts and re-applies from the log",
                                metadata: ["op": "\(chunk[0].op)", "error": "\(error)"])
                exit(1)
            }
        }
    }
}

/// Items handed to one consumer thread in batches, in order: the consumer
/// takes everything queued so far at once (group commit falls out of this).
final class BatchQueue<Item>: @unchecked Sendable {
    private let condition = NSCondition()
    private var items: [Item] = []
    private var stopping = false

    func push(_ more: [Item]) {
        condition.lock()
        items.append(contentsOf: more)
        condition.signal()
        condition.unlock()
    }

    /// Blocks until items are queued; nil once stopped (after the queue is
    /// empty when `drainOnStop`, at once otherwise).
    func next(drainOnStop: Bool) -> [Item]? {
        condition.lock()
        defer { condition.unlock() }
        while items.isEmpty && !stopping { condition.wait() }
        if stopping && (!drainOnStop || items.isEmpty) { return nil }
        let batch = items
        items.removeAll(keepingCapacity: true)
        return batch
    }

    /// Whatever is still queued (after `stop`), emptying the queue.
    func takeRemaining() -> [Item] {
        condition.lock()
        defer { condition.unlock() }
        defer { items.removeAll() }
        return items
    }

    var isStopping: Bool {
        condition.lock()
        defer { condition.unlock() }
        return stopping
    }

    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }
}
