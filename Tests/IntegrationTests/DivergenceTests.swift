import Foundation
import KimberliteCore
import KimberliteProjection
import KimberliteStorage
import Logging
import Testing

/// A member whose committed log contradicts the cluster's is found, says so
/// loudly and serves nothing; no node crashes on what it is sent.
@Suite(.serialized) struct DivergenceTests {
    /// Rewrites the last entry of a stopped node's journal with another
    /// statement, re-chaining its checksums so the file itself is valid
    /// (`verify` finds nothing): a forged history only the cluster can expose.
    static func forgeLastEntry(dataDir: String, name: String) throws -> OpNumber {
        let directory = try DataDirectory(path: dataDir)
        let journal = try directory.openJournal(segmentSize: 64 << 20, syncMode: .fsync, logger: Logger(label: "test.forge"))
        defer { journal.close() }
        let log = try journal.loadAll()
        let original = try #require(log.last)
        let payload = WriteBatch(statements: [SQLStatement(sql: "INSERT INTO fate(name) VALUES (?)", params: [.text(name)])]).encode()
        let forged = LogEntry(op: original.op, view: original.view, timestampMs: original.timestampMs, session: original.session,
                              payload: payload, parent: original.parent)
        try journal.truncate(after: original.op - 1)
        try journal.append([forged])
        try journal.sync()
        return original.op
    }

    @Test func memberWithAForgedCommittedEntryDivergesRefusesReadsAndAdminStatusShowsIt() async throws {
        let cluster = try await ErrorOutcomeTests.clusterWithTable()
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        for n in 1...5 {
            let reply = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("row-\(n)"), clientID: "writer", requestNumber: n)
            #expect(reply.status == 200, "\(reply.text)")
        }
        try await cluster.waitUntil("every node applied the five rows") {
            for id in 1...3 where try await cluster.count("fate", on: id) != 5 { return false }
            return true
        }
        let victim = cluster.nodes.map(\.id).first { $0 != leader }!
        let stopped = try await cluster.stop(victim)
        #expect(stopped.exited && stopped.status == 0)
        let forgedOp = try Self.forgeLastEntry(dataDir: cluster.nodes[victim - 1].dataDir, name: "forged")
        let verify = try await Cluster.run(Cluster.adminBinary, ["verify", "--data-dir", cluster.nodes[victim - 1].dataDir])
        #expect(verify.status == 0, "the forged journal is internally consistent: \(verify)")

        try cluster.restart(victim)
        try await cluster.waitUntil("node \(victim) reports diverged", timeout: .seconds(30)) {
            await cluster.status(victim)?["status"] as? String == "diverged"
        }
        let status = try #require(await cluster.status(victim))
        #expect((status["status_reason"] as? String)?.contains("diverged") == true, "\(status)")
        #expect(status["leader_id"] as? Int == 0)
        #expect(cluster.log(of: victim).contains("CRITICAL") || cluster.log(of: victim).contains("critical"),
                "no critical record on node \(victim)")
        #expect(cluster.log(of: victim).contains("diverged"))

        // It refuses reads and writes; the others go on.
        let read = try await cluster.query(on: victim, "SELECT count(*) FROM fate", consistency: "stale")
        ErrorOutcomeTests.expectRefusal(read, 503, "diverged", "stale read on the diverged node")
        let write = try await cluster.execute(on: victim, ErrorOutcomeTests.insert("refused"))
        ErrorOutcomeTests.expectRefusal(write, 503, "diverged", "write on the diverged node")
        let next = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("after"), clientID: "writer", requestNumber: 6,
                                                      nodes: [leader])
        #expect(next.status == 200, "\(next.text)")

        // kimberlite-admin status names it and exits 1.
        let admin = try await Cluster.run(Cluster.adminBinary, ["status", "--server", "127.0.0.1:\(cluster.nodes[leader - 1].metricsPort)"])
        #expect(admin.exited && admin.status == 1, "\(admin)")
        #expect(admin.stderr.contains("node \(victim) DIVERGED"), "\(admin.stderr)")
        #expect(admin.stdout.contains("diverged"), "\(admin.stdout)")

        // Still diverged after a restart; no node crashed.
        _ = try await cluster.stop(victim)
        try cluster.restart(victim)
        try await cluster.waitUntil("node \(victim) reports diverged again after a restart", timeout: .seconds(30)) {
            await cluster.status(victim)?["status"] as? String == "diverged"
        }
        for id in 1...3 {
            #expect(cluster.nodes[id - 1].process?.isRunning == true, "node \(id) is not running")
        }
        print("node \(victim) diverged at op \(forgedOp): \(status["status_reason"] ?? "")")
    }
}
