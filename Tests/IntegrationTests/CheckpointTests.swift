import Foundation
import Testing

/// Projection checkpoints on real processes (DESIGN.md §2b): taken every
/// `checkpoint_interval` ops, checked by `kimberlite-admin verify`, used to
/// rebuild a lost projection, and never used when damaged.
@Suite(.serialized) struct CheckpointTests {
    static func checkpointFiles(_ cluster: Cluster, node id: Int) -> [String] {
        let directory = cluster.nodes[id - 1].dataDir + "/projections/checkpoints"
        return ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
    }

    static func rows(_ cluster: Cluster, on id: Int) async throws -> String? {
        let reply = try await cluster.query(on: id, "SELECT group_concat(name, ',') FROM (SELECT name FROM items ORDER BY id)", consistency: "stale")
        return (reply.body["rows"] as? [[Any]])?.first?.first as? String
    }

    @Test func aDamagedCheckpointIsFoundByVerifyAndTheServerRebuildsFromAnOlderOne() async throws {
        let cluster = try Cluster.prepare(nodes: 3)
        cluster.extraConfig = "[projections]\ncheckpoint_interval = 10"
        defer { cluster.shutdown() }
        for id in 1...3 { try cluster.restart(id) }
        let leader = try await cluster.waitForLeader()
        let follower = [1, 2, 3].first { $0 != leader }!
        _ = try await cluster.executeWithRetry([CorruptionTests.createTable], clientID: "setup", requestNumber: 1)
        try await cluster.insertItems((1...45).map { "row-\($0)" }, clientID: "w")

        // Every node checkpoints on its own, and keeps the two newest.
        try await cluster.waitUntil("every node took a checkpoint at op 40 or later") {
            for id in 1...3 where (await cluster.metric(id, "kmb_checkpoint_op") ?? 0) < 40 { return false }
            return true
        }
        try await cluster.waitUntil("follower \(follower) applied all 45 rows") { try await cluster.count("items", on: follower) == 45 }
        let expected = try #require(try await Self.rows(cluster, on: leader))
        let stopped = try await cluster.stop(follower)
        #expect(stopped.exited && stopped.status == 0, "\(stopped)")
        let dataDir = cluster.nodes[follower - 1].dataDir
        let manifests = Self.checkpointFiles(cluster, node: follower).filter { $0.hasSuffix(".manifest") }
        #expect(manifests.count == 2, "the two newest checkpoints are kept: \(manifests)")
        let newest = try #require(manifests.last.map { String($0.dropLast(".manifest".count)) })
        let older = try #require(manifests.first.map { String($0.dropLast(".manifest".count)) })

        let intact = try await CorruptionTests.verify(dataDir)
        #expect(intact.exited && intact.status == 0, "\(intact)")
        #expect(intact.stdout.contains("2 checkpoints valid (newest at op \(Int(newest)!))"), "\(intact.stdout)")

        // Damage the newest checkpoint: verify names it.
        let victim = dataDir + "/projections/checkpoints/\(newest).sqlite"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: victim))
        bytes[bytes.count / 2] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: victim))
        let found = try await CorruptionTests.verify(dataDir)
        #expect(found.exited && found.status == 1, "\(found)")
        #expect(found.stdout.contains("checkpoint projections/checkpoints/\(newest).sqlite: checkpoint invalid"), "\(found.stdout)")
        #expect(found.stdout.contains("checksum mismatch"), "\(found.stdout)")

        // Lose the projection: the server rebuilds it from the older, intact
        // checkpoint (never the damaged one) and re-applies the log after it.
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: dataDir + "/projections/projection.sqlite" + suffix) }
        try cluster.restart(follower)
        try await cluster.waitUntil("the restarted follower serves all 45 rows again") {
            try await Self.rows(cluster, on: follower) == expected
        }
        let log = cluster.log(of: follower)
        #expect(log.contains("Checksum mismatch: checkpoint is damaged"), "\(log)")
        let rebuilt = log.split(separator: "\n").first { $0.contains("projection rebuilt from checkpoint") }.map(String.init) ?? ""
        #expect(rebuilt.contains("op=\(Int(older)!)") || rebuilt.contains("\"op\":\"\(Int(older)!)\""), "not rebuilt from the older checkpoint \(older): \(rebuilt)")
        #expect((await cluster.metric(follower, "kmb_checksum_failures_total") ?? 0) >= 1)

        // The damaged file is kept aside as evidence and never listed again.
        try await cluster.waitUntil("the damaged checkpoint is moved aside") {
            Self.checkpointFiles(cluster, node: follower).contains("\(newest).sqlite.corrupt")
        }
        // New writes go on and the follower keeps checkpointing.
        try await cluster.insertItems((46...60).map { "row-\($0)" }, clientID: "w2")
        try await cluster.waitUntil("the follower applies the new rows and checkpoints past op 50") {
            guard try await cluster.count("items", on: follower) == 60 else { return false }
            return (await cluster.metric(follower, "kmb_checkpoint_op") ?? 0) >= 50
        }
        #expect(try await Self.rows(cluster, on: follower) == Self.rows(cluster, on: leader))
    }

    /// A projection lost on a node whose log holds more than the apply
    /// thread is handed at once (32 MiB; here 150 entries of four 60 KB
    /// rows, 36 MB): at restart the replica's memory starts at the last
    /// commit, and the driver feeds the projection from the journal a
    /// bounded step at a time. The rebuilt projection is the others' to the
    /// byte.
    @Test func aLostProjectionIsRebuiltFromALogLongerThanTheApplyStep() async throws {
        let cluster = try Cluster.prepare(nodes: 3)
        defer { cluster.shutdown() }
        for id in 1...3 { try cluster.restart(id) }
        let leader = try await cluster.waitForLeader()
        let follower = [1, 2, 3].first { $0 != leader }!
        let create = try await cluster.executeWithRetry([("CREATE TABLE blobs(id INTEGER PRIMARY KEY, body TEXT NOT NULL)", [])],
                                                        clientID: "setup", requestNumber: 1)
        #expect(create.status == 200, "\(create.text)")
        let body = String(repeating: "k", count: 60_000)
        for n in 1...150 {
            let rows = (0..<4).map { ("INSERT INTO blobs(id, body) VALUES (?, ?)", [4 * n + $0, "\(n)" + body] as [Any]) }
            let reply = try await cluster.executeWithRetry(rows, clientID: "big", requestNumber: n)
            #expect(reply.status == 200, "\(reply.text)")
        }
        try await cluster.waitUntil("follower \(follower) applied all 600 rows") { try await cluster.count("blobs", on: follower) == 600 }
        _ = try await cluster.stop(follower)
        let dataDir = cluster.nodes[follower - 1].dataDir
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: dataDir + "/projections/projection.sqlite" + suffix) }
        try cluster.restart(follower)
        try await cluster.waitUntil("the follower rebuilt all 600 rows from its log", timeout: .seconds(60)) {
            guard await cluster.status(follower) != nil else { return false }
            return try await cluster.count("blobs", on: follower) == 600
        }
        #expect(cluster.log(of: follower).contains("applied_op=0") || cluster.log(of: follower).contains("\"applied_op\":\"0\""),
                "the projection was not rebuilt from op 1")
        try await StateTransferTests.expectIdenticalProjections(cluster)
    }
}
