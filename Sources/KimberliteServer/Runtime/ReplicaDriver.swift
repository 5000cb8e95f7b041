import Foundation
import KimberliteCore
import KimberliteProjection
import KimberliteStorage
import Logging
import Metrics
import NIOConcurrencyHelpers

/// The replica as others in the process see it, updated after every batch.
struct ReplicaSnapshot: Sendable {
    var view: ViewNumber = 0
    var status: ReplicaStatus = .normal
    var op: OpNumber = 0
    var commit: OpNumber = 0
    var isPrimary = false
    var leader: NodeID? = nil
    var recovering = false
}

/// Inputs queued for the driver thread.
enum DriverInput: Sendable {
    case event(ReplicaEvent)
    case write(ClientRequest)
    case read(id: UInt64)
}

/// Runs the pure `Replica` on one thread together with the journal:
/// queued events in, actions out, in order. All writes of one batch of
/// events share one fsync (group commit), and all client requests queued
/// together become one prepare.
final class ReplicaDriver: @unchecked Sendable {
    private let queue = BatchQueue<DriverInput>()
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)

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
    private var enqueuedForApply: OpNumber
    private let published = NIOLockedValueBox(ReplicaSnapshot())
    private var lastLeader: NodeID?? = .none
    /// Runs on the driver thread after every batch (set before `start()`):
    /// the systemd watchdog ping, so a stuck replica loop stops the pings.
    var afterBatch: (@Sendable () -> Void)?

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
        publish()
        // Committed ops the projection has not applied yet (a restart).
        enqueueCommitted(through: replica.commitNumber)
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

    private func run() {
        while let batch = queue.next(drainOnStop: false) { process(batch) }
        do { try journal.sync() } catch { logger.error("final journal sync failed: \(error)") }
        finished.signal()
    }

    private func process(_ batch: [DriverInput]) {
        var writes: [ClientRequest] = []
        for input in batch {
            switch input {
            case .event(let event): perform(replica.handle(event))
            case .read(let id): perform(replica.handle(.readRequest(id: id)))
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
            if !superblockState.logStarted {
                // Once, before the first prepare_ok: from now on an empty
                // journal here means lost entries, not a new replica.
                superblockState.logStarted = true
                writeSuperblock()
            }
            perform(replica.handle(.persisted(throughOp: journal.lastOp)))
        }
        persistCommitHintIfDue()
        publish()
        afterBatch?()
    }

    private func perform(_ actions: [ReplicaAction]) {
        for action in actions {
            switch action {
            case .send(let message, let to):
                transport.send(.vsr(message), to: to)
            case .persistViewState(let view, let logView):
                // The superblock vouches for the log (log view): the entries
                // it vouches for must be durable first.
                syncJournal()
                superblockState.view = view
                superblockState.logView = logView
                // A lower bound: never lowered (a recovering replica's commit
                // number restarts below what was committed).
                superblockState.commitNumber = max(superblockState.commitNumber, replica.commitNumber)
                writeSuperblock()
            case .truncateLog(let after):
                do { try journal.truncate(after: after) } catch { fatal("journal truncate failed: \(error)") }
                if after == 0, superblockState.logStarted {
                    // Emptied by the protocol, not lost: restart as a member with an empty log.
                    superblockState.logStarted = false
                    writeSuperblock()
                }
            case .append(let entries):
                do {
                    try journal.append(entries)
                } catch {
                    // The replica holds these entries in memory; a journal
                    // that cannot take them is a node that must restart from
                    // what is durable (the disk-space check runs before writes
                    // reach the replica, so this is an I/O failure).
                    fatal("journal append failed: \(error)")
                }
            case .commit(let through):
                let previous = metrics.committed
                metrics.committed = through
                if through > previous { metrics.commits.increment(by: Int64(through - previous)) }
                enqueueCommitted(through: through)
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

    private func enqueueCommitted(through: OpNumber) {
        guard through > enqueuedForApply else { return }
        let entries = Array(replica.entries(from: enqueuedForApply + 1, through: through))
        enqueuedForApply = through
        applier.enqueue(entries)
    }

    /// The superblock's commit number is a lower bound used at restart;
    /// refreshing it once a second bounds the re-apply work without an
    /// fsync per commit.
    private func persistCommitHintIfDue() {
        guard replica.commitNumber > superblockState.commitNumber,
              ContinuousClock.now - lastSuperblockCommitWrite > .seconds(1) else { return }
        lastSuperblockCommitWrite = .now
        superblockState.commitNumber = replica.commitNumber
        writeSuperblock()
    }

    private func publish() {
        let snapshot = ReplicaSnapshot(view: replica.view, status: replica.status, op: replica.op,
                                       commit: replica.commitNumber, isPrimary: replica.isPrimary && replica.leader != nil,
                                       leader: replica.leader, recovering: replica.status == .recovering)
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
        case .staleMessage(let name, let view, let from):
            logger.trace("ignored message from an older view", metadata: ["message": "\(name)", "message_view": "\(view)", "peer": "\(from)"])
        case .recovered(let view, let op):
            syncJournal()
            superblockState.recovering = false
            superblockState.recoveryTarget = 0
            superblockState.formed = true
            superblockState.commitNumber = max(superblockState.commitNumber, replica.commitNumber)
            writeSuperblock()
            logger.notice("Recovering complete: the log is whole again; taking part in the cluster", metadata: ["view": "\(view)", "op": "\(op)"])
        case .formed:
            superblockState.formed = true
            writeSuperblock()
            logger.notice("cluster formed: every other member reported an empty log; joining with an empty log",
                          metadata: ["members": "\(replica.configuration.members.count)"])
        case .awaitingFormation(let fresh, let needed):
            logger.info("waiting for cluster formation: not every other member has reported an empty log yet",
                        metadata: ["empty_members": "\(fresh)", "needed": "\(needed)"])
        case .badEntry(let op, let from):
            metrics.checksumFailures.increment()
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
    private let queue = BatchQueue<LogEntry>()
    private let projection: Projection
    private let registry: RequestRegistry
    private let logger: Logger
    private let finished = DispatchSemaphore(value: 0)
    private var started = false

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

    func enqueue(_ entries: [LogEntry]) {
        guard !entries.isEmpty else { return }
        queue.push(entries)
    }

    private func run() {
        while let batch = queue.next(drainOnStop: true) {
            let pending = batch.drop(while: { $0.op <= projection.appliedOp })
            // One SQLite transaction per chunk; chunks bound how long readers
            // wait to see the first entry of a large batch.
            for start in stride(from: pending.startIndex, to: pending.endIndex, by: Self.entriesPerTransaction) {
                let chunk = Array(pending[start..<min(start + Self.entriesPerTransaction, pending.endIndex)])
                do {
                    let outcomes = try projection.apply(chunk)
                    for (entry, outcome) in zip(chunk, outcomes) { registry.applied(entry, outcome: outcome) }
                } catch {
                    logger.critical("projection apply failed; stopping so the node restarts and re-applies from the log",
                                    metadata: ["op": "\(chunk[0].op)", "error": "\(error)"])
                    exit(1)
                }
            }
        }
        finished.signal()
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

    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }
}
