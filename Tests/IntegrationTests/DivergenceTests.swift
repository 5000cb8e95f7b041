import Foundation
import KimberliteCore
import KimberliteProjection
@testable import KimberliteServer
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

    /// A TCP connection to a node's cluster port that speaks the envelope framing.
    final class RawPeer {
        let fd: Int32
        init(port: Int) throws {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard connected == 0 else { throw Cluster.TimedOut(what: "a connection to cluster port \(port)") }
        }
        func send(_ envelope: Envelope) {
            let body = envelope.encode()
            var frame = withUnsafeBytes(of: UInt32(body.count).bigEndian) { Array($0) }
            frame.append(contentsOf: body)
            _ = frame.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        }
        deinit { close(fd) }
    }

    /// An entry whose stored checksum no longer matches its contents (one payload byte flipped in transit).
    static func corruptEntry(op: OpNumber, parent: Checksum) throws -> LogEntry {
        var bytes = LogEntry(op: op, view: 0, timestampMs: 1, session: nil, payload: Array("payload".utf8), parent: parent).encoded()
        bytes[bytes.count - 1] ^= 0xff
        var reader = ByteReader(bytes)
        let entry = try LogEntry.decode(from: &reader)
        try #require(!entry.isIntact)
        return entry
    }

    @Test func handMadeMessagesThatContradictTheLogAreRefusedCountedAndTheReplicaKeepsRunning() async throws {
        let cluster = try await ErrorOutcomeTests.clusterWithTable()
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        let target = cluster.nodes.map(\.id).first { $0 != leader }!
        let status = try #require(await cluster.status(target))
        let view = UInt64(try #require(status["view"] as? Int))
        let op = UInt64(try #require(status["op_number"] as? Int))
        let refusedBefore = await cluster.metric(target, "kmb_peer_messages_refused_total") ?? 0
        let checksumBefore = await cluster.metric(target, "kmb_checksum_failures_total") ?? 0

        // Posing as the leader, on the target's cluster port.
        let peer = try RawPeer(port: cluster.nodes[target - 1].clusterPort)
        peer.send(.hello(.init(clusterName: cluster.clusterName, nodeID: NodeID(leader), clusterAddress: "127.0.0.1:1", clientAddress: "127.0.0.1:1",
                               metricsAddress: "127.0.0.1:1", version: "test", epoch: 0)))
        // A commit beyond the op it reports.
        peer.send(.vsr(.commit(view: view, commit: op + 1_000_000, commitChecksum: .zero, op: op + 5, sequence: 1), epoch: 0))
        // A view change claim whose suffix does not end where it says.
        peer.send(.vsr(.doViewChange(DoViewChange(view: view + 7, logView: view + 9, op: 3, commit: 9, commitChecksum: .zero, suffix: [])), epoch: 0))
        // A prepare whose entry fails its checksum.
        peer.send(.vsr(.prepare(view: view, commit: 0, entries: [try Self.corruptEntry(op: op + 1, parent: .zero)]), epoch: 0))
        try await cluster.waitUntil("node \(target) counts three refused messages", timeout: .seconds(20)) {
            (await cluster.metric(target, "kmb_peer_messages_refused_total") ?? 0) >= refusedBefore + 3
        }
        #expect((await cluster.metric(target, "kmb_checksum_failures_total") ?? 0) >= checksumBefore + 1)
        #expect(cluster.log(of: target).contains("refused a cluster message that contradicts itself"))

        // Nothing changed: it keeps running, in the same view, and follows the real leader.
        #expect(cluster.nodes[target - 1].process?.isRunning == true)
        let after = try #require(await cluster.status(target))
        #expect(after["status"] as? String == "normal" && after["view"] as? Int == Int(view), "\(after)")
        let write = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("after-garbage"), clientID: "writer", requestNumber: 1)
        #expect(write.status == 200, "\(write.text)")
        try await ErrorOutcomeTests.expectExactlyOnce("after-garbage", in: cluster)
    }
}
