import Foundation
import Testing

/// A new data directory cannot tell a brand-new cluster from a wiped disk:
/// it takes part only when every other member reports an empty log too
/// (formation) or after recovering from the leader. Real processes.
@Suite(.serialized)
struct FormationTests {
    static var createTable: (String, [Any]) { ("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL)", []) }

    @Test func newClusterFormsOnlyOnceEveryMemberHasStarted() async throws {
        let cluster = try Cluster.prepare(nodes: 3)
        defer { cluster.shutdown() }
        try cluster.restart(1)
        try cluster.restart(2)
        // Two of three could elect a leader, but neither knows that the third
        // holds nothing: they wait, and say so, instead of guessing.
        do {
            try await cluster.waitUntil("nodes 1 and 2 report that they are waiting") {
                cluster.log(of: 1).contains("has not joined the cluster yet") && cluster.log(of: 2).contains("has not joined the cluster yet")
            }
        } catch {
            // Both ends of each log: the start-up lines and the latest.
            let logs = [1, 2].map { id in
                let log = cluster.log(of: id)
                return "node \(id) (\(log.utf8.count) bytes):\n\(log.prefix(2500))\n…\n\(log.suffix(1000))"
            }
            Issue.record("\(error)\n\(logs.joined(separator: "\n"))")
            return
        }
        // Each formation round in which a node hears the other but not node 3
        // is logged; after each of two such rounds neither has taken part.
        let waiting = "waiting for cluster formation"
        for round in 1...2 {
            try await cluster.waitUntil("nodes 1 and 2 finished formation round \(round) without node 3") {
                [1, 2].allSatisfy { cluster.log(of: $0).components(separatedBy: waiting).count > round }
            }
            for id in [1, 2] {
                let status = await cluster.status(id)
                #expect(status?["status"] as? String == "recovering", "node \(id) took part before formation: \(status ?? [:])")
                let write = try await cluster.execute(on: id, [Self.createTable])
                #expect(write.status == 503, "node \(id) accepted a write before formation: \(write.text)")
            }
        }
        try cluster.restart(3)
        let leader = try await cluster.waitForLeader()
        #expect(cluster.log(of: leader).contains("cluster formed"))
        let created = try await cluster.executeWithRetry([Self.createTable], clientID: "setup", requestNumber: 1)
        #expect(created.status == 200, "\(created.text)")
    }

    @Test func wipedLeaderRecoversInsteadOfLeadingWithAnEmptyLog() async throws {
        let cluster = try await Cluster.start(nodes: 3)
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        _ = try await cluster.executeWithRetry([Self.createTable], clientID: "setup", requestNumber: 1)
        try await cluster.insertItems((1...30).map { "row-\($0)" }, clientID: "w")
        // The leader's whole data directory is lost (a replaced disk, a lost
        // volume) and the node comes straight back, before the others have
        // noticed it was gone: a replica that believed its empty directory
        // would lead its old view with an empty log.
        cluster.kill9(leader)
        try FileManager.default.removeItem(atPath: cluster.nodes[leader - 1].dataDir)
        try cluster.restart(leader)
        try await cluster.waitUntil("the wiped node recovers from the new leader", timeout: .seconds(60)) {
            cluster.log(of: leader).contains("Recovering complete")
        }
        #expect(!cluster.log(of: leader).contains("cluster formed"), "a wiped member formed a new cluster")
        let after = try await cluster.executeWithRetry([("INSERT INTO items(name) VALUES ('after')", [])], clientID: "w", requestNumber: 31)
        #expect(after.status == 200, "\(after.text)")
        let expected = (1...30).map { "row-\($0)" } + ["after"]
        for id in 1...3 {
            try await cluster.waitUntil("node \(id) holds every acknowledged row", timeout: .seconds(40)) {
                let reply = try await cluster.query(on: id, "SELECT name FROM items ORDER BY id", consistency: "stale")
                let names = (reply.body["rows"] as? [[Any]])?.compactMap { $0.first as? String }
                return names == expected
            }
        }
    }
}
