import Foundation
import KimberliteCore
import KimberliteProjection
import KimberliteStorage
import Logging
import Testing
@testable import KimberliteServer

/// Periodic checkpoints on a real projection and checkpoint directory.
@Suite struct CheckpointerTests {
    /// Appends `count` entries (one insert each) to `projection`, chained onto `parent`.
    static func apply(_ count: Int, to projection: Projection, after parent: inout Checksum) throws {
        for _ in 0..<count {
            let op = projection.appliedOp + 1
            let batch = WriteBatch(statements: [SQLStatement(sql: "INSERT INTO t(n) VALUES (?)", params: [.integer(Int64(op))])])
            let entry = LogEntry(op: op, view: 0, timestampMs: 1_700_000_000_000 + Int64(op), session: nil,
                                 payload: batch.encode(), parent: parent)
            _ = try projection.apply(entry)
            parent = entry.checksum
        }
    }

    /// A checkpoint that falls due while another is being taken is taken as
    /// soon as that one finishes, not at the next write: an idle cluster
    /// would otherwise keep an old checkpoint (and an uncompacted log) forever.
    @Test func aCheckpointDueDuringAnotherIsTakenWithoutAnotherWrite() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kmb-checkpointer-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory + "/projections", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let projection = try Projection(directory: directory + "/projections")
        var parent = Checksum.zero
        let create = LogEntry(op: 1, view: 0, timestampMs: 1_700_000_000_000, session: nil,
                              payload: WriteBatch(statements: [SQLStatement(sql: "CREATE TABLE t(n INTEGER)")]).encode(), parent: parent)
        _ = try projection.apply(create)
        parent = create.checksum
        try Self.apply(4, to: projection, after: &parent)

        let checkpointer = Checkpointer(store: CheckpointStore(dataDir: directory), projection: projection, interval: 5,
                                        newestOp: 0, logger: Logger(label: "test"))
        // While the checkpoint at op 5 is still being taken (this runs on the
        // checkpoint queue before it finishes), five more ops are applied and
        // reported: the next one is due, but one is running.
        let reported = NSLock()
        nonisolated(unsafe) var once = false
        nonisolated(unsafe) var applyError: Error?
        checkpointer.afterCheckpoint = { kept in
            reported.withLock {
                guard !once, kept.first == 5 else { return }
                once = true
                do {
                    try Self.apply(5, to: projection, after: &parent)
                    checkpointer.applied(through: 10)
                } catch { applyError = error }
            }
        }
        checkpointer.applied(through: 5)
        let deadline = ContinuousClock.now + .seconds(30)
        while checkpointer.latestOp < 10 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))  // poll interval
        }
        #expect(applyError == nil)
        #expect(reported.withLock { once }, "the checkpoint at op 5 was taken")
        #expect(checkpointer.latestOp == 10, "the checkpoint due at op 10 was never taken without another write")
    }
}
