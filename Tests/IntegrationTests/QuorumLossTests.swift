import Foundation
import Testing

/// The guide's "Recovering from Quorum Loss", steps 1-2, on real processes:
/// two of three nodes lost for good, `kimberlite-admin force-leader` on the
/// survivor, which keeps every acknowledged row; the old members, started
/// again with their old data, are refused and serve nothing.
@Suite(.serialized) struct QuorumLossTests {
    static func forceLeader(_ cluster: Cluster, node id: Int, nodeID: Int? = nil) async throws -> Cluster.Outcome {
        try await Cluster.run(Cluster.adminBinary, ["force-leader", "--node-id", "\(nodeID ?? id)", "--data-dir", cluster.nodes[id - 1].dataDir])
    }

    /// Three nodes with the table and `rows` acknowledged rows, which a
    /// follower (the survivor) applied; then the other two are killed for good.
    static func survivorOfTwoLost(rows: Int) async throws -> (cluster: Cluster, survivor: Int, lost: [Int]) {
        let cluster = try await ErrorOutcomeTests.clusterWithTable()
        do {
            let leader = try await cluster.waitForLeader()
            let survivor = [1, 2, 3].first { $0 != leader }!
            let lost = [1, 2, 3].filter { $0 != survivor }
            for n in 1...rows {
                let reply = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("row-\(n)"), clientID: "w", requestNumber: n)
                #expect(reply.status == 200, "\(reply.text)")
            }
            try await cluster.waitUntil("the survivor applied all \(rows) rows") { try await cluster.count("fate", on: survivor) == rows }
            for id in lost { cluster.kill9(id) }
            return (cluster, survivor, lost)
        } catch {
            cluster.shutdown()
            throw error
        }
    }

    @Test func forceLeaderOnTheSurvivorKeepsEveryAcknowledgedRowAndTheOldMembersAreRefused() async throws {
        let (cluster, survivor, lost) = try await Self.survivorOfTwoLost(rows: 20)
        defer { cluster.shutdown() }

        // Bad input first: a running node's directory is locked (75), and nothing changes.
        let locked = try await Self.forceLeader(cluster, node: survivor)
        #expect(locked.exited && locked.status == 75 && locked.stderr.contains("locked"), "\(locked)")
        let stopped = try await cluster.stop(survivor)
        #expect(stopped.exited && stopped.status == 0, "\(stopped)")
        let wrongID = try await Self.forceLeader(cluster, node: survivor, nodeID: 9)
        #expect(wrongID.exited && wrongID.status == 1 && wrongID.stderr.contains("does not match"), "\(wrongID)")
        let unchanged = try await CorruptionTests.verify(cluster.nodes[survivor - 1].dataDir)
        #expect(unchanged.stdout.contains("epoch 0)"), "force-leader with a wrong id changed the superblock: \(unchanged.stdout)")

        // Step 2 of the guide.
        let forced = try await Self.forceLeader(cluster, node: survivor)
        #expect(forced.exited && forced.status == 0, "\(forced)")
        #expect(forced.stderr.contains("WARNING: FORCE LEADER") && forced.stderr.contains("are LOST"), "no loud warning: \(forced.stderr)")
        try cluster.restart(survivor)  // the very flags it was first started with (all three peers)
        _ = try await cluster.waitForLeader(among: [survivor])
        let status = try #require(await cluster.status(survivor))
        #expect(status["cluster_size"] as? Int == 1 && status["leader_id"] as? Int == survivor, "\(status)")
        #expect(try await cluster.count("fate", on: survivor, consistency: "strong") == 20, "an acknowledged row was lost")
        let listed = try await Cluster.run(Cluster.adminBinary, ["members", "list", "--server", "127.0.0.1:\(cluster.nodes[survivor - 1].metricsPort)"])
        #expect(listed.exited && listed.status == 0, "\(listed)")
        let rows = listed.stdout.split(separator: "\n").dropFirst(2).map { $0.split(separator: " ") }
        #expect(listed.stdout.contains("epoch 1: 1 members") && rows.count == 1 && rows.first?.prefix(2) == ["\(survivor)", "leader"],
                "\(listed.stdout)")
        let write = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("after-force"), clientID: "after", requestNumber: 1)
        #expect(write.status == 200, "\(write.text)")

        // The audit trail: a force_leader entry saying who and which membership it replaced.
        try await cluster.waitUntil("the force_leader entry is in the log") {
            let audit = try await cluster.query(on: survivor, "SELECT kind, detail FROM _kmb_audit", consistency: "strong")
            guard let row = (audit.body["rows"] as? [[Any]])?.first else { return false }
            let detail = row[1] as? String ?? ""
            return row[0] as? String == "force_leader" && detail.contains("\"oldMembers\":[1,2,3]") && detail.contains("\"newEpoch\":1")
        }

        // The old members come back with their old data: refused, serving nothing.
        for id in lost { try cluster.restart(id) }
        for id in lost {
            try await cluster.waitUntil("old member \(id) learns it was left out") {
                cluster.log(of: id).contains("Rejected by leader: epoch 0 is older than the cluster's epoch 1")
            }
        }
        #expect(cluster.log(of: survivor).contains("epoch 0 is older than the cluster's epoch 1"), "the leader does not log the refusal")
        let watchUntil = ContinuousClock.now + .seconds(3)
        while ContinuousClock.now < watchUntil {
            for id in lost {
                let reply = try await cluster.execute(on: id, ErrorOutcomeTests.insert("old-member-\(id)"))
                #expect(reply.status == 503, "old member \(id) answered a write with \(reply.status): \(reply.text)")
                if let status = await cluster.status(id) {
                    #expect(status["status"] as? String == "recovering" && status["leader_id"] as? Int == 0, "\(status)")
                    #expect((status["status_reason"] as? String ?? "").contains("Rejected by leader"), "\(status)")
                }
            }
            try await Task.sleep(for: .milliseconds(250))  // poll interval of the watch
        }
        let read = try await cluster.query(on: lost[0], "SELECT count(*) FROM fate", consistency: "stale")
        #expect(read.status == 503, "an old member served a read: \(read.text)")
        #expect(try await cluster.count("fate", on: survivor, consistency: "strong") == 21)
        // The old members stay out across restarts, even with the forced node
        // down: the two of them never form a quorum of the old membership.
        for id in [survivor] + lost { _ = try await cluster.stop(id) }
        for id in lost {
            let report = try await CorruptionTests.verify(cluster.nodes[id - 1].dataDir, json: true)
            let json = try #require(try JSONSerialization.jsonObject(with: Data(report.stdout.utf8)) as? [String: Any], "\(report.stdout)")
            let superblock = json["superblock"] as? [String: Any] ?? [:]
            #expect(superblock["superseded_by_epoch"] as? Int == 1, "node \(id) forgot it was left out: \(superblock)")
        }
        for id in lost { try cluster.restart(id) }
        for id in lost {
            try await cluster.waitUntil("restarted old member \(id) reports itself left out") {
                guard let status = await cluster.status(id) else { return false }
                return (status["status_reason"] as? String ?? "").contains("Rejected by leader")
            }
        }
        let quietUntil = ContinuousClock.now + .seconds(3)
        while ContinuousClock.now < quietUntil {
            for id in lost {
                let reply = try await cluster.execute(on: id, ErrorOutcomeTests.insert("old-quorum-\(id)"))
                #expect(reply.status == 503, "old members formed a quorum: node \(id) answered \(reply.status): \(reply.text)")
                let status = await cluster.status(id)
                #expect(status?["leader_id"] as? Int ?? 0 == 0, "an old member reports a leader: \(status ?? [:])")
            }
            try await Task.sleep(for: .milliseconds(250))  // poll interval of the watch
        }
    }

    /// Step 3 of the guide: after the force-leader, two fresh nodes (new data
    /// directories, the lost nodes' ids) join the survivor and the cluster
    /// is three again; the old members, started with their old data, are
    /// earlier incarnations of ids now in use and stay out.
    @Test func twoFreshNodesJoinTheForcedLeaderAndTheOldMembersStayOut() async throws {
        let (cluster, survivor, lost) = try await Self.survivorOfTwoLost(rows: 10)
        defer { cluster.shutdown() }
        _ = try await cluster.stop(survivor)
        let forced = try await Self.forceLeader(cluster, node: survivor)
        #expect(forced.exited && forced.status == 0, "\(forced)")
        try cluster.restart(survivor)
        _ = try await cluster.waitForLeader(among: [survivor])

        // kimberlite-server --node-id N --cluster-peers "survivor:7001", one at a time.
        var fresh: [Int] = []
        for (index, id) in lost.enumerated() {
            let slot = JoinTests.joiner(cluster, through: survivor, ["KMB_NODE_ID": "\(id)"])
            try cluster.restart(slot)
            fresh.append(slot)
            try await cluster.waitUntil("cluster_size \(index + 2) at epoch \(index + 2)", timeout: .seconds(60)) {
                let status = await cluster.status(survivor)
                return status?["cluster_size"] as? Int == index + 2 && status?["epoch"] as? Int == index + 2
            }
        }
        try await cluster.waitForLeader(among: [survivor] + fresh)
        let write = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("after-joins"), clientID: "after", requestNumber: 1)
        #expect(write.status == 200, "\(write.text)")
        for slot in fresh {
            try await cluster.waitUntil("fresh node in slot \(slot) holds all 11 rows", timeout: .seconds(40)) {
                try await cluster.count("fate", on: slot) == 11
            }
        }

        // The old members come back with their old data: refused as earlier incarnations, serving nothing.
        for id in lost { try cluster.restart(id) }
        for id in lost {
            try await cluster.waitUntil("old member \(id) is refused", timeout: .seconds(30)) {
                cluster.log(of: id).contains("epoch 0 is older than the cluster's epoch 3")
            }
            let reply = try await cluster.execute(on: id, ErrorOutcomeTests.insert("old-\(id)"))
            #expect(reply.status == 503, "old member \(id) answered a write: \(reply.text)")
            let status = await cluster.status(id)
            #expect(status?["status"] as? String == "recovering" && status?["leader_id"] as? Int == 0, "\(status ?? [:])")
        }
        // The cluster is the survivor and the two fresh nodes, and still writes.
        let status = try #require(await cluster.status(survivor))
        #expect(status["cluster_size"] as? Int == 3 && JoinTests.memberIDs(status) == [1, 2, 3], "\(status)")
        let last = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("last"), clientID: "after", requestNumber: 2)
        #expect(last.status == 200, "\(last.text)")
        #expect(try await cluster.count("fate", on: survivor, consistency: "strong") == 12)
    }
}
