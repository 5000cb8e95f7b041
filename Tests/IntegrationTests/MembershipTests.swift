import Foundation
import Testing

/// Membership changes on real processes (DESIGN.md §2b): `kimberlite-admin
/// members remove` commits a new epoch without a member; a removal that
/// would cost the quorum is refused without `--force`.
@Suite(.serialized) struct MembershipTests {
    static func members(_ cluster: Cluster, _ arguments: [String], via id: Int) async throws -> Cluster.Outcome {
        try await Cluster.run(Cluster.adminBinary, ["members"] + arguments + ["--server", "127.0.0.1:\(cluster.nodes[id - 1].metricsPort)"])
    }

    /// Three nodes with the table; `followers[0]` killed, and the leader reports it down.
    static func clusterWithAFollowerDown() async throws -> (cluster: Cluster, leader: Int, followers: [Int]) {
        let cluster = try await ErrorOutcomeTests.clusterWithTable()
        do {
            let leader = try await cluster.waitForLeader()
            let followers = [1, 2, 3].filter { $0 != leader }
            cluster.kill9(followers[0])
            try await cluster.waitUntil("the leader sees node \(followers[0]) down") {
                let members = await cluster.status(leader)?["cluster_members"] as? [[String: Any]] ?? []
                return members.contains { $0["node_id"] as? Int == followers[0] && $0["state"] as? String == "down" }
            }
            return (cluster, leader, followers)
        } catch {
            cluster.shutdown()
            throw error
        }
    }

    @Test func removingAFollowerShrinksTheClusterAndTheRemovedNodeServesNothing() async throws {
        let cluster = try await ErrorOutcomeTests.clusterWithTable()
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        for n in 1...10 {
            let reply = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("row-\(n)"), clientID: "w", requestNumber: n)
            #expect(reply.status == 200, "\(reply.text)")
        }
        let removed = [1, 2, 3].first { $0 != leader }!
        let kept = [1, 2, 3].filter { $0 != removed }

        // Bad input changes nothing: a node that is not a member.
        let stranger = try await Self.members(cluster, ["remove", "--node-id", "9"], via: removed)
        #expect(stranger.exited && stranger.status == 1 && stranger.stderr.contains("not a member"), "\(stranger)")

        // Asked through the node being removed: the command finds the leader.
        let outcome = try await Self.members(cluster, ["remove", "--node-id", "\(removed)"], via: removed)
        #expect(outcome.exited && outcome.status == 0, "\(outcome)")
        #expect(outcome.stdout.contains("node \(removed) removed") && outcome.stdout.contains("epoch 1"), "\(outcome.stdout)")
        for id in kept {
            try await cluster.waitUntil("node \(id) reports 2 members at epoch 1 with a leader", timeout: .seconds(30)) {
                guard let status = await cluster.status(id) else { return false }
                return status["cluster_size"] as? Int == 2 && status["epoch"] as? Int == 1 && (status["leader_id"] as? Int ?? 0) != 0
                    && (status["cluster_members"] as? [[String: Any]])?.compactMap { $0["node_id"] as? Int }.sorted() == kept
            }
        }
        let listed = try await Self.members(cluster, ["list"], via: kept[0])
        #expect(listed.stdout.contains("epoch 1: 2 members"), "\(listed.stdout)")
        // The removed node learns it and serves nothing: recovering, with the reason; writes refused.
        try await cluster.waitUntil("node \(removed) reports that it was removed", timeout: .seconds(30)) {
            guard let status = await cluster.status(removed) else { return false }
            return status["status"] as? String == "recovering" && (status["status_reason"] as? String ?? "").contains("removed from the cluster at epoch 1")
        }
        let refused = try await cluster.execute(on: removed, ErrorOutcomeTests.insert("to-removed"))
        #expect(refused.status == 503, "the removed node answered a write: \(refused.text)")
        // The two members left commit on their own, and the change is audited.
        let after = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("after"), clientID: "w", requestNumber: 11)
        #expect(after.status == 200, "\(after.text)")
        for id in kept {
            try await cluster.waitUntil("node \(id) holds all 11 rows") { try await cluster.count("fate", on: id) == 11 }
        }
        let audit = try await cluster.query(on: kept[0], "SELECT kind, detail FROM _kmb_audit WHERE kind = 'reconfiguration'")
        let rows = audit.body["rows"] as? [[Any]] ?? []
        #expect(rows.count == 1 && (rows.first?[1] as? String ?? "").contains("\"members\":[\(kept[0]),\(kept[1])]"), "\(audit.text)")

        // Restarted with the very flags it first started with, the removed
        // node takes its membership from its superblock: still out.
        cluster.kill9(removed)
        try cluster.restart(removed)
        try await cluster.waitUntil("restarted node \(removed) still reports that it was removed", timeout: .seconds(30)) {
            guard let status = await cluster.status(removed) else { return false }
            return status["status"] as? String == "recovering" && (status["status_reason"] as? String ?? "").contains("removed")
        }
        let stillTwo = await cluster.status(kept[0])
        #expect(stillTwo?["cluster_size"] as? Int == 2, "\(stillTwo ?? [:])")
    }

    @Test func removalThatWouldCostTheQuorumIsRefusedWithoutForce() async throws {
        // One follower is gone; removing the other would leave the leader and
        // the dead one: one live member of the two a quorum needs.
        let (cluster, leader, followers) = try await Self.clusterWithAFollowerDown()
        defer { cluster.shutdown() }
        let refused = try await Self.members(cluster, ["remove", "--node-id", "\(followers[1])"], via: leader)
        #expect(refused.exited && refused.status == 1, "\(refused)")
        #expect(refused.stderr.contains("quorum") && refused.stderr.contains("--force"), "\(refused.stderr)")
        let status = await cluster.status(leader)
        #expect(status?["cluster_size"] as? Int == 3 && status?["epoch"] as? Int == 0, "nothing changed: \(status ?? [:])")
        // Removing the dead one instead leaves two live members: allowed.
        let removed = try await Self.members(cluster, ["remove", "--node-id", "\(followers[0])"], via: leader)
        #expect(removed.exited && removed.status == 0, "\(removed)")
        let write = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("after"), clientID: "w", requestNumber: 1)
        #expect(write.status == 200, "\(write.text)")
    }

    /// `--force` removes a live member even when the members left lack a
    /// quorum of live nodes (etcd's behaviour): the change commits with the
    /// old epoch's quorum, and the new epoch waits for its dead member.
    @Test func forcedRemovalCommitsAndTheClusterWaitsForItsDeadMember() async throws {
        let (cluster, leader, followers) = try await Self.clusterWithAFollowerDown()
        defer { cluster.shutdown() }
        let forced = try await Self.members(cluster, ["remove", "--node-id", "\(followers[1])", "--force"], via: leader)
        #expect(forced.exited && forced.status == 0, "\(forced)")
        try await cluster.waitUntil("epoch 1 with the leader and the dead node") {
            let status = await cluster.status(leader)
            return status?["epoch"] as? Int == 1 && JoinTests.memberIDs(status) == [leader, followers[0]].sorted()
        }
        // Two members, one of them down: no quorum, so no write commits (and none is lost).
        let stuck = try await cluster.execute(on: leader, ErrorOutcomeTests.insert("without-quorum"), clientID: "w", requestNumber: 1)
        #expect(stuck.status != 200, "a write committed without a quorum: \(stuck.text)")
        // The dead member comes back: the two-member cluster elects a leader and writes.
        try cluster.restart(followers[0])
        try await cluster.waitForLeader(among: [leader, followers[0]], timeout: .seconds(60))
        let write = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("after"), clientID: "w", requestNumber: 2)
        #expect(write.status == 200, "\(write.text)")
        try await cluster.waitUntil("both members hold the row") {
            for id in [leader, followers[0]] {
                let reply = try await cluster.query(on: id, "SELECT count(*) FROM fate WHERE name = 'after'", consistency: "stale")
                if (reply.body["rows"] as? [[Any]])?.first?.first as? Int != 1 { return false }
            }
            return true
        }
    }

    /// One change at a time: while a change waits for a quorum (both
    /// followers stopped), a second one is refused with 409 and changes nothing.
    @Test func aSecondChangeWhileOneIsInFlightIs409() async throws {
        let cluster = try await ErrorOutcomeTests.clusterWithTable()
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        let followers = [1, 2, 3].filter { $0 != leader }
        let port = cluster.nodes[leader - 1].metricsPort
        let before = try #require(await cluster.opAndCommit(leader))
        for id in followers { cluster.signal(id, SIGSTOP) }
        defer { for id in followers { cluster.signal(id, SIGCONT) } }
        async let first = cluster.http(.POST, port: port, path: "/members/remove", json: ["node_id": followers[0]], timeout: 30)
        try await cluster.waitUntil("the leader logged the first change", timeout: .seconds(10)) {
            (await cluster.opAndCommit(leader)?.op ?? 0) > before.op
        }
        let second = try await cluster.http(.POST, port: port, path: "/members/remove", json: ["node_id": followers[1]])
        ErrorOutcomeTests.expectRefusal(second, 409, "membership_change_in_progress", "a second change while one is in flight")
        for id in followers { cluster.signal(id, SIGCONT) }
        _ = try? await first
        // Whatever became of the first change, the second changed nothing.
        try await cluster.waitForLeader(among: [1, 2, 3].filter { $0 != followers[0] })
        let members = await cluster.status(followers[1])?["cluster_members"] as? [[String: Any]] ?? []
        #expect(members.contains { $0["node_id"] as? Int == followers[1] }, "the refused change removed node \(followers[1]): \(members)")
    }
}
