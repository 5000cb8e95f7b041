import Foundation
import KimberliteCore
import Testing
@testable import KimberliteProjection

/// Many entries in one transaction must give each entry exactly the outcome,
/// and the projection exactly the contents, that one transaction per entry gives.
@Suite("Batched apply")
struct BatchApplyTests {
    /// A log that exercises every path: successes, a constraint failure, a
    /// statement that ends the transaction itself (OR ROLLBACK), sessions
    /// with a duplicate and a stale retry, eviction (capacity 2), an empty entry.
    static func mixedLog() -> [LogEntry] {
        var log = LogBuilder()
        let a1 = ClientSession(clientID: "a", requestNumber: 1)
        return [
            log.next("CREATE TABLE t(x INTEGER UNIQUE, note TEXT)"),
            log.next("INSERT INTO t VALUES (1, 'one')", session: a1),
            log.next("INSERT INTO t VALUES (1, 'dup')", session: ClientSession(clientID: "b", requestNumber: 1)),
            log.next("INSERT INTO t VALUES (1, 'retry')", session: a1),
            log.next([SQLStatement(sql: "INSERT INTO t VALUES (2, 'two')", params: []),
                      SQLStatement(sql: "INSERT OR ROLLBACK INTO t VALUES (1, 'rolls back')", params: [])]),
            log.next(payload: []),
            log.next("INSERT INTO t VALUES (3, 'three')", session: ClientSession(clientID: "c", requestNumber: 1)),
            log.next("INSERT INTO t VALUES (4, 'four')", session: ClientSession(clientID: "a", requestNumber: 0)),
            log.next("UPDATE t SET note = note || '!' WHERE x = 3"),
        ]
    }

    @Test func batchGivesTheSameOutcomesAndContentsAsOneEntryPerTransaction() throws {
        let log = Self.mixedLog()
        let (single, singleDigest) = try withProjection(capacity: 2) { projection, _ in
            (try log.map { try projection.apply($0) }, try projection.contentDigest())
        }
        let (batched, batchedDigest, applied) = try withProjection(capacity: 2) { projection, _ in
            let first = try projection.apply(Array(log.prefix(2)))
            let rest = try projection.apply(Array(log.dropFirst(2)))
            return (first + rest, try projection.contentDigest(), projection.appliedOp)
        }
        #expect(batched == single)
        #expect(batchedDigest == singleDigest)
        #expect(applied == OpNumber(log.count))
        // The paths were really taken.
        #expect(single[2].failureMessage?.contains("UNIQUE") == true)
        #expect(single[3] == .duplicate(single[1], originalOp: 2))
        #expect(single[4].failureMessage != nil, "OR ROLLBACK fails its entry")
    }

    @Test func batchIsAllOrNothingForReadersAndAcrossReopen() throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var log = LogBuilder()
        let entries = [log.next("CREATE TABLE t(x)")] + (1...50).map { log.next("INSERT INTO t VALUES (?)", [.integer(Int64($0))]) }
        do {
            let projection = try Projection(directory: directory)
            defer { projection.close() }
            #expect(try projection.apply(entries).count == 51)
            #expect(try projection.count("t") == 50)
            // Out of order within a batch: refused, nothing applied.
            let gap = [log.next("INSERT INTO t VALUES (0)"), log.next("INSERT INTO t VALUES (0)")]
            #expect(throws: ProjectionError.self) { try projection.apply([gap[1], gap[0]]) }
            #expect(projection.appliedOp == 51)
        }
        let reopened = try Projection(directory: directory)
        defer { reopened.close() }
        #expect(reopened.appliedOp == 51)
        #expect(try reopened.count("t") == 50)
    }
}
