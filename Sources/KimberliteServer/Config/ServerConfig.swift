import Foundation
import KimberliteStorage

/// The effective configuration of `kimberlite-server`, grouped as the TOML
/// sections of `/etc/kimberlite/config.toml` (DESIGN.md §2 "Configuration").
///
/// Build one with `ConfigLoader.load(configPath:environment:flags:)`, which
/// merges defaults < file < environment < flags and validates the result.
/// Durations are `Duration`; sizes are byte counts.
public struct ServerConfig: Sendable, Equatable {
    /// `[server]`
    public struct Server: Sendable, Equatable {
        /// Client API listen address. Default 127.0.0.1:7000.
        public var bindAddress = HostPort(host: "127.0.0.1", port: 7000)
        /// VSR listen address. Default 127.0.0.1:7001.
        public var clusterAddress = HostPort(host: "127.0.0.1", port: 7001)
        /// This node's id, 1–255. Required: the loader rejects a configuration without one.
        public var nodeID: UInt8
        /// Isolates clusters. Default "default".
        public var clusterName = "default"
        /// Initial members, this node included; empty means a one-node cluster.
        public var clusterPeers: [PeerAddress] = []
        /// `cluster_peers` given as `host:port` entries without ids: members
        /// of a running cluster this node joins when its data directory is
        /// new (DESIGN.md §2b). Empty when `clusterPeers` is used.
        public var joinAddresses: [HostPort] = []
        public init(nodeID: UInt8) { self.nodeID = nodeID }
    }

    /// `[storage]`
    public struct Storage: Sendable, Equatable {
        /// Default "/var/lib/kimberlite".
        public var dataDir = "/var/lib/kimberlite"
        /// Bytes per log segment. Default 64 MiB.
        public var segmentSize = 64 << 20
        /// Default fsync.
        public var syncMode = SyncMode.fsync
        /// Delete journal segments wholly below the older of the two newest
        /// checkpoints after each checkpoint (DESIGN.md §2b). Default false:
        /// every node keeps the whole audit log.
        public var compaction = false
        public init() {}
    }

    /// `[consensus]`
    public struct Consensus: Sendable, Equatable {
        /// Default 100 ms; must be below `electionTimeoutMin`.
        public var heartbeatInterval = Duration.milliseconds(100)
        /// Default 150 ms; must be below `electionTimeoutMax`.
        public var electionTimeoutMin = Duration.milliseconds(150)
        /// Default 300 ms.
        public var electionTimeoutMax = Duration.milliseconds(300)
        /// Default 100.
        public var maxEntriesPerRPC = 100
        /// Default 500 ms. Not in effect yet.
        public var maxClockSkew = Duration.milliseconds(500)
        public init() {}
    }

    /// `[projections]`
    public struct Projections: Sendable, Equatable {
        /// Bytes. Default 1 GiB. Not in effect yet.
        public var cacheSize = 1 << 30
        /// Applied ops between projection checkpoints (DESIGN.md §2b). Default 10000.
        public var checkpointInterval = 10_000
        public init() {}
    }

    /// `[security]` — paths to PEM files; unset by default. Not in effect yet.
    public struct Security: Sendable, Equatable {
        public var tlsCert: String?
        public var tlsKey: String?
        public var tlsCA: String?
        /// Default false.
        public var requireClientCert = false
        public init() {}
    }

    /// `[limits]`
    public struct Limits: Sendable, Equatable {
        /// Bytes of one statement (SQL text plus parameters). Default 1 MiB.
        public var maxRecordSize = 1 << 20
        /// Bytes of one request body. Default 10 MiB.
        public var maxBatchSize = 10 << 20
        /// Rows a query may return before it fails. Default 100000.
        public var maxResultRows = 100_000
        /// After it a write answers 504. Default 5 s.
        public var requestTimeout = Duration.seconds(5)
        public init() {}
    }

    /// `[telemetry]`
    public struct Telemetry: Sendable, Equatable {
        /// `/status`, `/metrics`, health. Default 127.0.0.1:9090.
        public var metricsAddress = HostPort(host: "127.0.0.1", port: 9090)
        public init() {}
    }

    /// `[logging]`
    public struct Log: Sendable, Equatable {
        /// Per-label levels; `level = "info"` is a filter with only a default level.
        /// Default "info".
        public var level = LogFilter(defaultLevel: .info)
        /// Default text.
        public var format = LogFormat.text
        /// Log file written besides stderr; unset by default.
        public var file: String?
        /// Queries slower than this are logged. Default 100 ms.
        public var slowQueryThreshold = Duration.milliseconds(100)
        /// fsyncs slower than this are logged. Default 10 ms.
        public var slowFsyncThreshold = Duration.milliseconds(10)
        public init() {}
    }

    public var server: Server
    public var storage = Storage()
    public var consensus = Consensus()
    public var projections = Projections()
    public var security = Security()
    public var limits = Limits()
    public var telemetry = Telemetry()
    public var logging = Log()

    /// Every key at its default, with the given node id (node_id has no default).
    public init(nodeID: UInt8) {
        server = Server(nodeID: nodeID)
    }

    /// Keys accepted and shown but whose feature is not built yet, as "[section] key".
    /// Edit this list as features land.
    public static let keysNotInEffectYet: [String] = [
        "[consensus] max_clock_skew",
        "[projections] cache_size",
        "[security] tls_cert",
        "[security] tls_key",
        "[security] tls_ca",
        "[security] require_client_cert",
    ]

    /// The keys of `keysNotInEffectYet` whose value differs from the default,
    /// as "[section] key" — the ones the server should log as "not in effect
    /// yet" at start-up. A key left at its default changes nothing, so it is
    /// not listed (keeps the start-up log quiet).
    public var notInEffectYet: [String] {
        let defaults = ServerConfig(nodeID: server.nodeID)
        var keys: [String] = []
        if consensus.maxClockSkew != defaults.consensus.maxClockSkew { keys.append("[consensus] max_clock_skew") }
        if projections.cacheSize != defaults.projections.cacheSize { keys.append("[projections] cache_size") }
        if security.tlsCert != nil { keys.append("[security] tls_cert") }
        if security.tlsKey != nil { keys.append("[security] tls_key") }
        if security.tlsCA != nil { keys.append("[security] tls_ca") }
        if security.requireClientCert != defaults.security.requireClientCert {
            keys.append("[security] require_client_cert")
        }
        return keys.filter { ServerConfig.keysNotInEffectYet.contains($0) }
    }
}
