import Foundation
import Testing

/// The guide's "Issue 5: Node Won't Join Cluster" on real processes
/// (DESIGN.md §2b "Join"): a node started with a new data directory and
/// `--cluster-peers "host:port"` (no ids) joins through any member; the
/// leader refuses another cluster's node, an id in use and a join while
/// another change is in flight, each with its line, and the refused node
/// stays up in `recovering`.
@Suite(.serialized) struct JoinTests {
    /// A node slot that joins through `through`'s cluster port.
    static func joiner(_ cluster: Cluster, through: Int, _ extra: [String: String] = [:]) -> Int {
        cluster.addNode(["KMB_CLUSTER_PEERS": "127.0.0.1:\(cluster.nodes[through - 1].clusterPort)"].merging(extra) { _, new in new })
    }

    static func memberIDs(_ status: [String: Any]?) -> [Int] {
        ((status?["cluster_members"] as? [[String: Any]]) ?? []).compactMap { $0["node_id"] as? Int }.sorted()
    }

    @Test func aNodeJoinsThroughAFollowerAndHoldsEveryRow() async throws {
        let cluster = try await ErrorOutcomeTests.clusterWithTable()
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        for n in 1...20 {
            let reply = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("row-\(n)"), clientID: "w", requestNumber: n)
            #expect(reply.status == 200, "\(reply.text)")
        }
        // Through a follower: it sends the joiner on to the leader.
        let follower = [1, 2, 3].first { $0 != leader }!
        let joiner = Self.joiner(cluster, through: follower)
        try cluster.restart(joiner)

        // curl http://leader:9090/status | jq '.cluster_size'
        try await cluster.waitUntil("the leader reports cluster_size 4", timeout: .seconds(40)) {
            await cluster.status(leader)?["cluster_size"] as? Int == 4
        }
        // The leader counts the joiner once the change commits; the joiner logs once the answer reaches it.
        try await cluster.waitUntil("the joiner logs that it joined") {
            cluster.log(of: joiner).contains("Joined cluster \(cluster.clusterName) as node 4 at epoch 1")
        }
        try await cluster.waitUntil("the joiner holds every row", timeout: .seconds(40)) {
            try await cluster.count("fate", on: joiner) == 20
        }
        let status = try #require(await cluster.status(joiner))
        #expect(status["cluster_size"] as? Int == 4 && status["epoch"] as? Int == 1 && Self.memberIDs(status) == [1, 2, 3, 4], "\(status)")
        let after = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("after-join"), clientID: "w", requestNumber: 21)
        #expect(after.status == 200, "\(after.text)")
        try await cluster.waitUntil("the joiner applies a write made after it joined") {
            try await cluster.count("fate", on: joiner) == 21
        }
        let audit = try await cluster.query(on: leader, "SELECT detail FROM _kmb_audit WHERE kind = 'reconfiguration'")
        // The audited record holds the runtime's detail: who was added, and where it listens.
        let details = (audit.body["rows"] as? [[Any]] ?? []).compactMap { $0.first as? String }.compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["detail"] as? String
        }
        #expect(details == [#"{"added":4,"address":"127.0.0.1:\#(cluster.nodes[joiner - 1].clusterPort)"}"#], "\(audit.text)")

        // Restarted with the very flags it joined with: a member already, nothing changes.
        cluster.kill9(joiner)
        try cluster.restart(joiner)
        try await cluster.waitForLeader(among: [1, 2, 3, joiner])
        #expect(await cluster.status(leader)?["cluster_size"] as? Int == 4)
        let restartLog = cluster.log(of: joiner)  // the harness starts a new log file with each start
        #expect(restartLog.contains("this data directory is already a member") && !restartLog.contains("Joined cluster"), "\(restartLog)")
        // A founding member restarted learns where node 4 is from its superblock, not from its flags.
        let founder = [1, 2, 3].first { $0 != leader }!
        cluster.kill9(founder)
        try cluster.restart(founder)
        try await cluster.waitUntil("the restarted founder sees node 4 up", timeout: .seconds(40)) {
            let members = await cluster.status(founder)?["cluster_members"] as? [[String: Any]] ?? []
            return members.contains { $0["node_id"] as? Int == joiner && $0["state"] as? String == "up" }
        }
        try await cluster.waitUntil("every member holds all 21 rows", timeout: .seconds(40)) {
            for id in [1, 2, 3, joiner] where try await cluster.count("fate", on: id) != 21 { return false }
            return true
        }

        // The joiner's disk wiped (rm -rf data_dir/*), restarted with its join flags: it is a
        // member already, so it comes back as a wiped member does: recovering before it votes.
        cluster.kill9(joiner)
        try StateTransferTests.wipe(cluster.nodes[joiner - 1].dataDir)
        try cluster.restart(joiner)
        try await cluster.waitUntil("the wiped joiner is a member again with every row", timeout: .seconds(60)) {
            guard let status = await cluster.status(joiner), status["status"] as? String == "normal" else { return false }
            return try await cluster.count("fate", on: joiner) == 21
        }
        let rejoined = cluster.log(of: joiner)
        #expect(rejoined.contains("Joined cluster \(cluster.clusterName) as node 4 at epoch 1") && rejoined.contains("recovering=true"), "\(rejoined.prefix(3000))")
        #expect(rejoined.contains("Recovering complete"), "the wiped member voted without recovering: \(rejoined.prefix(3000))")
        #expect(await cluster.status(leader)?["cluster_size"] as? Int == 4, "the rejoin changed the membership")
    }

    @Test func refusedJoinersStayRecoveringWithTheLineOfTheGuide() async throws {
        let cluster = try await ErrorOutcomeTests.clusterWithTable()
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        let started = ContinuousClock.now
        // Mismatched cluster name, and a node id already in use (node 2, at another address).
        let staging = Self.joiner(cluster, through: leader, ["KMB_CLUSTER_NAME": "staging"])
        let duplicate = Self.joiner(cluster, through: leader, ["KMB_NODE_ID": "2"])
        // A new id that would listen at a member's address.
        let clash = Self.joiner(cluster, through: leader, ["KMB_NODE_ID": "7", "KMB_CLUSTER_ADDRESS": "127.0.0.1:\(cluster.nodes[0].clusterPort)"])
        for slot in [staging, duplicate, clash] { try cluster.restart(slot) }
        let nameLine = "Rejected by leader: cluster name \"staging\" does not match \"\(cluster.clusterName)\""
        let idLine = "Rejected by leader: node id 2 is already a member (127.0.0.1:\(cluster.nodes[1].clusterPort))"
        let clashLine = "Rejected by leader: cluster address 127.0.0.1:\(cluster.nodes[0].clusterPort) is member 1's"
        for (slot, line) in [(staging, nameLine), (duplicate, idLine), (clash, clashLine)] {
            try await cluster.waitUntil("slot \(slot) logs \(line)", timeout: .seconds(30)) { cluster.log(of: slot).contains(line) }
            // Up, and "recovering" with the reason, as the guide's diagnostic shows.
            let status = try #require(await cluster.status(slot))
            #expect(status["status"] as? String == "recovering" && (status["status_reason"] as? String ?? "").contains(line), "\(status)")
            let write = try await cluster.execute(on: slot, ErrorOutcomeTests.insert("via-refused"))
            #expect(write.status == 503, "a refused joiner answered a write: \(write.text)")
        }
        #expect(cluster.log(of: leader).contains("does not match \"\(cluster.clusterName)\""), "the leader does not log the refusal")
        #expect(cluster.log(of: leader).contains("node id 2 is already a member"), "the leader does not log the refusal")
        // It retries with backoff; the refusal is logged at most once every 5 s.
        try await cluster.waitUntil("the refused joiner retried", timeout: .seconds(30)) {
            cluster.log(of: leader).components(separatedBy: "cluster name \"staging\" does not match").count >= 3
        }
        let seconds = Double((ContinuousClock.now - started).components.seconds)
        let lines = cluster.log(of: staging).components(separatedBy: "Rejected by leader").count - 1
        #expect(lines >= 1 && Double(lines) <= seconds / 5 + 1, "\(lines) refusal lines in \(seconds) s")
        // Nothing changed: still three members, and node 2 is still the original.
        let status = try #require(await cluster.status(leader))
        #expect(status["cluster_size"] as? Int == 3 && status["epoch"] as? Int == 0, "\(status)")
        let write = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("still-fine"), clientID: "w", requestNumber: 1)
        #expect(write.status == 200, "\(write.text)")
    }

    @Test func aJoinWhileARemovalIsInFlightWaitsForIt() async throws {
        // Long election timeouts: the leader keeps leading while both followers
        // are stopped (it steps down after election_timeout_max without acknowledgements).
        let cluster = try await ErrorOutcomeTests.clusterWithTable(timeouts: .init(electionMin: "8s", electionMax: "12s"))
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        let followers = [1, 2, 3].filter { $0 != leader }
        let before = try #require(await cluster.opAndCommit(leader))
        for id in followers { cluster.signal(id, SIGSTOP) }
        defer { for id in followers { cluster.signal(id, SIGCONT) } }
        let port = cluster.nodes[leader - 1].metricsPort
        async let removal = cluster.http(.POST, port: port, path: "/members/remove", json: ["node_id": followers[0], "force": true], timeout: 30)
        try await cluster.waitUntil("the leader logged the removal", timeout: .seconds(10)) {
            (await cluster.opAndCommit(leader)?.op ?? 0) > before.op
        }
        let joiner = Self.joiner(cluster, through: leader)
        try cluster.restart(joiner)
        try await cluster.waitUntil("the joiner is refused while the removal is uncommitted", timeout: .seconds(30)) {
            cluster.log(of: joiner).contains("Rejected by leader: 409 membership_change_in_progress")
        }
        #expect(await cluster.status(joiner)?["status"] as? String == "recovering")
        for id in followers { cluster.signal(id, SIGCONT) }
        _ = try? await removal
        // The removal commits (epoch 1, two members); the joiner's retry then gets in at epoch 2.
        try await cluster.waitUntil("the joiner is a member at epoch 2", timeout: .seconds(60)) {
            guard let status = await cluster.status(joiner) else { return false }
            return status["epoch"] as? Int == 2 && Self.memberIDs(status) == [leader, followers[1], joiner].sorted()
        }
        #expect(cluster.log(of: joiner).contains("Joined cluster \(cluster.clusterName) as node 4 at epoch 2"))
        let write = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("after"), clientID: "w", requestNumber: 1)
        #expect(write.status == 200, "\(write.text)")
        try await cluster.waitUntil("the joiner holds the row written after it joined", timeout: .seconds(40)) {
            try await cluster.count("fate", on: joiner) == 1
        }
    }
}
