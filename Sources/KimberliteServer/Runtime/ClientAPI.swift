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

private struct ErrorReply: Encodable {
    struct Body: Encodable {
        var code: String
        var message: String
        var op: OpNumber?
    }
    var error: Body
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
            return error(413, "too_large", "request body of \(body.count) bytes exceeds max_batch_size (\(limits.maxBatchSize) bytes)")
        }
        let request: ExecuteRequest
        do {
            request = try JSONDecoder().decode(ExecuteRequest.self, from: Data(body))
        } catch {
            return self.error(400, "invalid_request", "malformed execute request: \(Self.describe(error))")
        }
        guard !request.statements.isEmpty else { return error(400, "invalid_request", "statements is empty") }
        if (request.clientID == nil) != (request.requestNumber == nil) {
            return error(400, "invalid_request", "client_id and request_number go together")
        }
        if let clientID = request.clientID, clientID.utf8.count > 256 || clientID.isEmpty {
            return error(400, "invalid_request", "client_id must be 1 to 256 bytes")
        }
        let batch = WriteBatch(statements: request.statements.map { SQLStatement(sql: $0.sql, params: $0.params ?? []) })
        for (index, statement) in batch.statements.enumerated() {
            let size = WriteBatch(statements: [statement]).encode().count
            if size > limits.maxRecordSize {
                return error(413, "too_large", "statement \(index) is \(size) bytes, over max_record_size (\(limits.maxRecordSize) bytes)")
            }
        }
        let snapshot = driver.snapshot
        guard snapshot.isPrimary else {
            if !forwarded, let leader = snapshot.leader {
                return await forwarder.forward(kind: 1, body: body, to: leader, timeout: limits.requestTimeout)
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
                    return error(409, "stale_request", "request_number \(number) is lower than the session's last (\(last.requestNumber))")
                }
            } else if (try? projection.isEvicted(clientID: clientID)) == true {
                // Refused at apply anyway; a client retrying in a loop must not fill the log.
                return error(409, "session_expired", "the session was evicted from the client table; start a new client_id")
            }
        }
        do {
            try projection.validate(batch)
        } catch let failure as ProjectionError {
            return projectionError(failure)
        } catch {
            return self.error(400, "invalid_sql", "\(error)")
        }
        let payload = batch.encode()
        if let shortage = diskShortage(adding: payload.count) {
            return error(507, "disk_full", shortage)
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
            return error(503, "overloaded", "the leader's write queue is full (\(queued) requests waiting for a quorum); not accepted, retry later")
        case .rejected(.inProgress(let outstanding)):
            return error(409, "request_in_progress", "the session already has request \(outstanding) outstanding")
        case .rejected(.stale(let last)):
            return error(409, "stale_request", "request_number is lower than the session's last (\(last))")
        case .timedOut(let op):
            return error(504, "outcome_unknown", "no answer within request_timeout; retry with the same request_number", op: op)
        case .replaced(let op):
            return error(504, "outcome_unknown", "a view change replaced op \(op); retry with the same request_number", op: op)
        }
    }

    private func reply(op: OpNumber?, outcome: ApplyOutcome) -> APIResponse {
        switch outcome {
        case .applied(let results):
            let body = ExecuteReply(op: op ?? 0, results: results.map { .init(rowsAffected: $0.rowsAffected, lastInsertRowID: $0.lastInsertRowID) })
            return APIResponse(status: 200, body: Self.encode(body))
        case .failed(let message):
            return error(409, "apply_failed", message, op: op)
        case .duplicate(let recorded, let originalOp):
            return reply(op: originalOp, outcome: recorded)
        case .stale(let last):
            return error(409, "stale_request", "request_number is lower than the session's last (\(last))", op: op)
        case .sessionExpired:
            return error(409, "session_expired", "the session was evicted from the client table; start a new client_id", op: op)
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
            return error(413, "too_large", "request body of \(body.count) bytes exceeds max_batch_size (\(limits.maxBatchSize) bytes)")
        }
        let request: QueryRequest
        do {
            request = try JSONDecoder().decode(QueryRequest.self, from: Data(body))
        } catch {
            return self.error(400, "invalid_request", "malformed query request: \(Self.describe(error))")
        }
        switch request.consistency ?? "strong" {
        case "stale":
            return runQuery(request)
        case "strong":
            let snapshot = driver.snapshot
            guard snapshot.isPrimary else {
                if !forwarded, let leader = snapshot.leader {
                    return await forwarder.forward(kind: 2, body: body, to: leader, timeout: limits.requestTimeout)
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
            case .timedOut: return error(503, "no_leader", "No leader elected: leadership could not be confirmed within request_timeout")
            }
        case let other:
            return error(400, "invalid_request", "consistency must be \"strong\" or \"stale\", not \"\(other)\"")
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
            response = self.error(400, "invalid_sql", "\(error)")
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
        case .nondeterministic: return error(400, "nondeterministic_sql", failure.description)
        case .notReadOnly: return error(400, "not_read_only", failure.description)
        case .tooManyRows: return error(400, "too_many_rows", failure.description)
        default: return error(400, "invalid_sql", failure.description)
        }
    }

    private func noLeader() -> APIResponse {
        error(503, "no_leader", "No leader elected")
    }

    private func error(_ status: Int, _ code: String, _ message: String, op: OpNumber? = nil) -> APIResponse {
        APIResponse(status: status, body: Self.encode(ErrorReply(error: .init(code: code, message: message, op: op))))
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
/// waits for its answer.
final class Forwarder: @unchecked Sendable {
    private let lock = NSLock()
    private var waiting: [UInt64: CheckedContinuation<APIResponse, Never>] = [:]
    private var nextID: UInt64 = 1
    var transport: ClusterTransport!

    func forward(kind: UInt8, body: [UInt8], to leader: NodeID, timeout: Duration) async -> APIResponse {
        await withCheckedContinuation { continuation in
            lock.lock()
            let id = nextID
            nextID += 1
            waiting[id] = continuation
            lock.unlock()
            guard transport.send(.forward(id: id, kind: kind, body: body), to: leader) else {
                // Not connected to the leader: the request surely was not accepted.
                let body = #"{"error":{"code":"no_leader","message":"No leader elected: the leader is not reachable from this node"}}"#
                complete(id, APIResponse(status: 503, body: Array(body.utf8)))
                return
            }
            DispatchQueue.global().asyncAfter(deadline: .now() + timeout.timeInterval) { [self] in
                // A write may or may not have reached the leader: outcome unknown.
                let message = kind == 1
                    ? #"{"error":{"code":"outcome_unknown","message":"no answer from the leader within request_timeout; retry with the same request_number"}}"#
                    : #"{"error":{"code":"no_leader","message":"No leader elected: the leader did not answer within request_timeout"}}"#
                complete(id, APIResponse(status: kind == 1 ? 504 : 503, body: Array(message.utf8)))
            }
        }
    }

    func complete(_ id: UInt64, _ response: APIResponse) {
        lock.lock()
        let continuation = waiting.removeValue(forKey: id)
        lock.unlock()
        continuation?.resume(returning: response)
    }
}
