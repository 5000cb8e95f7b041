import Foundation
import KimberliteCore
@testable import KimberliteProjection

/// A fresh directory under the system temporary directory; the caller removes it.
func makeTemporaryDirectory() -> String {
    let path = FileManager.default.temporaryDirectory
        .appendingPathComponent("kmb-projection-\(UUID().uuidString)").path
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Opens a projection in a temporary directory, runs `body`, closes and removes it.
func withProjection<T>(capacity: Int = 10_000, _ body: (Projection, String) throws -> T) throws -> T {
    let directory = makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let projection = try Projection(directory: directory, clientTableCapacity: capacity)
    defer { projection.close() }
    return try body(projection, directory)
}

/// Builds a hash-chained log the way the primary would, one entry at a time.
struct LogBuilder {
    var op: OpNumber = 0
    var parent = Checksum.zero
    var timeMs: Int64 = 1_700_000_000_000

    mutating func next(_ statements: [SQLStatement], session: ClientSession? = nil, timeMs: Int64? = nil) -> LogEntry {
        next(payload: WriteBatch(statements: statements).encode(), session: session, timeMs: timeMs)
    }

    mutating func next(_ sql: String, _ params: [SQLValue] = [], session: ClientSession? = nil) -> LogEntry {
        next([SQLStatement(sql: sql, params: params)], session: session)
    }

    mutating func next(payload: [UInt8], session: ClientSession? = nil, timeMs: Int64? = nil) -> LogEntry {
        op += 1
        self.timeMs = timeMs ?? self.timeMs + 1
        let entry = LogEntry(op: op, view: 1, timestampMs: self.timeMs, session: session, payload: payload, parent: parent)
        parent = entry.checksum
        return entry
    }
}

extension Projection {
    /// The rows of a read-only query, or a test failure.
    func rows(_ sql: String, _ params: [SQLValue] = []) throws -> [[SQLValue]] {
        try query(sql: sql, params: params, maxRows: 10_000).rows
    }

    func count(_ table: String) throws -> Int64 {
        guard case .integer(let n)? = try rows("SELECT count(*) FROM \(table)").first?.first else { return -1 }
        return n
    }
}

extension ApplyOutcome {
    var failureMessage: String? {
        if case .failed(let message) = self { return message }
        return nil
    }
}
