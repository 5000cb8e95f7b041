import Foundation
import Testing

/// Online backup and restore on real processes (DESIGN.md §2b "Backup and
/// restore"; issue 10: a node restored from an old copy never votes as if it
/// held what it once acknowledged).
@Suite(.serialized) struct BackupRestoreTests {
    static func backup(_ cluster: Cluster, from id: Int, to output: String) async throws -> Cluster.Outcome {
        try await Cluster.run(Cluster.adminBinary, ["backup", "--server", "127.0.0.1:\(cluster.nodes[id - 1].metricsPort)", "--output", output],
                              timeout: .seconds(120))
    }

    static func restore(_ backup: String, into dataDir: String, node id: Int, extra: [String] = []) async throws -> Cluster.Outcome {
        try await Cluster.run(Cluster.adminBinary, ["restore", "--from", backup, "--data-dir", dataDir, "--node-id", "\(id)"] + extra)
    }

    /// The names of the rows inserted through op `op` (op 1 created the table; one row per op after it).
    static func rowsThrough(_ cluster: Cluster, on id: Int, op: Int) async throws -> String? {
        let reply = try await cluster.query(on: id, "SELECT group_concat(name, ',') FROM (SELECT name FROM items WHERE id <= ?1 ORDER BY id)",
                                            params: [op - 1], consistency: "strong")
        return (reply.body["rows"] as? [[Any]])?.first?.first as? String
    }

    static func scratch(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("kmb-\(name)-\(UUID().uuidString.prefix(8))").path
    }

    @Test func anOnlineBackupRestoredIntoANewClusterHoldsTheSameRows() async throws {
        let source = try await Cluster.start(nodes: 3)
        defer { source.shutdown() }
        let leader = try await source.waitForLeader()
        let follower = [1, 2, 3].first { $0 != leader }!
        _ = try await source.executeWithRetry([CorruptionTests.createTable], clientID: "setup", requestNumber: 1)
        try await source.insertItems((1...30).map { "row-\($0)" }, clientID: "w")
        try await source.waitUntil("follower \(follower) applied all 30 rows") { try await source.count("items", on: follower) == 30 }
        let expected = try #require(try await CheckpointTests.rows(source, on: leader))

        let output = Self.scratch("backup")
        defer { try? FileManager.default.removeItem(atPath: output) }
        // Online: writes go on while the backup is taken.
        let writer = Task {
            for n in 1...150 {
                _ = try await source.executeWithRetry([("INSERT INTO items(name) VALUES (?)", ["during-\(n)"])], clientID: "during", requestNumber: n)
            }
        }
        let taken = try await Self.backup(source, from: follower, to: output)
        try await writer.value
        #expect(taken.exited && taken.status == 0, "\(taken)")
        #expect(taken.stdout.contains("backup: node \(follower) of cluster \"\(source.clusterName)\" at op "), "\(taken.stdout)")
        let backupOp = try #require(taken.stdout.split(separator: " ").firstIndex(of: "op").flatMap { Int(taken.stdout.split(separator: " ")[$0 + 1].dropLast()) },
                                    "\(taken.stdout)")
        #expect(backupOp >= 31, "\(taken.stdout)")
        // The backup holds exactly its op's prefix: every row up to it, in op order.
        let expectedAtBackup = try #require(try await Self.rowsThrough(source, on: leader, op: backupOp))
        #expect(taken.stderr.contains("backup: [") && taken.stderr.contains("100%"), "no progress bar: \(taken.stderr)")
        let verified = try await CorruptionTests.verify(output)
        #expect(verified.exited && verified.status == 0, "\(verified)")
        // The node released the backup's checkpoint: a second release finds nothing.
        let again = try await source.http(.DELETE, port: source.nodes[follower - 1].metricsPort, path: "/backup/unknown")
        #expect(again.status == 404, "\(again.text)")

        // A new cluster, every member restored from the backup.
        let target = try Cluster.prepare(nodes: 3)
        defer { target.shutdown() }
        for node in target.nodes {
            let restored = try await Self.restore(output, into: node.dataDir, node: node.id, extra: ["--new-cluster", "--cluster-name", target.clusterName])
            #expect(restored.exited && restored.status == 0, "\(restored)")
        }
        for id in 1...3 { try target.restart(id) }
        _ = try await target.waitForLeader()
        for id in 1...3 {
            try await target.waitUntil("restored node \(id) serves the backup's rows") {
                (try? await CheckpointTests.rows(target, on: id)) == expectedAtBackup
            }
        }
        #expect(expectedAtBackup.hasPrefix(expected), "the backup lost rows acknowledged before it began")
        let write = try await target.executeWithRetry([("INSERT INTO items(name) VALUES ('after-restore')", [])], clientID: "new", requestNumber: 1)
        #expect(write.status == 200 && write.body["op"] as? Int == backupOp + 1, "\(write.text)")
        for id in 1...3 {
            try await target.waitUntil("node \(id) applied the first write of the new cluster") { try await target.count("items", on: id) == backupOp }
        }
    }

    @Test func damagedBackupsAndNonEmptyDirectoriesAreRefusedAndNothingChanges() async throws {
        let (cluster, _) = try await CorruptionTests.singleNode(rows: 10)
        defer { cluster.shutdown() }
        let output = Self.scratch("backup")
        defer { try? FileManager.default.removeItem(atPath: output) }
        let taken = try await Self.backup(cluster, from: 1, to: output)
        #expect(taken.exited && taken.status == 0, "\(taken)")

        // A backup into a non-empty directory writes nothing.
        let occupied = Self.scratch("occupied")
        try FileManager.default.createDirectory(atPath: occupied, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: occupied) }
        try "keep".write(toFile: occupied + "/notes.txt", atomically: true, encoding: .utf8)
        let refused = try await Self.backup(cluster, from: 1, to: occupied)
        #expect(refused.exited && refused.status == 1 && refused.stderr.contains("is not empty"), "\(refused)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: occupied) == ["notes.txt"])

        // A restore into a non-empty directory changes nothing.
        let into = try await Self.restore(output, into: occupied, node: 1)
        #expect(into.exited && into.status == 1 && into.stderr.contains("is not empty"), "\(into)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: occupied) == ["notes.txt"])
        // A node id outside the backed-up membership is refused.
        let stranger = try await Self.restore(output, into: Self.scratch("stranger"), node: 9)
        #expect(stranger.exited && stranger.status == 1 && stranger.stderr.contains("not a member"), "\(stranger)")

        // One flipped byte in a log file of the backup: verify names it, restore refuses it.
        let segment = try #require(try FileManager.default.contentsOfDirectory(atPath: output + "/log").sorted().last)
        let path = output + "/log/" + segment
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[bytes.count - 20] ^= 0x08
        try bytes.write(to: URL(fileURLWithPath: path))
        let found = try await CorruptionTests.verify(output)
        #expect(found.exited && found.status == 1, "\(found)")
        #expect(found.stdout.contains("log/\(segment)"), "\(found.stdout)")
        let fresh = Self.scratch("fresh")
        let damaged = try await Self.restore(output, into: fresh, node: 1)
        #expect(damaged.exited && damaged.status == 1 && damaged.stderr.contains("damaged; nothing was changed"), "\(damaged)")
        #expect(!FileManager.default.fileExists(atPath: fresh), "restore created \(fresh) from a damaged backup")
    }

    /// Issue 10: one node restored from an old backup while the cluster went
    /// on, a second node lagging, then the leader killed. The restored node
    /// must not help elect a leader from the lagging node's shorter log: no
    /// acknowledged row is lost, or the cluster refuses to serve until the
    /// old leader returns.
    @Test func aNodeRestoredFromAnOldBackupNeverVotesAwayAcknowledgedWrites() async throws {
        let cluster = try await ErrorOutcomeTests.clusterWithTable()
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        let followers = [1, 2, 3].filter { $0 != leader }
        let (restored, lagging) = (followers[0], followers[1])
        for n in 1...10 {
            let reply = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("early-\(n)"), clientID: "early", requestNumber: n)
            #expect(reply.status == 200, "\(reply.text)")
        }
        try await cluster.waitUntil("node \(restored) applied the early rows") { try await cluster.count("fate", on: restored) == 10 }
        let output = Self.scratch("old-backup")
        defer { try? FileManager.default.removeItem(atPath: output) }
        let taken = try await Self.backup(cluster, from: restored, to: output)
        #expect(taken.exited && taken.status == 0, "\(taken)")

        // The lagging node misses 20 writes (stopped, so nothing waits for it
        // in a socket buffer), acknowledged by the leader and the node about to be restored.
        let lagged = try await cluster.stop(lagging)
        #expect(lagged.exited, "\(lagged)")
        for n in 1...20 {
            let reply = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("late-\(n)"), clientID: "late", requestNumber: n)
            #expect(reply.status == 200, "\(reply.text)")
        }
        let stopped = try await cluster.stop(restored)
        #expect(stopped.exited, "\(stopped)")
        let dataDir = cluster.nodes[restored - 1].dataDir
        try FileManager.default.removeItem(atPath: dataDir)
        let seeded = try await Self.restore(output, into: dataDir, node: restored)
        #expect(seeded.exited && seeded.status == 0 && seeded.stdout.contains("recovers everything after op"), "\(seeded)")

        // The leader dies before the lagging node can catch up from it.
        cluster.kill9(leader)
        try cluster.restart(lagging)
        try cluster.restart(restored)

        // Whatever the two survivors serve, it is never the old prefix alone;
        // the restored node never leads.
        let watchUntil = ContinuousClock.now + .seconds(4)
        var observed = 0
        while ContinuousClock.now < watchUntil {
            if let status = await cluster.status(restored) {
                observed += 1
                #expect(status["is_leader"] as? Bool != true, "the restored node leads before it recovered: \(status)")
            }
            for id in followers {
                if let count = try? await cluster.count("fate", on: id, consistency: "strong") {
                    #expect(count == 30, "node \(id) served \(count) rows with the leader down: acknowledged writes were lost")
                }
            }
            try await Task.sleep(for: .milliseconds(200))  // poll interval of the watch
        }
        #expect(observed > 0, "the restored node never answered /status during the watch")
        try cluster.restart(leader)
        _ = try await cluster.waitForLeader(timeout: .seconds(60))
        for id in 1...3 {
            try await cluster.waitUntil("node \(id) holds all 30 acknowledged rows", timeout: .seconds(60)) {
                try await cluster.count("fate", on: id) == 30
            }
        }
        let log = cluster.log(of: restored)
        #expect(log.contains("Recovering"), "the restored node did not recover: \(log.suffix(3000))")
        let after = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("after"), clientID: "after", requestNumber: 1)
        #expect(after.status == 200, "\(after.text)")
        for id in 1...3 {
            try await cluster.waitUntil("node \(id) applied the write after recovery") { try await cluster.count("fate", on: id) == 31 }
        }
    }
}

/// The guide's "Restore from backup (if node is leader or quorum lost)",
/// run as written: all nodes stopped, `rsync -av backup/ /var/lib/kimberlite/`
/// on each, the cluster started again.
@Suite(.serialized) struct OfflineRestoreTests {
    static func rsync(_ from: String, _ to: String) async throws {
        let copied = try await Cluster.run("/usr/bin/rsync", ["-av", from + "/", to + "/"])
        #expect(copied.exited && copied.status == 0, "rsync \(from) \(to): \(copied)")
    }

    /// `killed`: the nodes die (kill -9) before the restore instead of
    /// stopping cleanly, leaving write-ahead logs of the later state that
    /// rsync without --delete does not remove.
    @Test(arguments: [false, true])
    func theGuidesOfflineBackupAndRestoreReturnsTheClusterToTheBackupsState(killed: Bool) async throws {
        let cluster = try Cluster.prepare(nodes: 3)
        // Small segments and checkpoints, so files are written after the
        // backup that the restore (rsync without --delete) leaves behind.
        cluster.extraConfig = "[storage]\nsegment_size = \"4KB\"\n\n[projections]\ncheckpoint_interval = 10"
        defer { cluster.shutdown() }
        for id in 1...3 { try cluster.restart(id) }
        _ = try await cluster.waitForLeader()
        _ = try await cluster.executeWithRetry([CorruptionTests.createTable], clientID: "setup", requestNumber: 1)
        try await cluster.insertItems((1...25).map { "row-\($0)" }, clientID: "w")
        for id in 1...3 { try await cluster.waitUntil("node \(id) applied 25 rows") { try await cluster.count("items", on: id) == 25 } }
        let backupRoot = BackupRestoreTests.scratch("offline-backup")
        try FileManager.default.createDirectory(atPath: backupRoot, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: backupRoot) }

        // Backup: every node stopped, each data directory copied.
        for id in 1...3 {
            let stopped = try await cluster.stop(id)
            #expect(stopped.exited && stopped.status == 0, "\(stopped)")
        }
        for node in cluster.nodes { try await Self.rsync(node.dataDir, "\(backupRoot)/node\(node.id)") }
        for id in 1...3 { try cluster.restart(id) }
        let expected = try #require(try await { () async throws -> String? in
            _ = try await cluster.waitForLeader()
            return try await CheckpointTests.rows(cluster, on: try await cluster.waitForLeader())
        }())
        // The cluster goes on: more segments, more checkpoints.
        try await cluster.insertItems((26...60).map { "row-\($0)" }, clientID: "w2")
        for id in 1...3 { try await cluster.waitUntil("node \(id) applied 60 rows") { try await cluster.count("items", on: id) == 60 } }

        // An ordinary kill -9 and restart with many small segments sets nothing aside.
        cluster.kill9(2)
        try cluster.restart(2)
        try await cluster.waitUntil("node 2 restarted and serves 60 rows") { (try? await cluster.count("items", on: 2)) == 60 }
        for id in 1...3 {
            #expect(!cluster.log(of: id).contains("set aside"), "a plain restart set files aside on node \(id)")
        }

        // Restore, as the guide writes it.
        for id in 1...3 {
            if killed {
                cluster.kill9(id)
            } else {
                let stopped = try await cluster.stop(id)
                #expect(stopped.exited && stopped.status == 0, "\(stopped)")
            }
        }
        for node in cluster.nodes { try await Self.rsync("\(backupRoot)/node\(node.id)", node.dataDir) }
        for id in 1...3 { try cluster.restart(id) }
        let leader: Int
        do { leader = try await cluster.waitForLeader(timeout: .seconds(20)) } catch {
            for id in 1...3 { print("NODELOG \(id)", cluster.log(of: id).split(separator: "\n").suffix(25).joined(separator: "\n")) }
            throw error
        }
        for id in 1...3 {
            try await cluster.waitUntil("node \(id) serves the backup's 25 rows", timeout: .seconds(60)) {
                (try? await CheckpointTests.rows(cluster, on: id)) == expected
            }
        }
        // Segments and checkpoints written after the backup were set aside, not taken for damage.
        for id in 1...3 {
            let log = cluster.log(of: id)
            #expect(log.contains("set aside journal segments written after this superblock"), "node \(id): \(log.suffix(2000))")
            #expect(!log.contains("Recovering:"), "node \(id) took the leftover files for lost entries")
        }
        let write = try await cluster.executeWithRetry([("INSERT INTO items(name) VALUES ('after-restore')", [])], clientID: "after", requestNumber: 1)
        #expect(write.status == 200, "\(write.text)")
        for id in 1...3 {
            try await cluster.waitUntil("node \(id) applied the write after the restore") { try await cluster.count("items", on: id) == 26 }
        }
        _ = leader
    }
}
