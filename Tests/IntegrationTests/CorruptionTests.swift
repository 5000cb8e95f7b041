import Foundation
import Testing

/// Damage to a stopped node's data directory, found by `kimberlite-admin
/// verify` and by the server on restart; torn tails recovered without losing
/// an acknowledged write; graceful stop on SIGTERM/SIGINT. Serialized: each
/// test owns its processes.
@Suite(.serialized) struct CorruptionTests {
    static var createTable: (String, [Any]) { ("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)", []) }

    /// A one-node cluster with `items` holding `rows` acknowledged rows
    /// (`row-1` …), one op each; returns the cluster and the last op.
    static func singleNode(rows: Int) async throws -> (Cluster, Int) {
        let cluster = try await Cluster.start(nodes: 1)
        do {
            _ = try await cluster.waitForLeader()
            let create = try await cluster.executeWithRetry([createTable], clientID: "setup", requestNumber: 1)
            #expect(create.status == 200, "\(create.text)")
            var lastOp = create.body["op"] as? Int ?? 0
            for n in 1...rows {
                let reply = try await cluster.execute(on: 1, [("INSERT INTO items(name) VALUES (?)", ["row-\(n)"])], clientID: "w", requestNumber: n)
                #expect(reply.status == 200, "\(reply.text)")
                lastOp = reply.body["op"] as? Int ?? lastOp
            }
            return (cluster, lastOp)
        } catch {
            cluster.shutdown()
            throw error
        }
    }

    static func verify(_ dataDir: String, json: Bool = false) async throws -> Cluster.Outcome {
        try await Cluster.run(Cluster.adminBinary, ["verify", "--data-dir", dataDir] + (json ? ["--json"] : []))
    }

    // MARK: - Bit flip in a committed entry

    /// Flips one bit in the middle of the body of the middle entry of the
    /// node's last segment; returns the segment's relative name, the damaged
    /// frame's offset and the op it held (counting from the segment's first op).
    static func flipBitInMiddleEntry(_ cluster: Cluster, node id: Int) throws -> (name: String, offset: Int, op: Int) {
        let segment = try #require(try cluster.segments(of: id).last)
        let firstOp = try #require(Int(URL(fileURLWithPath: segment).deletingPathExtension().lastPathComponent))
        let layout = try SegmentFrames(path: segment)
        try #require(layout.frames.count >= 20, "only \(layout.frames.count) frames in \(segment)")
        let index = layout.frames.count / 2
        let victim = layout.frames[index]
        var bytes = layout.bytes
        bytes[victim.offset + 8 + victim.bodyLength / 2] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: segment))
        return ("log/" + URL(fileURLWithPath: segment).lastPathComponent, victim.offset, firstOp + index)
    }

    @Test func flippedBitInACommittedEntryIsNamedByVerifyAndDetectedOnRestart() async throws {
        let (cluster, lastOp) = try await Self.singleNode(rows: 40)
        defer { cluster.shutdown() }
        let dataDir = cluster.nodes[0].dataDir
        let stopped = try await cluster.stop(1)
        #expect(stopped.exited && stopped.status == 0, "SIGTERM exit \(stopped)")

        let intact = try await Self.verify(dataDir)
        #expect(intact.exited && intact.status == 0, "verify of an intact stopped node: \(intact)")
        #expect(intact.stdout.contains("last op \(lastOp)"), "\(intact.stdout)")

        // Flip one bit in the middle of the body of an entry in the middle of the segment.
        #expect(try SegmentFrames(path: try #require(try cluster.segments(of: 1).last)).frames.count == lastOp)
        let damaged = try Self.flipBitInMiddleEntry(cluster, node: 1)
        let name = damaged.name
        let found = try await Self.verify(dataDir)
        #expect(found.exited && found.status == 1, "verify after a bit flip: \(found)")
        let line = found.stdout.split(separator: "\n").first { $0.contains(name) && $0.contains("offset") }
        #expect(line != nil, "verify does not name \(name) and an offset: \(found.stdout)")
        #expect(line?.contains("offset \(damaged.offset)") == true, "expected the damaged frame's offset \(damaged.offset): \(found.stdout)")
        #expect(line?.contains("checksum mismatch") == true, "\(found.stdout)")
        #expect(line?.contains("(op \(damaged.op))") == true, "\(found.stdout)")
        #expect(found.stdout.contains("FAILED"), "\(found.stdout)")

        let json = try await Self.verify(dataDir, json: true)
        #expect(json.exited && json.status == 1, "verify --json: \(json)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any], "\(json.stdout)")
        #expect(report["ok"] as? Bool == false)
        let problems = report["problems"] as? [[String: Any]] ?? []
        #expect(problems.contains { $0["file"] as? String == name && $0["offset"] as? Int == damaged.offset && $0["severity"] as? String == "error" },
                "\(json.stdout)")

        // Restart: the server finds the damage, says so in words operators grep for, and counts it.
        try cluster.restart(1)
        try await cluster.waitUntil("restarted node logs a checksum mismatch and counts it") {
            guard cluster.log(of: 1).contains("Checksum mismatch") else { return false }
            return (await cluster.metric(1, "kmb_checksum_failures_total") ?? 0) >= 1
        }
        let restartLog = cluster.log(of: 1)
        let mismatch = restartLog.split(separator: "\n").first { $0.contains("Checksum mismatch") }.map(String.init) ?? ""
        #expect(mismatch.contains(name.dropFirst("log/".count)), "log line does not name the segment: \(mismatch)")
        // The corrupt entry is not served: the node's log ends before it.
        let status = try #require(await cluster.status(1), "restarted node does not answer /status:\n\(restartLog)")
        let opNumber = status["op_number"] as? Int ?? -1
        #expect(opNumber >= 0 && opNumber < damaged.op, "the journal still serves op \(damaged.op) or later: op_number \(opNumber)")
        // Evidence is kept, never deleted.
        let logFiles = try FileManager.default.contentsOfDirectory(atPath: dataDir + "/log")
        #expect(logFiles.contains { $0.contains(".corrupt") }, "no quarantined evidence in \(logFiles)")
    }

    @Test
    func loneNodeThatLostCommittedEntriesNeverReusesTheirOpNumbers() async throws {
        let (cluster, lastOp) = try await Self.singleNode(rows: 40)
        defer { cluster.shutdown() }
        let stopped = try await cluster.stop(1)
        #expect(stopped.exited && stopped.status == 0, "\(stopped)")
        let damaged = try Self.flipBitInMiddleEntry(cluster, node: 1)
        try cluster.restart(1)
        try await cluster.waitUntil("restarted node answers /status") { await cluster.status(1) != nil }
        try await cluster.waitUntil("restarted node logs the corruption") { cluster.log(of: 1).contains("Checksum mismatch") }

        // The damaged op and every later one up to lastOp were committed and applied, and no peer can
        // return them. A new write must never be logged under one of those op
        // numbers (the projection has already applied different entries there):
        // refuse it (503) or, if accepted, give it an op above the applied op and apply it.
        let write = try await cluster.execute(on: 1, [("INSERT INTO items(name) VALUES ('after-corruption')", [])])
        if write.status == 200 {
            #expect((write.body["op"] as? Int ?? 0) > lastOp, "a new write reused an op of the lost log: \(write.text)")
            #expect(try await cluster.count("items", on: 1, consistency: "strong") == 41)
        } else {
            #expect(write.status == 503, "\(write.text)")
            #expect(write.errorOp == nil, "the refused write was logged: \(write.text)")
        }
        let status = try #require(await cluster.status(1))
        let op = status["op_number"] as? Int ?? -1
        #expect(op <= damaged.op - 1 || op > lastOp, "log holds ops \(damaged.op)...\(op) that differ from the applied ones: \(status)")
    }

    @Test func corruptFollowerQuarantinesTheSegmentAndRepairsFromPeers() async throws {
        let cluster = try await Cluster.start(nodes: 3)
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        let follower = [1, 2, 3].first { $0 != leader }!
        _ = try await cluster.executeWithRetry([Self.createTable], clientID: "setup", requestNumber: 1)
        try await cluster.insertItems((1...40).map { "row-\($0)" }, clientID: "w")
        try await cluster.waitUntil("follower \(follower) applied all 40 rows") { try await cluster.count("items", on: follower) == 40 }
        let stopped = try await cluster.stop(follower)
        #expect(stopped.exited && stopped.status == 0, "\(stopped)")
        let damaged = try Self.flipBitInMiddleEntry(cluster, node: follower)
        let found = try await Self.verify(cluster.nodes[follower - 1].dataDir)
        #expect(found.exited && found.status == 1, "\(found)")
        #expect(found.stdout.contains("\(damaged.name): checksum mismatch at offset \(damaged.offset)"), "\(found.stdout)")

        try cluster.restart(follower)
        try await cluster.waitUntil("follower logs the corruption") { cluster.log(of: follower).contains("Checksum mismatch") }
        #expect((await cluster.metric(follower, "kmb_checksum_failures_total") ?? 0) >= 1)
        // The cluster keeps serving, and the follower catches up from its peers.
        let after = try await cluster.executeWithRetry([("INSERT INTO items(name) VALUES ('after')", [])], clientID: "w", requestNumber: 41)
        #expect(after.status == 200, "\(after.text)")
        let leaderOp = try #require(after.body["op"] as? Int)
        try await cluster.waitUntil("follower repaired its log up to op \(leaderOp) and applied the new row", timeout: .seconds(40)) {
            guard let status = await cluster.opAndCommit(follower), status.op >= leaderOp else { return false }
            return try await cluster.count("items", on: follower) == 41
        }
        // Its repaired log verifies clean apart from the kept evidence.
        let again = try await cluster.stop(follower)
        #expect(again.exited && again.status == 0, "\(again)")
        let clean = try await Self.verify(cluster.nodes[follower - 1].dataDir)
        #expect(clean.exited && clean.status == 0, "verify after repair: \(clean)")
        #expect(clean.stdout.contains("last op \(leaderOp)"), "\(clean.stdout)")
        #expect(clean.stdout.contains(".corrupt"), "quarantined evidence not kept: \(clean.stdout)")
    }

    // MARK: - verify on directories that are not (whole) data directories

    @Test func verifyExits1OnMissingEmptyAndForeignDirectories() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("kmb-verify-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }

        let missing = try await Self.verify(root + "/does-not-exist")
        #expect(missing.exited && missing.status == 1, "missing: \(missing)")
        #expect(missing.stdout.contains("missing data directory"), "\(missing.stdout)")
        #expect(!FileManager.default.fileExists(atPath: root + "/does-not-exist"), "verify created the directory")

        try FileManager.default.createDirectory(atPath: root + "/empty", withIntermediateDirectories: true)
        let empty = try await Self.verify(root + "/empty")
        #expect(empty.exited && empty.status == 1, "empty: \(empty)")
        #expect(empty.stdout.contains("empty data directory"), "\(empty.stdout)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/empty").isEmpty, "verify wrote into the empty directory")

        try FileManager.default.createDirectory(atPath: root + "/foreign", withIntermediateDirectories: true)
        try "hello".write(toFile: root + "/foreign/notes.txt", atomically: true, encoding: .utf8)
        let foreign = try await Self.verify(root + "/foreign")
        #expect(foreign.exited && foreign.status == 1, "foreign: \(foreign)")
        #expect(foreign.stdout.contains("not a kimberlite data directory"), "\(foreign.stdout)")
    }

    // MARK: - Torn tail

    enum Tear: String, CaseIterable, Sendable {
        /// Bytes that are no frame at all.
        case garbage
        /// A frame cut off part-way: valid length and CRC fields, body missing its end.
        case partialFrame
        /// A zero-filled tail (space allocated, data never written).
        case zeros
    }

    @Test(arguments: Tear.allCases)
    func tornTailOnTheLastSegmentIsTruncatedOnRestartKeepingEveryAcknowledgedRow(_ tear: Tear) async throws {
        let (cluster, lastOp) = try await Self.singleNode(rows: 12)
        defer { cluster.shutdown() }
        let dataDir = cluster.nodes[0].dataDir
        let stopped = try await cluster.stop(1)
        #expect(stopped.exited && stopped.status == 0, "\(stopped)")

        let segment = try #require(try cluster.segments(of: 1).last)
        let layout = try SegmentFrames(path: segment)
        let last = try #require(layout.frames.last)
        #expect(last.end == layout.bytes.count, "segment has trailing bytes before the test tore it")
        let tail: [UInt8]
        switch tear {
        case .garbage: tail = Array(repeating: 0xAB, count: 37)
        case .partialFrame: tail = Array(layout.bytes[last.offset..<(last.offset + 8 + last.bodyLength / 2)])
        case .zeros: tail = Array(repeating: 0, count: 4096)
        }
        try Data(layout.bytes + tail).write(to: URL(fileURLWithPath: segment))

        // verify calls it a torn tail: a warning, not corruption.
        let checked = try await Self.verify(dataDir)
        #expect(checked.exited && checked.status == 0, "verify on a torn tail: \(checked)")
        #expect(checked.stdout.contains("torn tail"), "\(checked.stdout)")
        #expect(checked.stdout.contains("last op \(lastOp)"), "\(checked.stdout)")

        try cluster.restart(1)
        _ = try await cluster.waitForLeader()
        #expect(try await cluster.count("items", on: 1, consistency: "strong") == 12)
        let status = try #require(await cluster.status(1))
        #expect(status["op_number"] as? Int == lastOp, "\(status)")
        let next = try await cluster.execute(on: 1, [("INSERT INTO items(name) VALUES ('after-tear')", [])], clientID: "w", requestNumber: 13)
        #expect(next.status == 200, "\(next.text)")
        #expect(next.body["op"] as? Int == lastOp + 1, "\(next.text)")
        #expect(!cluster.log(of: 1).contains("Checksum mismatch"), "a torn tail was reported as corruption:\n\(cluster.log(of: 1))")
        #expect(await cluster.metric(1, "kmb_checksum_failures_total") == 0)

        // After a clean stop the log verifies without any warning: the tail was cut, the new entry follows.
        let again = try await cluster.stop(1)
        #expect(again.exited && again.status == 0, "\(again)")
        let clean = try await Self.verify(dataDir)
        #expect(clean.exited && clean.status == 0, "\(clean)")
        #expect(!clean.stdout.contains("torn tail") && clean.stdout.contains("last op \(lastOp + 1)"), "\(clean.stdout)")
    }

    // MARK: - Graceful stop

    @Test(arguments: [SIGTERM, SIGINT])
    func signalStopsWithin10SecondsWithExit0AndLosesNothing(_ signal: Int32) async throws {
        let (cluster, lastOp) = try await Self.singleNode(rows: 5)
        defer { cluster.shutdown() }
        let sentAt = ContinuousClock.now
        let stopped = try await cluster.stop(1, signal: signal, timeout: .seconds(10))
        print("signal \(signal): exited after \(ContinuousClock.now - sentAt)")
        #expect(stopped.exited, "killed by a signal instead of exiting: \(stopped)")
        #expect(stopped.status == 0, "exit status \(stopped.status)\n\(cluster.log(of: 1))")
        #expect(cluster.log(of: 1).contains("clean shutdown complete"), "\(cluster.log(of: 1))")

        let checked = try await Self.verify(cluster.nodes[0].dataDir)
        #expect(checked.exited && checked.status == 0, "\(checked)")
        #expect(checked.stdout.contains("last op \(lastOp)") && !checked.stdout.contains("warning"), "\(checked.stdout)")

        try cluster.restart(1)
        _ = try await cluster.waitForLeader()
        #expect(try await cluster.count("items", on: 1, consistency: "strong") == 5)
    }
}
