import CSQLite

/// An error reported by SQLite: its message and extended result code
/// (for example 2067, SQLITE_CONSTRAINT_UNIQUE).
public struct SQLiteError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The extended result code; `primaryCode` is its low byte.
    public var code: Int32
    /// `sqlite3_errmsg` at the time of the failure, or our own reason for a
    /// refusal made before SQLite ran (an authorizer denial, a second statement).
    public var message: String

    public init(code: Int32, message: String) {
        self.code = code
        self.message = message
    }

    public var primaryCode: Int32 { code & 0xff }

    /// True when the failure follows from the SQL and the data alone, so every
    /// replica applying the same entry to the same state fails the same way.
    /// Disk full, I/O errors, out of memory, busy and corruption depend on the
    /// machine: an apply that meets one must stop, not record a failure that
    /// other replicas would not record.
    public var isDeterministic: Bool {
        switch primaryCode {
        case SQLITE_ERROR, SQLITE_ABORT, SQLITE_CONSTRAINT, SQLITE_MISMATCH, SQLITE_TOOBIG,
             SQLITE_RANGE, SQLITE_AUTH:
            return true
        default:
            return false
        }
    }

    public var description: String { "\(message) (sqlite code \(code))" }
}

/// `SQLITE_TRANSIENT`: SQLite copies the bound bytes before the call returns.
/// The C macro is a cast of -1, which Swift does not import.
@inline(__always)
func sqliteTransient() -> sqlite3_destructor_type {
    unsafeBitCast(-1 as Int, to: sqlite3_destructor_type.self)
}

/// One SQLite connection. Not thread-safe: the owner serialises every use.
final class SQLiteConnection {
    private(set) var handle: OpaquePointer?
    let path: String
    private var cache: [String: SQLiteStatement] = [:]

    /// Opens `path` with `flags` (SQLITE_OPEN_*); NOMUTEX is added because
    /// callers serialise access themselves.
    /// - Throws: `SQLiteError` when SQLite cannot open the file.
    init(path: String, flags: Int32, busyTimeoutMs: Int32 = 5_000) throws {
        self.path = path
        var db: OpaquePointer?
        let rc = sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_NOMUTEX, nil)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open database"
            if let db { sqlite3_close_v2(db) }
            throw SQLiteError(code: rc, message: "\(message): \(path)")
        }
        handle = db
        sqlite3_extended_result_codes(db, 1)
        sqlite3_busy_timeout(db, busyTimeoutMs)
        // ATTACH could read arbitrary files or bring outside state into a replica.
        sqlite3_limit(db, SQLITE_LIMIT_ATTACHED, 0)
    }

    /// A private in-memory database (tests, scratch work).
    static func inMemory() throws -> SQLiteConnection {
        try SQLiteConnection(path: ":memory:", flags: SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)
    }

    deinit { close() }

    var db: OpaquePointer {
        guard let handle else { preconditionFailure("use of a closed SQLite connection") }
        return handle
    }

    var isOpen: Bool { handle != nil }

    /// Finalizes cached statements and closes. Safe to call twice.
    func close() {
        for statement in cache.values { statement.finalize() }
        cache.removeAll()
        if let handle {
            sqlite3_close_v2(handle)
            self.handle = nil
        }
    }

    /// The connection's current error as a `SQLiteError`.
    func lastError(code: Int32? = nil) -> SQLiteError {
        let extended = sqlite3_extended_errcode(db)
        return SQLiteError(code: code.map { $0 == (extended & 0xff) ? extended : $0 } ?? extended,
                           message: String(cString: sqlite3_errmsg(db)))
    }

    /// Runs one or more statements with no parameters and no results.
    func execute(_ sql: String) throws {
        var errorMessage: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &errorMessage)
        if rc != SQLITE_OK {
            let message = errorMessage.map { String(cString: $0) } ?? String(cString: sqlite3_errmsg(db))
            sqlite3_free(errorMessage)
            throw SQLiteError(code: sqlite3_extended_errcode(db), message: message)
        }
    }

    /// Prepares the first statement of `sql`. Returns nil for text with no
    /// statement (blank or comments), and the text after the first statement.
    /// - Throws: `SQLiteError` for a syntax error, an unknown table, an authorizer denial.
    func prepareFirst(_ sql: String) throws -> (statement: SQLiteStatement?, tail: String) {
        var utf8 = Array(sql.utf8)
        let length = utf8.count
        utf8.append(0)
        var raw: OpaquePointer?
        var tailOffset = length
        let rc = utf8.withUnsafeBufferPointer { buffer -> Int32 in
            buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buffer.count) { base in
                var tail: UnsafePointer<CChar>?
                let rc = sqlite3_prepare_v3(db, base, Int32(length), 0, &raw, &tail)
                if let tail { tailOffset = base.distance(to: tail) }
                return rc
            }
        }
        guard rc == SQLITE_OK else {
            let error = lastError(code: rc)
            sqlite3_finalize(raw)
            throw error
        }
        let tail = tailOffset < length ? String(decoding: utf8[tailOffset..<length], as: UTF8.self) : ""
        return (raw.map { SQLiteStatement(handle: $0, connection: self) }, tail)
    }

    /// Prepares exactly one statement; extra text after it is an error.
    func prepare(_ sql: String) throws -> SQLiteStatement {
        let (statement, tail) = try prepareFirst(sql)
        guard let statement else { throw SQLiteError(code: SQLITE_ERROR, message: "empty statement") }
        guard SQLScanner.isBlank(tail) else {
            statement.finalize()
            throw SQLiteError(code: SQLITE_ERROR, message: "more than one statement in one SQL text")
        }
        return statement
    }

    /// A prepared statement kept for the connection's lifetime, reset and
    /// with its bindings cleared. For our own fixed SQL only.
    func cached(_ sql: String) throws -> SQLiteStatement {
        if let statement = cache[sql] {
            statement.reset()
            return statement
        }
        let statement = try prepare(sql)
        cache[sql] = statement
        return statement
    }

    /// Runs `sql` with `params` and returns the first column of the first
    /// row, or nil when there is no row.
    func scalar(_ sql: String, _ params: [SQLValue] = []) throws -> SQLValue? {
        let statement = try cached(sql)
        defer { statement.reset() }
        try statement.bind(params)
        return try statement.step() ? statement.column(0) : nil
    }

    /// Runs a cached statement to completion, ignoring rows.
    func run(_ sql: String, _ params: [SQLValue] = []) throws {
        let statement = try cached(sql)
        defer { statement.reset() }
        try statement.bind(params)
        while try statement.step() {}
    }

    var autocommit: Bool { sqlite3_get_autocommit(db) != 0 }
}

/// One prepared statement. Finalized on `finalize()` or deinit.
final class SQLiteStatement {
    private(set) var handle: OpaquePointer?
    private unowned let connection: SQLiteConnection

    init(handle: OpaquePointer, connection: SQLiteConnection) {
        self.handle = handle
        self.connection = connection
    }

    deinit { finalize() }

    private var stmt: OpaquePointer {
        guard let handle else { preconditionFailure("use of a finalized SQLite statement") }
        return handle
    }

    func finalize() {
        if let handle {
            sqlite3_finalize(handle)
            self.handle = nil
        }
    }

    func reset() {
        sqlite3_reset(stmt)
        sqlite3_clear_bindings(stmt)
    }

    /// True when the statement makes no direct change to the database file.
    var isReadOnly: Bool { sqlite3_stmt_readonly(stmt) != 0 }
    var parameterCount: Int { Int(sqlite3_bind_parameter_count(stmt)) }
    var columnCount: Int { Int(sqlite3_column_count(stmt)) }

    func columnName(_ index: Int) -> String {
        sqlite3_column_name(stmt, Int32(index)).map { String(cString: $0) } ?? "column\(index + 1)"
    }

    /// Binds `values` to parameters 1...n.
    /// - Throws: `SQLiteError` (SQLITE_RANGE) when the count differs from the
    ///   statement's parameter count.
    func bind(_ values: [SQLValue]) throws {
        guard values.count == parameterCount else {
            throw SQLiteError(code: SQLITE_RANGE,
                              message: "statement has \(parameterCount) parameters but \(values.count) were given")
        }
        for (offset, value) in values.enumerated() {
            let index = Int32(offset + 1)
            let rc: Int32
            switch value {
            case .null:
                rc = sqlite3_bind_null(stmt, index)
            case .integer(let v):
                rc = sqlite3_bind_int64(stmt, index, v)
            case .real(let v):
                rc = sqlite3_bind_double(stmt, index, v)
            case .text(let v):
                let bytes = Array(v.utf8)
                rc = bytes.withUnsafeBufferPointer { buffer in
                    // A non-nil pointer even for "", or SQLite would bind NULL.
                    let base = buffer.baseAddress.map { UnsafeRawPointer($0) } ?? UnsafeRawPointer(bitPattern: 1)!
                    return sqlite3_bind_text64(stmt, index, base.assumingMemoryBound(to: CChar.self),
                                               sqlite3_uint64(bytes.count), sqliteTransient(), UInt8(SQLITE_UTF8))
                }
            case .blob(let v):
                if v.isEmpty {
                    rc = sqlite3_bind_zeroblob(stmt, index, 0)
                } else {
                    rc = v.withUnsafeBytes { raw in
                        sqlite3_bind_blob64(stmt, index, raw.baseAddress, sqlite3_uint64(raw.count), sqliteTransient())
                    }
                }
            }
            guard rc == SQLITE_OK else { throw connection.lastError(code: rc) }
        }
    }

    /// Advances one row: true when a row is available, false when done.
    /// - Throws: `SQLiteError` with SQLite's message and extended code.
    func step() throws -> Bool {
        let rc = sqlite3_step(stmt)
        switch rc {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default: throw connection.lastError(code: rc)
        }
    }

    /// The value of column `index` of the current row, typed by its storage class.
    func column(_ index: Int) -> SQLValue {
        let i = Int32(index)
        switch sqlite3_column_type(stmt, i) {
        case SQLITE_INTEGER:
            return .integer(sqlite3_column_int64(stmt, i))
        case SQLITE_FLOAT:
            return .real(sqlite3_column_double(stmt, i))
        case SQLITE_TEXT:
            guard let text = sqlite3_column_text(stmt, i) else { return .text("") }
            let count = Int(sqlite3_column_bytes(stmt, i))
            return .text(String(decoding: UnsafeBufferPointer(start: text, count: count), as: UTF8.self))
        case SQLITE_BLOB:
            let count = Int(sqlite3_column_bytes(stmt, i))
            guard count > 0, let blob = sqlite3_column_blob(stmt, i) else { return .blob([]) }
            return .blob(Array(UnsafeRawBufferPointer(start: blob, count: count)))
        default:
            return .null
        }
    }
}
