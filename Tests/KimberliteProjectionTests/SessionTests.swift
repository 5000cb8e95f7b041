import Foundation
import KimberliteCore
import Testing
@testable import KimberliteProjection

@Suite("Client sessions")
struct SessionTests {
    @Test func retryOfLastRequestReturnsRecordedOutcomeWithoutApplying() throws {
        try withProjection { projection, _ in
            var log = LogBuilder()
            _ = try projection.apply(log.next("CREATE TABLE t(x UNIQUE)"))
            let c1 = ClientSession(clientID: "client-1", requestNumber: 1)
            let first = try projection.apply(log.next("INSERT INTO t VALUES (?)", [.integer(7)], session: c1))
            #expect(first == .applied([StatementResult(rowsAffected: 1, lastInsertRowID: 1)]))
            let retry = try projection.apply(log.next("INSERT INTO t VALUES (?)", [.integer(7)], session: c1))
            #expect(retry == .duplicate(first, originalOp: 2))
            #expect(try projection.count("t") == 1)
            #expect(projection.appliedOp == 3)

            // A failed request is recorded too, and its retry answers the failure.
            let c2 = ClientSession(clientID: "client-1", requestNumber: 5)
            let failed = try projection.apply(log.next("INSERT INTO t VALUES (7)", session: c2))
            #expect(failed.failureMessage?.contains("UNIQUE") == true)
            #expect(try projection.apply(log.next("INSERT INTO t VALUES (8)", session: c2)) == .duplicate(failed, originalOp: 4))
            #expect(try projection.count("t") == 1)

            // Lower numbers are stale; nothing applied, the session unchanged.
            let stale = try projection.apply(log.next("INSERT INTO t VALUES (9)", session: ClientSession(clientID: "client-1", requestNumber: 2)))
            #expect(stale == .stale(lastRequestNumber: 5))
            #expect(try projection.count("t") == 1)
            let recorded = try #require(projection.lastSession(clientID: "client-1"))
            #expect(recorded.requestNumber == 5 && recorded.lastOp == 4 && recorded.outcome == failed)
            #expect(projection.lastSession(clientID: "nobody") == nil)

            // Gaps are allowed.
            #expect(try projection.apply(log.next("INSERT INTO t VALUES (9)", session: ClientSession(clientID: "client-1", requestNumber: 100))) ==
                .applied([StatementResult(rowsAffected: 1, lastInsertRowID: 2)]))
        }
    }

    @Test func sessionsSurviveReopen() throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var log = LogBuilder()
        let session = ClientSession(clientID: "c", requestNumber: 3)
        var first: ApplyOutcome
        do {
            let projection = try Projection(directory: directory)
            defer { projection.close() }
            _ = try projection.apply(log.next("CREATE TABLE t(x)"))
            first = try projection.apply(log.next("INSERT INTO t VALUES (1)", session: session))
        }
        let reopened = try Projection(directory: directory)
        defer { reopened.close() }
        #expect(try reopened.apply(log.next("INSERT INTO t VALUES (1)", session: session)) == .duplicate(first, originalOp: 2))
        #expect(try reopened.count("t") == 1)
    }

    /// Entries for clients a...e, one request each, then a retry by "a".
    static func evictionLog() -> [LogEntry] {
        var log = LogBuilder()
        var entries = [log.next("CREATE TABLE t(client TEXT)")]
        for client in ["a", "b", "c", "d", "e"] {
            entries.append(log.next("INSERT INTO t VALUES (?)", [.text(client)], session: ClientSession(clientID: client, requestNumber: 1)))
        }
        // A new request from "c" refreshes its last op, so "d" becomes the oldest.
        entries.append(log.next("INSERT INTO t VALUES ('c2')", session: ClientSession(clientID: "c", requestNumber: 2)))
        entries.append(log.next("INSERT INTO t VALUES ('f')", session: ClientSession(clientID: "f", requestNumber: 1)))
        entries.append(log.next("INSERT INTO t VALUES ('a2')", session: ClientSession(clientID: "a", requestNumber: 2)))
        entries.append(log.next("INSERT INTO t VALUES ('d2')", session: ClientSession(clientID: "d", requestNumber: 2)))
        return entries
    }

    @Test func evictsOldestSessionsBeyondCapacityIdenticallyOnEveryReplica() throws {
        let entries = Self.evictionLog()
        var outcomes: [[ApplyOutcome]] = []
        var digests: [String] = []
        for _ in 0..<2 {
            try withProjection(capacity: 3) { projection, _ in
                outcomes.append(try entries.map(projection.apply))
                digests.append(try projection.contentDigest())
                // Capacity 3: after d (op 5) "a" went; after e "b"; after f (op 8) "d" (c was refreshed at op 7).
                #expect(projection.lastSession(clientID: "a") == nil)
                #expect(try projection.isEvicted(clientID: "a"))
                #expect(try projection.isEvicted(clientID: "b"))
                #expect(projection.lastSession(clientID: "c")?.requestNumber == 2)
                #expect(projection.lastSession(clientID: "e")?.requestNumber == 1)
                #expect(try projection.rows("SELECT client FROM t ORDER BY rowid") ==
                    ["a", "b", "c", "d", "e", "c2", "f"].map { [SQLValue.text($0)] })
            }
        }
        let last = outcomes[0]
        #expect(last[8] == .sessionExpired)  // a's next request
        #expect(last[9] == .sessionExpired)  // d was evicted when f arrived
        #expect(outcomes[0] == outcomes[1])
        #expect(digests[0] == digests[1])
    }

    @Test func evictedListIsBounded() throws {
        try withProjection(capacity: 1) { projection, _ in
            var log = LogBuilder()
            for i in 0..<25 {
                _ = try projection.apply(log.next("SELECT 1", session: ClientSession(clientID: "client-\(i)", requestNumber: 1)))
            }
            // Capacity 1: one live session, at most 10 remembered evictions, oldest dropped.
            #expect(projection.lastSession(clientID: "client-24") != nil)
            #expect(try projection.isEvicted(clientID: "client-23"))
            #expect(try projection.isEvicted(clientID: "client-14"))
            #expect(try !projection.isEvicted(clientID: "client-13"))
            // A forgotten client starts a new session.
            #expect(try projection.apply(log.next("SELECT 1", session: ClientSession(clientID: "client-0", requestNumber: 1))) ==
                .applied([StatementResult(rowsAffected: 0, lastInsertRowID: 0)]))
        }
    }
}
