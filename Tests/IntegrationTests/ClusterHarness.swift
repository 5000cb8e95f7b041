import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Testing

/// Real `kimberlite-server` processes on loopback, driven like an operator
/// would: start, poll `/status` until a deadline, kill -9, SIGSTOP, restart.
/// Every wait is bounded; `shutdown()` kills every process and removes the
/// data directories.
final class Cluster: @unchecked Sendable {
    struct Node {
        let id: Int
        let clientPort: Int
        let clusterPort: Int
        let metricsPort: Int
        let dataDir: String
        let logFile: String
        var process: Process?
        /// Environment this node gets on top of the cluster's (a joining
        /// node's host:port peer list, another cluster name or node id).
        var overrides: [String: String] = [:]
    }

    /// Adds a node slot (ports from this cluster's base, its own data
    /// directory) whose environment is the cluster's plus `overrides`; not
    /// started. Returns its slot number, which `restart` and `status` take.
    func addNode(_ overrides: [String: String]) -> Int {
        let id = nodes.count + 1
        let base = nodes[0].clientPort - 10
        nodes.append(Node(id: id, clientPort: base + id * 10, clusterPort: base + id * 10 + 1, metricsPort: base + id * 10 + 2,
                          dataDir: "\(root)/node\(id)", logFile: "\(root)/node\(id).log", process: nil, overrides: overrides))
        return id
    }

    struct TimedOut: Error, CustomStringConvertible {
        let what: String
        var description: String { "timed out waiting for \(what)" }
    }

    static let binary: String = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for configuration in ["debug", "release"] {
            let path = root.appendingPathComponent(".build/\(configuration)/kimberlite-server").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return root.appendingPathComponent(".build/debug/kimberlite-server").path
    }()

    static let client = HTTPClient.shared

    let root: String
    var nodes: [Node]
    let extraEnvironment: [String: String]
    /// Consensus and request timeouts written to each node's config file.
    var timeouts = Timeouts()
    /// TOML appended to each node's config file (sections of its own, e.g. `[projections]`).
    var extraConfig = ""

    struct Timeouts {
        var electionMin = "600ms"
        var electionMax = "1200ms"
        var request = "3s"
    }
    let clusterName: String

    /// Starts `count` nodes with a unique port range. Election timeouts are
    /// longer than the defaults so a loaded 2-core machine does not see
    /// spurious view changes.
    static func start(nodes count: Int, syncMode: String = "fsync", clusterName: String? = nil,
                      environment: [String: String] = [:]) async throws -> Cluster {
        let cluster = try prepare(nodes: count, syncMode: syncMode, clusterName: clusterName, environment: environment)
        for index in cluster.nodes.indices { try cluster.launch(index) }
        return cluster
    }

    /// The same cluster with no process started yet; `restart(id)` starts one.
    /// `clusterName` defaults to a name unique to this cluster, so a node that
    /// ever reached another test's cluster would be refused, not merged.
    static func prepare(nodes count: Int, syncMode: String = "fsync", clusterName: String? = nil,
                        environment: [String: String] = [:]) throws -> Cluster {
        try Cluster(count: count, clusterName: clusterName ?? "itest-\(UUID().uuidString.prefix(8).lowercased())", environment: environment.merging(["KMB_SYNC_MODE": syncMode]) { a, _ in a })
    }

    private init(count: Int, clusterName: String, environment: [String: String]) throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("kmb-itest-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let base = Cluster.allocatePortBase()
        let directory = root
        nodes = (1...count).map { id in
            Node(id: id, clientPort: base + id * 10, clusterPort: base + id * 10 + 1, metricsPort: base + id * 10 + 2,
                 dataDir: "\(directory)/node\(id)", logFile: "\(directory)/node\(id).log", process: nil)
        }
        extraEnvironment = environment
        self.clusterName = clusterName
    }


    /// Port bases already handed to a cluster in this test process. Tests in
    /// different suites run in parallel; without this two clusters could pick
    /// the same base before either had bound it, and join each other.
    nonisolated(unsafe) private static var reservedBases = Set<Int>()
    private static let reservedBasesLock = NSLock()

    /// A port base from 10000–32000 (below Linux's ephemeral range, 32768+,
    /// so no outgoing connection holds one) whose 100 ports are free now and
    /// that no other cluster in this process was given.
    private static func allocatePortBase() -> Int {
        reservedBasesLock.lock()
        defer { reservedBasesLock.unlock() }
        let candidates = (100...320).map { $0 * 100 }.filter { !reservedBases.contains($0) }.shuffled()
        guard let base = candidates.first(where: { (($0)..<($0 + 100)).allSatisfy(portIsFree) }) ?? candidates.first else {
            preconditionFailure("all 221 port bases are held by live test clusters")
        }
        reservedBases.insert(base)
        return base
    }

    /// Returns a base to the pool once its cluster's processes are gone.
    private static func releasePortBase(_ base: Int) {
        reservedBasesLock.lock()
        defer { reservedBasesLock.unlock() }
        reservedBases.remove(base)
    }

    private static func portIsFree(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    /// The founding members (`id=host:port`); added nodes are not in it.
    var peerList: String { founders.map { "\($0.id)=127.0.0.1:\($0.clusterPort)" }.joined(separator: ",") }
    private var founders: [Node] { nodes.filter { $0.overrides.isEmpty } }

    func environment(for node: Node) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("KMB_") && $0.key != "RUST_LOG" }
        environment["KMB_NODE_ID"] = "\(node.id)"
        environment["KMB_BIND_ADDRESS"] = "127.0.0.1:\(node.clientPort)"
        environment["KMB_CLUSTER_ADDRESS"] = "127.0.0.1:\(node.clusterPort)"
        environment["KMB_METRICS_ADDRESS"] = "127.0.0.1:\(node.metricsPort)"
        environment["KMB_CLUSTER_NAME"] = clusterName
        environment["KMB_CLUSTER_PEERS"] = founders.count == 1 ? "" : peerList
        environment["KMB_DATA_DIR"] = node.dataDir
        environment["KMB_LOG_LEVEL"] = "info"
        for (key, value) in extraEnvironment { environment[key] = value }
        for (key, value) in node.overrides { environment[key] = value }
        return environment
    }

    /// Writes a config file with longer consensus timeouts and returns its path.
    func configFile(for node: Node) throws -> String {
        let path = "\(root)/node\(node.id).toml"
        let text = """
        [server]
        node_id = \(node.id)

        [consensus]
        heartbeat_interval = "50ms"
        election_timeout_min = "\(timeouts.electionMin)"
        election_timeout_max = "\(timeouts.electionMax)"

        [limits]
        request_timeout = "\(timeouts.request)"
        max_result_rows = 1000
        max_record_size = "64KB"
        max_batch_size = "256KB"

        [logging]
        slow_query_threshold = "0ms"

        \(extraConfig)
        """
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func launch(_ index: Int) throws {
        let node = nodes[index]
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Cluster.binary)
        process.arguments = ["--config", try configFile(for: node)]
        process.environment = environment(for: node)
        FileManager.default.createFile(atPath: node.logFile, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: node.logFile))
        handle.seekToEndOfFile()
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        nodes[index].process = process
    }

    func kill9(_ id: Int) {
        guard let process = nodes[id - 1].process else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        nodes[id - 1].process = nil
    }

    func signal(_ id: Int, _ signal: Int32) {
        guard let process = nodes[id - 1].process else { return }
        kill(process.processIdentifier, signal)
    }

    func restart(_ id: Int) throws { try launch(id - 1) }

    func shutdown() {
        for node in nodes {
            if let process = node.process {
                kill(process.processIdentifier, SIGCONT)
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }
        Cluster.releasePortBase(portBase)
        if ProcessInfo.processInfo.environment["KMB_KEEP_TEST_DIRS"] == nil {
            try? FileManager.default.removeItem(atPath: root)
        }
    }

    func log(of id: Int) -> String {
        (try? String(contentsOfFile: nodes[id - 1].logFile, encoding: .utf8)) ?? ""
    }

    // MARK: - HTTP

    struct HTTPReply: @unchecked Sendable {
        let status: Int
        let body: [String: Any]
        let text: String
    }

    func http(_ method: HTTPMethod, port: Int, path: String, json: Any? = nil, timeout: Int64 = 10) async throws -> HTTPReply {
        var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
        request.method = method
        if let json {
            let data = try JSONSerialization.data(withJSONObject: json)
            request.body = .bytes(ByteBuffer(bytes: data))
            request.headers.add(name: "content-type", value: "application/json")
        }
        let response = try await Cluster.client.execute(request, timeout: .seconds(timeout))
        let bytes = try await response.body.collect(upTo: 64 << 20)
        let text = String(buffer: bytes)
        let object = (try? JSONSerialization.jsonObject(with: Data(bytes.readableBytesView))) as? [String: Any] ?? [:]
        return HTTPReply(status: Int(response.status.code), body: object, text: text)
    }

    func status(_ id: Int) async -> [String: Any]? {
        try? await http(.GET, port: nodes[id - 1].metricsPort, path: "/status", timeout: 2).body
    }

    func metrics(_ id: Int) async throws -> String {
        try await http(.GET, port: nodes[id - 1].metricsPort, path: "/metrics").text
    }

    /// Polls until `condition` holds or `timeout` passes.
    func waitUntil(_ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(100))  // poll interval
        }
        // Checked once more at the deadline: on a loaded machine this task can
        // be scheduled again only after the deadline, and a condition that
        // became true meanwhile is not a timeout.
        if try await condition() { return }
        throw TimedOut(what: what)
    }

    /// Waits until every node in `among` reports the same leader in normal status; returns it.
    @discardableResult
    func waitForLeader(among: [Int]? = nil, excluding: Int? = nil, timeout: Duration = .seconds(40)) async throws -> Int {
        let ids = among ?? nodes.map(\.id).filter { $0 != excluding && nodes[$0 - 1].process != nil }
        var leader = 0
        try await waitUntil("a leader among \(ids)", timeout: timeout) {
            var seen: Set<Int> = []
            for id in ids {
                guard let status = await status(id), status["status"] as? String == "normal",
                      let leaderID = status["leader_id"] as? Int, leaderID != 0 else { return false }
                seen.insert(leaderID)
            }
            guard seen.count == 1, let only = seen.first, only != excluding else { return false }
            leader = only
            return true
        }
        return leader
    }

    func execute(on id: Int, _ statements: [(String, [Any])], clientID: String? = nil, requestNumber: Int? = nil) async throws -> HTTPReply {
        var body: [String: Any] = ["statements": statements.map { ["sql": $0.0, "params": $0.1] }]
        if let clientID { body["client_id"] = clientID }
        if let requestNumber { body["request_number"] = requestNumber }
        return try await http(.POST, port: nodes[id - 1].clientPort, path: "/v1/execute", json: body)
    }

    func query(on id: Int, _ sql: String, params: [Any] = [], consistency: String = "strong") async throws -> HTTPReply {
        try await http(.POST, port: nodes[id - 1].clientPort, path: "/v1/query",
                       json: ["sql": sql, "params": params, "consistency": consistency])
    }

    /// Executes with retries on 503/504 (no leader yet, failover), keeping the request number.
    func executeWithRetry(_ statements: [(String, [Any])], clientID: String, requestNumber: Int,
                          nodes candidates: [Int]? = nil, timeout: Duration = .seconds(40)) async throws -> HTTPReply {
        let ids = candidates ?? nodes.map(\.id)
        var reply: HTTPReply?
        var attempt = 0
        try await waitUntil("write \(clientID)#\(requestNumber) accepted", timeout: timeout) {
            let id = ids[attempt % ids.count]
            attempt += 1
            guard nodes[id - 1].process != nil else { return false }
            guard let answer = try? await execute(on: id, statements, clientID: clientID, requestNumber: requestNumber) else { return false }
            if answer.status == 503 || answer.status == 504 { return false }
            reply = answer
            return true
        }
        return reply!
    }

    func count(_ table: String, on id: Int, consistency: String = "stale") async throws -> Int? {
        let reply = try await query(on: id, "SELECT count(*) FROM \(table)", consistency: consistency)
        return ((reply.body["rows"] as? [[Any]])?.first?.first as? Int)
    }

    /// The metric's value (first sample line starting with `name`), or nil.
    static func metricValue(_ text: String, _ name: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") || line.hasPrefix(name + "{") {
            if let value = line.split(separator: " ").last.flatMap({ Double($0) }) { return value }
        }
        return nil
    }
}
