import Foundation
import Testing
@testable import KimberliteServer

/// A temporary directory removed by `cleanup()`.
struct TempDir {
    let path: String
    init() throws {
        path = FileManager.default.temporaryDirectory
            .appendingPathComponent("kmb-config-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }
    @discardableResult
    func write(_ name: String, _ text: String) throws -> String {
        let target = file(name)
        try text.write(toFile: target, atomically: true, encoding: .utf8)
        return target
    }
    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

/// Loads with no default config file on disk, so the machine's /etc does not leak in.
func load(file: String? = nil, env: [String: String] = [:], flags: ConfigFlags = ConfigFlags()) throws(ConfigError) -> ServerConfig {
    try ConfigLoader.load(configPath: file, environment: env, flags: flags,
                          defaultConfigPath: "/nonexistent/kimberlite/config.toml")
}

/// Runs `body`, expecting a ConfigError; returns it.
func expectConfigError(_ body: () throws -> ServerConfig,
                       sourceLocation: SourceLocation = #_sourceLocation) -> ConfigError? {
    do {
        let config = try body()
        Issue.record("expected a config error, got \(config)", sourceLocation: sourceLocation)
        return nil
    } catch let error as ConfigError {
        #expect(error.exitCode == 78, sourceLocation: sourceLocation)
        #expect(!error.description.contains("\n"), "one line", sourceLocation: sourceLocation)
        return error
    } catch {
        Issue.record("expected a ConfigError, got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

@Suite("Configuration")
struct ConfigTests {
    // MARK: Defaults

    @Test func defaultsMatchTheDesign() throws {
        let config = try load(flags: ConfigFlags(nodeID: "1"))
        #expect(config == ServerConfig(nodeID: 1))
        #expect(config.server.bindAddress == HostPort(host: "127.0.0.1", port: 7000))
        #expect(config.server.clusterAddress == HostPort(host: "127.0.0.1", port: 7001))
        #expect(config.server.clusterName == "default")
        #expect(config.server.clusterPeers.isEmpty)
        #expect(config.storage.dataDir == "/var/lib/kimberlite")
        #expect(config.storage.segmentSize == 64 * 1024 * 1024)
        #expect(config.storage.syncMode == .fsync)
        #expect(config.consensus.heartbeatInterval == .milliseconds(100))
        #expect(config.consensus.electionTimeoutMin == .milliseconds(150))
        #expect(config.consensus.electionTimeoutMax == .milliseconds(300))
        #expect(config.consensus.maxEntriesPerRPC == 100)
        #expect(config.consensus.maxClockSkew == .milliseconds(500))
        #expect(config.projections.cacheSize == 1024 * 1024 * 1024)
        #expect(config.projections.checkpointInterval == 10_000)
        #expect(config.security.tlsCert == nil && config.security.tlsKey == nil && config.security.tlsCA == nil)
        #expect(config.security.requireClientCert == false)
        #expect(config.limits.maxRecordSize == 1024 * 1024)
        #expect(config.limits.maxBatchSize == 10 * 1024 * 1024)
        #expect(config.limits.maxResultRows == 100_000)
        #expect(config.limits.requestTimeout == .seconds(5))
        #expect(config.telemetry.metricsAddress == HostPort(host: "127.0.0.1", port: 9090))
        #expect(config.logging.level == LogFilter(defaultLevel: .info))
        #expect(config.logging.format == .text)
        #expect(config.logging.file == nil)
        #expect(config.logging.slowQueryThreshold == .milliseconds(100))
        #expect(config.logging.slowFsyncThreshold == .milliseconds(10))
    }

    @Test func nodeIDIsRequired() {
        let error = expectConfigError { try load() }
        #expect(error?.description.hasPrefix("[server] node_id is required") == true)
    }

    @Test func fullFileIsRead() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = try dir.write("config.toml", """
            [server]
            bind_address = "0.0.0.0:8000"
            cluster_address = "[::1]:8001"
            node_id = 2
            cluster_name = "production"
            cluster_peers = ["1=node1:7001", "2=node2:7001", "3=node3:7001"]

            [storage]
            data_dir = "/data/kmb"
            segment_size = "4KiB"
            sync_mode = "async"

            [consensus]
            heartbeat_interval = "500us"
            election_timeout_min = "1s"
            election_timeout_max = "1m"
            max_entries_per_rpc = 7
            max_clock_skew = "250ms"

            [projections]
            cache_size = 512
            checkpoint_interval = 5

            [security]
            tls_cert = "/etc/kimberlite/server.crt"
            tls_key = "/etc/kimberlite/server.key"
            tls_ca = "/etc/kimberlite/ca.crt"
            require_client_cert = true

            [limits]
            max_record_size = "2MB"
            max_batch_size = "1GB"
            max_result_rows = 10
            request_timeout = "1.5s"

            [telemetry]
            metrics_address = "node2:9191"

            [logging]
            level = "warn"
            format = "json"
            file = "/var/log/kimberlite/server.log"
            slow_query_threshold = "0ms"
            slow_fsync_threshold = "2ms"
            """)
        let c = try load(file: path)
        #expect(c.server.bindAddress == HostPort(host: "0.0.0.0", port: 8000))
        #expect(c.server.clusterAddress == HostPort(host: "::1", port: 8001))
        #expect(c.server.nodeID == 2)
        #expect(c.server.clusterName == "production")
        #expect(c.server.clusterPeers == [PeerAddress(nodeID: 1, host: "node1", port: 7001),
                                          PeerAddress(nodeID: 2, host: "node2", port: 7001),
                                          PeerAddress(nodeID: 3, host: "node3", port: 7001)])
        #expect(c.storage == { var s = ServerConfig.Storage(); s.dataDir = "/data/kmb"; s.segmentSize = 4096; s.syncMode = .async; return s }())
        #expect(c.consensus.heartbeatInterval == .microseconds(500))
        #expect(c.consensus.electionTimeoutMin == .seconds(1))
        #expect(c.consensus.electionTimeoutMax == .seconds(60))
        #expect(c.consensus.maxEntriesPerRPC == 7)
        #expect(c.consensus.maxClockSkew == .milliseconds(250))
        #expect(c.projections.cacheSize == 512 && c.projections.checkpointInterval == 5)
        #expect(c.security.tlsKey == "/etc/kimberlite/server.key" && c.security.requireClientCert)
        #expect(c.limits.maxRecordSize == 2 << 20 && c.limits.maxBatchSize == 1 << 30)
        #expect(c.limits.maxResultRows == 10 && c.limits.requestTimeout == .milliseconds(1500))
        #expect(c.telemetry.metricsAddress == HostPort(host: "node2", port: 9191))
        #expect(c.logging.level == LogFilter(defaultLevel: .warn))
        #expect(c.logging.format == .json && c.logging.file == "/var/log/kimberlite/server.log")
        #expect(c.logging.slowQueryThreshold == .zero && c.logging.slowFsyncThreshold == .milliseconds(2))
    }

    // MARK: Precedence

    @Test func flagBeatsEnvironmentBeatsFileBeatsDefault() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = try dir.write("config.toml", """
            [server]
            node_id = 1
            bind_address = "10.0.0.1:7000"
            cluster_peers = ["1=file1:7001", "2=file2:7001", "3=file3:7001"]
            [storage]
            data_dir = "/file/data"
            """)
        let env = ["KMB_NODE_ID": "2", "KMB_BIND_ADDRESS": "10.0.0.2:7000",
                   "KMB_DATA_DIR": "/env/data", "KMB_CLUSTER_PEERS": "2=env2:7001, 3=env3:7001"]
        let flags = ConfigFlags(nodeID: "3", bind: "10.0.0.3:7000", dataDir: "/flag/data",
                                clusterPeers: "3=flag3:7001")

        let fromFlags = try load(file: path, env: env, flags: flags)
        #expect(fromFlags.server.nodeID == 3)
        #expect(fromFlags.server.bindAddress.host == "10.0.0.3")
        #expect(fromFlags.storage.dataDir == "/flag/data")
        #expect(fromFlags.server.clusterPeers == [PeerAddress(nodeID: 3, host: "flag3", port: 7001)])

        let fromEnv = try load(file: path, env: env)
        #expect(fromEnv.server.nodeID == 2)
        #expect(fromEnv.server.bindAddress.host == "10.0.0.2")
        #expect(fromEnv.storage.dataDir == "/env/data")
        #expect(fromEnv.server.clusterPeers.map(\.host) == ["env2", "env3"])

        let fromFile = try load(file: path)
        #expect(fromFile.server.nodeID == 1)
        #expect(fromFile.server.bindAddress.host == "10.0.0.1")
        #expect(fromFile.storage.dataDir == "/file/data")
        #expect(fromFile.server.clusterPeers.count == 3)

        let fromDefaults = try load(flags: ConfigFlags(nodeID: "1"))
        #expect(fromDefaults.server.bindAddress.host == "127.0.0.1")
        #expect(fromDefaults.storage.dataDir == "/var/lib/kimberlite")
        #expect(fromDefaults.server.clusterPeers.isEmpty)
    }

    @Test func environmentOverridesEachOfItsKeys() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = try dir.write("config.toml", """
            [server]
            node_id = 1
            cluster_address = "a:1"
            cluster_name = "file"
            [storage]
            sync_mode = "fsync"
            [telemetry]
            metrics_address = "a:2"
            """)
        let c = try load(file: path, env: [
            "KMB_CLUSTER_ADDRESS": "0.0.0.0:7001", "KMB_CLUSTER_NAME": "production",
            "KMB_SYNC_MODE": "async", "KMB_METRICS_ADDRESS": "0.0.0.0:9090",
        ])
        #expect(c.server.clusterAddress == HostPort(host: "0.0.0.0", port: 7001))
        #expect(c.server.clusterName == "production")
        #expect(c.storage.syncMode == .async)
        #expect(c.telemetry.metricsAddress == HostPort(host: "0.0.0.0", port: 9090))
    }

    @Test func emptyEnvironmentValuesCountAsUnset() throws {
        let c = try load(env: ["KMB_NODE_ID": "4", "KMB_DATA_DIR": "", "KMB_LOG": " ", "KMB_CLUSTER_PEERS": ""])
        #expect(c.server.nodeID == 4)
        #expect(c.storage.dataDir == "/var/lib/kimberlite")
        #expect(c.logging.level == LogFilter(defaultLevel: .info))
    }

    @Test func logLevelOrderIsFlagThenKMBLogThenRustLogThenKMBLogLevelThenFile() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = try dir.write("config.toml", "[server]\nnode_id = 1\n[logging]\nlevel = \"error\"\n")
        var env = ["KMB_LOG_LEVEL": "warn", "RUST_LOG": "info", "KMB_LOG": "debug"]
        func level(_ flags: ConfigFlags = ConfigFlags()) throws -> LogFilter {
            try load(file: path, env: env, flags: flags).logging.level
        }
        #expect(try level(ConfigFlags(logLevel: "trace")) == LogFilter(defaultLevel: .trace))
        #expect(try level() == LogFilter(defaultLevel: .debug))       // KMB_LOG
        env["KMB_LOG"] = nil
        #expect(try level() == LogFilter(defaultLevel: .info))        // RUST_LOG
        env["RUST_LOG"] = nil
        #expect(try level() == LogFilter(defaultLevel: .warn))        // KMB_LOG_LEVEL
        env["KMB_LOG_LEVEL"] = nil
        #expect(try level() == LogFilter(defaultLevel: .error))       // [logging] level
        #expect(try load(flags: ConfigFlags(nodeID: "1")).logging.level == LogFilter(defaultLevel: .info))
    }

    @Test func kmbLogWinsOverRustLogAndFiltersKeepTheNextPlainLevel() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = try dir.write("config.toml", "[server]\nnode_id = 1\n[logging]\nlevel = \"warn\"\n")
        let both = try load(file: path, env: ["RUST_LOG": "kimberlite=debug",
                                              "KMB_LOG": "kimberlite=info,kimberlite.vsr=trace"])
        #expect(both.logging.level.description == "warn,kimberlite=info,kimberlite.vsr=trace")
        #expect(both.logging.level.level(forLabel: "kimberlite.vsr") == .trace)
        #expect(both.logging.level.level(forLabel: "kimberlite.storage") == .info)
        #expect(both.logging.level.level(forLabel: "nio") == .warn)

        // The spec's runbook: export RUST_LOG=kimberlite=debug.
        let rust = try load(file: path, env: ["RUST_LOG": "kimberlite=debug"])
        #expect(rust.logging.level.level(forLabel: "kimberlite.projection") == .debug)
        #expect(rust.logging.level.level(forLabel: "hummingbird") == .warn)

        // A plain level in a higher source becomes the default for unnamed labels.
        let mixed = try load(file: path, env: ["RUST_LOG": "kimberlite.vsr=trace", "KMB_LOG_LEVEL": "error"])
        #expect(mixed.logging.level.description == "error,kimberlite.vsr=trace")

        // --log-level replaces the directives too.
        let flag = try load(file: path, env: ["KMB_LOG": "kimberlite.vsr=trace"], flags: ConfigFlags(logLevel: "debug"))
        #expect(flag.logging.level == LogFilter(defaultLevel: .debug))
    }

    // MARK: Errors from the file

    @Test func unknownKeyIsNamedWithItsLine() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = try dir.write("config.toml", """
            # Kimberlite
            [server]
            node_id = 1

            [storage]
            data_dir = "/x"
            sync_mod = "async"
            """)
        let error = expectConfigError { try load(file: path) }
        #expect(error?.description == "[storage] sync_mod is not a known key (did you mean sync_mode?) (\(path) line 7)")
        #expect(error?.key == "[storage] sync_mod")
        #expect(error?.source == .file(path: path, line: 7))
    }

    @Test func unknownSectionAndTopLevelKeyAreErrors() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let section = try dir.write("a.toml", "[server]\nnode_id = 1\n\n[replication]\nfactor = 3\n")
        let error = expectConfigError { try load(file: section) }
        #expect(error?.description == "[replication] is not a known section (\(section) line 4)")

        let topLevel = try dir.write("b.toml", "node_id = 1\n[server]\nnode_id = 1\n")
        let topError = expectConfigError { try load(file: topLevel) }
        #expect(topError?.description.hasPrefix("node_id = 1 is not a known key") == true)
        #expect(topError?.description.contains("\(topLevel) line 1") == true)
    }

    @Test func badDurationNamesKeyValueAndLine() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = try dir.write("config.toml", """
            [server]
            node_id = 1
            cluster_peers = [
                "1=node1:7001",
                "2=node2:7001",
                "3=node3:7001",
            ]

            [storage]
            data_dir = "/var/lib/kimberlite"

            [consensus]
            heartbeat_interval = "100ms"
            election_timeout_min = "15o ms"
            election_timeout_max = "300ms"
            """)
        let error = expectConfigError { try load(file: path) }
        #expect(error?.description == "[consensus] election_timeout_min = \"15o ms\" is not a duration such as \"150ms\", \"5s\" or \"1m\" (\(path) line 14)")
        #expect(error?.source == .file(path: path, line: 14))
    }

    @Test(arguments: [
        ("node_id = \"3\"", "[server] node_id = \"3\" is not an integer"),
        ("node_id = 1\nbind_address = \"localhost\"", "[server] bind_address = \"localhost\" is not a host:port address"),
        ("node_id = 1\nbind_address = \"localhost:0\"", "[server] bind_address = \"localhost:0\" has port 0, outside 1-65535"),
        ("node_id = 1\nbind_address = \"localhost:65536\"", "[server] bind_address = \"localhost:65536\" has port 65536"),
        ("node_id = 1\ncluster_name = \"\"", "[server] cluster_name = \"\" is empty"),
        ("node_id = 1\ncluster_peers = \"1=a:1\"", "[server] cluster_peers = \"1=a:1\" is not an array"),
        ("node_id = 1\n[storage]\nsync_mode = \"sometimes\"", "[storage] sync_mode = \"sometimes\" is not a sync mode"),
        ("node_id = 1\n[storage]\nsegment_size = \"0MB\"", "[storage] segment_size = \"0MB\" must be greater than 0"),
        ("node_id = 1\n[storage]\nsegment_size = -5", "[storage] segment_size = -5 must be greater than 0"),
        ("node_id = 1\n[storage]\nsegment_size = \"64 parsecs\"", "[storage] segment_size = \"64 parsecs\" is not a size"),
        ("node_id = 1\n[consensus]\nheartbeat_interval = 100", "[consensus] heartbeat_interval = 100 is not a duration"),
        ("node_id = 1\n[consensus]\nheartbeat_interval = \"0ms\"", "[consensus] heartbeat_interval = \"0ms\" must be greater than 0"),
        ("node_id = 1\n[consensus]\nmax_entries_per_rpc = 0", "[consensus] max_entries_per_rpc = 0 must be greater than 0"),
        ("node_id = 1\n[consensus]\nmax_entries_per_rpc = 1.5", "[consensus] max_entries_per_rpc = 1.5 is not an integer"),
        ("node_id = 1\n[security]\nrequire_client_cert = \"yes\"", "[security] require_client_cert = \"yes\" is not a boolean"),
        ("node_id = 1\n[logging]\nlevel = \"verbose\"", "[logging] level = \"verbose\" has \"verbose\", which is not a log level"),
        ("node_id = 1\n[logging]\nformat = \"xml\"", "[logging] format = \"xml\" is not a log format (text, json or journal)"),
    ])
    func badValuesInTheFileAreNamed(body: String, expectedPrefix: String) throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = try dir.write("config.toml", "[server]\n" + body + "\n")
        let error = expectConfigError { try load(file: path) }
        #expect(error?.description.hasPrefix(expectedPrefix) == true, "\(error?.description ?? "")")
        #expect(error?.description.contains(path + " line ") == true)
    }

    @Test func tomlSyntaxErrorGivesTheLine() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = try dir.write("config.toml", "[server]\nnode_id = 1\ncluster_name = \"unterminated\n")
        let error = expectConfigError { try load(file: path) }
        #expect(error?.description.hasPrefix("\(path): invalid TOML:") == true)
        #expect(error?.description.hasSuffix("(line 3)") == true, "\(error?.description ?? "")")
    }

    @Test func explicitConfigPathMustExistButDefaultPathIsOptional() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let missing = dir.file("nope.toml")
        let error = expectConfigError { try load(file: missing) }
        #expect(error?.description == "\(missing): config file not found")
        let directory = expectConfigError { try load(file: dir.path) }
        #expect(directory?.description == "\(dir.path): config file is a directory")

        // With no --config, the default path is read only when it exists.
        let fallback = try dir.write("default.toml", "[server]\nnode_id = 9\n")
        let found = try ConfigLoader.load(configPath: nil, environment: [:], flags: ConfigFlags(), defaultConfigPath: fallback)
        #expect(found.server.nodeID == 9)
        let absent = try ConfigLoader.load(configPath: nil, environment: ["KMB_NODE_ID": "5"], flags: ConfigFlags(),
                                           defaultConfigPath: missing)
        #expect(absent.server.nodeID == 5)
    }

    // MARK: node_id range from every source

    @Test(arguments: [0, 256, 300])
    func outOfRangeNodeIDExits78FromEverySource(id: Int) throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = try dir.write("config.toml", "[server]\ncluster_name = \"x\"\nnode_id = \(id)\n")
        let file = expectConfigError { try load(file: path) }
        #expect(file?.description == "[server] node_id = \(id) is out of range 1-255 (\(path) line 3)")

        let env = expectConfigError { try load(env: ["KMB_NODE_ID": "\(id)"]) }
        #expect(env?.description == "KMB_NODE_ID = \"\(id)\" is out of range 1-255 (environment variable for [server] node_id)")
        #expect(env?.source == .environment(variable: "KMB_NODE_ID"))

        let flag = expectConfigError { try load(flags: ConfigFlags(nodeID: "\(id)")) }
        #expect(flag?.description == "--node-id \(id) is out of range 1-255 (command-line flag for [server] node_id)")
        #expect(flag?.source == .flag(name: "--node-id"))
    }

    @Test func badValueInALowerSourceIsStillAnError() {
        // A typo in the environment is reported even when a flag overrides it.
        let error = expectConfigError { try load(env: ["KMB_NODE_ID": "two"], flags: ConfigFlags(nodeID: "2")) }
        #expect(error?.description.hasPrefix("KMB_NODE_ID = \"two\" is not a node id") == true)
    }

    @Test func badFlagValuesAreNamed() {
        #expect(expectConfigError { try load(flags: ConfigFlags(nodeID: "1", bind: "nohost")) }?
            .description.hasPrefix("--bind nohost is not a host:port address") == true)
        #expect(expectConfigError { try load(flags: ConfigFlags(nodeID: "1", dataDir: "")) }?
            .description == "--data-dir \"\" is empty (command-line flag for [storage] data_dir)")
        #expect(expectConfigError { try load(flags: ConfigFlags(nodeID: "1", logLevel: "loud")) }?
            .description.hasPrefix("--log-level loud has \"loud\", which is not a log level") == true)
        #expect(expectConfigError { try load(env: ["KMB_LOG": "kimberlite=chatty"], flags: ConfigFlags(nodeID: "1")) }?
            .description.hasPrefix("KMB_LOG = \"kimberlite=chatty\" has \"kimberlite=chatty\", whose level \"chatty\" is not a log level") == true)
        #expect(expectConfigError { try load(env: ["KMB_SYNC_MODE": "never"], flags: ConfigFlags(nodeID: "1")) }?
            .description.hasPrefix("KMB_SYNC_MODE = \"never\" is not a sync mode") == true)
    }

    // MARK: Peers

    @Test(arguments: [
        ("1=node1:7001,node2:7001", "has \"node2:7001\", which is not an id=host:port entry"),
        ("1=node1:7001,0=node2:7001", "has \"0=node2:7001\", whose id \"0\" is out of range 1-255"),
        ("1=node1:7001,x=node2:7001", "has \"x=node2:7001\", whose id \"x\" is not a node id"),
        ("1=node1:7001,2=node2:70001", "has \"2=node2:70001\", whose address has port 70001, outside 1-65535"),
        ("1=node1:7001,2=:7001", "has \"2=:7001\", whose address is not a host:port address"),
        ("1=node1:7001,1=node2:7001", "has node id 1 twice"),
        ("1=node1:7001,,2=node2:7001", "has an empty entry"),
        ("node1:7001,2=node2:7001", "has \"2=node2:7001\" among host:port entries"),
        ("node1:7001,node2", "has \"node2\", whose address is not a host:port address"),
        ("1=\(String(repeating: "a", count: 254)):7001",
         "has \"1=\(String(repeating: "a", count: 254)):7001\", whose address is not a host:port address (the host is 254 bytes; at most 253)"),
    ])
    func badPeerEntriesAreNamed(list: String, problem: String) {
        let env = expectConfigError { try load(env: ["KMB_NODE_ID": "1", "KMB_CLUSTER_PEERS": list]) }
        #expect(env?.description.hasPrefix("KMB_CLUSTER_PEERS = \"\(list)\" \(problem)") == true, "\(env?.description ?? "")")
        let flag = expectConfigError { try load(flags: ConfigFlags(nodeID: "1", clusterPeers: list)) }
        #expect(flag?.description.hasPrefix("--cluster-peers \(list) \(problem)") == true, "\(flag?.description ?? "")")
    }

    @Test func badPeerInTheFileGivesTheLine() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = try dir.write("config.toml", "[server]\nnode_id = 1\ncluster_peers = [\"1=a:7001\", \"node2:7001\"]\n")
        let error = expectConfigError { try load(file: path) }
        #expect(error?.description == "[server] cluster_peers = [\"1=a:7001\", \"node2:7001\"] has \"node2:7001\", which is not an id=host:port entry like \"1=node1:7001\" (\(path) line 3)")
    }

    /// `--cluster-peers "node1:7001"` (no ids) names members of a running
    /// cluster to join (DESIGN.md §2b), and `--show-config` shows it as given.
    @Test func peersWithoutIdsAreAddressesToJoinThrough() throws {
        let config = try load(flags: ConfigFlags(nodeID: "4", clusterPeers: "node1:7001, [::1]:7101"))
        #expect(config.server.joinAddresses == [HostPort(host: "node1", port: 7001), HostPort(host: "::1", port: 7101)])
        #expect(config.server.clusterPeers.isEmpty)
        #expect(config.renderTOML(redactSecrets: true).contains("cluster_peers = [\"node1:7001\", \"[::1]:7101\"]"))
        // The node id need not be in a join list; a later member list replaces it.
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = try dir.write("config.toml", "[server]\nnode_id = 4\ncluster_peers = [\"node1:7001\"]\n")
        #expect(try load(file: path).server.joinAddresses.count == 1)
        let replaced = try load(file: path, flags: ConfigFlags(clusterPeers: "4=a:7001"))
        #expect(replaced.server.joinAddresses.isEmpty && replaced.server.clusterPeers.map(\.nodeID) == [4])
    }

    @Test func nodeMustBeAmongItsPeers() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = try dir.write("config.toml", "[server]\nnode_id = 1\ncluster_peers = [\"1=a:7001\", \"2=b:7001\", \"3=c:7001\"]\n")
        let error = expectConfigError { try load(file: path, flags: ConfigFlags(nodeID: "4")) }
        #expect(error?.description == "[server] node_id = 4 is not among the ids of cluster_peers (1, 2, 3) (node_id from --node-id, cluster_peers from \(path) line 3)")
        // A list of only itself is a one-node cluster.
        let single = try load(flags: ConfigFlags(nodeID: "7", clusterPeers: "7=localhost:7001"))
        #expect(single.server.clusterPeers.count == 1)
        // IPv6 peers.
        let v6 = try load(flags: ConfigFlags(nodeID: "1", clusterPeers: "1=[fd00::1]:7001"))
        #expect(v6.server.clusterPeers == [PeerAddress(nodeID: 1, host: "fd00::1", port: 7001)])
    }

    @Test func timeoutsMustBeOrdered() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let equal = try dir.write("a.toml", "[server]\nnode_id = 1\n[consensus]\nelection_timeout_min = \"300ms\"\n")
        #expect(expectConfigError { try load(file: equal) }?.description
            == "[consensus] election_timeout_min = \"300ms\" must be less than election_timeout_max = \"300ms\" (election_timeout_min from \(equal) line 4, election_timeout_max from default)")
        let heartbeat = try dir.write("b.toml", "[server]\nnode_id = 1\n[consensus]\nheartbeat_interval = \"200ms\"\n")
        #expect(expectConfigError { try load(file: heartbeat) }?.description
            == "[consensus] heartbeat_interval = \"200ms\" must be less than election_timeout_min = \"150ms\" (heartbeat_interval from \(heartbeat) line 4, election_timeout_min from default)")
    }

    // MARK: Show-config and keys not in effect

    @Test func renderedTOMLParsesBackToAnEqualConfig() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        var config = ServerConfig(nodeID: 2)
        config.server.bindAddress = HostPort(host: "0.0.0.0", port: 7000)
        config.server.clusterAddress = HostPort(host: "::", port: 7001)
        config.server.clusterName = "prod \"eu\""
        config.server.clusterPeers = [PeerAddress(nodeID: 1, host: "node1", port: 7001),
                                      PeerAddress(nodeID: 2, host: "fd00::2", port: 7001)]
        config.storage.segmentSize = 3 * 1024 + 1
        config.storage.syncMode = .async
        config.consensus.heartbeatInterval = .microseconds(1500)
        config.consensus.electionTimeoutMax = .seconds(90)
        config.projections.cacheSize = 3 << 40
        config.security.tlsKey = "/etc/kimberlite/server.key"
        config.security.requireClientCert = true
        config.limits.requestTimeout = .seconds(3600)
        config.logging.level = LogFilter(defaultLevel: .warn, directives: [.init(target: "kimberlite.vsr", level: .trace)])
        config.logging.format = .json
        config.logging.file = "/var/log/kimberlite/server.log"
        config.logging.slowQueryThreshold = .zero

        for original in [config, ServerConfig(nodeID: 1)] {
            let text = original.renderTOML(redactSecrets: true)
            let path = try dir.write("shown.toml", text)
            let parsed = try load(file: path)
            #expect(parsed == original, "\(text)")
            for section in ConfigKey.sections { #expect(text.contains("\n[\(section)]\n")) }
        }
        let defaults = ServerConfig(nodeID: 1).renderTOML()
        #expect(defaults.contains("\n# tls_cert = \"\"  # unset; not in effect yet\n"))
        #expect(defaults.contains("\n# file = \"\"  # unset\n"))
        #expect(defaults.contains("\nsegment_size = \"64MB\"\n"))
        #expect(defaults.contains("\nelection_timeout_min = \"150ms\"\n"))
        #expect(defaults.contains("\ncluster_peers = []\n"))
        #expect(defaults.contains("\nmax_clock_skew = \"500ms\"  # not in effect yet\n"))
        #expect(config.renderTOML().contains("\ntls_key = \"/etc/kimberlite/server.key\"  # not in effect yet\n"))
    }

    @Test func keyMaterialIsRedacted() {
        var config = ServerConfig(nodeID: 1)
        config.security.tlsKey = "-----BEGIN PRIVATE KEY-----\nMIIEv...\n-----END PRIVATE KEY-----"
        let redacted = config.renderTOML(redactSecrets: true)
        #expect(!redacted.contains("MIIEv"))
        #expect(redacted.contains("tls_key = \"<redacted>\"  # not in effect yet; redacted"))
        #expect(config.renderTOML(redactSecrets: false).contains("MIIEv"))
    }

    @Test func notInEffectYetListsOnlyChangedKeys() throws {
        #expect(ServerConfig(nodeID: 1).notInEffectYet.isEmpty)
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = try dir.write("config.toml", """
            [server]
            node_id = 1
            [projections]
            cache_size = "2GB"
            checkpoint_interval = 10000
            [security]
            tls_cert = "/etc/kimberlite/server.crt"
            require_client_cert = true
            """)
        let config = try load(file: path)
        #expect(config.notInEffectYet == ["[projections] cache_size", "[security] tls_cert", "[security] require_client_cert"])
    }

    @Test func unknownKMBVariablesAreReported() {
        #expect(ConfigLoader.unknownEnvironmentVariables(["KMB_NODEID": "1", "KMB_NODE_ID": "1", "HOME": "/"]) == ["KMB_NODEID"])
    }

    // MARK: Value syntaxes

    @Test func durations() throws {
        #expect(try ConfigValueParser.duration("150ms") == .milliseconds(150))
        #expect(try ConfigValueParser.duration("5s") == .seconds(5))
        #expect(try ConfigValueParser.duration("1m") == .seconds(60))
        #expect(try ConfigValueParser.duration("2h") == .seconds(7200))
        #expect(try ConfigValueParser.duration("500us") == .microseconds(500))
        #expect(try ConfigValueParser.duration("500µs") == .microseconds(500))
        #expect(try ConfigValueParser.duration("7ns") == .nanoseconds(7))
        #expect(try ConfigValueParser.duration("1.5s") == .milliseconds(1500))
        #expect(try ConfigValueParser.duration("150 ms") == .milliseconds(150))
        for bad in ["15o ms", "", "ms", "150", "-5s", "1.2.3s", "1.5ns", "5 days", "99999999999h"] {
            #expect(throws: ConfigValueError.self, "\(bad)") { try ConfigValueParser.duration(bad) }
        }
        for d: Duration in [.milliseconds(150), .seconds(5), .seconds(60), .microseconds(500), .nanoseconds(3), .zero] {
            #expect(try ConfigValueParser.duration(ConfigValueParser.render(duration: d)) == d)
        }
        #expect(ConfigValueParser.render(duration: .seconds(60)) == "1m")
    }

    @Test func sizes() throws {
        #expect(try ConfigValueParser.size("64MB") == 64 * 1024 * 1024)
        #expect(try ConfigValueParser.size("1GB") == 1 << 30)
        #expect(try ConfigValueParser.size("4KiB") == 4096)
        #expect(try ConfigValueParser.size("512") == 512)
        #expect(try ConfigValueParser.size("512B") == 512)
        #expect(try ConfigValueParser.size("1.5GB") == 3 << 29)
        #expect(try ConfigValueParser.size("10 mb") == 10 << 20)
        for bad in ["", "MB", "64XB", "-1MB", "0.3B", "99999999999TB"] {
            #expect(throws: ConfigValueError.self, "\(bad)") { try ConfigValueParser.size(bad) }
        }
        for bytes in [1, 512, 4096, 64 << 20, 1 << 30, 3 << 40, 1025] {
            #expect(try ConfigValueParser.size(ConfigValueParser.render(size: bytes)) == bytes)
        }
    }

    @Test func lineIndexFollowsMultilineValues() {
        let index = TOMLLineIndex(text: """
            [server]
            cluster_peers = [
              "1=a:1", # [storage]
              "2=b:1",
            ]
            "node_id" = 1
            note = \"\"\"
            [limits]
            x = 1
            \"\"\"
            [ logging ]
            level = "info"
            """)
        #expect(index.line(section: "server", key: "cluster_peers") == 2)
        #expect(index.line(section: "server", key: "node_id") == 6)
        #expect(index.line(section: "server", key: "note") == 7)
        #expect(index.line(section: "limits") == nil)
        #expect(index.line(section: "logging", key: "level") == 12)
    }
}
