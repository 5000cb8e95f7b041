import Dispatch
import KimberliteCore
import KimberliteProjection
import NIOConcurrencyHelpers
import NIOCore

/// Where a client write ended, as the HTTP layer needs to answer it.
enum WriteResult: Sendable {
    /// The entry was applied (or was a duplicate / stale / expired at apply).
    case applied(op: OpNumber, ApplyOutcome)
    /// Not in the log; nothing was written.
    case rejected(RequestRejection)
    /// No answer within `request_timeout`; `op` is set when it was logged.
    case timedOut(op: OpNumber?)
    /// The op number we were given now holds another entry (a view change
    /// replaced it): the request was not applied as that op, outcome unknown.
    case replaced(op: OpNumber)
}

/// Where a strong read ended.
enum ReadResult: Sendable {
    /// Leadership confirmed and the projection has applied `atOp`.
    case ready(atOp: OpNumber)
    case failed
    case timedOut
}

/// Waiting HTTP requests, keyed by the runtime's request id, then by the op
/// they became. Thread-safe; every waiter is resumed exactly once.
///
/// Timeouts: one sweep every `sweepInterval` (50 ms) answers the waiters
/// whose deadline passed, oldest first, instead of one timer per request
/// (thousands of live timers under load, each waking a thread).
final class RequestRegistry: @unchecked Sendable {
    private static let sweepInterval = DispatchTimeInterval.milliseconds(50)

    private struct Deadline {
        var at: DispatchTime
        var id: UInt64
        var isRead: Bool
    }

    private struct State {
        var nextID: UInt64 = 1
        var writes: [UInt64: CheckedContinuation<WriteResult, Never>] = [:]
        var writeOps: [UInt64: (op: OpNumber, checksum: Checksum)] = [:]
        var byOp: [OpNumber: [UInt64]] = [:]
        var reads: [UInt64: CheckedContinuation<ReadResult, Never>] = [:]
        var readsAwaitingApply: [(id: UInt64, atOp: OpNumber)] = []
        var appliedOp: OpNumber = 0
        /// In registration order; with one timeout for all requests that is
        /// also deadline order, and a longer one only waits behind a shorter.
        var deadlines = CircularBuffer<Deadline>()
    }

    private let state = NIOLockedValueBox(State())
    private let sweeper: DispatchSourceTimer

    init() {
        sweeper = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "kimberlite.request-timeouts"))
        sweeper.schedule(deadline: .now() + Self.sweepInterval, repeating: Self.sweepInterval, leeway: .milliseconds(10))
        sweeper.setEventHandler { [weak self] in self?.sweep() }
        sweeper.resume()
    }

    deinit { sweeper.cancel() }

    /// Answers every waiter whose deadline has passed with a timeout.
    private func sweep() {
        let now = DispatchTime.now()
        let expired = state.withLockedValue { state -> [Deadline] in
            var expired: [Deadline] = []
            while let first = state.deadlines.first, first.at <= now {
                expired.append(state.deadlines.removeFirst())
            }
            return expired
        }
        for deadline in expired {
            if deadline.isRead {
                resumeRead(deadline.id, .timedOut)
            } else {
                resumeWrite(deadline.id) { op in .timedOut(op: op) }
            }
        }
    }

    func makeID() -> UInt64 {
        state.withLockedValue { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
    }

    var pendingCount: Int { state.withLockedValue { $0.writes.count + $0.reads.count } }

    /// Registers a write waiter, runs `submit` (which hands the request to
    /// the replica), and waits for its result or `timeout`.
    func write(id: UInt64, timeout: Duration, submit: () -> Void) async -> WriteResult {
        await withCheckedContinuation { continuation in
            let deadline = Deadline(at: .now() + timeout.timeInterval, id: id, isRead: false)
            state.withLockedValue { state in
                state.writes[id] = continuation
                state.deadlines.append(deadline)
            }
            submit()
        }
    }

    /// Registers a strong-read waiter; same pattern as `write`.
    func read(id: UInt64, timeout: Duration, submit: () -> Void) async -> ReadResult {
        await withCheckedContinuation { continuation in
            let deadline = Deadline(at: .now() + timeout.timeInterval, id: id, isRead: true)
            state.withLockedValue { state in
                state.reads[id] = continuation
                state.deadlines.append(deadline)
            }
            submit()
        }
    }

    private func resumeWrite(_ id: UInt64, _ result: (OpNumber?) -> WriteResult) {
        let found = state.withLockedValue { state -> (CheckedContinuation<WriteResult, Never>, OpNumber?)? in
            guard let continuation = state.writes.removeValue(forKey: id) else { return nil }
            let op = state.writeOps.removeValue(forKey: id)?.op
            if let op { state.byOp[op]?.removeAll { $0 == id } }
            return (continuation, op)
        }
        if let (continuation, op) = found { continuation.resume(returning: result(op)) }
    }

    private func resumeRead(_ id: UInt64, _ result: ReadResult) {
        let continuation = state.withLockedValue { state -> CheckedContinuation<ReadResult, Never>? in
            state.readsAwaitingApply.removeAll { $0.id == id }
            return state.reads.removeValue(forKey: id)
        }
        continuation?.resume(returning: result)
    }

    /// The replica put request `id` in the log as `op` holding `checksum`.
    func bind(_ id: UInt64, op: OpNumber, checksum: Checksum) {
        state.withLockedValue { state in
            guard state.writes[id] != nil else { return }
            state.writeOps[id] = (op, checksum)
            state.byOp[op, default: []].append(id)
        }
    }

    func reject(_ id: UInt64, _ reason: RequestRejection) {
        resumeWrite(id) { _ in .rejected(reason) }
    }

    /// The projection applied `entry` with `outcome`: answer its waiters.
    func applied(_ entry: LogEntry, outcome: ApplyOutcome) {
        let (writes, reads) = state.withLockedValue { state -> ([(CheckedContinuation<WriteResult, Never>, WriteResult)], [CheckedContinuation<ReadResult, Never>]) in
            state.appliedOp = max(state.appliedOp, entry.op)
            var writes: [(CheckedContinuation<WriteResult, Never>, WriteResult)] = []
            for id in state.byOp.removeValue(forKey: entry.op) ?? [] {
                guard let continuation = state.writes.removeValue(forKey: id),
                      let bound = state.writeOps.removeValue(forKey: id) else { continue }
                let result: WriteResult = bound.checksum == entry.checksum
                    ? .applied(op: entry.op, outcome) : .replaced(op: entry.op)
                writes.append((continuation, result))
            }
            var reads: [CheckedContinuation<ReadResult, Never>] = []
            let applied = state.appliedOp
            state.readsAwaitingApply.removeAll { waiting in
                guard waiting.atOp <= applied else { return false }
                if let continuation = state.reads.removeValue(forKey: waiting.id) { reads.append(continuation) }
                return true
            }
            return (writes, reads)
        }
        for (continuation, result) in writes { continuation.resume(returning: result) }
        for continuation in reads { continuation.resume(returning: .ready(atOp: entry.op)) }
    }

    /// Sets the applied op at start-up (the projection's recorded position).
    /// The last op the projection applied.
    var appliedOp: OpNumber { state.withLockedValue { $0.appliedOp } }

    func setApplied(_ op: OpNumber) {
        state.withLockedValue { $0.appliedOp = max($0.appliedOp, op) }
    }

    /// Leadership for read `id` is confirmed at `atOp`; serve once applied.
    func readReady(_ id: UInt64, atOp: OpNumber) {
        let ready = state.withLockedValue { state -> Bool in
            guard state.reads[id] != nil else { return false }
            if state.appliedOp >= atOp { return true }
            state.readsAwaitingApply.append((id, atOp))
            return false
        }
        if ready { resumeRead(id, .ready(atOp: atOp)) }
    }

    func readFailed(_ id: UInt64) { resumeRead(id, .failed) }

    /// Fails every waiter (shutdown).
    func failAll() {
        let (writes, reads) = state.withLockedValue { state in
            let writes = state.writes.map { ($0.value, state.writeOps[$0.key]?.op) }
            let reads = Array(state.reads.values)
            state.writes.removeAll(); state.writeOps.removeAll(); state.byOp.removeAll()
            state.reads.removeAll(); state.readsAwaitingApply.removeAll()
            state.deadlines.removeAll()
            return (writes, reads)
        }
        for (continuation, op) in writes { continuation.resume(returning: .timedOut(op: op)) }
        for continuation in reads { continuation.resume(returning: .failed) }
    }
}

extension Duration {
    /// Seconds as a `Double`, for Dispatch.
    var timeInterval: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    var milliseconds: Double { timeInterval * 1000 }
}
