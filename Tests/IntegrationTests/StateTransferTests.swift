import Foundation
import KimberliteProjection
import Testing

/// Compaction and state transfer on real processes (DESIGN.md §2b; the
/// guide's "Restore from replica" of a wiped node and "Disk full: … enable
/// log compaction"): a follower wiped with `rm -rf data_dir/*` while the
/// leader has compacted its log past op 1 comes back by receiving a
/// checkpoint, with the very same projection contents, also when the leader
/// dies in the middle of the transfer.
@Suite(.serialized) struct StateTransferTests {
    /// Checkpoints every 10 ops, compaction on, 4 KB segments (many segments to delete).
    static let compacting = "[projections]\ncheckpoint_interval = 10\n[storage]\ncompaction = true\nsegment_size = \"4KB\""

    /// Three nodes with `compacting`, the `items` table created; the leader and one follower.
    static func compactingCluster() async throws -> (cluster: Cluster, leader: Int, follower: Int) {
        let cluster = try Cluster.prepare(nodes: 3)
        cluster.extraConfig = compacting
        do {
            for id in 1...3 { try cluster.restart(id) }
            let leader = try await cluster.waitForLeader()
            _ = try await cluster.executeWithRetry([CorruptionTests.createTable], clientID: "setup", requestNumber: 1)
            return (cluster, leader, [1, 2, 3].first { $0 != leader }!)
        } catch {
            cluster.shutdown()
            throw error
        }
    }

    /// The first op of node `id`'s oldest segment file (nil: no segment).
    static func firstSegmentOp(_ cluster: Cluster, _ id: Int) throws -> Int? {
        try cluster.segments(of: id).first.flatMap { Int(($0 as NSString).lastPathComponent.prefix(20)) }
    }

    /// The projection's content digest, read from the files of a stopped node.
    static func digest(_ dataDir: String) throws -> String {
        let projection = try Projection(directory: dataDir + "/projections")
        defer { projection.close() }
        return try projection.contentDigest()
    }

    /// The guide's wipe: everything under the data directory goes, the directory stays.
    static func wipe(_ dataDir: String) throws {
        for name in try FileManager.default.contentsOfDirectory(atPath: dataDir) {
            try FileManager.default.removeItem(atPath: dataDir + "/" + name)
        }
    }

    static func stateTransferLine(_ cluster: Cluster, _ id: Int) -> String? {
        cluster.log(of: id).split(separator: "\n").first { $0.contains("State transfer from node") }.map(String.init)
    }

    /// The sender named by node `id`'s latest "State transfer from node N" line.
    static func latestSender(_ cluster: Cluster, _ id: Int) -> Int? {
        guard let line = cluster.log(of: id).split(separator: "\n").last(where: { $0.contains("State transfer from node") }),
              let range = line.range(of: #"from node \d+"#, options: .regularExpression) else { return nil }
        return Int(line[range].filter(\.isNumber))
    }

    /// Waits until all three nodes applied the same op, stops them, and
    /// expects one projection content digest on all three.
    static func expectIdenticalProjections(_ cluster: Cluster, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        try await cluster.waitUntil("all three applied the same op") {
            var applied: Set<Double> = []
            for id in 1...3 { applied.insert(await cluster.metric(id, "kmb_projection_applied_position") ?? -1) }
            return applied.count == 1 && !applied.contains(-1)
        }
        for id in 1...3 { _ = try await cluster.stop(id) }
        let digests = try (1...3).map { try digest(cluster.nodes[$0 - 1].dataDir) }
        #expect(Set(digests).count == 1, "projection digests \(digests)", sourceLocation: sourceLocation)
    }

    @Test func aWipedFollowerRecoversByStateTransferFromALeaderThatCompactedItsLog() async throws {
        let (cluster, leader, follower) = try await Self.compactingCluster()
        defer { cluster.shutdown() }
        try await cluster.insertItems((1...60).map { "row-\($0)-" + String(repeating: "x", count: 100) }, clientID: "w")
        try await cluster.waitUntil("the leader compacted its log past op 1") { (try Self.firstSegmentOp(cluster, leader) ?? 1) > 1 }
        let compactedFrom = try #require(try Self.firstSegmentOp(cluster, leader))
        #expect(cluster.log(of: leader).contains("journal compacted"))

        // rm -rf data_dir/* on the follower, then start it with the same flags.
        cluster.kill9(follower)
        try Self.wipe(cluster.nodes[follower - 1].dataDir)
        try cluster.restart(follower)
        try await cluster.waitUntil("the wiped follower is normal again with every row", timeout: .seconds(60)) {
            guard let status = await cluster.status(follower), status["status"] as? String == "normal" else { return false }
            return try await cluster.count("items", on: follower) == 60
        }
        let line = try #require(Self.stateTransferLine(cluster, follower), "no state transfer line in \(cluster.log(of: follower))")
        #expect(line.range(of: #"State transfer from node [123]: checkpoint at op \d+ \([0-9.]+ MB\)"#, options: .regularExpression) != nil,
                "\(line)")
        #expect((await cluster.metric(follower, "kmb_state_transfer_bytes_total") ?? 0) > 0)
        // Its log starts after the checkpoint it received: ops before the
        // leader's compaction point were never sent as entries.
        let followerFirst = try Self.firstSegmentOp(cluster, follower) ?? Int.max
        #expect(followerFirst > 1, "the follower's log starts at op \(followerFirst)")

        // A partial transfer left behind (one cut short, never resumed) goes
        // once the node checkpoints as usual, not to hold its disk space for good.
        let abandoned = cluster.nodes[follower - 1].dataDir + "/projections/incoming/99999-0123456789abcdef.partial"
        #expect(FileManager.default.createFile(atPath: abandoned, contents: Data(repeating: 7, count: 4096)))
        // It takes part as usual: new writes reach it.
        try await cluster.insertItems((61...75).map { "row-\($0)" }, clientID: "w2")
        try await cluster.waitUntil("the follower applies the new rows") { try await cluster.count("items", on: follower) == 75 }
        try await cluster.waitUntil("the abandoned partial transfer is removed") { !FileManager.default.fileExists(atPath: abandoned) }

        // Identical projection contents, read from the files of the stopped nodes.
        try await Self.expectIdenticalProjections(cluster)
        let offline = try await CorruptionTests.verify(cluster.nodes[follower - 1].dataDir)
        #expect(offline.exited && offline.status == 0, "verify of a log that starts at a checkpoint: \(offline)")
        #expect(compactedFrom > 1)
    }

    /// Compaction off (the default): a wiped follower still receives a
    /// checkpoint rather than the whole log replayed (the leader holds the
    /// early ops only on disk, past the 1,024 applied ops it keeps in
    /// memory), and then the log's older segments in the background, until
    /// its journal holds the whole audit log from op 1 again.
    @Test func aWipedFollowerGetsACheckpointThenTheOlderSegmentsWhenCompactionIsOff() async throws {
        let cluster = try Cluster.prepare(nodes: 3)
        cluster.extraConfig = "[projections]\ncheckpoint_interval = 500\n[storage]\nsegment_size = \"16KB\""
        defer { cluster.shutdown() }
        for id in 1...3 { try cluster.restart(id) }
        let leader = try await cluster.waitForLeader()
        let follower = [1, 2, 3].first { $0 != leader }!
        _ = try await cluster.executeWithRetry([CorruptionTests.createTable], clientID: "setup", requestNumber: 1)
        // One op per write: enough ops that op 1 is on the leader's disk only.
        try await cluster.insertItems((1...2_200).map { "row-\($0)" }, clientID: "w")
        try await cluster.waitUntil("a checkpoint past op 1,000 on the leader") {
            (await cluster.metric(leader, "kmb_checkpoint_op") ?? 0) >= 1_000
        }

        cluster.kill9(follower)
        try Self.wipe(cluster.nodes[follower - 1].dataDir)
        try cluster.restart(follower)
        try await cluster.waitUntil("the wiped follower is normal again with every row", timeout: .seconds(60)) {
            guard let status = await cluster.status(follower), status["status"] as? String == "normal" else { return false }
            return try await cluster.count("items", on: follower) == 2_200
        }
        let line = try #require(Self.stateTransferLine(cluster, follower), "no state transfer: \(cluster.log(of: follower).suffix(3000))")
        #expect(line.contains("checkpoint at op"), "\(line)")
        try await cluster.waitUntil("the backfill brought back the log's older segments", timeout: .seconds(60)) {
            try cluster.log(of: follower).contains("Backfill complete") && Self.firstSegmentOp(cluster, follower) == 1
        }
        #expect(!FileManager.default.fileExists(atPath: cluster.nodes[follower - 1].dataDir + "/log-backfill"))
        try await cluster.insertItems((2_201...2_210).map { "row-\($0)" }, clientID: "w2")
        try await cluster.waitUntil("the follower applies the new rows") { try await cluster.count("items", on: follower) == 2_210 }
        // Offline, its log checks whole from op 1, like the leader's.
        try await Self.expectIdenticalProjections(cluster)
        for id in [leader, follower] {
            let report = try await CorruptionTests.verify(cluster.nodes[id - 1].dataDir)
            #expect(report.exited && report.status == 0, "\(report)")
            // Every entry from op 1: as many entries as the last op.
            let summary = report.stdout.split(separator: "\n").last { $0.hasPrefix("verify:") } ?? ""
            let numbers = summary.matches(of: /(\d+) entries, last op (\d+)/).first.map { (Int($0.1)!, Int($0.2)!) }
            #expect(numbers.map { $0.0 == $0.1 && $0.1 >= 2_211 } == true, "node \(id): \(summary)")
        }
    }

    static func fileSize(_ path: String) -> Int {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int ?? 0
    }

    /// The partial checkpoint file on node `id` and its size, once it holds
    /// more than `bytes` (polled every 2 ms, for at most 60 s: a transfer
    /// must be caught in the middle).
    static func partialTransfer(_ cluster: Cluster, _ id: Int, largerThan bytes: Int = 0) async throws -> (path: String, bytes: Int) {
        let directory = cluster.nodes[id - 1].dataDir + "/projections/incoming"
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasSuffix(".partial") {
                let path = directory + "/" + name
                let size = fileSize(path)
                if size > bytes { return (path, size) }
            }
            try await Task.sleep(for: .milliseconds(2))
        }
        throw Cluster.TimedOut(what: "a state transfer to node \(id) past \(bytes) bytes")
    }

    /// The size of the checkpoint offered, from the "(Y MB)" line's `bytes` field.
    static func offeredBytes(_ line: String) -> Int? {
        guard let range = line.range(of: #"bytes[=":]+(\d+)"#, options: .regularExpression) else { return nil }
        return Int(line[range].filter(\.isNumber))
    }

    @Test func aStateTransferResumesAfterTheReceiverIsKilledAndFinishesAfterTheLeaderIsKilled() async throws {
        let (cluster, leader, follower) = try await Self.compactingCluster()
        defer { cluster.shutdown() }
        // About 48 MB of projection in two writes: a transfer that takes long enough to be cut.
        for n in 1...2 {
            let reply = try await cluster.executeWithRetry(
                [("WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 24) INSERT INTO items(name) SELECT zeroblob(1000000) || ? || i FROM k",
                  ["blob-\(n)-"])], clientID: "blobs", requestNumber: n)
            #expect(reply.status == 200, "\(reply.text)")
        }
        // Small writes until the leader has checkpointed twice and compacted.
        var small = 0
        try await cluster.waitUntil("the leader compacted its log past op 1", timeout: .seconds(90)) {
            if (try Self.firstSegmentOp(cluster, leader) ?? 1) > 1 { return true }
            small += 1
            _ = try await cluster.executeWithRetry([("INSERT INTO items(name) VALUES (?)", ["small-\(small)"])], clientID: "small", requestNumber: small)
            return false
        }
        let rows = 48 + small
        cluster.kill9(follower)
        try Self.wipe(cluster.nodes[follower - 1].dataDir)
        try cluster.restart(follower)

        // Kill the receiver in the middle: at its restart it goes on from the bytes it has.
        let first = try await Self.partialTransfer(cluster, follower)
        cluster.kill9(follower)
        let offered = try #require(Self.stateTransferLine(cluster, follower).flatMap(Self.offeredBytes))
        let kept = Self.fileSize(first.path)
        #expect(kept < offered, "the transfer was cut before its end (\(kept) of \(offered) bytes)")
        try cluster.restart(follower)

        // Kill the sender in the middle, once the resumed transfer is under way.
        let atStop = try await Self.partialTransfer(cluster, follower, largerThan: kept).bytes
        let sender = Self.latestSender(cluster, follower) ?? leader
        cluster.signal(sender, SIGSTOP)
        #expect(atStop > kept && atStop < offered, "the resumed transfer was cut before its end (\(atStop) of \(offered) bytes)")
        cluster.kill9(sender)
        let resumed = cluster.log(of: follower).split(separator: "\n").filter { $0.contains("State transfer from node") }.last.map(String.init) ?? ""
        #expect(resumed.contains("resumed_at_bytes"), "the restarted receiver went on from the bytes it kept: \(resumed)")
        try cluster.restart(sender)
        try await cluster.waitUntil("the wiped follower is normal again with all \(rows) rows", timeout: .seconds(90)) {
            guard let status = await cluster.status(follower), status["status"] as? String == "normal" else { return false }
            return try await cluster.count("items", on: follower) == rows
        }
        try await cluster.waitForLeader()
        try await cluster.insertItems(["after-transfer"], clientID: "late")
        try await Self.expectIdenticalProjections(cluster)
        let verify = try await CorruptionTests.verify(cluster.nodes[follower - 1].dataDir)
        #expect(verify.exited && verify.status == 0, "\(verify)")
    }

    @Test func compactOfflineRefusesARunningNodeAndFreesSpaceOnAStoppedOne() async throws {
        let cluster = try Cluster.prepare(nodes: 3)
        cluster.extraConfig = "[projections]\ncheckpoint_interval = 10\n[storage]\nsegment_size = \"4KB\""
        defer { cluster.shutdown() }
        for id in 1...3 { try cluster.restart(id) }
        let leader = try await cluster.waitForLeader()
        _ = try await cluster.executeWithRetry([CorruptionTests.createTable], clientID: "setup", requestNumber: 1)
        try await cluster.insertItems((1...40).map { "row-\($0)-" + String(repeating: "y", count: 100) }, clientID: "w")
        try await cluster.waitUntil("the leader keeps two checkpoints") {
            CheckpointTests.checkpointFiles(cluster, node: leader).filter { $0.hasSuffix(".manifest") }.count == 2
        }
        let dataDir = cluster.nodes[leader - 1].dataDir
        #expect(try Self.firstSegmentOp(cluster, leader) == 1, "compaction is off by default: the whole log is kept")

        // Bad input: a running node's directory is locked (75), and nothing changes.
        let segmentsBefore = try cluster.segments(of: leader)
        let locked = try await Cluster.run(Cluster.adminBinary, ["compact", "--data-dir", dataDir])
        #expect(locked.exited && locked.status == 75 && locked.stderr.contains("locked"), "\(locked)")
        #expect(try cluster.segments(of: leader) == segmentsBefore)

        let rowsBefore = try #require(try await CheckpointTests.rows(cluster, on: leader))
        _ = try await cluster.stop(leader)
        let compacted = try await Cluster.run(Cluster.adminBinary, ["compact", "--data-dir", dataDir])
        #expect(compacted.exited && compacted.status == 0, "\(compacted)")
        #expect(compacted.stdout.contains("compact: freed "), "\(compacted.stdout)")
        let first = try #require(try Self.firstSegmentOp(cluster, leader))
        #expect(first > 1, "segments below the older checkpoint are gone")
        let verify = try await CorruptionTests.verify(dataDir)
        #expect(verify.exited && verify.status == 0, "\(verify)")

        // The node starts from its compacted log and serves every row.
        try cluster.restart(leader)
        try await cluster.waitUntil("the compacted node serves every row again") {
            (try? await CheckpointTests.rows(cluster, on: leader)) == rowsBefore
        }
    }
}
