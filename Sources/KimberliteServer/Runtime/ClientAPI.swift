import Foundation
import KimberliteCore
import KimberliteProjection
import KimberliteStorage
import Logging
import Metrics

/// An HTTP answer: status and JSON body.
struct APIResponse: Sendable {
    var status: Int
    var body: [UInt8]
}

/// `POST /v1/execute` body (DESIGN.md §2 Client API).
struct ExecuteRequest: Decodable {
    struct Statement: Decodable {
        var sql: String
        var params: [SQLValue]?
    }
    var statements: [Statement]
    var clientID: String?
    var requestNumber: UInt64?

    enum CodingKeys: String, CodingKey {
        case statements, clientID = "client_id", requestNumber = "request_number"
    }
}

/// `POST /v1/query` body.
struct QueryRequest: Decodable {
    var sql: String
    var params: [SQLValue]?
    var consistency: String?
}

private struct ExecuteReply: Encodable {
    struct Result: Encodable {
        var rowsAffected: Int64
        var lastInsertRowID: Int64
        enum CodingKeys: String, CodingKey { case rowsAffected = "rows_affected", lastInsertRowID = "last_insert_rowid" }
    }
    var op: OpNumber
    var results: [Result]
}

private struct QueryReply: Encodable {
    var columns: [String]
    var rows: [[SQLValue]]
    var appliedOp: OpNumber
    enum CodingKeys: String, CodingKey { case columns, rows, appliedOp = "applied_op" }
}

/// The client API (port 7000) as plain functions from request bytes to a
/// response, so the HTTP server and forwarded requests share one path.
final class ClientAPI: @unchecked Sendable {
    struct Limits: Sendable {
        var maxRecordSize: Int
        var maxBatchSize: Int
        var maxResultRows: Int
        var requestTimeout: Duration
        var slowQueryThreshold: Duration
    }

    private let limits: Limits
    private let projection: Projection
    private let registry: RequestRegistry
    private let metrics: NodeMetrics
    private let logger: Logger
    private let dataDirectory: String
    let forwarder: Forwarder
    var driver: ReplicaDriver!

    init(limits: Limits, projection: Projection, registry: RequestRegistry, metrics: NodeMetrics, logger: Logger,
         dataDirectory: String, forwarder: Forwarder) {
        self.limits = limits
        self.projection = projection
        self.registry = registry
        self.metrics = metrics
        self.logger = logger
        self.dataDirectory = dataDirectory
        self.forwarder = forwarder
    }

    // MARK: - Execute

    /// Handles `POST /v1/execute`. A request forwarded by a follower is never forwarded again.
    func execute(body: [UInt8], forwarded: Bool) async -> APIResponse {
        await measured("execute", forwarded: forwarded, timer: metrics.writeDuration) {
            await executeInner(body: body, forwarded: forwarded)
        }
    }

    /// Counts and times a request where the client sent it (a forwarded one
    /// was counted by the follower that received it).
    private func measured(_ method: String, forwarded: Bool, timer: Metrics.Timer,
                          _ handle: () async -> APIResponse) async -> APIResponse {
        let started = ContinuousClock.now
        metrics.requestsInFlight.increment()
        let response = await handle()
        metrics.requestsInFlight.decrement()
        if !forwarded {
            metrics.countRequest(method: method, ok: response.status == 200)
            timer.recordNanoseconds((ContinuousClock.now - started).nanoseconds)
        }
        return response
    }

    private func executeInner(body: [UInt8], forwarded: Bool) async -> APIResponse {
        guard body.count <= limits.maxBatchSize else {
            return error(.tooLarge, "request body of \(body.count) bytes exceeds max_batch_size (\(limits.maxBatchSize) bytes)")
        }
        let request: ExecuteRequest
        do {
            request = try JSONDecoder().decode(ExecuteRequest.self, from: Data(body))
        } catch {
            return self.error(.invalidRequest, "malformed execute request: \(Self.describe(error))")
        }
        guard !request.statements.isEmpty else { return error(.invalidRequest, "statements is empty") }
        if (request.clientID == nil) != (request.requestNumber == nil) {
            return error(.invalidRequest, "client_id and request_number go together")
        }
        if let clientID = request.clientID, clientID.utf8.count > 256 || clientID.isEmpty {
            return error(.invalidRequest, "client_id must be 1 to 256 bytes")
        }
        let batch = WriteBatch(statements: request.statements.map { SQLStatement(sql: $0.sql, params: $0.params ?? []) })
        for (index, statement) in batch.statements.enumerated() {
            let size = WriteBatch(statements: [statement]).encode().count
            if size > limits.maxRecordSize {
                return error(.tooLarge, "statement \(index) is \(size) bytes, over max_record_size (\(limits.maxRecordSize) bytes)")
            }
        }
        let snapshot = driver.snapshot
        if let divergence = snapshot.divergence {
            return divergedError(divergence, serving: "writes; not accepted")
        }
        if snapshot.superseded != nil, let reason = snapshot.statusReason {
            return APIError.noLeader(reason + " (not accepted)").response
        }
        guard snapshot.isPrimary else {
            if !forwarded, let leader = snapshot.leader {
                return await forwarder.forward(kind: .execute, body: body, to: leader, timeout: limits.requestTimeout)
            }
            return noLeader()
        }
        var session: ClientSession? = nil
        if let clientID = request.clientID, let number = request.requestNumber {
            session = ClientSession(clientID: clientID, requestNumber: number)
            // Answer a retry from the committed client table without logging it again.
            if let last = projection.lastSession(clientID: clientID) {
                if number == last.requestNumber { return reply(op: last.lastOp, outcome: last.outcome) }
                if number < last.requestNumber {
                    return error(.staleRequest, "request_number \(number) is lower than the session's last (\(last.requestNumber))")
                }
            } else if (try? projection.isEvicted(clientID: clientID)) == true {
                // Refused at apply anyway; a client retrying in a loop must not fill the log.
                return error(.sessionExpired, "the session was evicted from the client table; start a new client_id")
            }
        }
        do {
            try projection.validate(batch)
        } catch let failure as ProjectionError {
            return projectionError(failure)
        } catch {
            return self.error(.invalidSQL, "\(error)")
        }
        let payload = batch.encode()
        if let shortage = diskShortage(adding: payload.count) {
            return error(.diskFull, shortage)
        }
        let id = registry.makeID()
        let result = await registry.write(id: id, timeout: limits.requestTimeout) {
            driver.submit(.write(ClientRequest(id: id, session: session, payload: payload)))
        }
        switch result {
        case .applied(let op, let outcome):
            return reply(op: op, outcome: outcome)
        case .rejected(.notPrimary):
            return noLeader()
        case .rejected(.overloaded(let queued)):
            return error(.overloaded, "the leader's write queue is full (\(queued) requests waiting for a quorum); not accepted, retry later")
        case .rejected(.inProgress(let outstanding)):
            return error(.requestInProgress, "the session already has request \(outstanding) outstanding")
        case .rejected(.stale(let last)):
            return error(.staleRequest, "request_number is lower than the session's last (\(last))")
        case .rejected(.reconfigurationInProgress(let op)):
            return error(.membershipChangeInProgress, "a membership change (op \(op)) has not committed yet; one change at a time")
        case .rejected(.invalidReconfiguration(let reason)):
            return error(.invalidRequest, "membership change refused: \(reason)")
        case .timedOut(let op):
            return error(.outcomeUnknown, "no answer within request_timeout; retry with the same request_number", op: op)
        case .replaced(let op):
            return error(.outcomeUnknown, "a view change replaced op \(op); retry with the same request_number", op: op)
        }
    }

    private func reply(op: OpNumber?, outcome: ApplyOutcome) -> APIResponse {
        switch outcome {
        case .applied(let results):
            let body = ExecuteReply(op: op ?? 0, results: results.map { .init(rowsAffected: $0.rowsAffected, lastInsertRowID: $0.lastInsertRowID) })
            return APIResponse(status: 200, body: Self.encode(body))
        case .failed(let message):
            return error(.applyFailed, message, op: op)
        case .duplicate(let recorded, let originalOp):
            return reply(op: originalOp, outcome: recorded)
        case .stale(let last):
            return error(.staleRequest, "request_number is lower than the session's last (\(last))", op: op)
        case .sessionExpired:
            return error(.sessionExpired, "the session was evicted from the client table; start a new client_id", op: op)
        }
    }

    /// Refuses a write when the data directory's file system could not hold
    /// it plus a margin of 16 MiB (so a full disk never half-writes a frame).
    private func diskShortage(adding bytes: Int) -> String? {
        var stats = statvfs()
        guard statvfs(dataDirectory, &stats) == 0 else { return nil }
        let available = Int(stats.f_bavail) * Int(stats.f_frsize)
        let needed = bytes * 2 + 16 << 20
        guard available < needed else { return nil }
        return "no space left on the data directory's file system (\(available) bytes free, \(needed) needed); nothing was written"
    }

    // MARK: - Query

    /// Handles `POST /v1/query`.
    func query(body: [UInt8], forwarded: Bool) async -> APIResponse {
        await measured("query", forwarded: forwarded, timer: metrics.queryDuration) {
            await queryInner(body: body, forwarded: forwarded)
        }
    }

    private func queryInner(body: [UInt8], forwarded: Bool) async -> APIResponse {
        guard body.count <= limits.maxBatchSize else {
            return error(.tooLarge, "request body of \(body.count) bytes exceeds max_batch_size (\(limits.maxBatchSize) bytes)")
        }
        let request: QueryRequest
        do {
            request = try JSONDecoder().decode(QueryRequest.self, from: Data(body))
        } catch {
            return self.error(.invalidRequest, "malformed query request: \(Self.describe(error))")
        }
        if driver.snapshot.superseded != nil, let reason = driver.snapshot.statusReason {
            return APIError.noLeader(reason).response
        }
        switch request.consistency ?? "strong" {
        case "stale":
            if let divergence = driver.snapshot.divergence {
                return divergedError(divergence, serving: "reads")
            }
            return runQuery(request)
        case "strong":
            let snapshot = driver.snapshot
            guard snapshot.isPrimary else {
                if !forwarded, let leader = snapshot.leader {
                    return await forwarder.forward(kind: .query, body: body, to: leader, timeout: limits.requestTimeout)
                }
                return noLeader()
            }
            let id = registry.makeID()
            let result = await registry.read(id: id, timeout: limits.requestTimeout) {
                driver.submit(.read(id: id))
            }
            switch result {
            case .ready: return runQuery(request)
            case .failed: return noLeader()
            case .timedOut: return APIError.noLeader("leadership could not be confirmed within request_timeout").response
            }
        case let other:
            return error(.invalidRequest, "consistency must be \"strong\" or \"stale\", not \"\(other)\"")
        }
    }

    private func runQuery(_ request: QueryRequest) -> APIResponse {
        let started = ContinuousClock.now
        let response: APIResponse
        do {
            let result = try projection.query(sql: request.sql, params: request.params ?? [], maxRows: limits.maxResultRows)
            response = APIResponse(status: 200, body: Self.encode(QueryReply(columns: result.columns, rows: result.rows, appliedOp: result.appliedOp)))
        } catch let failure as ProjectionError {
            response = projectionError(failure)
        } catch {
            response = self.error(.invalidSQL, "\(error)")
        }
        let elapsed = ContinuousClock.now - started
        if elapsed >= limits.slowQueryThreshold {
            // The duration is the 4th field of the text line, for `sort -k4 -n`.
            let ms = (elapsed.milliseconds * 10).rounded() / 10
            logger.warning("query_duration_ms \(ms)", metadata: ["sql": "\(request.sql.prefix(200))", "status": "\(response.status)"])
        }
        return response
    }

    // MARK: - Errors

    private func projectionError(_ failure: ProjectionError) -> APIResponse {
        switch failure {
        case .nondeterministic: return error(.nondeterministicSQL, failure.description)
        case .notReadOnly: return error(.notReadOnly, failure.description)
        case .tooManyRows: return error(.tooManyRows, failure.description)
        default: return error(.invalidSQL, failure.description)
        }
    }

    private func noLeader() -> APIResponse { APIError.noLeader().response }

    private func divergedError(_ divergence: Divergence, serving what: String) -> APIResponse {
        error(.diverged, "this node's committed log contradicts the cluster's at op \(divergence.op): it serves no \(what). \(Divergence.recovery)")
    }

    private func error(_ code: APIError.Code, _ message: String, op: OpNumber? = nil) -> APIResponse {
        APIError(code, message, op: op).response
    }

    static func encode(_ value: some Encodable) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array((try? encoder.encode(value)) ?? Data("{}".utf8))
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.dataCorrupted(let context): return context.debugDescription
        case DecodingError.keyNotFound(let key, _): return "missing field \"\(key.stringValue)\""
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            return "\(path.isEmpty ? "body" : path): \(context.debugDescription)"
        default: return "\(error)"
        }
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// Sends client requests to the leader over the cluster connection and
/// waits for its answer. A request is answered at once when its leader is
/// lost (the link to it drops, or this node's replica no longer follows it:
/// a view change started), instead of after `request_timeout`: a write then
/// gets 504 `outcome_unknown` (the leader may have logged it; the client
/// retries with the same request number), a read 503 `no_leader`.
/// Deadlines are checked on the node's tick, not with a timer per request.
final class Forwarder: @unchecked Sendable {
    private struct Waiter {
        var continuation: CheckedContinuation<APIResponse, Never>
        var kind: ForwardKind
        var leader: NodeID
        var deadline: ContinuousClock.Instant
    }

    private let lock = NSLock()
    private var waiting: [UInt64: Waiter] = [:]
    private var nextID: UInt64 = 1
    var transport: ClusterTransport!

    /// Forwards `body` to `leader`; answers with the leader's response, or an
    /// error when the leader is lost or `timeout` passes first.
    func forward(kind: ForwardKind, body: [UInt8], to leader: NodeID, timeout: Duration) async -> APIResponse {
        await withCheckedContinuation { continuation in
            lock.lock()
            let id = nextID
            nextID += 1
            waiting[id] = Waiter(continuation: continuation, kind: kind, leader: leader, deadline: .now + timeout)
            lock.unlock()
            guard transport.send(.forward(id: id, kind: kind, body: body), to: leader) else {
                // Not connected to the leader: the request surely was not accepted.
                complete(id, APIError.noLeader("leader \(leader) is not reachable from this node").response)
                return
            }
        }
    }

    func complete(_ id: UInt64, _ response: APIResponse) {
        lock.lock()
        let waiter = waiting.removeValue(forKey: id)
        lock.unlock()
        waiter?.continuation.resume(returning: response)
    }

    /// The connection to `peer` closed: every request waiting on it as the leader is answered now.
    func linkLost(to peer: NodeID) {
        answer { $0.leader == peer ? "the connection to leader \(peer) closed before it answered" : nil }
    }

    /// Called on each tick with the leader this node's replica follows:
    /// answers requests waiting on any other node (a view change started or
    /// ended elsewhere), and those past their deadline.
    func sweep(currentLeader: NodeID?, now: ContinuousClock.Instant = .now) {
        answer { waiter in
            if waiter.leader != currentLeader { return "leader changed before it answered (a view change started)" }
            return waiter.deadline <= now ? "no answer from the leader within request_timeout" : nil
        }
    }

    /// One pass under the lock: answers every waiter for which `lostBecause` gives a reason.
    private func answer(lostBecause: (Waiter) -> String?) {
        lock.lock()
        var lost: [(Waiter, String)] = []
        for (id, waiter) in waiting {
            if let reason = lostBecause(waiter) { lost.append((waiter, reason)); waiting[id] = nil }
        }
        lock.unlock()
        for (waiter, reason) in lost {
            let error = waiter.kind == .execute
                ? APIError(.outcomeUnknown, "\(reason); the write may or may not have been applied: retry with the same request_number")
                : APIError.noLeader(reason)
            waiter.continuation.resume(returning: error.response)
        }
    }
}
