import Foundation
import Testing

/// Every bad input DESIGN.md §2 names, sent to real server processes: each
/// gets its documented status and error code, and changes nothing (the log's
/// op number, the rows, and for configuration errors the file system).
/// Serialized: each test owns its processes, and two clusters at once would
/// starve a 2-core machine.
@Suite(.serialized) struct BadInputTests {
    static var createTable: (String, [Any]) { ("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, data BLOB)", []) }

    /// A one-node cluster with the `items` table and one row, `'seed'`.
    static func seededSingleNode() async throws -> Cluster {
        let cluster = try await Cluster.start(nodes: 1)
        do {
            _ = try await cluster.waitForLeader()
            let create = try await cluster.executeWithRetry([createTable], clientID: "setup", requestNumber: 1)
            #expect(create.status == 200, "\(create.text)")
            let seed = try await cluster.execute(on: 1, [("INSERT INTO items(name) VALUES ('seed')", [])])
            #expect(seed.status == 200, "\(seed.text)")
        } catch {
            cluster.shutdown()
            throw error
        }
        return cluster
    }

    /// Names in `items` on node `id` (stale read, ordered by id).
    static func names(_ cluster: Cluster, on id: Int) async throws -> [String]? {
        let reply = try await cluster.query(on: id, "SELECT name FROM items ORDER BY id", consistency: "stale")
        guard reply.status == 200, let rows = reply.body["rows"] as? [[Any]] else { return nil }
        return rows.compactMap { $0.first as? String }
    }

    /// Checks status, code and the error shape of one refusal.
    static func expectError(_ reply: Cluster.HTTPReply, _ status: Int, _ code: String, _ what: String,
                            sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(reply.status == status, "\(what): status \(reply.status): \(reply.text)", sourceLocation: sourceLocation)
        #expect(reply.errorCode == code, "\(what): \(reply.text)", sourceLocation: sourceLocation)
        #expect(reply.hasErrorShape, "\(what): not {\"error\":{\"code\",\"message\"}}: \(reply.text)", sourceLocation: sourceLocation)
    }

    // MARK: - Client API, one node

    @Test func malformedRequestsAre400InvalidRequestAndChangeNothing() async throws {
        let cluster = try await Self.seededSingleNode()
        defer { cluster.shutdown() }
        let before = try #require(await cluster.opAndCommit(1))

        let executeBodies: [(String, String)] = [
            ("truncated JSON", #"{"statements": [{"sql": "INSERT INTO items(name) VALUES ('x')"}"#),
            ("not JSON", "INSERT INTO items(name) VALUES ('x')"),
            ("empty body", ""),
            ("JSON array", #"[{"sql": "INSERT INTO items(name) VALUES ('x')"}]"#),
            ("missing statements", #"{"sql": "INSERT INTO items(name) VALUES ('x')"}"#),
            ("statements not a list", #"{"statements": "INSERT INTO items(name) VALUES ('x')"}"#),
            ("empty statements", #"{"statements": []}"#),
            ("sql not a string", #"{"statements": [{"sql": 42}]}"#),
            ("params not a list", #"{"statements": [{"sql": "INSERT INTO items(name) VALUES (?)", "params": "x"}]}"#),
            ("client_id without request_number", #"{"statements": [{"sql": "INSERT INTO items(name) VALUES ('x')"}], "client_id": "c"}"#),
            ("negative request_number", #"{"statements": [{"sql": "INSERT INTO items(name) VALUES ('x')"}], "client_id": "c", "request_number": -1}"#),
        ]
        for (what, body) in executeBodies {
            let reply = try await cluster.rawPost(on: 1, path: "/v1/execute", body: Array(body.utf8))
            Self.expectError(reply, 400, "invalid_request", "execute, \(what)")
        }
        let queryBodies: [(String, String)] = [
            ("truncated JSON", #"{"sql": "SELECT 1""#),
            ("sql not a string", #"{"sql": ["SELECT 1"]}"#),
            ("missing sql", #"{"params": []}"#),
            ("unknown consistency", #"{"sql": "SELECT 1", "consistency": "eventual"}"#),
            ("consistency not a string", #"{"sql": "SELECT 1", "consistency": 1}"#),
        ]
        for (what, body) in queryBodies {
            let reply = try await cluster.rawPost(on: 1, path: "/v1/query", body: Array(body.utf8))
            Self.expectError(reply, 400, "invalid_request", "query, \(what)")
        }
        let unknownConsistency = try await cluster.query(on: 1, "SELECT 1", consistency: "STRONG")
        Self.expectError(unknownConsistency, 400, "invalid_request", "consistency STRONG")
        #expect(unknownConsistency.errorMessage?.contains("STRONG") == true, "\(unknownConsistency.text)")

        let after = try #require(await cluster.opAndCommit(1))
        #expect(after.op == before.op, "op_number moved from \(before) to \(after)")
        #expect(try await Self.names(cluster, on: 1) == ["seed"])
        // The node still serves a good write afterwards.
        let good = try await cluster.execute(on: 1, [("INSERT INTO items(name) VALUES ('good')", [])])
        #expect(good.status == 200, "\(good.text)")
        #expect(good.body["op"] as? Int == before.op + 1, "\(good.text)")
    }

    @Test func oversizedStatementsAndBodiesAre413TooLarge() async throws {
        let cluster = try await Self.seededSingleNode()
        defer { cluster.shutdown() }
        let before = try #require(await cluster.opAndCommit(1))
        let kb = 1024

        // One statement over max_record_size (64KB): by parameter, and by SQL text.
        let bigParam = try await cluster.execute(on: 1, [("INSERT INTO items(name) VALUES (?)", [String(repeating: "p", count: 70 * kb)])])
        Self.expectError(bigParam, 413, "too_large", "70KB parameter")
        #expect(bigParam.errorMessage?.contains("max_record_size") == true, "\(bigParam.text)")
        let bigSQL = try await cluster.execute(on: 1, [("INSERT INTO items(name) VALUES ('\(String(repeating: "s", count: 70 * kb))')", [])])
        Self.expectError(bigSQL, 413, "too_large", "70KB SQL text")
        // A small statement first, then an oversized one: the whole request is refused.
        let mixed = try await cluster.execute(on: 1, [("INSERT INTO items(name) VALUES ('small')", []),
                                                      ("INSERT INTO items(name) VALUES (?)", [String(repeating: "m", count: 70 * kb)])])
        Self.expectError(mixed, 413, "too_large", "small + oversized statement")

        // Every statement under 64KB, the body over max_batch_size (256KB).
        let statements = (0..<5).map { n in ("INSERT INTO items(name) VALUES (?)", ["\(n)" + String(repeating: "b", count: 55 * kb)] as [Any]) }
        let bigBody = try await cluster.execute(on: 1, statements)
        Self.expectError(bigBody, 413, "too_large", "275KB body")
        #expect(bigBody.errorMessage?.contains("max_batch_size") == true, "\(bigBody.text)")
        let bigQuery = try await cluster.query(on: 1, "SELECT ?", params: [String(repeating: "q", count: 300 * kb)])
        Self.expectError(bigQuery, 413, "too_large", "300KB query body")

        let after = try #require(await cluster.opAndCommit(1))
        #expect(after.op == before.op, "op_number moved from \(before) to \(after)")
        #expect(try await Self.names(cluster, on: 1) == ["seed"])

        // Just under both limits is accepted, so the limits are the configured ones.
        let underRecord = try await cluster.execute(on: 1, [("INSERT INTO items(name) VALUES (?)", ["u" + String(repeating: "x", count: 60 * kb)])])
        #expect(underRecord.status == 200, "60KB statement: \(underRecord.text)")
        let underBatch = (0..<4).map { n in ("INSERT INTO items(name) VALUES (?)", ["w\(n)" + String(repeating: "y", count: 55 * kb)] as [Any]) }
        let underBody = try await cluster.execute(on: 1, underBatch)
        #expect(underBody.status == 200, "220KB body: \(underBody.text)")
        #expect(try await cluster.count("items", on: 1) == 6)
    }

    @Test func invalidAndNondeterministicSQLIsRefusedBeforeTheLog() async throws {
        let cluster = try await Self.seededSingleNode()
        defer { cluster.shutdown() }
        let before = try #require(await cluster.opAndCommit(1))

        let invalid: [String] = [
            "INSRT INTO items(name) VALUES ('x')",
            "INSERT INTO no_such_table(name) VALUES ('x')",
            "INSERT INTO items(no_such_column) VALUES ('x')",
        ]
        for sql in invalid {
            let reply = try await cluster.execute(on: 1, [(sql, [])])
            Self.expectError(reply, 400, "invalid_sql", sql)
        }
        let badQuery = try await cluster.query(on: 1, "SELEC name FROM items")
        Self.expectError(badQuery, 400, "invalid_sql", "query SELEC")

        let nondeterministic: [String] = [
            "INSERT INTO items(name) VALUES (random())",
            "INSERT INTO items(name) VALUES (hex(randomblob(8)))",
            "INSERT INTO items(name) VALUES (datetime('now'))",
            "INSERT INTO items(name) VALUES (date())",
            "INSERT INTO items(name) VALUES (strftime('%s', 'now'))",
            "INSERT INTO items(name) VALUES (julianday('now'))",
            "INSERT INTO items(name) VALUES (CURRENT_TIMESTAMP)",
            "INSERT INTO items(name) VALUES (CURRENT_DATE)",
            "UPDATE items SET name = CURRENT_TIME WHERE name = 'seed'",
            "CREATE TABLE stamped(id INTEGER PRIMARY KEY, at TEXT DEFAULT CURRENT_TIMESTAMP)",
            "CREATE TABLE stamped(id INTEGER PRIMARY KEY, at TEXT DEFAULT (datetime('now')))",
        ]
        for sql in nondeterministic {
            let reply = try await cluster.execute(on: 1, [(sql, [])])
            Self.expectError(reply, 400, "nondeterministic_sql", sql)
        }
        // A good statement followed by a nondeterministic one: nothing of it is logged.
        let mixed = try await cluster.execute(on: 1, [("INSERT INTO items(name) VALUES ('first')", []),
                                                      ("INSERT INTO items(name) VALUES (random())", [])])
        Self.expectError(mixed, 400, "nondeterministic_sql", "good + random()")

        let after = try #require(await cluster.opAndCommit(1))
        #expect(after.op == before.op, "op_number moved from \(before) to \(after): a refused statement was logged")
        #expect(after.commit == before.commit)
        #expect(try await Self.names(cluster, on: 1) == ["seed"])
        let tables = try await cluster.query(on: 1, "SELECT name FROM sqlite_master WHERE name = 'stamped'")
        #expect(tables.status == 200, "\(tables.text)")
        #expect((tables.body["rows"] as? [[Any]])?.isEmpty == true, "table created by a refused statement: \(tables.text)")
        // The deterministic replacement is accepted.
        let stamped = try await cluster.execute(on: 1, [("INSERT INTO items(name) VALUES (kmb_datetime())", [])])
        #expect(stamped.status == 200, "\(stamped.text)")
    }

    @Test func queryEndpointRefusesWritesAndResultsOverMaxResultRows() async throws {
        let cluster = try await Self.seededSingleNode()
        defer { cluster.shutdown() }
        let before = try #require(await cluster.opAndCommit(1))

        for sql in ["INSERT INTO items(name) VALUES ('via-query')", "DELETE FROM items", "UPDATE items SET name = 'x'",
                    "CREATE TABLE sneaky(x INTEGER)", "DROP TABLE items"] {
            for consistency in ["strong", "stale"] {
                let reply = try await cluster.query(on: 1, sql, consistency: consistency)
                Self.expectError(reply, 400, "not_read_only", "\(consistency) \(sql)")
            }
        }
        // max_result_rows is 1000 in the harness: 1000 rows pass, 1001 fail whole.
        let rows = { (n: Int) in "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < \(n)) SELECT x FROM c" }
        let atLimit = try await cluster.query(on: 1, rows(1000))
        #expect(atLimit.status == 200, "\(atLimit.text.prefix(300))")
        #expect((atLimit.body["rows"] as? [[Any]])?.count == 1000)
        for consistency in ["strong", "stale"] {
            let over = try await cluster.query(on: 1, rows(1001), consistency: consistency)
            Self.expectError(over, 400, "too_many_rows", "\(consistency) 1001 rows")
            #expect(over.body["rows"] == nil, "rows returned with the error: \(over.text.prefix(200))")
            #expect(over.errorMessage?.contains("1000") == true, "\(over.text)")
        }

        let after = try #require(await cluster.opAndCommit(1))
        #expect(after.op == before.op, "op_number moved from \(before) to \(after)")
        #expect(try await Self.names(cluster, on: 1) == ["seed"])
        let sneaky = try await cluster.query(on: 1, "SELECT count(*) FROM sqlite_master WHERE name = 'sneaky'")
        #expect((sneaky.body["rows"] as? [[Any]])?.first?.first as? Int == 0, "\(sneaky.text)")
    }

    // MARK: - Client API, three nodes

    @Test func applyFailuresRollBackWholeEntryOnEveryReplicaAndStayInTheLog() async throws {
        let cluster = try await Cluster.start(nodes: 3)
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        let follower = [1, 2, 3].first { $0 != leader }!
        _ = try await cluster.executeWithRetry([Self.createTable], clientID: "setup", requestNumber: 1)
        _ = try await cluster.executeWithRetry([("INSERT INTO items(name) VALUES ('taken')", [])], clientID: "setup", requestNumber: 2)
        try await cluster.waitUntil("every node applied the seed row") {
            for id in 1...3 where try await Self.names(cluster, on: id) != ["taken"] { return false }
            return true
        }
        let start = try #require(await cluster.opAndCommit(leader))

        // A UNIQUE violation in the second statement, sent through a follower.
        let unique = try await cluster.execute(on: follower, [("INSERT INTO items(name) VALUES ('fresh')", []),
                                                              ("INSERT INTO items(name) VALUES ('taken')", [])],
                                               clientID: "writer", requestNumber: 1)
        Self.expectError(unique, 409, "apply_failed", "UNIQUE violation")
        #expect(unique.errorMessage?.contains("UNIQUE") == true, "\(unique.text)")
        #expect(unique.errorOp == start.op + 1, "op of the failed entry: \(unique.text), log was at \(start.op)")

        // 'now' smuggled in through a parameter is refused at apply, identically everywhere.
        let smuggled = try await cluster.execute(on: leader, [("INSERT INTO items(name) VALUES ('before-now')", []),
                                                              ("INSERT INTO items(name) VALUES (datetime(?))", ["now"])])
        Self.expectError(smuggled, 409, "apply_failed", "datetime(?) with 'now'")
        #expect(smuggled.errorOp == start.op + 2, "\(smuggled.text)")

        // Both failed entries stay in the log: op_number advanced by two, and every node applies past them.
        let failedOp = start.op + 2
        let leaderAfter = try #require(await cluster.opAndCommit(leader))
        #expect(leaderAfter.op == failedOp, "the failed entries are not in the log: \(start) -> \(leaderAfter)")
        try await cluster.waitUntil("every node applied op \(failedOp)") {
            for id in 1...3 {
                guard let status = await cluster.status(id), let op = status["op_number"] as? Int, op >= failedOp,
                      let applied = (status["projection"] as? [String: Any])?["applied_op"] as? Int, applied >= failedOp else { return false }
            }
            return true
        }
        var contents: [[String]] = []
        for id in 1...3 {
            contents.append(try #require(try await Self.names(cluster, on: id)))
        }
        #expect(contents.allSatisfy { $0 == ["taken"] }, "partial entry visible or replicas differ: \(contents)")

        // A retry of the failed request answers the recorded error without logging again.
        let retry = try await cluster.execute(on: leader, [("INSERT INTO items(name) VALUES ('fresh')", []),
                                                           ("INSERT INTO items(name) VALUES ('taken')", [])],
                                              clientID: "writer", requestNumber: 1)
        Self.expectError(retry, 409, "apply_failed", "retry of the failed request")
        #expect(try #require(await cluster.opAndCommit(leader)).op == failedOp, "a retry was logged again")

        // A lower request number is stale, through the leader and through a follower.
        let five = try await cluster.execute(on: leader, [("INSERT INTO items(name) VALUES ('five')", [])], clientID: "writer", requestNumber: 5)
        #expect(five.status == 200, "\(five.text)")
        for id in [leader, follower] {
            let stale = try await cluster.execute(on: id, [("INSERT INTO items(name) VALUES ('three')", [])], clientID: "writer", requestNumber: 3)
            Self.expectError(stale, 409, "stale_request", "request_number 3 after 5 via node \(id)")
        }
        #expect(try #require(await cluster.opAndCommit(leader)).op == failedOp + 1)
        try await cluster.waitUntil("every node shows exactly taken, five") {
            for id in 1...3 where try await Self.names(cluster, on: id) != ["taken", "five"] { return false }
            return true
        }

        // Refusals before the log look the same through a follower.
        let nondeterministic = try await cluster.execute(on: follower, [("INSERT INTO items(name) VALUES (random())", [])])
        Self.expectError(nondeterministic, 400, "nondeterministic_sql", "random() via follower")
        let tooLarge = try await cluster.execute(on: follower, [("INSERT INTO items(name) VALUES (?)", [String(repeating: "z", count: 70 * 1024)])])
        Self.expectError(tooLarge, 413, "too_large", "70KB via follower")
        let notReadOnly = try await cluster.query(on: follower, "DELETE FROM items")
        Self.expectError(notReadOnly, 400, "not_read_only", "DELETE via follower /v1/query")
        #expect(try #require(await cluster.opAndCommit(leader)).op == failedOp + 1)
    }

    // MARK: - Process level

    struct ConfigCase: CustomTestStringConvertible, Sendable {
        let name: String
        let arguments: [String]
        let environment: [String: String]
        let file: String?
        /// Text the one-line error must contain (the key, and where it came from).
        let mentions: [String]
        var testDescription: String { name }
    }

    static let configCases: [ConfigCase] = [
        ConfigCase(name: "flag node id 300", arguments: ["--node-id", "300"], environment: [:], file: nil,
                   mentions: ["--node-id", "node_id", "300"]),
        ConfigCase(name: "env node id 300", arguments: [], environment: ["KMB_NODE_ID": "300"], file: nil,
                   mentions: ["KMB_NODE_ID", "node_id", "300"]),
        ConfigCase(name: "file node id 300", arguments: [], environment: [:], file: "[server]\nnode_id = 300\n",
                   mentions: ["node_id", "300", "line 2"]),
        ConfigCase(name: "file node id 0", arguments: [], environment: [:], file: "[server]\nnode_id = 0\n",
                   mentions: ["node_id"]),
        ConfigCase(name: "no node id", arguments: [], environment: [:], file: nil, mentions: ["node_id"]),
        ConfigCase(name: "unknown key", arguments: ["--node-id", "1"], environment: [:],
                   file: "[server]\ncluster_name = \"x\"\nbogus_key = 3\n", mentions: ["bogus_key", "line 3"]),
        ConfigCase(name: "unknown section", arguments: ["--node-id", "1"], environment: [:],
                   file: "[nonsense]\nx = 1\n", mentions: ["nonsense"]),
        ConfigCase(name: "bad duration", arguments: ["--node-id", "1"], environment: [:],
                   file: "[consensus]\nelection_timeout_min = \"soon\"\n", mentions: ["election_timeout_min", "soon"]),
        ConfigCase(name: "bad size", arguments: ["--node-id", "1"], environment: [:],
                   file: "[limits]\nmax_record_size = \"lots\"\n", mentions: ["max_record_size", "lots"]),
        ConfigCase(name: "bad sync mode env", arguments: ["--node-id", "1"], environment: ["KMB_SYNC_MODE": "sometimes"], file: nil,
                   mentions: ["KMB_SYNC_MODE", "sync_mode"]),
        ConfigCase(name: "bad peer list env", arguments: ["--node-id", "1"], environment: ["KMB_CLUSTER_PEERS": "garbage"], file: nil,
                   mentions: ["KMB_CLUSTER_PEERS", "garbage"]),
        ConfigCase(name: "non-numeric node id flag", arguments: ["--node-id", "abc"], environment: [:], file: nil,
                   mentions: ["--node-id", "abc"]),
        ConfigCase(name: "missing config file", arguments: ["--node-id", "1", "--config", "/nonexistent/kmb-itest.toml"],
                   environment: [:], file: nil, mentions: ["/nonexistent/kmb-itest.toml"]),
    ]

    @Test(arguments: configCases)
    func configurationErrorsExit78NamingTheKeyAndCreateNothing(_ item: ConfigCase) async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("kmb-cfg-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let dataDir = root + "/data"
        var arguments = item.arguments + ["--data-dir", dataDir]
        if let file = item.file {
            let path = root + "/config.toml"
            try file.write(toFile: path, atomically: true, encoding: .utf8)
            arguments += ["--config", path]
        }
        // Ports nobody listens on, in case the error went unnoticed and the server started.
        let environment = item.environment.merging([
            "KMB_BIND_ADDRESS": "127.0.0.1:1", "KMB_CLUSTER_ADDRESS": "127.0.0.1:2", "KMB_METRICS_ADDRESS": "127.0.0.1:3",
        ]) { mine, _ in mine }
        let outcome = try await Cluster.run(Cluster.binary, arguments, environment: environment, timeout: .seconds(20))
        #expect(outcome.exited && outcome.status == 78, "\(outcome)")
        let message = outcome.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!message.isEmpty && !message.contains("\n"), "not one line: \(outcome.stderr)")
        for text in item.mentions {
            #expect(message.contains(text), "message does not mention \(text): \(message)")
        }
        #expect(!FileManager.default.fileExists(atPath: dataDir), "a config error created the data directory")
        #expect(!FileManager.default.fileExists(atPath: dataDir + "/LOCK"))
    }

    @Test func malformedCommandLinesExit64AndCreateNothing() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("kmb-cli-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let dataDir = root + "/data"
        let cases: [([String], String)] = [
            (["--node-id", "1", "--data-dir", dataDir, "--bogus-flag"], "--bogus-flag"),
            (["--data-dir", dataDir, "--node-id"], "--node-id"),
            (["--node-id", "1", "--data-dir", dataDir, "stray-argument"], "stray-argument"),
        ]
        for (arguments, mention) in cases {
            let outcome = try await Cluster.run(Cluster.binary, arguments, timeout: .seconds(20))
            #expect(outcome.exited && outcome.status == 64, "\(arguments): \(outcome)")
            #expect(outcome.stderr.contains(mention), "\(arguments): \(outcome.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: dataDir), "a malformed command line created the data directory")
    }

    @Test func versionShowConfigAndValidatePrintAndExit0WithoutTouchingData() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("kmb-cli-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let dataDir = root + "/data"

        let version = try await Cluster.run(Cluster.binary, ["--version"])
        #expect(version.exited && version.status == 0, "\(version)")
        #expect(version.stdout.contains("0.1.0"), "\(version.stdout)")

        let show = try await Cluster.run(Cluster.binary, ["--node-id", "7", "--data-dir", dataDir, "--show-config"],
                                         environment: ["KMB_CLUSTER_NAME": "shown"])
        #expect(show.exited && show.status == 0, "\(show)")
        for text in ["[server]", "[storage]", "[limits]", "node_id = 7", "cluster_name = \"shown\"", dataDir] {
            #expect(show.stdout.contains(text), "--show-config lacks \(text): \(show.stdout)")
        }

        let validate = try await Cluster.run(Cluster.binary, ["--node-id", "7", "--data-dir", dataDir, "--validate"])
        #expect(validate.exited && validate.status == 0, "\(validate)")
        #expect(!FileManager.default.fileExists(atPath: dataDir), "--show-config or --validate created the data directory")
    }

    @Test func secondServerOnALockedDataDirectoryExits75NamingLockFileAndPid() async throws {
        let cluster = try await Self.seededSingleNode()
        defer { cluster.shutdown() }
        let node = cluster.nodes[0]
        let pid = try #require(node.process?.processIdentifier)
        let base = cluster.portBase
        var environment = cluster.environment(for: node)
        environment["KMB_BIND_ADDRESS"] = "127.0.0.1:\(base + 90)"
        environment["KMB_CLUSTER_ADDRESS"] = "127.0.0.1:\(base + 91)"
        environment["KMB_METRICS_ADDRESS"] = "127.0.0.1:\(base + 92)"
        let outcome = try await Cluster.run(Cluster.binary, ["--config", try cluster.configFile(for: node)],
                                            environment: environment, timeout: .seconds(20))
        #expect(outcome.exited && outcome.status == 75, "\(outcome)")
        #expect(outcome.stderr.contains(node.dataDir + "/LOCK"), "lock file not named: \(outcome.stderr)")
        #expect(outcome.stderr.contains("\(pid)"), "holder pid \(pid) not named: \(outcome.stderr)")
        // The running server is untouched: its lock file still names it and it still serves.
        let recorded = try String(contentsOfFile: node.dataDir + "/LOCK", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(recorded == "\(pid)")
        #expect(try await Self.names(cluster, on: 1) == ["seed"])
        let write = try await cluster.execute(on: 1, [("INSERT INTO items(name) VALUES ('after')", [])])
        #expect(write.status == 200, "\(write.text)")
    }

    /// Started as an unprivileged user (`setpriv`, as `nobody`): a data
    /// directory behind a parent it may not search is reported as permission
    /// denied, never as missing; a missing one it may not create says so.
    @Test func dataDirectoryErrorsNameTheRealCauseForAnUnprivilegedUser() async throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("kmb-perm-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: scratch + "/private/data", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: scratch + "/readonly", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        // The binary where `nobody` may run it, whatever the checkout's modes.
        let binary = scratch + "/kimberlite-server"
        try FileManager.default.copyItem(atPath: Cluster.binary, toPath: binary)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: scratch)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: binary)
        try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: scratch + "/private")
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: scratch + "/readonly")
        func runAsNobody(dataDir: String) async throws -> Cluster.Outcome {
            try await Cluster.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", binary,
                                                       "--node-id", "1", "--data-dir", dataDir], timeout: .seconds(20))
        }
        let hidden = try await runAsNobody(dataDir: scratch + "/private/data")
        #expect(hidden.exited && hidden.status == 1, "\(hidden)")
        #expect(hidden.stderr.contains(scratch + "/private/data") && hidden.stderr.contains("Permission denied"), "\(hidden.stderr)")
        #expect(!hidden.stderr.contains("cannot create"), "an existing directory reported as missing: \(hidden.stderr)")
        let missing = try await runAsNobody(dataDir: scratch + "/readonly/data")
        #expect(missing.exited && missing.status == 1, "\(missing)")
        #expect(missing.stderr.contains("cannot create it: Permission denied"), "\(missing.stderr)")
        #expect(!FileManager.default.fileExists(atPath: scratch + "/readonly/data"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch + "/private/data").isEmpty, "nothing created")
    }

    @Test func peerFromAnotherClusterIsRefusedBothSidesLogTheReasonAndNothingChanges() async throws {
        let cluster = try await Cluster.start(nodes: 3)
        defer { cluster.shutdown() }
        _ = try await cluster.waitForLeader()
        _ = try await cluster.executeWithRetry([Self.createTable], clientID: "setup", requestNumber: 1)
        _ = try await cluster.executeWithRetry([("INSERT INTO items(name) VALUES ('seed')", [])], clientID: "setup", requestNumber: 2)
        try await cluster.waitUntil("every node committed and applied the seed") {
            for id in 1...3 where try await cluster.count("items", on: id) != 1 { return false }
            return true
        }
        var before: [Int: (op: Int, commit: Int)] = [:]
        for id in 1...3 {
            let now: (op: Int, commit: Int) = try #require(await cluster.opAndCommit(id))
            before[id] = now
        }

        let base = cluster.portBase
        let target = cluster.nodes[1]
        let foreignLog = cluster.root + "/foreign.log"
        let foreign = try Cluster.spawn(Cluster.binary, [], environment: [
            "KMB_NODE_ID": "9",
            "KMB_CLUSTER_NAME": "other",
            "KMB_CLUSTER_PEERS": "9=127.0.0.1:\(base + 91),2=127.0.0.1:\(target.clusterPort)",
            "KMB_BIND_ADDRESS": "127.0.0.1:\(base + 90)",
            "KMB_CLUSTER_ADDRESS": "127.0.0.1:\(base + 91)",
            "KMB_METRICS_ADDRESS": "127.0.0.1:\(base + 92)",
            "KMB_DATA_DIR": cluster.root + "/foreign",
            "KMB_LOG_LEVEL": "info",
        ], logFile: foreignLog)
        defer { Cluster.reap(foreign) }

        try await cluster.waitUntil("node 2 refuses the foreign peer and the foreign node logs the rejection", timeout: .seconds(30)) {
            let refused = cluster.log(of: 2).split(separator: "\n").contains { $0.contains("refused peer") && $0.contains("does not match") }
            let foreignText = (try? String(contentsOfFile: foreignLog, encoding: .utf8)) ?? ""
            let rejected = foreignText.split(separator: "\n").contains { $0.contains("Rejected by") && $0.contains("does not match") }
            return refused && rejected
        }
        #expect(foreign.isRunning, "the foreign node crashed on rejection")
        let foreignText = (try? String(contentsOfFile: foreignLog, encoding: .utf8)) ?? ""
        #expect(foreignText.contains("\"\(cluster.clusterName)\"") && foreignText.contains("\"other\""), "reason does not name both clusters: \(foreignText)")

        // Nothing changed: no op logged or committed by the foreign contact, and writes still work.
        for id in 1...3 {
            let now = try #require(await cluster.opAndCommit(id))
            #expect(now.op == before[id]!.op && now.commit == before[id]!.commit, "node \(id): \(before[id]!) -> \(now)")
        }
        let members = try #require(await cluster.status(2)?["cluster_members"] as? [[String: Any]])
        #expect(!members.contains { $0["node_id"] as? Int == 9 }, "the foreign node became a member: \(members)")
        let write = try await cluster.executeWithRetry([("INSERT INTO items(name) VALUES ('after')", [])], clientID: "setup", requestNumber: 3)
        #expect(write.status == 200, "\(write.text)")
    }
}
