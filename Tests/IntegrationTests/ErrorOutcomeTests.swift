import Foundation
import Testing

/// The error outcomes of DESIGN.md §2 that need a cluster in a particular
/// state to appear: 504 `outcome_unknown` (no quorum answers in time), 409
/// `request_in_progress` (a second request while the first is outstanding),
/// 507 `disk_full` (a nearly full data file system) and 409
/// `session_expired` (a session evicted from the 10,000-entry client table).
/// Each drives real `kimberlite-server` processes and checks that the error
/// keeps its promise: the outcome of an unknown write settles to exactly one
/// application, and a refused write changes nothing.
/// Serialized: each test owns its processes, and two clusters at once would
/// starve a 2-core machine.
@Suite(.serialized) struct ErrorOutcomeTests {
    /// No UNIQUE constraint: a write applied twice shows up as two rows.
    static var createTable: (String, [Any]) { ("CREATE TABLE fate(id INTEGER PRIMARY KEY, name TEXT NOT NULL)", []) }

    static func insert(_ name: String) -> [(String, [Any])] { [("INSERT INTO fate(name) VALUES (?)", [name])] }

    /// Checks status, code and the `{"error": {...}}` shape of one refusal.
    static func expectRefusal(_ reply: Cluster.HTTPReply, _ status: Int, _ code: String, _ what: String,
                              sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(reply.status == status, "\(what): status \(reply.status): \(reply.text)", sourceLocation: sourceLocation)
        #expect(reply.errorCode == code, "\(what): \(reply.text)", sourceLocation: sourceLocation)
        #expect(reply.hasErrorShape, "\(what): not {\"error\":{\"code\",\"message\"}}: \(reply.text)", sourceLocation: sourceLocation)
    }

    /// After the cluster has a leader again: every node's strong read and,
    /// once applied, its own projection (stale read) hold `name` exactly once.
    static func expectExactlyOnce(_ name: String, in cluster: Cluster, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        for id in cluster.nodes.map(\.id) {
            let strong = try await cluster.query(on: id, "SELECT count(*) FROM fate WHERE name = ?", params: [name])
            #expect(strong.status == 200, "strong read on node \(id): \(strong.text)", sourceLocation: sourceLocation)
            #expect(strong.firstInteger == 1, "'\(name)' on node \(id) (strong): \(strong.text)", sourceLocation: sourceLocation)
        }
        // Strong reads on followers are forwarded to the leader; each node's
        // own projection is checked with stale reads once it has caught up.
        var seen: [Int: Int] = [:]
        try await cluster.waitUntil("every node applied '\(name)'") {
            for id in cluster.nodes.map(\.id) {
                let stale = try await cluster.query(on: id, "SELECT count(*) FROM fate WHERE name = ?", params: [name], consistency: "stale")
                guard let count = stale.firstInteger, count >= 1 else { return false }
                seen[id] = count
            }
            return true
        }
        for (id, count) in seen.sorted(by: { $0.key < $1.key }) {
            #expect(count == 1, "'\(name)' on node \(id) (stale) appears \(count) times", sourceLocation: sourceLocation)
        }
    }

    /// A three-node cluster with `fate` created and applied on every node.
    static func clusterWithTable(timeouts: Cluster.Timeouts = .init()) async throws -> Cluster {
        let cluster = try Cluster.prepare(nodes: 3)
        cluster.timeouts = timeouts
        for id in 1...3 { try cluster.restart(id) }
        do {
            _ = try await cluster.waitForLeader()
            let create = try await cluster.executeWithRetry([createTable], clientID: "setup", requestNumber: 1)
            #expect(create.status == 200, "\(create.text)")
            try await cluster.waitUntil("every node applied the CREATE TABLE") {
                for id in 1...3 where try await cluster.count("fate", on: id) != 0 { return false }
                return true
            }
            return cluster
        } catch {
            cluster.shutdown()
            throw error
        }
    }

    // MARK: - 504 outcome_unknown

    /// Runs `body` with every node but `leader` stopped (SIGSTOP), and
    /// resumes them (SIGCONT) afterwards, whether `body` returns or throws.
    static func withBackupsStopped<T>(_ cluster: Cluster, leader: Int, _ body: () async throws -> T) async throws -> T {
        let backups = cluster.nodes.map(\.id).filter { $0 != leader }
        for id in backups { cluster.signal(id, SIGSTOP) }
        defer { for id in backups { cluster.signal(id, SIGCONT) } }
        return try await body()
    }

    /// True for the answer of a leader that had already stepped down (it
    /// does so election_timeout_max, 1.2 s, after its last acknowledgement):
    /// nothing was logged, and the scenario is tried again from the start.
    static func leaderSteppedDown(_ reply: Cluster.HTTPReply) -> Bool {
        reply.status == 503 && reply.errorCode == "no_leader"
    }

    /// Scenario attempts when the leader stepped down too early (a loaded machine).
    static let attempts = 3

    @Test func writeWithoutQuorumIs504OutcomeUnknownAndSettlesExactlyOnce() async throws {
        let cluster = try await Self.clusterWithTable()
        defer { cluster.shutdown() }

        // A write sent right after both backups stop is logged, then waits for
        // a quorum that never answers until request_timeout (3 s).
        var outcome: (reply: Cluster.HTTPReply, before: Int, waited: Duration, client: String)?
        for attempt in 1...Self.attempts {
            let leader = try await cluster.waitForLeader()
            let before = try #require(await cluster.opAndCommit(leader)).op
            let client = "fate-\(attempt)"
            let (reply, waited) = try await Self.withBackupsStopped(cluster, leader: leader) {
                let sent = ContinuousClock.now
                let reply = try await cluster.execute(on: leader, Self.insert(client), clientID: client, requestNumber: 1)
                return (reply, ContinuousClock.now - sent)
            }
            if Self.leaderSteppedDown(reply) {
                print("outcome_unknown attempt \(attempt): leader \(leader) had stepped down already: \(reply.text)")
                continue
            }
            outcome = (reply, before, waited, client)
            break
        }
        let (unknown, before, waited, client) = try #require(outcome, "in \(Self.attempts) attempts the leader always stepped down first")

        Self.expectRefusal(unknown, 504, "outcome_unknown", "write with both backups stopped")
        let loggedAs = unknown.errorOp
        #expect(loggedAs == before + 1, "the 504 names the op the write was logged as (op was \(before)): \(unknown.text)")
        #expect(unknown.errorMessage?.contains("request_number") == true, "tells the client how to retry: \(unknown.text)")
        // It is the timeout that answered (3 s in the harness), not an early refusal.
        #expect(waited >= .milliseconds(2500), "answered after \(waited), before request_timeout")

        // The outcome settles: the same request number is applied exactly once,
        // whether the logged entry survived the view change or not.
        _ = try await cluster.waitForLeader()
        let retry = try await cluster.executeWithRetry(Self.insert(client), clientID: client, requestNumber: 1)
        #expect(retry.status == 200, "retry of the unknown write: \(retry.text)")
        let retryOp = try #require(retry.body["op"] as? Int, "\(retry.text)")
        print("outcome_unknown: logged as op \(loggedAs.map(String.init) ?? "nil"); retry answered with op \(retryOp)"
              + (retryOp == loggedAs ? " (the entry survived the view change)" : " (applied anew)"))
        // Asking again answers from the client table with the same op.
        let again = try await cluster.executeWithRetry(Self.insert(client), clientID: client, requestNumber: 1)
        #expect(again.status == 200 && again.body["op"] as? Int == retryOp, "\(again.text)")
        try await Self.expectExactlyOnce(client, in: cluster)
    }

    // MARK: - 409 request_in_progress

    @Test func secondRequestWhileFirstIsOutstandingIs409RequestInProgress() async throws {
        let cluster = try await Self.clusterWithTable()
        defer { cluster.shutdown() }

        var outcome: (second: Cluster.HTTPReply, first: Cluster.HTTPReply, opAfterSecond: Int?, before: Int, client: String)?
        for attempt in 1...Self.attempts {
            let leader = try await cluster.waitForLeader()
            let before = try #require(await cluster.opAndCommit(leader)).op
            let client = "c\(attempt)"
            let result = try await Self.withBackupsStopped(cluster, leader: leader) {
                () async throws -> (second: Cluster.HTTPReply?, first: Cluster.HTTPReply, opAfterSecond: Int?) in
                // HTTPReply is not Sendable (its body is [String: Any]): the task hands back status and text.
                let first = Task { () async throws -> (Int, String) in
                    let reply = try await cluster.execute(on: leader, Self.insert("\(client)-1"), clientID: client, requestNumber: 1)
                    return (reply.status, reply.text)
                }
                // Request 1 is outstanding once the leader has logged it (op + 1);
                // it cannot commit while both backups are stopped. Polled
                // tightly: the leader steps down 1.2 s after the backups stopped.
                let deadline = ContinuousClock.now + .seconds(1)
                var logged = false
                while !logged && ContinuousClock.now < deadline {
                    logged = (await cluster.opAndCommit(leader)?.op ?? 0) > before
                    if !logged { try await Task.sleep(for: .milliseconds(5)) }  // poll interval
                }
                guard logged else {
                    return (nil, Cluster.HTTPReply(parsing: try await first.value), nil)
                }
                let second = try await cluster.execute(on: leader, Self.insert("\(client)-2"), clientID: client, requestNumber: 2)
                let opAfterSecond = await cluster.opAndCommit(leader)?.op
                return (second, Cluster.HTTPReply(parsing: try await first.value), opAfterSecond)
            }
            guard let second = result.second else {
                print("request_in_progress attempt \(attempt): request 1 not logged within 1 s; it got \(result.first.text)")
                continue
            }
            if Self.leaderSteppedDown(second) {
                print("request_in_progress attempt \(attempt): leader \(leader) had stepped down before request 2: \(second.text)")
                continue
            }
            outcome = (second, result.first, result.opAfterSecond, before, client)
            break
        }
        let (second, firstReply, opAfterSecond, before, client) = try #require(
            outcome, "in \(Self.attempts) attempts the leader always stepped down first")

        Self.expectRefusal(second, 409, "request_in_progress", "request 2 while request 1 is outstanding")
        #expect(second.errorMessage?.contains("request 1 outstanding") == true, "names the outstanding request: \(second.text)")
        #expect(second.errorOp == nil, "nothing was logged, so no op: \(second.text)")
        #expect(opAfterSecond == before + 1, "request 2 must not be logged: op \(opAfterSecond.map(String.init) ?? "nil"), was \(before)")
        // Request 1 itself was still outstanding when request 2 was refused.
        Self.expectRefusal(firstReply, 504, "outcome_unknown", "request 1 with both backups stopped")

        // The session goes on: request 1 settles, then request 2 is applied.
        _ = try await cluster.waitForLeader()
        let retryFirst = try await cluster.executeWithRetry(Self.insert("\(client)-1"), clientID: client, requestNumber: 1)
        #expect(retryFirst.status == 200, "\(retryFirst.text)")
        let retrySecond = try await cluster.executeWithRetry(Self.insert("\(client)-2"), clientID: client, requestNumber: 2)
        #expect(retrySecond.status == 200, "\(retrySecond.text)")
        try await Self.expectExactlyOnce("\(client)-1", in: cluster)
        try await Self.expectExactlyOnce("\(client)-2", in: cluster)
    }

    // MARK: - 507 disk_full

    @Test func writeOnANearlyFullFileSystemIs507DiskFullAndChangesNothing() async throws {
        // 40 MiB: room for the server's files, and small enough to fill quickly.
        let mountPoint = try await Self.mountSmallTmpfs()
        defer { Self.unmount(mountPoint) }

        let dataDir = mountPoint + "/node1"
        let cluster = try await Cluster.start(nodes: 1, environment: ["KMB_DATA_DIR": dataDir])
        defer { cluster.shutdown() }
        _ = try await cluster.waitForLeader()
        let create = try await cluster.execute(on: 1, [Self.createTable])
        #expect(create.status == 200, "\(create.text)")
        let seed = try await cluster.execute(on: 1, Self.insert("seed"))
        #expect(seed.status == 200, "\(seed.text)")
        #expect(FileManager.default.fileExists(atPath: dataDir + "/log"), "the server uses the tmpfs data directory")

        // Leave 8 MiB free: under the 16 MiB margin, yet enough for SQLite to read.
        let filler = mountPoint + "/filler"
        let free = try #require(Self.availableBytes(mountPoint))
        let target = 8 << 20
        try #require(free > target + (1 << 20), "only \(free) bytes free on a fresh 40 MiB tmpfs")
        try Self.writeFiller(filler, bytes: free - target)
        let left = try #require(Self.availableBytes(mountPoint))
        try #require(left < 16 << 20, "filler left \(left) bytes free")

        let before = try #require(await cluster.opAndCommit(1))
        let countBefore = try await cluster.count("fate", on: 1)
        for n in 1...3 {
            let refused = try await cluster.execute(on: 1, Self.insert("full-\(n)"), clientID: "w", requestNumber: n)
            Self.expectRefusal(refused, 507, "disk_full", "write \(n) with \(left) bytes free")
            #expect(refused.errorOp == nil, "nothing logged, so no op: \(refused.text)")
            #expect(refused.errorMessage?.contains("nothing was written") == true, "\(refused.text)")
        }
        let after = try #require(await cluster.opAndCommit(1))
        #expect(after.op == before.op, "op_number moved from \(before) to \(after)")
        #expect(try await cluster.count("fate", on: 1) == countBefore)
        #expect(countBefore == 1)

        // Space back: the next write (same session, number 1 was never taken) succeeds.
        try FileManager.default.removeItem(atPath: filler)
        let accepted = try await cluster.execute(on: 1, Self.insert("after"), clientID: "w", requestNumber: 1)
        #expect(accepted.status == 200, "\(accepted.text)")
        #expect(accepted.body["op"] as? Int == before.op + 1, "\(accepted.text)")
        #expect(try await cluster.count("fate", on: 1) == 2)
    }

    /// Free bytes for an unprivileged writer on `path`'s file system.
    static func availableBytes(_ path: String) -> Int? {
        var stats = statvfs()
        guard statvfs(path, &stats) == 0 else { return nil }
        return Int(stats.f_bavail) * Int(stats.f_frsize)
    }

    /// Writes `bytes` zero bytes to a new file at `path`, 1 MiB at a time.
    static func writeFiller(_ path: String, bytes: Int) throws {
        FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        let chunk = Data(count: 1 << 20)
        var written = 0
        while written < bytes {
            let size = min(chunk.count, bytes - written)
            try handle.write(contentsOf: size == chunk.count ? chunk : chunk.prefix(size))
            written += size
        }
    }

    /// Mounts a new tmpfs of `size` (needs root) and returns its path.
    static func mountSmallTmpfs(size: String = "40m") async throws -> String {
        let mountPoint = FileManager.default.temporaryDirectory.appendingPathComponent("kmb-tmpfs-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let mounted = try await Cluster.run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", mountPoint])
        try #require(mounted.exited && mounted.status == 0, "mount a \(size) tmpfs (needs root): \(mounted)")
        return mountPoint
    }

    /// Unmounts (lazily if busy) a tmpfs this test mounted, and removes its mount point.
    static func unmount(_ path: String) {
        defer { try? FileManager.default.removeItem(atPath: path) }
        for arguments in [[path], ["-l", path]] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/umount")
            process.arguments = arguments
            guard (try? process.run()) != nil else { continue }
            process.waitUntilExit()
            if process.terminationStatus == 0 { return }
        }
    }

    // MARK: - 409 session_expired

    @Test func oldestOf10001SessionsIsEvictedAndGets409SessionExpired() async throws {
        let cluster = try await Cluster.start(nodes: 1)
        defer { cluster.shutdown() }
        _ = try await cluster.waitForLeader()
        // Without a client_id, so the only sessions are the ones below.
        let create = try await cluster.execute(on: 1, [Self.createTable])
        #expect(create.status == 200, "\(create.text)")
        let started = ContinuousClock.now

        // Session 0 first, alone, so it has the oldest last op.
        let zero = try await cluster.execute(on: 1, Self.insert("s0"), clientID: "s0", requestNumber: 1)
        #expect(zero.status == 200, "\(zero.text)")
        let zeroOp = try #require(zero.body["op"] as? Int)
        let failures = try await Self.openSessions(1..<10_000, on: cluster)
        #expect(failures.isEmpty, "sessions refused: \(failures.prefix(5))")

        // 10,000 sessions: the table is full, nothing evicted yet.
        let kept = try await cluster.execute(on: 1, Self.insert("s0"), clientID: "s0", requestNumber: 1)
        #expect(kept.status == 200 && kept.body["op"] as? Int == zeroOp, "session 0 still answered from the table: \(kept.text)")

        // The 10,001st session evicts the oldest, session 0.
        let last = try await Self.openSessions(10_000..<10_001, on: cluster)
        #expect(last.isEmpty, "\(last)")
        let countBefore = try #require(try await cluster.count("fate", on: 1))
        #expect(countBefore == 10_001)
        let opBefore = try #require(await cluster.opAndCommit(1)).op
        let expired = try await cluster.execute(on: 1, Self.insert("s0-again"), clientID: "s0", requestNumber: 2)
        Self.expectRefusal(expired, 409, "session_expired", "session 0's next request after eviction")
        // Refused before the log, so a client retrying in a loop cannot fill it.
        #expect(expired.errorOp == nil, "an expired session's request was logged: \(expired.text)")
        #expect(try #require(await cluster.opAndCommit(1)).op == opBefore)
        #expect(try await cluster.count("fate", on: 1) == countBefore, "an expired session's statements are not applied")
        // Its old request number is no longer answered from the table either.
        let oldRetry = try await cluster.execute(on: 1, Self.insert("s0"), clientID: "s0", requestNumber: 1)
        Self.expectRefusal(oldRetry, 409, "session_expired", "session 0 retrying request 1 after eviction")
        // The second oldest was kept and goes on.
        let next = try await cluster.execute(on: 1, Self.insert("s1-again"), clientID: "s1", requestNumber: 2)
        #expect(next.status == 200, "\(next.text)")
        #expect(try await cluster.count("fate", on: 1) == countBefore + 1)
        print("session_expired: 10,001 sessions opened and checked in \(ContinuousClock.now - started)")
    }

    /// Sends request 1 of sessions `s<n>` for every n in `range`, 32 at a
    /// time; returns the ones not answered 200 as "s<n>: status body".
    static func openSessions(_ range: Range<Int>, on cluster: Cluster) async throws -> [String] {
        try await withThrowingTaskGroup(of: String?.self) { group in
            var failures: [String] = []
            var outstanding = 0
            for n in range {
                if outstanding == 32, let result = try await group.next() {
                    if let result { failures.append(result) }
                    outstanding -= 1
                }
                group.addTask {
                    let reply = try await cluster.execute(on: 1, insert("s\(n)"), clientID: "s\(n)", requestNumber: 1)
                    return reply.status == 200 ? nil : "s\(n): \(reply.status) \(reply.text)"
                }
                outstanding += 1
            }
            while let result = try await group.next() {
                if let result { failures.append(result) }
            }
            return failures
        }
    }
}

private extension Cluster.HTTPReply {
    /// Rebuilds a reply from the status and text a task handed back.
    init(parsing answer: (status: Int, text: String)) {
        let object = (try? JSONSerialization.jsonObject(with: Data(answer.text.utf8))) as? [String: Any] ?? [:]
        self.init(status: answer.status, body: object, text: answer.text)
    }

    /// The first column of the first row, when it is an integer.
    var firstInteger: Int? { (body["rows"] as? [[Any]])?.first?.first as? Int }
}

/// A follower whose disk fills up is a state, not an exit (no crash loop
/// under `Restart=on-failure`): it stays up, says why on `/status` and
/// `/health/ready`, and catches up with no restart once space is freed.
@Suite(.serialized) struct FollowerDiskFullTests {
    @Test func followerWithAFullDiskStaysUpSaysSoAndCatchesUpWhenSpaceIsFreed() async throws {
        let mountPoint = try await ErrorOutcomeTests.mountSmallTmpfs()
        defer { ErrorOutcomeTests.unmount(mountPoint) }

        let cluster = try Cluster.prepare(nodes: 3)
        defer { cluster.shutdown() }
        // Node 3 (never the primary of view 0) keeps its data on the small file system.
        let full = 3
        cluster.nodes[full - 1] = Cluster.Node(id: full, clientPort: cluster.nodes[full - 1].clientPort,
                                               clusterPort: cluster.nodes[full - 1].clusterPort,
                                               metricsPort: cluster.nodes[full - 1].metricsPort,
                                               dataDir: mountPoint + "/node\(full)", logFile: cluster.nodes[full - 1].logFile)
        for id in 1...3 { try cluster.restart(id) }
        var leader = try await cluster.waitForLeader()
        // Node 3 must follow. On a loaded machine view 0 may fail and node 3
        // lead a later view, also in the middle of the test: stopping it
        // hands leadership to another member.
        func handOffFromFullNode() async throws -> Int {
            _ = try await cluster.stop(full)
            let next = try await cluster.waitForLeader(among: [1, 2])
            try cluster.restart(full)
            try await cluster.waitUntil("node \(full) answers again") { await cluster.status(full) != nil }
            return next
        }
        func fullNodeLeads() async -> Bool {
            if await cluster.status(full)?["is_leader"] as? Bool == true { return true }
            return await cluster.status(leader)?["leader_id"] as? Int == full
        }
        for _ in 0..<3 where leader == full {
            leader = try await handOffFromFullNode()
            try await cluster.waitUntil("node \(full) follows again") { (await cluster.status(full))?["status"] as? String == "normal" }
            leader = try await cluster.waitForLeader()
        }
        try #require(leader != full, "node \(full) must be a follower")
        /// A write through the leader; should node 3 have taken the lead meanwhile, it is handed off and the write retried.
        func write(_ name: String, _ number: Int) async throws -> Cluster.HTTPReply {
            let reply = try await cluster.executeWithRetry(ErrorOutcomeTests.insert(name), clientID: "writer", requestNumber: number, nodes: [leader])
            guard reply.status != 200, await fullNodeLeads() else { return reply }
            leader = try await handOffFromFullNode()
            return try await cluster.executeWithRetry(ErrorOutcomeTests.insert(name), clientID: "writer", requestNumber: number, nodes: [leader])
        }
        let create = try await cluster.executeWithRetry([ErrorOutcomeTests.createTable], clientID: "setup", requestNumber: 1)
        #expect(create.status == 200, "\(create.text)")

        // Leave 1 MiB free, then write 16 KiB rows through the leader until node 3 says its disk is full.
        let filler = mountPoint + "/filler"
        let free = try #require(ErrorOutcomeTests.availableBytes(mountPoint))
        try ErrorOutcomeTests.writeFiller(filler, bytes: max(0, free - (1 << 20)))
        let body = String(repeating: "x", count: 16 << 10)
        var written = 0
        var reason: String? = nil
        while written < 400 && reason == nil {
            written += 1
            let reply = try await write("row-\(written)-" + body, written)
            #expect(reply.status == 200, "write \(written): \(reply.text)")
            if written % 8 == 0 { reason = await cluster.status(full)?["status_reason"] as? String }
        }
        try await cluster.waitUntil("node \(full) reports its disk full", timeout: .seconds(30)) {
            reason = await cluster.status(full)?["status_reason"] as? String
            return reason != nil
        }
        #expect(reason?.contains("disk full") == true, "\(reason ?? "nil")")
        let ready = try await cluster.http(.GET, port: cluster.nodes[full - 1].metricsPort, path: "/health/ready")
        #expect(ready.status == 503, "ready while its disk is full: \(ready.text)")
        // The cluster goes on with the other two.
        for n in 1...5 {
            let reply = try await write("meanwhile-\(n)", written + n)
            #expect(reply.status == 200, "\(reply.text)")
        }
        let pidNow = try #require(cluster.nodes[full - 1].process?.processIdentifier)
        #expect(kill(pidNow, 0) == 0, "node \(full) exited on a full disk")
        #expect(cluster.log(of: full).contains("disk full"), "no disk-full line in node \(full)'s log")

        // Space freed: it catches up by itself, same process, identical rows.
        try FileManager.default.removeItem(atPath: filler)
        let expected = try #require(try await cluster.count("fate", on: leader, consistency: "strong"))
        try await cluster.waitUntil("node \(full) caught up with no restart", timeout: .seconds(60)) {
            guard let status = await cluster.status(full), status["status"] as? String == "normal",
                  status["status_reason"] is NSNull || status["status_reason"] == nil else { return false }
            return try await cluster.count("fate", on: full) == expected
        }
        #expect(kill(pidNow, 0) == 0 && cluster.nodes[full - 1].process?.processIdentifier == pidNow, "node \(full) was restarted")
        let ok = try await cluster.http(.GET, port: cluster.nodes[full - 1].metricsPort, path: "/health/ready")
        #expect(ok.status == 200, "\(ok.text)")
        let digest = "SELECT count(*), sum(length(name)) FROM fate"
        let onLeader = try await cluster.query(on: leader, digest, consistency: "stale")
        let onFull = try await cluster.query(on: full, digest, consistency: "stale")
        #expect(onLeader.text.contains("\(expected)") && (onLeader.body["rows"] as? [[Int]]) == (onFull.body["rows"] as? [[Int]]),
                "leader \(onLeader.text) vs node \(full) \(onFull.text)")
    }
}
