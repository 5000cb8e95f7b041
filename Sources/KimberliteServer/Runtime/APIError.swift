import KimberliteCore

/// One client-API error (DESIGN.md §2, the error table): the stable code, a
/// message for people, and the op when an entry was logged. The HTTP status
/// follows from the code, and `response` is the one place the error JSON
/// `{"error":{"code":…,"message":…,"op":…}}` is built.
struct APIError: Error, Sendable, Equatable {
    enum Code: String, Sendable {
        /// 503: not accepted; a retry with a new request number is safe.
        case noLeader = "no_leader"
        /// 503: the leader's queue of writes waiting for a quorum is full; not accepted.
        case overloaded
        /// 504: no answer in time; retry with the same request number.
        case outcomeUnknown = "outcome_unknown"
        case invalidSQL = "invalid_sql"
        case nondeterministicSQL = "nondeterministic_sql"
        case notReadOnly = "not_read_only"
        case tooManyRows = "too_many_rows"
        case invalidRequest = "invalid_request"
        /// 409: logged and rolled back on every replica; carries the op.
        case applyFailed = "apply_failed"
        case staleRequest = "stale_request"
        case requestInProgress = "request_in_progress"
        case sessionExpired = "session_expired"
        /// 413: over `max_record_size` or `max_batch_size`.
        case tooLarge = "too_large"
        /// 507: not accepted; nothing written.
        case diskFull = "disk_full"
        /// 503: this node's log contradicts the cluster's; it serves nothing (not accepted).
        case diverged
        /// 404: an operations resource that does not exist (an unknown or expired backup).
        case notFound = "not_found"
        /// 409: a membership change is already in the log, uncommitted (one at a time).
        case membershipChangeInProgress = "membership_change_in_progress"
        /// 409: the change would remove the last member, or leave no quorum of live members (without force).
        case membershipChangeRefused = "membership_change_refused"
        /// 500: the node failed at an operation (a checkpoint for a backup); the message says where.
        case operationFailed = "operation_failed"

        var status: Int {
            switch self {
            case .noLeader, .overloaded, .diverged: return 503
            case .outcomeUnknown: return 504
            case .invalidSQL, .nondeterministicSQL, .notReadOnly, .tooManyRows, .invalidRequest: return 400
            case .applyFailed, .staleRequest, .requestInProgress, .sessionExpired, .membershipChangeInProgress, .membershipChangeRefused: return 409
            case .tooLarge: return 413
            case .diskFull: return 507
            case .notFound: return 404
            case .operationFailed: return 500
            }
        }
    }

    var code: Code
    var message: String
    var op: OpNumber? = nil

    init(_ code: Code, _ message: String, op: OpNumber? = nil) {
        self.code = code; self.message = message; self.op = op
    }

    /// The spec's "No leader elected", with what this node knows of why.
    static func noLeader(_ detail: String? = nil) -> APIError {
        APIError(.noLeader, detail.map { "No leader elected: \($0)" } ?? "No leader elected")
    }

    private struct Reply: Encodable {
        struct Body: Encodable {
            var code: String
            var message: String
            var op: OpNumber?
        }
        var error: Body
    }

    var response: APIResponse {
        APIResponse(status: code.status, body: ClientAPI.encode(Reply(error: .init(code: code.rawValue, message: message, op: op))))
    }
}
