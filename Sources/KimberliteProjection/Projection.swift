import CSQLite
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KimberliteCore
import Logging
import Metrics

/// The SQLite projection of the committed log (DESIGN.md §3 "Projection").
///
/// `<directory>/projection.sqlite`, WAL mode, `synchronous=NORMAL`: the log
/// is the durable truth, so after a crash the projection resumes from the
/// applied op it recorded and the server re-applies the rest from the log.
///
/// Threads: `apply` runs on one apply thread, in op order. `query`,
/// `lastSession`, `contentDigest` and `appliedOp` may be called from any
/// thread, concurrently with `apply`; they read committed snapshots through
/// a small pool of read-only connections. `validate` may be called from any
/// thread (it is serialised internally).
///
/// Internal tables (`_kmb_meta`, `_kmb_clients`, `_kmb_evicted_clients`) are
/// part of the replicated state; user SQL cannot touch `_kmb_*` names.
public final class Projection: @unchecked Sendable {
    /// `<directory>/projection.sqlite`.
    public let path: String
    private let logger: Logger
    private let clientTableCapacity: Int
    private let evictedTableCapacity: Int
    private let appliedGauge = Gauge(label: "kmb_projection_applied_position")

    // Apply side: one read-write connection, used under `applyLock`.
    private let applyLock = NSLock()
    private var writer: SQLiteConnection?
    /// True while `applyInOneTransaction` runs more than one entry.
    private var applyingBatch = false
    private let writerAuthorizer = AuthorizerState()
    private let writerClock = EntryClock(unavailableReason: "kmb_timestamp() is only set while an entry is applied")

    // Validation: one read-only connection, used under `validateLock`.
    private let validateLock = NSLock()
    private var checker: ReaderConnection?

    private let readers: ReaderPool

    private let appliedLock = NSLock()
    private var appliedOpStorage: OpNumber = 0

    private static let formatVersion: Int64 = 1

    /// Opens (creating if needed) the projection in `directory`.
    /// - Parameters:
    ///   - directory: `<data_dir>/projections`; created when missing.
    ///   - clientTableCapacity: sessions kept in the client table, at least 1;
    ///     must be the same on every replica. Evicted ids are remembered up
    ///     to 10× this many.
    ///   - cacheSizeBytes: SQLite page cache of the apply connection
    ///     (`[projections] cache_size`); SQLite's default when nil.
    /// - Throws: `ProjectionError.storage` when the directory or database
    ///   cannot be opened or set up, `.incompatible` for an unknown format.
    public init(directory: String, logger: Logger = Logger(label: "kimberlite.projection"), clientTableCapacity: Int = 10_000,
                cacheSizeBytes: Int? = nil) throws {
        precondition(clientTableCapacity >= 1, "the client table holds at least one session")
        self.path = (directory as NSString).appendingPathComponent("projection.sqlite")
        self.logger = logger
        self.clientTableCapacity = clientTableCapacity
        self.evictedTableCapacity = clientTableCapacity * 10
        self.readers = ReaderPool(path: path)
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw ProjectionError.storage(operation: "create directory \(directory)",
                                          SQLiteError(code: SQLITE_CANTOPEN, message: "\(error)"))
        }
        let db: SQLiteConnection
        do {
            db = try SQLiteConnection(path: path, flags: SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)
        } catch let error as SQLiteError {
            throw ProjectionError.storage(operation: "open \(path)", error)
        }
        let applied: OpNumber
        do {
            let mode = try db.prepare("PRAGMA journal_mode=WAL")
            let journalMode = try mode.step() ? mode.column(0) : .null
            mode.finalize()
            guard journalMode == .text("wal") else {
                throw SQLiteError(code: SQLITE_ERROR, message: "cannot switch to WAL mode (journal_mode is \(journalMode))")
            }
            // The WAL file never shrinks by itself: after a large
            // transaction SQLite cuts it back to 64 MiB once it is reused.
            try db.execute("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA journal_size_limit=\(64 << 20);")
            if let cacheSizeBytes, cacheSizeBytes > 0 {
                try db.execute("PRAGMA cache_size=-\(max(cacheSizeBytes / 1024, 1))")
            }
            try DeterministicFunctions.install(on: db, clock: writerClock)
            writerAuthorizer.install(on: db)
            try db.execute("""
                BEGIN IMMEDIATE;
                CREATE TABLE IF NOT EXISTS _kmb_meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
                INSERT OR IGNORE INTO _kmb_meta(key, value) VALUES ('format', \(Self.formatVersion)), ('applied_op', 0),
                    ('applied_checksum', zeroblob(32));
                CREATE TABLE IF NOT EXISTS _kmb_clients(
                    client_id TEXT PRIMARY KEY, request_number INTEGER NOT NULL,
                    last_op INTEGER NOT NULL, outcome BLOB NOT NULL) WITHOUT ROWID;
                CREATE INDEX IF NOT EXISTS _kmb_clients_by_last_op ON _kmb_clients(last_op, client_id);
                CREATE TABLE IF NOT EXISTS _kmb_evicted_clients(
                    client_id TEXT PRIMARY KEY, evicted_at_op INTEGER NOT NULL) WITHOUT ROWID;
                CREATE INDEX IF NOT EXISTS _kmb_evicted_by_op ON _kmb_evicted_clients(evicted_at_op, client_id);
                CREATE TABLE IF NOT EXISTS _kmb_audit(
                    op INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL);
                COMMIT;
                """)
            guard case .integer(let format)? = try db.scalar("SELECT value FROM _kmb_meta WHERE key = 'format'"),
                  format == Self.formatVersion else {
                db.close()
                throw ProjectionError.incompatible("\(path) has an unknown format version (this build reads \(Self.formatVersion))")
            }
            guard case .integer(let op)? = try db.scalar("SELECT value FROM _kmb_meta WHERE key = 'applied_op'") else {
                db.close()
                throw ProjectionError.incompatible("\(path) has no applied_op")
            }
            applied = OpNumber(bitPattern: op)
        } catch let error as SQLiteError {
            db.close()
            throw ProjectionError.storage(operation: "set up \(path)", error)
        }
        writer = db
        appliedOpStorage = applied
        appliedGauge.record(Int64(bitPattern: applied))
        logger.info("projection opened", metadata: ["path": "\(path)", "applied_op": "\(applied)"])
    }

    deinit { close() }

    /// Closes every connection. Later calls throw `ProjectionError.closed`.
    public func close() {
        applyLock.withLock {
            writer?.close()
            writer = nil
        }
        validateLock.withLock {
            checker?.connection.close()
            checker = nil
        }
        readers.close()
    }

    /// The last op applied and committed to the projection; 0 before any.
    public var appliedOp: OpNumber {
        appliedLock.withLock { appliedOpStorage }
    }

    // MARK: - Apply

    /// Applies one committed entry in one SQLite transaction: its statements
    /// (all or none), the client table and the applied op. The outcome is the
    /// same on every replica given the same log.
    ///
    /// A statement failing deterministically (constraint, SQL error, a
    /// refused nondeterministic function) rolls the statements back but still
    /// records the op and the session outcome, so a restart neither re-applies
    /// nor skips. An empty payload is a no-op entry (`.applied([])`).
    /// - Throws: `ProjectionError.outOfOrder` unless `entry.op == appliedOp + 1`;
    ///   `.storage` when SQLite fails for a machine reason (disk full, I/O,
    ///   out of memory): nothing of the entry is recorded, the caller must stop
    ///   or retry the same entry. `.closed` after `close()`.
    /// `text` as a JSON string literal (quoted, escaped).
    static func jsonString(_ text: String) -> String {
        (try? JSONEncoder().encode(text)).map { String(decoding: $0, as: UTF8.self) } ?? "\"\""
    }

    public func apply(_ entry: LogEntry) throws -> ApplyOutcome {
        try apply([entry])[0]
    }

    /// Applies consecutive committed entries (`appliedOp + 1` onward) in one
    /// SQLite transaction, each inside its own savepoint, so each entry's
    /// outcome is exactly what `apply(_:)` would give it while the batch
    /// pays for one commit (and one set of WAL pages) instead of one per
    /// entry. Readers see all of the batch or none of it. If a statement's
    /// conflict clause ends the transaction itself (`OR ROLLBACK`), the
    /// batch is undone and applied again one entry per transaction.
    /// - Returns: one outcome per entry, in order.
    /// - Throws: as `apply(_:)`; on `.storage` nothing of the batch is recorded.
    public func apply(_ entries: [LogEntry]) throws -> [ApplyOutcome] {
        guard !entries.isEmpty else { return [] }
        return try applyLock.withLock {
            guard let db = writer else { throw ProjectionError.closed }
            let expected = appliedOp &+ 1
            for (index, entry) in entries.enumerated() where entry.op != expected &+ OpNumber(index) {
                throw ProjectionError.outOfOrder(expected: expected &+ OpNumber(index), got: entry.op)
            }
            if entries.count > 1 {
                do {
                    return try applyInOneTransaction(entries, db)
                } catch BatchInterrupted.transactionEnded {
                    logger.debug("a statement ended the batch's transaction; applying its entries one by one",
                                 metadata: ["first_op": "\(entries[0].op)", "entries": "\(entries.count)"])
                }
            }
            return try entries.map { try applyInOneTransaction([$0], db)[0] }
        }
    }

    /// A statement ended a multi-entry transaction, undoing earlier entries.
    private enum BatchInterrupted: Error { case transactionEnded }

    private func applyInOneTransaction(_ entries: [LogEntry], _ db: SQLiteConnection) throws -> [ApplyOutcome] {
        let last = entries[entries.count - 1].op
        applyingBatch = entries.count > 1
        defer { applyingBatch = false }
        do {
            try db.execute("BEGIN IMMEDIATE")
            var outcomes: [ApplyOutcome] = []
            outcomes.reserveCapacity(entries.count)
            for entry in entries { outcomes.append(try applyInTransaction(entry, db)) }
            try db.run("UPDATE _kmb_meta SET value = ?1 WHERE key = 'applied_op'", [.integer(Int64(bitPattern: last))])
            // The hash-chain anchor of the applied prefix: a checkpoint copied
            // from this state names the entry a log after it chains onto.
            try db.run("UPDATE _kmb_meta SET value = ?1 WHERE key = 'applied_checksum'", [.blob(entries[entries.count - 1].checksum.bytes)])
            try db.execute("COMMIT")
            appliedLock.withLock { appliedOpStorage = last }
            appliedGauge.record(Int64(bitPattern: last))
            return outcomes
        } catch {
            writerAuthorizer.begin(.trusted)
            writerClock.timestampMs = nil
            if !db.autocommit { try? db.execute("ROLLBACK") }
            if let interrupted = error as? BatchInterrupted { throw interrupted }
            let wrapped: ProjectionError
            let where_ = entries.count == 1 ? "apply op \(last)" : "apply ops \(entries[0].op)...\(last)"
            switch error {
            case let error as ProjectionError: wrapped = error
            case let error as SQLiteError: wrapped = .storage(operation: where_, error)
            default: wrapped = .storage(operation: where_, SQLiteError(code: SQLITE_ERROR, message: "\(error)"))
            }
            logger.error("projection apply failed", metadata: ["op": "\(entries[0].op)", "entries": "\(entries.count)", "error": "\(wrapped)"])
            throw wrapped
        }
    }

    private func applyInTransaction(_ entry: LogEntry, _ db: SQLiteConnection) throws -> ApplyOutcome {
        var previous: RecordedSession?
        if let session = entry.session {
            previous = try recordedSession(session.clientID, db)
            if let previous {
                if session.requestNumber < previous.requestNumber { return .stale(lastRequestNumber: previous.requestNumber) }
                if session.requestNumber == previous.requestNumber { return .duplicate(previous.outcome, originalOp: previous.lastOp) }
            } else if try db.scalar("SELECT 1 FROM _kmb_evicted_clients WHERE client_id = ?1",
                                    [.text(session.clientID)]) != nil {
                return .sessionExpired
            }
        }
        let outcome: ApplyOutcome
        if entry.payload.isEmpty {
            outcome = .applied([])
        } else if let change = Reconfiguration.decode(entry.payload) {
            // A membership change the replicas committed (VRR §7): audited.
            writerAuthorizer.begin(.trusted)
            let detail = #"{"epoch":\#(change.epoch),"members":[\#(change.members.map(String.init).joined(separator: ","))],"detail":\#(Self.jsonString(change.detail))}"#
            try db.run("INSERT OR REPLACE INTO _kmb_audit(op, at_ms, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                       [.integer(Int64(bitPattern: entry.op)), .integer(entry.timestampMs), .text("reconfiguration"), .text(detail)])
            outcome = .applied([])
        } else if let record = SystemRecord.decode(entry.payload) {
            // Written by the cluster (an audit record): trusted, never refused.
            writerAuthorizer.begin(.trusted)
            try db.run("INSERT OR REPLACE INTO _kmb_audit(op, at_ms, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                       [.integer(Int64(bitPattern: entry.op)), .integer(entry.timestampMs), .text(record.kind), .text(record.detail)])
            outcome = .applied([])
        } else {
            do {
                let batch = try WriteBatch.decode(entry.payload)
                outcome = try execute(batch, entry, db)
            } catch let error as DecodeError {
                logger.warning("apply failed", metadata: ["op": "\(entry.op)", "error": "\(error)"])
                outcome = .failed(message: "the entry's payload is not a write batch: \(error)")
            }
        }
        if let session = entry.session {
            try db.run("""
                INSERT INTO _kmb_clients(client_id, request_number, last_op, outcome) VALUES (?1, ?2, ?3, ?4)
                ON CONFLICT(client_id) DO UPDATE SET request_number = ?2, last_op = ?3, outcome = ?4
                """, [.text(session.clientID), .integer(Int64(bitPattern: session.requestNumber)),
                      .integer(Int64(bitPattern: entry.op)), .blob(outcome.encode())])
            if previous == nil { try evictSessions(atOp: entry.op, db) }
        }
        return outcome
    }

    /// Runs the batch's statements inside a savepoint; on a deterministic
    /// failure rolls them back and reports `.failed`.
    private func execute(_ batch: WriteBatch, _ entry: LogEntry, _ db: SQLiteConnection) throws -> ApplyOutcome {
        // Connection state that SQL can observe must not depend on what this
        // connection applied before a restart: changes() and last_insert_rowid()
        // start every entry at 0.
        try db.run("UPDATE _kmb_meta SET value = value WHERE 0")
        sqlite3_set_last_insert_rowid(db.db, 0)
        writerClock.timestampMs = entry.timestampMs
        defer { writerClock.timestampMs = nil }
        try db.execute("SAVEPOINT kmb_entry")
        var results: [StatementResult] = []
        results.reserveCapacity(batch.statements.count)
        for (index, statement) in batch.statements.enumerated() {
            do {
                results.append(try runUserStatement(statement, db))
            } catch let error as SQLiteError where error.isDeterministic {
                let message = batch.statements.count > 1
                    ? "statement \(index + 1) of \(batch.statements.count): \(error.message)"
                    : error.message
                logger.info("apply failed", metadata: [
                    "op": "\(entry.op)", "statement": "\(index)", "error": "\(error.message)", "code": "\(error.code)",
                ])
                if db.autocommit {
                    // OR ROLLBACK / RAISE(ROLLBACK) ended our transaction. With
                    // one entry its only changes were this entry's, so start
                    // again empty; in a batch, earlier entries went too.
                    if applyingBatch { throw BatchInterrupted.transactionEnded }
                    try db.execute("BEGIN IMMEDIATE")
                } else {
                    try db.execute("ROLLBACK TO kmb_entry; RELEASE kmb_entry")
                }
                return .failed(message: message)
            }
        }
        guard !db.autocommit else {
            throw SQLiteError(code: SQLITE_INTERNAL, message: "the entry's transaction ended during apply")
        }
        try db.execute("RELEASE kmb_entry")
        return .applied(results)
    }

    private func runUserStatement(_ statement: SQLStatement, _ db: SQLiteConnection) throws -> StatementResult {
        writerAuthorizer.begin(.user)
        defer { writerAuthorizer.begin(.trusted) }
        do {
            let prepared = try db.prepare(statement.sql)
            defer { prepared.finalize() }
            try prepared.bind(statement.params)
            let before = sqlite3_total_changes64(db.db)
            while try prepared.step() {}
            let changed = sqlite3_total_changes64(db.db) != before
            return StatementResult(rowsAffected: changed ? sqlite3_changes64(db.db) : 0,
                                   lastInsertRowID: sqlite3_last_insert_rowid(db.db))
        } catch let error as SQLiteError {
            if let refusal = writerAuthorizer.refusal {
                throw SQLiteError(code: SQLITE_AUTH, message: refusal.message)
            }
            throw error
        }
    }

    private func recordedSession(_ clientID: String, _ db: SQLiteConnection) throws -> RecordedSession? {
        let statement = try db.cached("SELECT request_number, last_op, outcome FROM _kmb_clients WHERE client_id = ?1")
        defer { statement.reset() }
        try statement.bind([.text(clientID)])
        guard try statement.step() else { return nil }
        guard case .integer(let number) = statement.column(0), case .integer(let lastOp) = statement.column(1),
              case .blob(let bytes) = statement.column(2) else {
            throw SQLiteError(code: SQLITE_CORRUPT, message: "client table row for \(clientID) has the wrong types")
        }
        do {
            return RecordedSession(requestNumber: UInt64(bitPattern: number), lastOp: UInt64(bitPattern: lastOp),
                                   outcome: try ApplyOutcome.decode(bytes))
        } catch {
            throw SQLiteError(code: SQLITE_CORRUPT, message: "client table outcome for \(clientID) is unreadable: \(error)")
        }
    }

    /// Keeps the client table within capacity: evicts the sessions with the
    /// oldest last op (ties by client id), remembering them as evicted, and
    /// keeps the evicted list within its own bound, oldest dropped first.
    private func evictSessions(atOp op: OpNumber, _ db: SQLiteConnection) throws {
        guard case .integer(let count)? = try db.scalar("SELECT count(*) FROM _kmb_clients"),
              count > clientTableCapacity else { return }
        let excess = Int64(count) - Int64(clientTableCapacity)
        let oldest = try db.cached("SELECT client_id FROM _kmb_clients ORDER BY last_op, client_id LIMIT ?1")
        try oldest.bind([.integer(excess)])
        var evicted: [String] = []
        while try oldest.step() {
            if case .text(let id) = oldest.column(0) { evicted.append(id) }
        }
        oldest.reset()
        for id in evicted {
            try db.run("DELETE FROM _kmb_clients WHERE client_id = ?1", [.text(id)])
            try db.run("INSERT OR REPLACE INTO _kmb_evicted_clients(client_id, evicted_at_op) VALUES (?1, ?2)",
                       [.text(id), .integer(Int64(bitPattern: op))])
            logger.debug("session evicted", metadata: ["client_id": "\(id)", "op": "\(op)"])
        }
        if case .integer(let evictedCount)? = try db.scalar("SELECT count(*) FROM _kmb_evicted_clients"),
           evictedCount > evictedTableCapacity {
            try db.run("""
                DELETE FROM _kmb_evicted_clients WHERE client_id IN (
                    SELECT client_id FROM _kmb_evicted_clients ORDER BY evicted_at_op, client_id LIMIT ?1)
                """, [.integer(evictedCount - Int64(evictedTableCapacity))])
        }
    }

    // MARK: - Validate

    /// The leader's check before an entry goes into the log. Each statement
    /// must prepare on the current schema (or fail only for a missing
    /// table/column after a CREATE/DROP/ALTER earlier in the batch), be one
    /// statement, have as many parameters as given, touch no `_kmb_*` name,
    /// control no transaction, and be deterministic: no random(),
    /// randomblob(), total_changes(), CURRENT_TIME/DATE/TIMESTAMP (also in
    /// DEFAULT clauses and trigger bodies), date functions with 'now',
    /// 'localtime'/'utc' or no time argument, ATTACH/DETACH, writing PRAGMAs.
    /// - Throws: `ProjectionError.invalidSQL` or `.nondeterministic`, prefixed
    ///   with "statement N: " in a batch of several; `.storage`/`.closed`
    ///   when the check connection cannot be opened.
    public func validate(_ batch: WriteBatch) throws {
        guard !batch.statements.isEmpty else { throw ProjectionError.invalidSQL("a write needs at least one statement") }
        try validateLock.withLock {
            let checker = try checkerConnection()
            var schemaChanged = false
            for (index, statement) in batch.statements.enumerated() {
                let prefix = batch.statements.count > 1 ? "statement \(index + 1): " : ""
                do {
                    let tokens = SQLScanner.tokenize(statement.sql)
                    try check(statement, tokens: tokens, schemaMayDiffer: schemaChanged, checker)
                    if SQLScanner.isSchemaChange(tokens) { schemaChanged = true }
                } catch ProjectionError.invalidSQL(let reason) {
                    throw ProjectionError.invalidSQL(prefix + reason)
                } catch ProjectionError.nondeterministic(let construct) {
                    throw ProjectionError.nondeterministic(prefix + construct)
                }
            }
        }
    }

    private static let transactionKeywords: Set<String> = ["BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"]

    private func check(_ statement: SQLStatement, tokens: [SQLScanner.Token], schemaMayDiffer: Bool,
                       _ checker: ReaderConnection) throws {
        if let name = SQLScanner.internalName(tokens) {
            throw ProjectionError.invalidSQL(Refusal.internalTable(name).message)
        }
        let keyword = SQLScanner.leadingKeyword(tokens) ?? ""
        if Self.transactionKeywords.contains(keyword) {
            throw ProjectionError.invalidSQL(Refusal.transactionControl.message)
        }
        if keyword == "VACUUM" {
            throw ProjectionError.invalidSQL("VACUUM is not allowed in a write (it cannot run inside the entry's transaction)")
        }
        checker.authorizer.begin(.record)
        defer { checker.authorizer.begin(.trusted) }
        var prepared: SQLiteStatement?
        do {
            let (first, tail) = try checker.connection.prepareFirst(statement.sql)
            guard let first else { throw ProjectionError.invalidSQL("empty statement") }
            prepared = first
            guard SQLScanner.isBlank(tail) else {
                throw ProjectionError.invalidSQL(
                    "more than one statement in one SQL text; send each as its own statement (extra text: \(tail.trimmingCharacters(in: .whitespacesAndNewlines).prefix(60)))")
            }
            guard first.parameterCount == statement.params.count else {
                throw ProjectionError.invalidSQL(
                    "statement has \(first.parameterCount) parameters but \(statement.params.count) were given")
            }
        } catch let error as SQLiteError {
            // A table made earlier in this batch does not exist yet: apply decides.
            guard schemaMayDiffer, Self.isMissingSchemaObject(error.message) else {
                throw ProjectionError.invalidSQL(error.message)
            }
        }
        prepared?.finalize()
        if let construct = SQLScanner.nondeterministicConstruct(tokens) {
            throw ProjectionError.nondeterministic(construct)
        }
        if let function = checker.authorizer.functions.first(where: { SQLScanner.refusedFunctions.contains($0) }) {
            throw ProjectionError.nondeterministic(
                SQLScanner.clockKeywords.contains(function.uppercased()) ? function.uppercased() : "\(function)()")
        }
        if let refusal = checker.authorizer.findings.first {
            throw refusal.isNondeterminism
                ? ProjectionError.nondeterministic(refusal.construct)
                : ProjectionError.invalidSQL(refusal.message)
        }
    }

    private static func isMissingSchemaObject(_ message: String) -> Bool {
        message.hasPrefix("no such table") || message.hasPrefix("no such column") || message.hasPrefix("no such index")
            || message.hasPrefix("no such view") || message.contains("has no column named")
    }

    private func checkerConnection() throws -> ReaderConnection {
        if let checker { return checker }
        guard readers.isOpen else { throw ProjectionError.closed }
        do {
            let opened = try ReaderConnection(path: path)
            checker = opened
            return opened
        } catch let error as SQLiteError {
            throw ProjectionError.storage(operation: "open check connection", error)
        }
    }

    // MARK: - Reads

    /// Runs one read-only statement in one snapshot and reports the applied
    /// op of that snapshot. Values are typed by storage class (64-bit
    /// integers exact, blobs as bytes).
    /// - Throws: `ProjectionError.invalidSQL` (cannot prepare, several
    ///   statements, wrong parameter count, `_kmb_*` names, transaction
    ///   control, ATTACH), `.notReadOnly` (the statement writes, or a writing
    ///   PRAGMA), `.tooManyRows` (more than `maxRows` rows; nothing returned),
    ///   `.queryFailed` (an error while running, e.g. datetime('now')),
    ///   `.storage`, `.closed`.
    public func query(sql: String, params: [SQLValue], maxRows: Int) throws -> QueryResult {
        try readers.withReader { reader in
            let db = reader.connection
            do {
                try db.execute("BEGIN")
            } catch let error as SQLiteError {
                throw ProjectionError.storage(operation: "begin query", error)
            }
            defer { try? db.execute("ROLLBACK") }
            let applied = try readAppliedOp(db)
            reader.authorizer.begin(.user)
            defer { reader.authorizer.begin(.trusted) }
            let statement: SQLiteStatement
            do {
                let (first, tail) = try db.prepareFirst(sql)
                guard let first else { throw ProjectionError.invalidSQL("empty statement") }
                guard SQLScanner.isBlank(tail) else {
                    throw ProjectionError.invalidSQL("more than one statement in one query")
                }
                statement = first
            } catch let error as SQLiteError {
                if let refusal = reader.authorizer.refusal {
                    if case .pragma = refusal { throw ProjectionError.notReadOnly }
                    throw ProjectionError.invalidSQL(refusal.message)
                }
                throw ProjectionError.invalidSQL(error.message)
            }
            defer { statement.finalize() }
            guard statement.isReadOnly else { throw ProjectionError.notReadOnly }
            do {
                try statement.bind(params)
            } catch let error as SQLiteError {
                throw ProjectionError.invalidSQL(error.message)
            }
            let columns = (0..<statement.columnCount).map(statement.columnName)
            var rows: [[SQLValue]] = []
            do {
                while try statement.step() {
                    guard rows.count < maxRows else { throw ProjectionError.tooManyRows(limit: maxRows) }
                    rows.append((0..<columns.count).map(statement.column))
                }
            } catch let error as SQLiteError {
                if error.isDeterministic { throw ProjectionError.queryFailed(error.message) }
                throw ProjectionError.storage(operation: "query", error)
            }
            return QueryResult(columns: columns, rows: rows, appliedOp: applied)
        }
    }

    /// The committed client-table entry for `clientID`: its last request
    /// number, the op that carried it and the recorded outcome, or nil when the
    /// client has no session (never seen, or evicted — see `isEvicted`).
    /// Returns nil, and logs, if the table cannot be read.
    public func lastSession(clientID: String) -> RecordedSession? {
        do {
            return try readers.withReader { reader in
                try recordedSession(clientID, reader.connection)
            }
        } catch {
            logger.error("client table read failed", metadata: ["client_id": "\(clientID)", "error": "\(error)"])
            return nil
        }
    }

    /// True when `clientID`'s session was evicted and is still remembered as
    /// such, so its next request will be answered `.sessionExpired`.
    /// - Throws: `ProjectionError.storage`, `.closed`.
    public func isEvicted(clientID: String) throws -> Bool {
        try readers.withReader { reader in
            do {
                return try reader.connection.scalar("SELECT 1 FROM _kmb_evicted_clients WHERE client_id = ?1",
                                                    [.text(clientID)]) != nil
            } catch let error as SQLiteError {
                throw ProjectionError.storage(operation: "read evicted sessions", error)
            }
        }
    }

    /// SHA-256 (lower-case hex) over the schema and the rows of every table —
    /// user tables and the replicated client tables, all but `_kmb_meta` —
    /// read in one snapshot, tables by name and rows sorted by all columns.
    /// Equal digests at the same applied op mean identical replicas.
    /// - Throws: `ProjectionError.storage`, `.closed`.
    public func contentDigest() throws -> String {
        try readers.withReader { reader in
            let db = reader.connection
            do {
                try db.execute("BEGIN")
                defer { try? db.execute("ROLLBACK") }
                var digest = ChunkedDigest()
                var tables: [String] = []
                let schema = try db.prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
                while try schema.step() {
                    for column in 0..<4 { digest.add(schema.column(column)) }
                    if schema.column(0) == .text("table"), case .text(let name) = schema.column(1), name != "_kmb_meta" {
                        tables.append(name)
                    }
                }
                schema.finalize()
                for table in tables {
                    let quoted = "\"" + table.replacingOccurrences(of: "\"", with: "\"\"") + "\""
                    let probe = try db.prepare("SELECT * FROM \(quoted)")
                    let count = probe.columnCount
                    probe.finalize()
                    let order = (1...max(count, 1)).map(String.init).joined(separator: ", ")
                    let rows = try db.prepare("SELECT * FROM \(quoted) ORDER BY \(order)")
                    digest.add(.text(table))
                    var rowCount: Int64 = 0
                    while try rows.step() {
                        for column in 0..<count { digest.add(rows.column(column)) }
                        rowCount += 1
                    }
                    rows.finalize()
                    digest.add(.integer(rowCount))
                }
                return digest.finish().description
            } catch let error as SQLiteError {
                throw ProjectionError.storage(operation: "content digest", error)
            }
        }
    }

    // MARK: - Checkpoints

    /// Writes a consistent copy of the projection to `path` (SQLite's
    /// online backup on connections of its own: it reads one snapshot while
    /// `apply` goes on, so writes do not wait for the copy).
    /// - Returns: the applied op the copy holds and the checksum of that
    ///   entry (the hash-chain anchor; `.zero` at op 0).
    /// - Throws: `ProjectionError.storage` (disk full, I/O) naming the
    ///   operation; `.incompatible` if the copy lacks its metadata. A
    ///   partial file may remain at `path` for the caller to remove.
    public func writeConsistentCopy(to path: String, pacing: CopyPacing = .init()) throws -> (op: OpNumber, anchor: Checksum) {
        guard readers.isOpen else { throw ProjectionError.closed }
        do {
            let source = try SQLiteConnection(path: self.path, flags: SQLITE_OPEN_READONLY)
            defer { source.close() }
            // One read transaction held for the whole copy: every step reads
            // the same snapshot, so writes by apply neither show up in the
            // copy nor restart it (WAL lets apply go on meanwhile).
            try source.execute("BEGIN")
            defer { try? source.execute("ROLLBACK") }
            _ = try source.scalar("SELECT count(*) FROM sqlite_master")
            let destination = try SQLiteConnection(path: path, flags: SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)
            defer { destination.close() }
            // No journal and no syncs of its own: a crash leaves a temporary
            // file that is thrown away; durability comes from the syncs below.
            try destination.execute("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF")
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw SQLiteError(code: SQLITE_CANTOPEN, message: "cannot open \(path) to sync it: errno \(errno)") }
            defer { Glibc.close(fd) }
            guard let backup = sqlite3_backup_init(destination.db, "main", source.db, "main") else {
                throw destination.lastError()
            }
            // In steps, each synced before the next: a large copy never
            // piles up dirty pages whose flush would stall the journal's
            // fsyncs (and with them the replica's heartbeats).
            var stepped: Int32 = SQLITE_OK
            while stepped == SQLITE_OK || stepped == SQLITE_BUSY || stepped == SQLITE_LOCKED {
                stepped = sqlite3_backup_step(backup, pacing.pagesPerStep)
                if fdatasync(fd) != 0 { break }
                if stepped == SQLITE_OK, pacing.pauseMs > 0 { usleep(UInt32(pacing.pauseMs) * 1000) }
            }
            let finished = sqlite3_backup_finish(backup)
            guard stepped == SQLITE_DONE, finished == SQLITE_OK else {
                throw destination.lastError(code: stepped == SQLITE_DONE ? finished : stepped)
            }
            // The copy is a file of its own: no write-ahead log beside it.
            try destination.execute("PRAGMA journal_mode=DELETE")
        } catch let error as SQLiteError {
            throw ProjectionError.storage(operation: "copy the projection to \(path)", error)
        }
        return try Self.readCheckpointMetadata(path: path)
    }

    /// Replaces everything the projection holds by the checkpoint at `path`
    /// (state transfer, DESIGN.md §2b): SQLite's online backup from that
    /// file into the apply connection, one write transaction, so readers see
    /// the old state or the new one, never a mix. The applied op becomes the
    /// checkpoint's.
    /// - Returns: the applied op and anchor the projection now holds.
    /// - Throws: `ProjectionError.incompatible` when the file is not a
    ///   projection of this format (nothing changes), `.storage` when the
    ///   copy fails (SQLite rolls the destination back), `.closed`.
    public func replaceContents(withCheckpointAt path: String) throws -> (op: OpNumber, anchor: Checksum) {
        let incoming = try Self.readCheckpointMetadata(path: path)
        return try applyLock.withLock {
            guard let db = writer else { throw ProjectionError.closed }
            do {
                let source = try SQLiteConnection(path: path, flags: SQLITE_OPEN_READONLY)
                defer { source.close() }
                guard let backup = sqlite3_backup_init(db.db, "main", source.db, "main") else { throw db.lastError() }
                var stepped: Int32 = SQLITE_OK
                while stepped == SQLITE_OK || stepped == SQLITE_BUSY || stepped == SQLITE_LOCKED {
                    stepped = sqlite3_backup_step(backup, -1)
                    if stepped == SQLITE_BUSY || stepped == SQLITE_LOCKED { usleep(1000) }
                }
                let finished = sqlite3_backup_finish(backup)
                guard stepped == SQLITE_DONE, finished == SQLITE_OK else {
                    throw db.lastError(code: stepped == SQLITE_DONE ? finished : stepped)
                }
                // The copy is durable before anyone relies on it (synchronous=NORMAL
                // syncs the WAL only at checkpoints, before copying it into the
                // database). TRUNCATE then cuts the WAL, which holds the whole
                // checkpoint, back to nothing; a reader still on it leaves the
                // WAL as it is (synced all the same), to be reused.
                try db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                guard case .integer(let op)? = try db.scalar("SELECT value FROM _kmb_meta WHERE key = 'applied_op'") else {
                    throw ProjectionError.incompatible("\(self.path) lost its applied_op in the copy from \(path)")
                }
                precondition(OpNumber(bitPattern: op) == incoming.op, "the projection holds the checkpoint's applied op")
            } catch let error as SQLiteError {
                throw ProjectionError.storage(operation: "replace the projection with the checkpoint \(path)", error)
            }
            appliedLock.withLock { appliedOpStorage = incoming.op }
            appliedGauge.record(Int64(bitPattern: incoming.op))
            logger.notice("projection replaced by a checkpoint", metadata: ["path": "\(path)", "applied_op": "\(incoming.op)"])
            return incoming
        }
    }

    /// How `writeConsistentCopy` spreads its writes: pages per step (each
    /// step synced before the next) and a pause between steps, so a
    /// checkpoint's I/O leaves room for the journal's fsyncs.
    public struct CopyPacing: Sendable {
        public var pagesPerStep: Int32
        public var pauseMs: Int
        /// Defaults: 1,024 pages (4 MiB at SQLite's 4 KiB pages) per step, 5 ms between steps.
        public init(pagesPerStep: Int32 = 1024, pauseMs: Int = 5) {
            self.pagesPerStep = pagesPerStep
            self.pauseMs = pauseMs
        }
    }

    /// The applied op and anchor recorded in a projection file (a
    /// checkpoint copy), read without changing it.
    /// - Throws: `ProjectionError.storage` when it cannot be read,
    ///   `.incompatible` when it is not a projection of this format.
    public static func readCheckpointMetadata(path: String) throws -> (op: OpNumber, anchor: Checksum) {
        do {
            let copy = try SQLiteConnection(path: path, flags: SQLITE_OPEN_READONLY)
            defer { copy.close() }
            guard case .integer(let format)? = try copy.scalar("SELECT value FROM _kmb_meta WHERE key = 'format'"),
                  format == formatVersion,
                  case .integer(let op)? = try copy.scalar("SELECT value FROM _kmb_meta WHERE key = 'applied_op'") else {
                throw ProjectionError.incompatible("\(path) is not a projection of format \(formatVersion)")
            }
            var anchor = Checksum.zero
            if case .blob(let bytes)? = try copy.scalar("SELECT value FROM _kmb_meta WHERE key = 'applied_checksum'"), bytes.count == 32 {
                anchor = Checksum(bytes: bytes)
            }
            return (OpNumber(bitPattern: op), anchor)
        } catch let error as SQLiteError {
            throw ProjectionError.storage(operation: "read checkpoint \(path)", error)
        }
    }

    private func readAppliedOp(_ db: SQLiteConnection) throws -> OpNumber {
        do {
            guard case .integer(let op)? = try db.scalar("SELECT value FROM _kmb_meta WHERE key = 'applied_op'") else {
                throw ProjectionError.incompatible("\(path) has no applied_op")
            }
            return OpNumber(bitPattern: op)
        } catch let error as SQLiteError {
            throw ProjectionError.storage(operation: "read applied op", error)
        }
    }
}

/// A read-only connection with the deterministic functions and a user-mode
/// authorizer; kmb_timestamp()/kmb_datetime() fail on it (they name an
/// entry's time, which a read does not have).
final class ReaderConnection {
    let connection: SQLiteConnection
    let authorizer = AuthorizerState()
    private let clock = EntryClock(unavailableReason: "kmb_timestamp() and kmb_datetime() give an entry's time and work only in writes")

    init(path: String) throws {
        connection = try SQLiteConnection(path: path, flags: SQLITE_OPEN_READONLY)
        try DeterministicFunctions.install(on: connection, clock: clock)
        authorizer.install(on: connection)
    }
}

/// Idle read-only connections, reused across calls from any thread.
final class ReaderPool: @unchecked Sendable {
    private let path: String
    private let maxIdle: Int
    private let lock = NSLock()
    private var idle: [ReaderConnection] = []
    private var closed = false

    init(path: String, maxIdle: Int = 4) {
        self.path = path
        self.maxIdle = maxIdle
    }

    var isOpen: Bool { lock.withLock { !closed } }

    /// Runs `body` with a connection of its own (opened when none is idle).
    func withReader<T>(_ body: (ReaderConnection) throws -> T) throws -> T {
        let reader = try acquire()
        defer { release(reader) }
        return try body(reader)
    }

    private func acquire() throws -> ReaderConnection {
        let reused: ReaderConnection? = try lock.withLock {
            guard !closed else { throw ProjectionError.closed }
            return idle.popLast()
        }
        if let reused { return reused }
        do {
            return try ReaderConnection(path: path)
        } catch let error as SQLiteError {
            throw ProjectionError.storage(operation: "open read connection", error)
        }
    }

    private func release(_ reader: ReaderConnection) {
        reader.authorizer.begin(.trusted)
        if !reader.connection.autocommit { try? reader.connection.execute("ROLLBACK") }
        let keep = lock.withLock {
            guard !closed, idle.count < maxIdle else { return false }
            idle.append(reader)
            return true
        }
        if !keep { reader.connection.close() }
    }

    func close() {
        let toClose = lock.withLock {
            closed = true
            defer { idle.removeAll() }
            return idle
        }
        for reader in toClose { reader.connection.close() }
    }
}

/// SHA-256 over a stream of tagged values, folded every megabyte
/// (`running = sha256(running ‖ chunk)`) so memory stays bounded.
struct ChunkedDigest {
    private var running = Checksum.zero
    private var writer = ByteWriter(capacity: 1 << 20)

    mutating func add(_ value: SQLValue) {
        switch value {
        case .null: writer.write(UInt8(0))
        case .integer(let v): writer.write(UInt8(1)); writer.write(v)
        case .real(let v): writer.write(UInt8(2)); writer.write(v.bitPattern)
        case .text(let v): writer.write(UInt8(3)); writer.writeString(v)
        case .blob(let v): writer.write(UInt8(4)); writer.writeBlob(v)
        }
        if writer.bytes.count >= 1 << 20 { fold() }
    }

    private mutating func fold() {
        running = Checksum.sha256(running.bytes + writer.bytes)
        writer = ByteWriter(capacity: 1 << 20)
    }

    mutating func finish() -> Checksum {
        fold()
        return running
    }
}
