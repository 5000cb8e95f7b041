import Foundation
import Testing

/// Real three-node clusters on loopback. Serialized: each test owns its
/// cluster, and two at once would starve a 2-core machine.
@Suite(.serialized) struct ClusterTests {
    static var createTable: (String, [Any]) { ("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, data BLOB)", []) }

    @Test func formsElectsAndReplicatesWritesThroughAnyNode() async throws {
        let cluster = try await Cluster.start(nodes: 3)
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        let status = try #require(await cluster.status(leader))
        #expect(status["is_leader"] as? Bool == true)
        #expect(status["cluster_size"] as? Int == 3)
        #expect((status["cluster_members"] as? [[String: Any]])?.count == 3)

        _ = try await cluster.executeWithRetry([Self.createTable], clientID: "setup", requestNumber: 1)
        // A write through every node, including followers (forwarded).
        for id in 1...3 {
            let reply = try await cluster.execute(on: id, [("INSERT INTO items(name) VALUES (?)", ["via-\(id)"])])
            #expect(reply.status == 200, "write via node \(id): \(reply.text)")
            #expect(reply.body["op"] as? Int != nil)
        }
        // Strong reads on every node see all three writes.
        for id in 1...3 {
            let reply = try await cluster.query(on: id, "SELECT name FROM items ORDER BY name")
            #expect(reply.status == 200, "\(reply.text)")
            let names = (reply.body["rows"] as? [[Any]])?.compactMap { $0.first as? String }
            #expect(names == ["via-1", "via-2", "via-3"])
        }
        // Stale reads converge on every node once applied.
        try await cluster.waitUntil("stale reads on every node show 3 rows") {
            for id in 1...3 where try await cluster.count("items", on: id) != 3 { return false }
            return true
        }
        // Blobs and 64-bit integers round-trip exactly.
        let blob = ["base64": Data([0, 1, 2, 255]).base64EncodedString()]
        let insert = try await cluster.execute(on: leader, [("INSERT INTO items(name, data) VALUES (?, ?)", ["blob", blob])])
        #expect(insert.status == 200, "\(insert.text)")
        let read = try await cluster.query(on: leader, "SELECT data, 9223372036854775807 FROM items WHERE name = 'blob'")
        #expect(read.text.contains(#"{"base64":"AAEC\/w=="}"#) || read.text.contains(#""base64":"AAEC/w==""#), "\(read.text)")
        #expect(read.text.contains("9223372036854775807"), "\(read.text)")
    }

    @Test func leaderKilledThenNewLeaderServesAndOldLeaderCatchesUp() async throws {
        let cluster = try await Cluster.start(nodes: 3)
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        _ = try await cluster.executeWithRetry([Self.createTable], clientID: "setup", requestNumber: 1)
        try await cluster.insertItems((1...20).map { "before-\($0)" }, clientID: "writer")
        let killedAt = ContinuousClock.now
        cluster.kill9(leader)
        let survivors = [1, 2, 3].filter { $0 != leader }
        let reply = try await cluster.executeWithRetry([("INSERT INTO items(name) VALUES (?)", ["after"])],
                                                       clientID: "writer", requestNumber: 21, nodes: survivors)
        let failover = ContinuousClock.now - killedAt
        print("failover: leader \(leader) killed -> next successful write after \(failover)")
        #expect(reply.status == 200, "\(reply.text)")
        let next = try await cluster.waitForLeader(among: survivors)
        #expect(next != leader)

        try cluster.restart(leader)
        try await cluster.waitUntil("old leader \(leader) catches up", timeout: .seconds(40)) {
            try await cluster.count("items", on: leader) == 21
        }
        // Identical projection contents on all three.
        try await cluster.waitUntil("every node applied all 21 rows") {
            for id in 1...3 where try await cluster.count("items", on: id) != 21 { return false }
            return true
        }
        var contents: [String] = []
        for id in 1...3 {
            let reply = try await cluster.query(on: id, "SELECT id, name FROM items ORDER BY id", consistency: "stale")
            contents.append("\(reply.body["rows"] ?? "none")")
        }
        #expect(Set(contents).count == 1, "projections differ: \(contents)")
    }

    @Test func pausedLeaderNeverServesStaleDataAfterResuming() async throws {
        let cluster = try await Cluster.start(nodes: 3)
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        _ = try await cluster.executeWithRetry([Self.createTable], clientID: "setup", requestNumber: 1)
        _ = try await cluster.executeWithRetry([("INSERT INTO items(name) VALUES ('old')", [])], clientID: "w", requestNumber: 1)
        cluster.signal(leader, SIGSTOP)
        let others = [1, 2, 3].filter { $0 != leader }
        let next = try await cluster.waitForLeader(among: others)
        let write = try await cluster.executeWithRetry([("INSERT INTO items(name) VALUES ('new')", [])], clientID: "w",
                                                       requestNumber: 2, nodes: others)
        #expect(write.status == 200)
        cluster.signal(leader, SIGCONT)
        // Right after resuming, the old leader either refuses (503) or answers
        // with the new row: never the old state.
        for _ in 0..<20 {
            let reply = try await cluster.query(on: leader, "SELECT count(*) FROM items")
            if reply.status == 200 {
                #expect((reply.body["rows"] as? [[Any]])?.first?.first as? Int == 2, "stale strong read: \(reply.text)")
            } else {
                #expect(reply.status == 503, "\(reply.text)")
            }
        }
        // A write sent to the resumed node is either refused or lands exactly once.
        let late = try await cluster.execute(on: leader, [("INSERT INTO items(name) VALUES ('late')", [])], clientID: "w", requestNumber: 3)
        #expect([200, 503, 504].contains(late.status), "\(late.text)")
        try await cluster.waitForLeader()
        let final = try await cluster.query(on: next, "SELECT name FROM items ORDER BY id")
        let names = (final.body["rows"] as? [[Any]])?.compactMap { $0.first as? String } ?? []
        #expect(Array(names.prefix(2)) == ["old", "new"], "\(final.text)")
        #expect(names.filter { $0 == "late" }.count <= 1)
    }

    @Test func quorumLossRefusesWritesThenRecoversWithoutLosingAcknowledgedWrites() async throws {
        let cluster = try await Cluster.start(nodes: 3)
        defer { cluster.shutdown() }
        _ = try await cluster.waitForLeader()
        _ = try await cluster.executeWithRetry([Self.createTable], clientID: "setup", requestNumber: 1)
        var acknowledged = 0
        for n in 1...30 {
            let reply = try await cluster.executeWithRetry([("INSERT INTO items(name) VALUES (?)", ["row-\(n)"])],
                                                           clientID: "w", requestNumber: n)
            if reply.status == 200 { acknowledged += 1 }
        }
        #expect(acknowledged == 30)
        cluster.kill9(1)
        cluster.kill9(2)
        // The survivor must see the loss and refuse writes with 503 "No leader elected".
        try await cluster.waitUntil("survivor reports no leader", timeout: .seconds(20)) {
            let metrics = try await cluster.metrics(3)
            return Cluster.metricValue(metrics, "kmb_consensus_leader") == 0
        }
        let refused = try await cluster.execute(on: 3, [("INSERT INTO items(name) VALUES ('lost?')", [])])
        #expect(refused.status == 503, "\(refused.text)")
        #expect(refused.text.contains("No leader elected"))
        #expect(cluster.log(of: 3).contains("No leader elected"))
        // A survivor that led steps down first; its election timer fires after.
        try await cluster.waitUntil("the survivor logs an election timeout", timeout: .seconds(20)) {
            cluster.log(of: 3).contains("election timeout")
        }
        try cluster.restart(1)
        try cluster.restart(2)
        _ = try await cluster.waitForLeader()
        try await cluster.waitUntil("every node has all acknowledged rows", timeout: .seconds(40)) {
            for id in 1...3 {
                let reply = try await cluster.query(on: id, "SELECT count(*) FROM items WHERE name LIKE 'row-%'", consistency: "stale")
                guard (reply.body["rows"] as? [[Any]])?.first?.first as? Int == 30 else { return false }
            }
            return true
        }
    }

    @Test func retriedRequestNumberIsAppliedOnce() async throws {
        let cluster = try await Cluster.start(nodes: 3)
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        _ = try await cluster.executeWithRetry([("CREATE TABLE counter(n INTEGER)", [])], clientID: "setup", requestNumber: 1)
        let first = try await cluster.execute(on: leader, [("INSERT INTO counter VALUES (1)", [])], clientID: "retry", requestNumber: 7)
        #expect(first.status == 200)
        let firstOp = try #require(first.body["op"] as? Int)
        #expect(firstOp > 0)
        for id in 1...3 {
            let again = try await cluster.execute(on: id, [("INSERT INTO counter VALUES (1)", [])], clientID: "retry", requestNumber: 7)
            #expect(again.status == 200, "\(again.text)")
            #expect(again.body["results"] != nil)
            #expect(again.body["op"] as? Int == firstOp, "a retry answers with the op that first carried it: \(again.text)")
        }
        let lower = try await cluster.execute(on: leader, [("INSERT INTO counter VALUES (1)", [])], clientID: "retry", requestNumber: 6)
        #expect(lower.status == 409)
        #expect(lower.text.contains("stale_request"))
        let count = try await cluster.query(on: leader, "SELECT count(*) FROM counter")
        #expect((count.body["rows"] as? [[Any]])?.first?.first as? Int == 1, "\(count.text)")
    }

    @Test(arguments: ["fsync", "async"])
    func fsyncMetricFollowsSyncMode(_ mode: String) async throws {
        let cluster = try await Cluster.start(nodes: 1, syncMode: mode)
        defer { cluster.shutdown() }
        _ = try await cluster.waitForLeader()
        _ = try await cluster.executeWithRetry([Self.createTable], clientID: "setup", requestNumber: 1)
        for n in 1...5 {
            _ = try await cluster.execute(on: 1, [("INSERT INTO items(name) VALUES (?)", ["r\(n)"])])
        }
        let metrics = try await cluster.metrics(1)
        let count = Cluster.metricValue(metrics, "kmb_fsync_duration_seconds_count") ?? -1
        if mode == "fsync" {
            #expect(count >= 6, "fsync count \(count)")
        } else {
            #expect(count == 0, "fsync count \(count) under async")
        }
        for name in ["kmb_consensus_view", "kmb_consensus_leader", "kmb_consensus_view_changes_total", "kmb_consensus_commits_total",
                     "kmb_projection_lag", "kmb_projection_applied_position", "kmb_write_duration_seconds_count",
                     "kmb_query_duration_seconds_count", "kmb_requests_in_flight", "kmb_checksum_failures_total",
                     "kmb_log_entries_total", "kmb_log_bytes_total", "kmb_log_size_bytes", "kmb_clock_offset_seconds",
                     "kmb_election_timeouts_total"] {
            #expect(Cluster.metricValue(metrics, name) != nil, "metric \(name) missing")
        }
        #expect(metrics.contains(#"kmb_requests_total{method="execute",status="ok"}"#) || metrics.contains(#"kmb_requests_total{status="ok",method="execute"}"#))
    }
}
