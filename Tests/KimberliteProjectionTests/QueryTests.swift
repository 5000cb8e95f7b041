import Foundation
import KimberliteCore
import Testing
@testable import KimberliteProjection

@Suite("Query")
struct QueryTests {
    @Test func returnsTypedValuesColumnsAndAppliedOp() throws {
        try withProjection { projection, _ in
            var log = LogBuilder()
            _ = try projection.apply(log.next("CREATE TABLE v(i INTEGER, r REAL, s TEXT, b BLOB, n)"))
            let blob: [UInt8] = [0, 1, 2, 0xfe, 0xff]
            _ = try projection.apply(log.next("INSERT INTO v VALUES (?, ?, ?, ?, ?)",
                                              [.integer(.max), .real(0.1), .text("a\u{0}b ✓"), .blob(blob), .null]))
            _ = try projection.apply(log.next("INSERT INTO v VALUES (?, 2, '', ?, 1)", [.integer(.min), .blob([])]))
            let result = try projection.query(sql: "SELECT i, r, s, b, n AS renamed FROM v WHERE i = ? OR i < 0 ORDER BY i DESC",
                                              params: [.integer(.max)], maxRows: 10)
            #expect(result.columns == ["i", "r", "s", "b", "renamed"])
            #expect(result.rows == [
                [.integer(.max), .real(0.1), .text("a\u{0}b ✓"), .blob(blob), .null],
                [.integer(.min), .real(2), .text(""), .blob([]), .integer(1)],
            ])
            #expect(result.appliedOp == 3)
        }
    }

    @Test func refusesWritesAndOtherNonQueries() throws {
        try withProjection { projection, _ in
            var log = LogBuilder()
            _ = try projection.apply(log.next("CREATE TABLE t(x)"))
            for sql in ["INSERT INTO t VALUES (1)", "DELETE FROM t", "CREATE TABLE u(a)", "DROP TABLE t",
                        "PRAGMA journal_mode=DELETE", "PRAGMA user_version = 1"] {
                #expect(throws: ProjectionError.notReadOnly, "\(sql)") { try projection.rows(sql) }
            }
            for sql in ["SELECT * FROM _kmb_meta", "SELECT * FROM _kmb_clients", "BEGIN", "SELECT 1; SELECT 2",
                        "SELEC 1", "", "ATTACH '/etc/passwd' AS p"] {
                #expect(throws: ProjectionError.self, "\(sql)") { try projection.rows(sql) }
            }
            #expect(throws: ProjectionError.invalidSQL("statement has 1 parameters but 0 were given")) { try projection.rows("SELECT ?") }
            #expect(try projection.count("t") == 0)
            // Reading PRAGMAs are queries.
            #expect(try projection.rows("PRAGMA table_info(t)").count == 1)
        }
    }

    @Test func moreThanMaxRowsFailsInsteadOfTruncating() throws {
        try withProjection { projection, _ in
            var log = LogBuilder()
            _ = try projection.apply(log.next("CREATE TABLE t(x)"))
            _ = try projection.apply(log.next("WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < 5) INSERT INTO t SELECT v FROM s"))
            #expect(try projection.query(sql: "SELECT x FROM t", params: [], maxRows: 5).rows.count == 5)
            #expect(throws: ProjectionError.tooManyRows(limit: 4)) {
                try projection.query(sql: "SELECT x FROM t", params: [], maxRows: 4)
            }
        }
    }

    @Test func nondeterministicFunctionsFailInQueriesToo() throws {
        try withProjection { projection, _ in
            #expect(throws: ProjectionError.queryFailed("nondeterministic function datetime('now') is not allowed")) {
                try projection.rows("SELECT datetime('now')")
            }
            #expect(throws: ProjectionError.queryFailed("nondeterministic function date() is not allowed")) {
                try projection.rows("SELECT date()")
            }
            #expect(throws: ProjectionError.queryFailed("nondeterministic function random() is not allowed")) {
                try projection.rows("SELECT random()")
            }
        }
    }

    /// Expected values come from the stock sqlite3 3.40 shell.
    @Test func dateFunctionsComputeExplicitTimesLikeSQLite() throws {
        try withProjection { projection, _ in
            let cases: [(String, SQLValue)] = [
                ("date('2024-01-31','+1 month')", .text("2024-03-02")),
                ("datetime(1700000000,'unixepoch')", .text("2023-11-14 22:13:20")),
                ("julianday('2000-01-01 12:00')", .real(2451545.0)),
                ("strftime('%Y-%m-%d %H:%M:%f %j %w %W %s %J','2024-03-10 13:45:30.250')",
                 .text("2024-03-10 13:45:30.250 070 0 10 1710078330 2460380.073266782")),
                ("unixepoch('2024-01-01')", .integer(1_704_067_200)),
                ("time('12:34:56.789')", .text("12:34:56")),
                ("date('2024-05-15','start of month')", .text("2024-05-01")),
                ("date('2024-05-15','weekday 0')", .text("2024-05-19")),
                ("datetime('2024-01-01T10:00:00+02:00')", .text("2024-01-01 08:00:00")),
                ("datetime('2024-02-29','+1 year')", .text("2025-03-01 00:00:00")),
                ("datetime('2024-01-01 00:00:00','-1 day','+90 minutes')", .text("2023-12-31 01:30:00")),
                ("date(2460000.5)", .text("2023-02-25")),
                ("datetime(1700000000.5,'unixepoch')", .text("2023-11-14 22:13:20")),
                ("date('garbage')", .null),
                ("date(NULL)", .null),
                ("datetime('2024-01-01','+1.5 days')", .text("2024-01-02 12:00:00")),
                ("strftime('%s','1969-12-31 23:59:59.500')", .text("-1")),
                ("unixepoch('1969-12-31 23:59:59.500')", .integer(-1)),
                ("datetime('2024-03-31','-1 month')", .text("2024-03-02 00:00:00")),
                ("date('2023-01-01','start of year','+13 months')", .text("2024-02-01")),
                ("strftime('%W %j','2023-01-01')", .text("00 001")),
                ("date('2024-01-01','weekday 1')", .text("2024-01-01")),
                ("datetime(1700000000,'auto')", .text("2023-11-14 22:13:20")),
                ("datetime('12:30')", .text("2000-01-01 12:30:00")),
                ("date('2024-06-15 10:00','start of day','+2 hours')", .text("2024-06-15")),
                ("date('2024-01-01','bogus modifier')", .null),
            ]
            for (expression, expected) in cases {
                let got = try projection.rows("SELECT \(expression)")
                #expect(got == [[expected]], "\(expression)")
            }
            #expect(throws: ProjectionError.queryFailed("nondeterministic modifier 'localtime' in datetime() is not allowed")) {
                try projection.rows("SELECT datetime('2024-01-01', 'localtime')")
            }
        }
    }

    @Test func queriesSeeConsistentSnapshotsWhileApplying() async throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let projection = try Projection(directory: directory)
        defer { projection.close() }
        var log = LogBuilder()
        _ = try projection.apply(log.next("CREATE TABLE t(x)"))
        let entries = (0..<150).map { i in log.next("INSERT INTO t VALUES (?)", [.integer(Int64(i))]) }
        let writer = Task.detached {
            for entry in entries { _ = try projection.apply(entry) }
        }
        // Every snapshot has exactly one row per applied insert (op 1 made the table).
        var checks = 0
        while checks < 2_000 {
            let result = try projection.query(sql: "SELECT count(*) FROM t", params: [], maxRows: 1)
            #expect(result.rows == [[.integer(Int64(result.appliedOp) - 1)]])
            checks += 1
            if result.appliedOp == 151 { break }
        }
        try await writer.value
        #expect(projection.appliedOp == 151)
        #expect(try projection.count("t") == 150)
    }
}
