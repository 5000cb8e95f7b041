import Foundation
import KimberliteCore
import Testing
@testable import KimberliteProjection

@Suite("Apply")
struct ApplyTests {
    @Test func appliesStatementsInOrderWithResults() throws {
        try withProjection { projection, _ in
            var log = LogBuilder()
            #expect(projection.appliedOp == 0)
            let outcome = try projection.apply(log.next([
                SQLStatement(sql: "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INTEGER)"),
                SQLStatement(sql: "INSERT INTO t(name, n) VALUES (?, ?), (?, ?)", params: [.text("a"), .integer(1), .text("b"), .integer(2)]),
                SQLStatement(sql: "UPDATE t SET n = n + 10"),
                SQLStatement(sql: "SELECT * FROM t"),
                SQLStatement(sql: "UPDATE t SET n = 0 WHERE id = 99"),
            ]))
            #expect(outcome == .applied([
                StatementResult(rowsAffected: 0, lastInsertRowID: 0),
                StatementResult(rowsAffected: 2, lastInsertRowID: 2),
                StatementResult(rowsAffected: 2, lastInsertRowID: 2),
                StatementResult(rowsAffected: 0, lastInsertRowID: 2),
                StatementResult(rowsAffected: 0, lastInsertRowID: 2),
            ]))
            #expect(projection.appliedOp == 1)
            #expect(try projection.rows("SELECT name, n FROM t ORDER BY id") == [[.text("a"), .integer(11)], [.text("b"), .integer(12)]])
            // The next entry starts with last_insert_rowid 0, whatever came before.
            #expect(try projection.apply(log.next("DELETE FROM t WHERE name = 'a'")) ==
                .applied([StatementResult(rowsAffected: 1, lastInsertRowID: 0)]))
        }
    }

    @Test func failedStatementRollsBackWholeEntryButAdvances() throws {
        try withProjection { projection, _ in
            var log = LogBuilder()
            _ = try projection.apply(log.next("CREATE TABLE t(x TEXT UNIQUE)"))
            let outcome = try projection.apply(log.next([
                SQLStatement(sql: "INSERT INTO t VALUES ('a')"),
                SQLStatement(sql: "INSERT INTO t VALUES ('a')"),
                SQLStatement(sql: "INSERT INTO t VALUES ('c')"),
            ]))
            let message = try #require(outcome.failureMessage)
            #expect(message.contains("statement 2 of 3"))
            #expect(message.contains("UNIQUE constraint failed: t.x"))
            #expect(projection.appliedOp == 2)
            #expect(try projection.count("t") == 0)
            // The projection keeps working after a failed entry.
            #expect(try projection.apply(log.next("INSERT INTO t VALUES ('a')")) == .applied([StatementResult(rowsAffected: 1, lastInsertRowID: 1)]))
            #expect(try projection.count("t") == 1)
        }
    }

    @Test func conflictClauseThatEndsTheTransactionStillRecordsTheOp() throws {
        try withProjection { projection, _ in
            var log = LogBuilder()
            _ = try projection.apply(log.next("CREATE TABLE t(x UNIQUE)"))
            _ = try projection.apply(log.next("INSERT INTO t VALUES (1)"))
            let outcome = try projection.apply(log.next([
                SQLStatement(sql: "INSERT INTO t VALUES (2)"),
                SQLStatement(sql: "INSERT OR ROLLBACK INTO t VALUES (1)"),
            ], session: ClientSession(clientID: "c", requestNumber: 1)))
            #expect(outcome.failureMessage?.contains("UNIQUE constraint failed") == true)
            #expect(projection.appliedOp == 3)
            #expect(try projection.rows("SELECT x FROM t") == [[.integer(1)]])
            #expect(projection.lastSession(clientID: "c")?.outcome == outcome)
        }
    }

    @Test func reopenKeepsAppliedOpAndData() throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var log = LogBuilder()
        let first = try Projection(directory: directory)
        _ = try first.apply(log.next("CREATE TABLE t(x)"))
        _ = try first.apply(log.next("INSERT INTO t VALUES (1)"))
        _ = try first.apply(log.next("INSERT INTO t VALUES (2)"))
        first.close()
        #expect(throws: ProjectionError.closed) { try first.apply(log.next("INSERT INTO t VALUES (9)")) }

        let reopened = try Projection(directory: directory)
        defer { reopened.close() }
        #expect(reopened.appliedOp == 3)
        #expect(try reopened.rows("SELECT x FROM t ORDER BY x") == [[.integer(1)], [.integer(2)]])
        // No re-apply: op 3 again is out of order; no skip: op 5 is out of order too.
        var replay = LogBuilder()
        for _ in 0..<2 { _ = replay.next("SELECT 1") }
        #expect(throws: ProjectionError.outOfOrder(expected: 4, got: 3)) { try reopened.apply(replay.next("INSERT INTO t VALUES (2)")) }
        var skipping = LogBuilder(op: 4)
        #expect(throws: ProjectionError.outOfOrder(expected: 4, got: 5)) { try reopened.apply(skipping.next("SELECT 1")) }
        var resume = LogBuilder(op: 3)
        #expect(try reopened.apply(resume.next("INSERT INTO t VALUES (3)")) == .applied([StatementResult(rowsAffected: 1, lastInsertRowID: 3)]))
        #expect(reopened.appliedOp == 4)
    }

    @Test func undecodablePayloadFailsAndEmptyPayloadIsNoOp() throws {
        try withProjection { projection, _ in
            var log = LogBuilder()
            #expect(try projection.apply(log.next(payload: [])) == .applied([]))
            let outcome = try projection.apply(log.next(payload: [1, 2, 3]))
            #expect(outcome.failureMessage?.contains("not a write batch") == true)
            #expect(projection.appliedOp == 2)
        }
    }

    @Test func userStatementsCannotTouchInternalTablesOrTransactions() throws {
        try withProjection { projection, _ in
            var log = LogBuilder()
            for sql in ["DELETE FROM _kmb_clients", "UPDATE _KMB_META SET value = 0", "CREATE TABLE _kmb_x(a)",
                        "SELECT * FROM _kmb_evicted_clients"] {
                let outcome = try projection.apply(log.next(sql))
                #expect(outcome.failureMessage?.contains("internal table") == true, "\(sql): \(outcome)")
            }
            for sql in ["BEGIN", "COMMIT", "SAVEPOINT x", "ROLLBACK"] {
                let outcome = try projection.apply(log.next(sql))
                #expect(outcome.failureMessage?.contains("transaction control") == true, "\(sql): \(outcome)")
            }
            let attach = try projection.apply(log.next("ATTACH '/tmp/x.db' AS x"))
            #expect(attach.failureMessage?.contains("ATTACH") == true)
            let pragma = try projection.apply(log.next("PRAGMA journal_mode=DELETE"))
            #expect(pragma.failureMessage?.contains("PRAGMA journal_mode") == true)
            #expect(projection.appliedOp == 10)
            // The internal tables still work.
            #expect(try projection.apply(log.next("SELECT 1", session: ClientSession(clientID: "c", requestNumber: 1))) ==
                .applied([StatementResult(rowsAffected: 0, lastInsertRowID: 0)]))
        }
    }

    @Test func entryTimeIsDeterministic() throws {
        try withProjection { projection, _ in
            var log = LogBuilder()
            _ = try projection.apply(log.next("CREATE TABLE t(ms INTEGER, at TEXT, d TEXT DEFAULT (kmb_datetime()))"))
            _ = try projection.apply(log.next([SQLStatement(sql: "INSERT INTO t(ms, at) VALUES (kmb_timestamp(), kmb_datetime())")],
                                              timeMs: 1_700_000_000_123))
            #expect(try projection.rows("SELECT ms, at, d FROM t") ==
                [[.integer(1_700_000_000_123), .text("2023-11-14 22:13:20.123"), .text("2023-11-14 22:13:20.123")]])
            // In a read there is no entry time.
            #expect(throws: ProjectionError.self) { try projection.rows("SELECT kmb_timestamp()") }
        }
    }

    @Test func connectionStateIsResetPerEntry() throws {
        // changes() and last_insert_rowid() must not depend on whether the
        // replica restarted between entries.
        let entries: [LogEntry] = {
            var log = LogBuilder()
            return [
                log.next("CREATE TABLE t(x)"),
                log.next("CREATE TABLE seen(c, r)"),
                log.next("INSERT INTO t VALUES (1), (2), (3)"),
                log.next("INSERT INTO seen VALUES (changes(), last_insert_rowid())"),
            ]
        }()
        let continuous = makeTemporaryDirectory(), restarted = makeTemporaryDirectory()
        defer {
            try? FileManager.default.removeItem(atPath: continuous)
            try? FileManager.default.removeItem(atPath: restarted)
        }
        let a = try Projection(directory: continuous)
        defer { a.close() }
        for entry in entries { _ = try a.apply(entry) }
        let b1 = try Projection(directory: restarted)
        for entry in entries.prefix(3) { _ = try b1.apply(entry) }
        b1.close()
        let b2 = try Projection(directory: restarted)
        defer { b2.close() }
        _ = try b2.apply(entries[3])
        #expect(try a.rows("SELECT c, r FROM seen") == [[.integer(0), .integer(0)]])
        #expect(try a.contentDigest() == b2.contentDigest())
    }

    @Test func nowSmuggledInParameterFailsIdenticallyEverywhere() throws {
        let entries: [LogEntry] = {
            var log = LogBuilder()
            return [
                log.next("CREATE TABLE t(at TEXT)"),
                log.next("INSERT INTO t VALUES (datetime(?))", [.text("now")]),
                log.next("INSERT INTO t VALUES (datetime(?))", [.text("2024-01-01 10:00")]),
            ]
        }()
        var outcomes: [[ApplyOutcome]] = []
        var digests: [String] = []
        for _ in 0..<2 {
            try withProjection { projection, _ in
                outcomes.append(try entries.map(projection.apply))
                digests.append(try projection.contentDigest())
                #expect(try projection.rows("SELECT at FROM t") == [[.text("2024-01-01 10:00:00")]])
            }
        }
        #expect(outcomes[0][1] == .failed(message: "nondeterministic function datetime('now') is not allowed"))
        #expect(outcomes[0] == outcomes[1])
        #expect(digests[0] == digests[1])
    }

    @Test func currentTimestampKeywordIsAZeroArgumentFunction() throws {
        // Bypassing validate: the replacement function must catch the keyword
        // at insert time, also when it comes from a DEFAULT clause.
        try withProjection { projection, _ in
            var log = LogBuilder()
            #expect(try projection.apply(log.next("CREATE TABLE t(x, at DEFAULT CURRENT_TIMESTAMP, d DEFAULT CURRENT_DATE)")) ==
                .applied([StatementResult(rowsAffected: 0, lastInsertRowID: 0)]))
            let outcome = try projection.apply(log.next("INSERT INTO t(x) VALUES (1)"))
            #expect(outcome.failureMessage?.contains("nondeterministic function CURRENT_") == true, "\(outcome)")
            for (sql, name) in [("SELECT CURRENT_TIME", "CURRENT_TIME"), ("SELECT current_date", "CURRENT_DATE"),
                                ("SELECT CURRENT_TIMESTAMP", "CURRENT_TIMESTAMP")] {
                #expect(throws: ProjectionError.queryFailed("nondeterministic function \(name) is not allowed")) {
                    try projection.rows(sql)
                }
            }
            let random = try projection.apply(log.next("INSERT INTO t(x, at, d) VALUES (random(), 1, 1)"))
            #expect(random.failureMessage == "nondeterministic function random() is not allowed")
            #expect(try projection.count("t") == 0)
        }
    }

    @Test func triggerBodiesUseTheReplacements() throws {
        try withProjection { projection, _ in
            var log = LogBuilder()
            _ = try projection.apply(log.next("CREATE TABLE t(x)"))
            _ = try projection.apply(log.next("CREATE TABLE audit(x, r)"))
            _ = try projection.apply(log.next("CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO audit VALUES (new.x, randomblob(4)); END"))
            let outcome = try projection.apply(log.next("INSERT INTO t VALUES (1)"))
            #expect(outcome.failureMessage == "nondeterministic function randomblob() is not allowed")
            #expect(try projection.count("t") == 0)
        }
    }
}
