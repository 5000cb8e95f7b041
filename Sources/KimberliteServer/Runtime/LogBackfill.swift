import Foundation
import KimberliteCore
import KimberliteStorage
import Logging
import Metrics
import NIOConcurrencyHelpers

/// The last step of a state transfer (DESIGN.md §2b): with `[storage]
/// compaction = false`, a node whose journal starts after a checkpoint
/// (installed by state transfer) fetches the older ops 1…base from the other
/// members in the background, so every member ends up holding the whole
/// audit log.
///
/// The ops go into a staged journal under `data_dir/log-backfill/`, which
/// verifies each entry's checksum and the hash chain as it appends and
/// survives a kill (the next start resumes after its last entry). Once it
/// ends on exactly the entry the journal chains onto, its segments move
/// below the journal (`Journal.adoptOlderLog`) and the superblock's log base
/// goes back to 0. A member that compacted those ops refuses; when every
/// member has, the node keeps its log from the checkpoint on and says so.
/// Bytes fetched count in `kmb_state_transfer_bytes_total`.
final class LogBackfill: @unchecked Sendable {
    /// How long a request waits for its answer before another member is asked.
    static let answerTimeout: DispatchTimeInterval = .seconds(10)
    private let stagedDirectory: String
    private let segmentSize: Int
    private let transport: ClusterTransport
    private let driver: ReplicaDriver
    private let logger: Logger
    private let bytesCounter = Counter(label: "kmb_state_transfer_bytes_total")
    private let state = NIOLockedValueBox(State())
    private let answered = DispatchSemaphore(value: 0)

    private struct State {
        var running = false
        var stopped = false
        /// Set by `startIfNeeded` while a run is going: run once more after it.
        var again = false
        /// The request waiting for its answer: (peer, first op asked).
        var pending: (peer: NodeID, from: OpNumber)?
        var answer: Answer?
    }

    init(dataDir: String, segmentSize: Int, transport: ClusterTransport, driver: ReplicaDriver, logger: Logger) {
        stagedDirectory = dataDir + "/log-backfill"
        self.segmentSize = segmentSize
        self.transport = transport
        self.driver = driver
        self.logger = logger
    }

    /// Starts a backfill in the background when the journal starts after op
    /// 1; a no-op while one runs (it runs once more after it).
    func startIfNeeded() {
        let go = state.withLockedValue { state -> Bool in
            if state.stopped { return false }
            if state.running { state.again = true; return false }
            state.running = true
            return true
        }
        guard go else { return }
        let thread = Thread { [self] in
            repeat { run() } while state.withLockedValue { state in
                let again = state.again && !state.stopped
                state.again = false
                if !again { state.running = false }
                return again
            }
        }
        thread.name = "kimberlite-backfill"
        thread.start()
    }

    func stop() {
        state.withLockedValue { $0.stopped = true }
        answered.signal()
    }

    /// A peer's answer to `backfillRead`.
    func received(from peer: NodeID, start: OpNumber, entries: [LogEntry], error: String, compactedThrough: OpNumber) {
        let matches = state.withLockedValue { state -> Bool in
            guard let pending = state.pending, pending.peer == peer, pending.from == start else { return false }
            state.pending = nil
            state.answer = Answer(entries: entries, error: error, compactedThrough: compactedThrough)
            return true
        }
        if matches { answered.signal() }
    }

    struct Answer {
        var entries: [LogEntry]
        var error: String
        var compactedThrough: OpNumber
    }

    private var isStopped: Bool { state.withLockedValue { $0.stopped } }

    private func run() {
        guard let target = driver.journalBase() else {
            if !isStopped { logger.warning("backfill: the replica did not report where its log starts; trying again at the next state transfer or start") }
            return
        }
        guard target.op > 0 else { return }
        let staged: Journal
        do {
            staged = try openStaged(target: target)
        } catch {
            logger.error("backfill: cannot open the staged log; the journal keeps starting at the checkpoint",
                         metadata: ["directory": "\(stagedDirectory)", "error": "\(error)"])
            return
        }
        let started = ContinuousClock.now
        var fetchedBytes = 0
        let resumedAt = staged.lastOp
        logger.notice("backfill: fetching the log's older ops \(staged.lastOp + 1)…\(target.op) from the other members (compaction is off: every member keeps the whole audit log)",
                      metadata: ["base_op": "\(target.op)", "staged_op": "\(staged.lastOp)"])
        // Members whose log starts after the ops needed: they never will have them.
        var compacted: [NodeID: String] = [:]
        // Members that did not answer, or could not now (behind, backfilling too): asked again later.
        var notNow: Set<NodeID> = []
        var pause = Duration.milliseconds(500)
        var turn = 0
        while staged.lastOp < target.op {
            if isStopped { staged.close(); return }
            let candidates = transport.peerIDs.filter { compacted[$0] == nil }
            guard !candidates.isEmpty else {
                logger.notice("backfill: no member holds ops \(staged.lastOp + 1)…\(target.op) any more; this node's log keeps starting after op \(target.op)",
                              metadata: ["refusals": "\(compacted.map { "node \($0.key): \($0.value)" }.sorted().joined(separator: "; "))"])
                staged.close()
                try? FileManager.default.removeItem(atPath: stagedDirectory)
                return
            }
            let available = candidates.filter { !notNow.contains($0) }
            guard !available.isEmpty else {
                // Everyone asked this round: wait (woken early by `stop`), then ask again.
                _ = answered.wait(timeout: .now() + .milliseconds(Int(pause.milliseconds)))
                pause = min(pause * 2, .seconds(5))
                notNow.removeAll()
                continue
            }
            let peer = available[turn % available.count]
            turn += 1
            let from = staged.lastOp + 1
            while answered.wait(timeout: .now()) == .success {}  // a late answer's signal, before the next request
            state.withLockedValue { state in
                state.pending = (peer, from)
                state.answer = nil
            }
            let sent = transport.send(.backfillRead(from: from, through: target.op), to: peer)
            let waited = sent ? answered.wait(timeout: .now() + Self.answerTimeout) : .timedOut
            let answer = state.withLockedValue { state -> Answer? in
                defer { state.pending = nil; state.answer = nil }
                return state.answer
            }
            guard waited == .success, let answer else {
                notNow.insert(peer)
                continue
            }
            guard answer.error.isEmpty, !answer.entries.isEmpty else {
                if answer.compactedThrough >= from {
                    compacted[peer] = answer.error
                } else {
                    logger.debug("backfill: a member cannot send the ops now; asking another", metadata: ["peer": "\(peer)", "error": "\(answer.error)"])
                    notNow.insert(peer)
                }
                continue
            }
            do {
                try staged.append(answer.entries)
                try staged.sync()
                let bytes = answer.entries.reduce(0) { $0 + $1.payload.count + 120 }
                fetchedBytes += bytes
                bytesCounter.increment(by: Int64(bytes))
                pause = .milliseconds(500)
            } catch {
                logger.error("backfill: refused the entries node \(peer) sent (they do not continue the staged log or fail their checksum)",
                             metadata: ["peer": "\(peer)", "from_op": "\(from)", "error": "\(error)"])
                notNow.insert(peer)
            }
        }
        guard staged.lastChecksum == target.checksum else {
            logger.error("backfill: ops 1…\(target.op) from the other members do not end on the entry this log starts from; discarded",
                         metadata: ["base_op": "\(target.op)", "fetched": "\(staged.lastChecksum)", "expected": "\(target.checksum)"])
            staged.close()
            try? FileManager.default.removeItem(atPath: stagedDirectory)
            return
        }
        do {
            try driver.adoptOlderLog(StagedJournal(staged))
            try? FileManager.default.removeItem(atPath: stagedDirectory)
            let elapsed = ContinuousClock.now - started
            logger.notice("Backfill complete: the journal holds the whole audit log from op 1 again",
                          metadata: ["ops": "\(target.op - resumedAt)", "through_op": "\(target.op)", "bytes": "\(fetchedBytes)",
                                     "seconds": "\(elapsed.components.seconds)"])
        } catch {
            // The journal moved on meanwhile (another checkpoint installed): the next run starts over.
            logger.warning("backfill: the staged ops could not be put below the journal", metadata: ["error": "\(error)"])
            staged.close()
        }
    }

    /// The staged journal, resumed when it is a prefix of what is needed,
    /// else emptied first.
    private func openStaged(target: (op: OpNumber, checksum: Checksum)) throws -> Journal {
        var quiet = logger
        quiet.logLevel = .warning
        let open = { try Journal(directory: self.stagedDirectory, segmentSize: self.segmentSize, syncMode: .fsync, logger: quiet,
                                 metricsFactory: NOOPMetricsHandler.instance) }
        let staged = try open()
        if staged.pendingCorruption == nil, staged.lastOp < target.op || (staged.lastOp == target.op && staged.lastChecksum == target.checksum) {
            return staged
        }
        // Damaged, or from an older transfer: start over.
        staged.close()
        try FileManager.default.removeItem(atPath: stagedDirectory)
        return try open()
    }
}
