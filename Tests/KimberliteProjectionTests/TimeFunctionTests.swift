import Foundation
import Testing
@testable import KimberliteProjection

/// Our date/time replacements against SQLite's own built-ins, on explicit
/// times: the same answers, so replacing them changes nothing but 'now'.
@Suite("Time functions")
struct TimeFunctionTests {
    /// A fixed-seed generator, so a failure replays exactly.
    struct Generator {
        var state: UInt64
        mutating func next(_ bound: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(bound))
        }
    }

    static func pad(_ v: Int, _ w: Int) -> String {
        let s = String(v)
        return String(repeating: "0", count: max(0, w - s.count)) + s
    }

    static func randomTime(_ g: inout Generator) -> String {
        let date = "\(pad(1900 + g.next(250), 4))-\(pad(1 + g.next(12), 2))-\(pad(1 + g.next(28), 2))"
        switch g.next(7) {
        case 0: return "'\(date)'"
        case 1: return "'\(date) \(pad(g.next(24), 2)):\(pad(g.next(60), 2))'"
        case 2: return "'\(date)T\(pad(g.next(24), 2)):\(pad(g.next(60), 2)):\(pad(g.next(60), 2))'"
        case 3: return "'\(date) \(pad(g.next(24), 2)):\(pad(g.next(60), 2)):\(pad(g.next(60), 2)).\(pad(g.next(1000), 3))'"
        case 4: return "'\(date) \(pad(g.next(24), 2)):\(pad(g.next(60), 2)) \(g.next(2) == 0 ? "+" : "-")\(pad(g.next(12), 2)):\(pad(g.next(4) * 15, 2))'"
        case 5: return "\(g.next(4_000_000_000) - 1_000_000_000), 'unixepoch'"
        default: return "\(2_400_000 + g.next(100_000)).\(g.next(1000))"
        }
    }

    static func randomModifier(_ g: inout Generator) -> String {
        let sign = g.next(2) == 0 ? "+" : "-"
        switch g.next(10) {
        case 0: return "'\(sign)\(g.next(1000)) days'"
        case 1: return "'\(sign)\(g.next(100)) hours'"
        case 2: return "'\(sign)\(g.next(5000)) minutes'"
        case 3: return "'\(sign)\(g.next(100000)) seconds'"
        case 4: return "'\(sign)\(g.next(40)) months'"
        case 5: return "'\(sign)\(g.next(30)) years'"
        case 6: return ["'start of month'", "'start of year'", "'start of day'"][g.next(3)]
        case 7: return "'weekday \(g.next(7))'"
        case 8: return "'\(sign)\(g.next(100)).\(g.next(100)) days'"
        default: return "'\(sign)\(g.next(12)).5 hours'"
        }
    }

    @Test func matchSQLiteBuiltinsOnExplicitTimes() throws {
        let builtin = try SQLiteConnection.inMemory()
        let replaced = try SQLiteConnection.inMemory()
        try DeterministicFunctions.install(on: replaced, clock: EntryClock(unavailableReason: "test"))
        func evaluate(_ connection: SQLiteConnection, _ sql: String) throws -> SQLValue {
            let statement = try connection.prepare(sql)
            defer { statement.finalize() }
            return try statement.step() ? statement.column(0) : .null
        }
        var g = Generator(state: 20_240_101)
        var mismatches: [String] = []
        var nonNull = 0
        for _ in 0..<3_000 {
            var arguments = Self.randomTime(&g)
            for _ in 0..<g.next(3) { arguments += ", " + Self.randomModifier(&g) }
            let function = ["date", "time", "datetime", "julianday", "unixepoch", "strftime"][g.next(6)]
            let call = function == "strftime"
                ? "strftime('%Y-%m-%d %H:%M:%S %f %j %w %W %s %%', \(arguments))"
                : "\(function)(\(arguments))"
            let expected = try evaluate(builtin, "SELECT \(call)")
            let got = try evaluate(replaced, "SELECT \(call)")
            if expected != .null { nonNull += 1 }
            if expected != got, mismatches.count < 10 { mismatches.append("\(call): sqlite \(expected), ours \(got)") }
        }
        #expect(mismatches.isEmpty, "\(mismatches.joined(separator: "\n"))")
        // The generated times are mostly valid, so the comparison is about values, not NULLs.
        #expect(nonNull > 2_500, "only \(nonNull) non-NULL results")
    }

    @Test func refuseTheClockAndRandomnessOnEveryCall() throws {
        let replaced = try SQLiteConnection.inMemory()
        try DeterministicFunctions.install(on: replaced, clock: EntryClock(unavailableReason: "no entry"))
        for (sql, message) in [
            ("SELECT date('now')", "nondeterministic function date('now') is not allowed"),
            ("SELECT unixepoch('NOW')", "nondeterministic function unixepoch('now') is not allowed"),
            ("SELECT julianday()", "nondeterministic function julianday() is not allowed"),
            ("SELECT strftime('%s')", "nondeterministic function strftime() with no time argument is not allowed"),
            ("SELECT time('12:00', 'utc')", "nondeterministic modifier 'utc' in time() is not allowed"),
            ("SELECT randomblob(8)", "nondeterministic function randomblob() is not allowed"),
            ("SELECT total_changes()", "nondeterministic function total_changes() is not allowed"),
            ("SELECT kmb_timestamp()", "no entry"),
        ] {
            #expect(throws: SQLiteError(code: 1, message: message)) {
                let statement = try replaced.prepare(sql)
                defer { statement.finalize() }
                _ = try statement.step()
            }
        }
    }
}
