import KimberliteCore

/// Why the projection refused or could not do something.
///
/// The first five map to client errors (DESIGN.md §2): `invalidSQL` →
/// 400 invalid_sql, `nondeterministic` → 400 nondeterministic_sql,
/// `notReadOnly` → 400 not_read_only, `tooManyRows` → 400 too_many_rows,
/// `queryFailed` → 400 invalid_sql. The rest are server faults.
public enum ProjectionError: Error, Sendable, Equatable, CustomStringConvertible {
    /// SQLite could not prepare the statement, or it is not allowed in this
    /// place (internal `_kmb_` tables, transaction control, several
    /// statements in one text, a wrong parameter count). Carries the reason.
    case invalidSQL(String)
    /// The statement would not give the same result on every replica; names
    /// the construct, e.g. "datetime('now')", "random()", "ATTACH".
    case nondeterministic(String)
    /// A statement that writes was sent as a query.
    case notReadOnly
    /// The query returned more than `limit` rows; nothing is returned.
    case tooManyRows(limit: Int)
    /// A read-only query failed while running (e.g. datetime('now')).
    case queryFailed(String)
    /// `apply` was given an entry out of order.
    case outOfOrder(expected: OpNumber, got: OpNumber)
    /// The database failed underneath (I/O, disk full, corruption, busy);
    /// `operation` names what we were doing, e.g. "apply op 12".
    case storage(operation: String, SQLiteError)
    /// The projection file was written by an unknown format version or is
    /// missing its metadata.
    case incompatible(String)
    /// The projection was closed.
    case closed

    public var description: String {
        switch self {
        case .invalidSQL(let reason):
            return "invalid SQL: \(reason)"
        case .nondeterministic(let construct):
            return "nondeterministic SQL: \(construct) is not allowed (use kmb_timestamp() or kmb_datetime() for the entry's time)"
        case .notReadOnly:
            return "not a read-only statement: writes go to /v1/execute"
        case .tooManyRows(let limit):
            return "query returned more than \(limit) rows (max_result_rows); add a LIMIT or narrow the query"
        case .queryFailed(let message):
            return "query failed: \(message)"
        case .outOfOrder(let expected, let got):
            return "projection apply out of order: expected op \(expected), got op \(got)"
        case .storage(let operation, let error):
            return "projection storage error during \(operation): \(error)"
        case .incompatible(let reason):
            return "projection database is incompatible: \(reason)"
        case .closed:
            return "projection is closed"
        }
    }
}
