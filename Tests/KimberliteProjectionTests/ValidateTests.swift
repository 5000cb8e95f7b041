import Foundation
import KimberliteCore
import Testing
@testable import KimberliteProjection

@Suite("Validate")
struct ValidateTests {
    static func batch(_ sql: String, _ params: [SQLValue] = []) -> WriteBatch {
        WriteBatch(statements: [SQLStatement(sql: sql, params: params)])
    }

    /// With table t(x, at) in place.
    static func withSchema(_ body: (Projection) throws -> Void) throws {
        try withProjection { projection, _ in
            var log = LogBuilder()
            _ = try projection.apply(log.next("CREATE TABLE t(x, at)"))
            try body(projection)
        }
    }

    @Test(arguments: [
        ("SELECT random()", "random()"),
        ("INSERT INTO t VALUES (randomblob(4), 1)", "randomblob()"),
        ("INSERT INTO t VALUES (RANDOM(), 1)", "random()"),
        ("CREATE TABLE u(a, b DEFAULT CURRENT_TIMESTAMP)", "CURRENT_TIMESTAMP"),
        ("CREATE TABLE u(a DEFAULT current_date)", "CURRENT_DATE"),
        ("INSERT INTO t VALUES (1, CURRENT_TIME)", "CURRENT_TIME"),
        ("INSERT INTO t VALUES (1, datetime('now'))", "datetime('now')"),
        ("INSERT INTO t VALUES (1, datetime( 'NOW' , '+1 day'))", "datetime('now')"),
        ("INSERT INTO t VALUES (1, date())", "date()"),
        ("INSERT INTO t VALUES (1, time())", "time()"),
        ("INSERT INTO t VALUES (1, julianday())", "julianday()"),
        ("INSERT INTO t VALUES (1, unixepoch())", "unixepoch()"),
        ("INSERT INTO t VALUES (1, strftime('%s','now'))", "strftime('now')"),
        ("INSERT INTO t VALUES (1, strftime('%s'))", "strftime() with no time argument"),
        ("INSERT INTO t VALUES (1, datetime('2024-01-01', 'localtime'))", "datetime(…, 'localtime')"),
        ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = random(); END", "random()"),
        ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET at = datetime('now'); END", "datetime('now')"),
        ("CREATE VIEW v AS SELECT date() AS d", "date()"),
        ("ATTACH DATABASE '/tmp/other.db' AS other", "ATTACH"),
        ("DETACH DATABASE other", "DETACH"),
        ("PRAGMA journal_mode=DELETE", "PRAGMA journal_mode = DELETE"),
        ("PRAGMA main.user_version = 3", "PRAGMA user_version = 3"),
        ("PRAGMA foreign_keys(OFF)", "PRAGMA foreign_keys = OFF"),
        ("PRAGMA wal_checkpoint", "PRAGMA wal_checkpoint"),
        ("SELECT total_changes()", "total_changes()"),
        ("SELECT \"random\"()", "random()"),
    ])
    func refusesNondeterministicSQL(sql: String, construct: String) throws {
        try Self.withSchema { projection in
            #expect(throws: ProjectionError.nondeterministic(construct)) { try projection.validate(Self.batch(sql)) }
        }
    }

    @Test(arguments: [
        "INSERT INTO t VALUES (1, datetime('2024-01-01'))",
        "INSERT INTO t VALUES (1, kmb_datetime())",
        "INSERT INTO t VALUES (kmb_timestamp(), strftime('%Y', '2024-06-01', '+1 month'))",
        "INSERT INTO t VALUES ('now', 'random()')",           // literals, not calls
        "INSERT INTO t VALUES (1, 'CURRENT_TIMESTAMP') -- datetime('now') in a comment",
        "/* random() */ UPDATE t SET x = x + 1",
        "PRAGMA table_info(t)",
        "PRAGMA foreign_keys",
        "SELECT date FROM (SELECT 1 AS date)",
        "CREATE TABLE random(a, b)",
        "CREATE TABLE u(a DEFAULT (kmb_datetime()), b TIMESTAMP)",
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET at = kmb_datetime() WHERE rowid = new.rowid; END",
        "INSERT INTO t VALUES (?, datetime(?))",
    ])
    func acceptsDeterministicSQL(sql: String) throws {
        try Self.withSchema { projection in
            let params: [SQLValue] = sql.contains("?") ? [.integer(1), .text("2024-01-01")] : []
            try projection.validate(Self.batch(sql, params))
        }
    }

    @Test func refusesInvalidSQLWithSQLitesMessage() throws {
        try Self.withSchema { projection in
            #expect(throws: ProjectionError.invalidSQL("near \"SELEC\": syntax error")) { try projection.validate(Self.batch("SELEC 1")) }
            #expect(throws: ProjectionError.invalidSQL("no such table: missing")) {
                try projection.validate(Self.batch("INSERT INTO missing VALUES (1)"))
            }
            #expect(throws: ProjectionError.invalidSQL("statement has 2 parameters but 1 were given")) {
                try projection.validate(Self.batch("INSERT INTO t VALUES (?, ?)", [.integer(1)]))
            }
            #expect(throws: ProjectionError.invalidSQL("empty statement")) { try projection.validate(Self.batch("  -- nothing\n ;")) }
            #expect(throws: ProjectionError.invalidSQL("a write needs at least one statement")) {
                try projection.validate(WriteBatch(statements: []))
            }
            for sql in ["SELECT 1; DROP TABLE t", "INSERT INTO t VALUES (1, 2); SELECT random()"] {
                #expect(throws: ProjectionError.self, "\(sql)") { try projection.validate(Self.batch(sql)) }
                do {
                    try projection.validate(Self.batch(sql))
                } catch ProjectionError.invalidSQL(let reason) {
                    #expect(reason.contains("more than one statement"))
                } catch {
                    Issue.record("\(sql): \(error)")
                }
            }
            // A trailing semicolon and comment are fine.
            try projection.validate(Self.batch("INSERT INTO t VALUES (1, 2); -- done"))
            for sql in ["DELETE FROM _kmb_clients", "SELECT * FROM \"_kmb_meta\"", "BEGIN", "COMMIT", "SAVEPOINT s", "VACUUM"] {
                #expect(throws: ProjectionError.self, "\(sql)") { try projection.validate(Self.batch(sql)) }
            }
            #expect(throws: ProjectionError.invalidSQL("access to internal table _kmb_clients is not allowed")) {
                try projection.validate(Self.batch("DELETE FROM _kmb_clients"))
            }
        }
    }

    @Test func acceptsStatementsOnTablesCreatedEarlierInTheBatch() throws {
        try Self.withSchema { projection in
            let batch = WriteBatch(statements: [
                SQLStatement(sql: "CREATE TABLE fresh(a)"),
                SQLStatement(sql: "INSERT INTO fresh VALUES (?)", params: [.integer(1)]),
                SQLStatement(sql: "ALTER TABLE t ADD COLUMN y"),
                SQLStatement(sql: "UPDATE t SET y = 1"),
            ])
            try projection.validate(batch)
            // Without DDL before it, a missing table is invalid.
            let reversed = WriteBatch(statements: [batch.statements[1], batch.statements[0]])
            #expect(throws: ProjectionError.invalidSQL("statement 1: no such table: fresh")) { try projection.validate(reversed) }
            // Nondeterminism is still caught in statements that cannot be prepared yet.
            let sneaky = WriteBatch(statements: [batch.statements[0], SQLStatement(sql: "INSERT INTO fresh VALUES (random())")])
            #expect(throws: ProjectionError.nondeterministic("statement 2: random()")) { try projection.validate(sneaky) }
        }
    }

    @Test func validatedBatchAppliesCleanly() throws {
        try Self.withSchema { projection in
            let batch = WriteBatch(statements: [
                SQLStatement(sql: "CREATE TABLE fresh(a, at DEFAULT (kmb_datetime()))"),
                SQLStatement(sql: "INSERT INTO fresh(a) VALUES (?)", params: [.text("x")]),
            ])
            try projection.validate(batch)
            var log = LogBuilder(op: 1)
            #expect(try projection.apply(log.next(payload: batch.encode(), timeMs: 0)) == .applied([
                StatementResult(rowsAffected: 0, lastInsertRowID: 0), StatementResult(rowsAffected: 1, lastInsertRowID: 1),
            ]))
            #expect(try projection.rows("SELECT a, at FROM fresh") == [[.text("x"), .text("1970-01-01 00:00:00.000")]])
        }
    }
}
