import Foundation
import KimberliteStorage

/// Every key of the config file, with its section, name and value syntax.
enum ConfigKey: CaseIterable {
    case bindAddress, clusterAddress, nodeID, clusterName, clusterPeers
    case dataDir, segmentSize, syncMode, compaction
    case heartbeatInterval, electionTimeoutMin, electionTimeoutMax, maxEntriesPerRPC, maxClockSkew
    case cacheSize, checkpointInterval
    case tlsCert, tlsKey, tlsCA, requireClientCert
    case maxRecordSize, maxBatchSize, maxResultRows, requestTimeout
    case metricsAddress
    case logLevel, logFormat, logFile, slowQueryThreshold, slowFsyncThreshold

    /// The value syntax of a key.
    enum Kind {
        case address, nodeID, name, peers, path, size, syncMode, duration, threshold, count, bool, logFilter, logFormat
    }

    /// Sections in file order.
    static let sections = ["server", "storage", "consensus", "projections", "security", "limits", "telemetry", "logging"]

    var section: String {
        switch self {
        case .bindAddress, .clusterAddress, .nodeID, .clusterName, .clusterPeers: return "server"
        case .dataDir, .segmentSize, .syncMode, .compaction: return "storage"
        case .heartbeatInterval, .electionTimeoutMin, .electionTimeoutMax, .maxEntriesPerRPC, .maxClockSkew: return "consensus"
        case .cacheSize, .checkpointInterval: return "projections"
        case .tlsCert, .tlsKey, .tlsCA, .requireClientCert: return "security"
        case .maxRecordSize, .maxBatchSize, .maxResultRows, .requestTimeout: return "limits"
        case .metricsAddress: return "telemetry"
        case .logLevel, .logFormat, .logFile, .slowQueryThreshold, .slowFsyncThreshold: return "logging"
        }
    }

    var name: String {
        switch self {
        case .bindAddress: return "bind_address"
        case .clusterAddress: return "cluster_address"
        case .nodeID: return "node_id"
        case .clusterName: return "cluster_name"
        case .clusterPeers: return "cluster_peers"
        case .dataDir: return "data_dir"
        case .segmentSize: return "segment_size"
        case .syncMode: return "sync_mode"
        case .compaction: return "compaction"
        case .heartbeatInterval: return "heartbeat_interval"
        case .electionTimeoutMin: return "election_timeout_min"
        case .electionTimeoutMax: return "election_timeout_max"
        case .maxEntriesPerRPC: return "max_entries_per_rpc"
        case .maxClockSkew: return "max_clock_skew"
        case .cacheSize: return "cache_size"
        case .checkpointInterval: return "checkpoint_interval"
        case .tlsCert: return "tls_cert"
        case .tlsKey: return "tls_key"
        case .tlsCA: return "tls_ca"
        case .requireClientCert: return "require_client_cert"
        case .maxRecordSize: return "max_record_size"
        case .maxBatchSize: return "max_batch_size"
        case .maxResultRows: return "max_result_rows"
        case .requestTimeout: return "request_timeout"
        case .metricsAddress: return "metrics_address"
        case .logLevel: return "level"
        case .logFormat: return "format"
        case .logFile: return "file"
        case .slowQueryThreshold: return "slow_query_threshold"
        case .slowFsyncThreshold: return "slow_fsync_threshold"
        }
    }

    var kind: Kind {
        switch self {
        case .bindAddress, .clusterAddress, .metricsAddress: return .address
        case .nodeID: return .nodeID
        case .clusterName: return .name
        case .clusterPeers: return .peers
        case .dataDir, .tlsCert, .tlsKey, .tlsCA, .logFile: return .path
        case .segmentSize, .cacheSize, .maxRecordSize, .maxBatchSize: return .size
        case .syncMode: return .syncMode
        case .heartbeatInterval, .electionTimeoutMin, .electionTimeoutMax, .maxClockSkew, .requestTimeout: return .duration
        case .slowQueryThreshold, .slowFsyncThreshold: return .threshold
        case .maxEntriesPerRPC, .checkpointInterval, .maxResultRows: return .count
        case .requireClientCert, .compaction: return .bool
        case .logLevel: return .logFilter
        case .logFormat: return .logFormat
        }
    }

    /// "[section] name", as errors and `notInEffectYet` name keys.
    var qualifiedName: String { "[\(section)] \(name)" }

    /// Optional keys with no default value.
    var isOptional: Bool {
        switch self {
        case .tlsCert, .tlsKey, .tlsCA, .logFile: return true
        default: return false
        }
    }

    static func lookup(section: String, name: String) -> ConfigKey? {
        allCases.first { $0.section == section && $0.name == name }
    }

    /// Known key names of a section, in file order.
    static func names(in section: String) -> [String] {
        allCases.filter { $0.section == section }.map(\.name)
    }
}

/// A parsed value, typed by its `ConfigKey.Kind`.
enum ConfigValue {
    case address(HostPort)
    case nodeID(UInt8)
    case text(String)
    case peers(ClusterPeers)
    case size(Int)
    case syncMode(SyncMode)
    case duration(Duration)
    case count(Int)
    case bool(Bool)
    case logFilter(bareLevel: LogLevel?, directives: [LogFilter.Directive])
    case logFormat(LogFormat)
}

extension ConfigKey {
    /// Parses the text form a value has in the environment, in a flag, or as a TOML string.
    /// - Throws: `ConfigValueError` completing "<key> = <value> …".
    func parse(text: String) throws(ConfigValueError) -> ConfigValue {
        switch kind {
        case .address: return .address(try ConfigValueParser.address(text))
        case .nodeID: return .nodeID(try ConfigValueParser.nodeID(text))
        case .name:
            let trimmed = text.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty else { throw ConfigValueError("is empty") }
            return .text(trimmed)
        case .path:
            guard !text.trimmingCharacters(in: .whitespaces).isEmpty else { throw ConfigValueError("is empty") }
            return .text(text)
        case .peers: return .peers(try ConfigValueParser.peerList(text))
        case .size:
            let bytes = try ConfigValueParser.size(text)
            guard bytes > 0 else { throw ConfigValueError("must be greater than 0") }
            return .size(bytes)
        case .syncMode:
            guard let mode = SyncMode(rawValue: text.trimmingCharacters(in: .whitespaces).lowercased()) else {
                throw ConfigValueError("is not a sync mode (fsync or async)")
            }
            return .syncMode(mode)
        case .duration, .threshold:
            let duration = try ConfigValueParser.duration(text)
            if kind == .duration, duration <= .zero { throw ConfigValueError("must be greater than 0") }
            return .duration(duration)
        case .count:
            guard let value = Int(text.trimmingCharacters(in: .whitespaces)) else {
                throw ConfigValueError("is not an integer")
            }
            guard value > 0 else { throw ConfigValueError("must be greater than 0") }
            return .count(value)
        case .bool:
            switch text.trimmingCharacters(in: .whitespaces).lowercased() {
            case "true": return .bool(true)
            case "false": return .bool(false)
            default: throw ConfigValueError("is not a boolean (true or false)")
            }
        case .logFilter:
            let parsed = try ConfigValueParser.logFilter(text)
            return .logFilter(bareLevel: parsed.bareLevel, directives: parsed.directives)
        case .logFormat:
            guard let format = LogFormat(rawValue: text.trimmingCharacters(in: .whitespaces).lowercased()) else {
                throw ConfigValueError("is not a log format (text, json or journal)")
            }
            return .logFormat(format)
        }
    }

    /// Stores a parsed value. The log level is merged by the loader, not here.
    func apply(_ value: ConfigValue, to config: inout ServerConfig) {
        switch (self, value) {
        case (.bindAddress, .address(let v)): config.server.bindAddress = v
        case (.clusterAddress, .address(let v)): config.server.clusterAddress = v
        case (.metricsAddress, .address(let v)): config.telemetry.metricsAddress = v
        case (.nodeID, .nodeID(let v)): config.server.nodeID = v
        case (.clusterName, .text(let v)): config.server.clusterName = v
        case (.clusterPeers, .peers(.members(let v))): config.server.clusterPeers = v; config.server.joinAddresses = []
        case (.clusterPeers, .peers(.join(let v))): config.server.joinAddresses = v; config.server.clusterPeers = []
        case (.dataDir, .text(let v)): config.storage.dataDir = v
        case (.tlsCert, .text(let v)): config.security.tlsCert = v
        case (.tlsKey, .text(let v)): config.security.tlsKey = v
        case (.tlsCA, .text(let v)): config.security.tlsCA = v
        case (.logFile, .text(let v)): config.logging.file = v
        case (.segmentSize, .size(let v)): config.storage.segmentSize = v
        case (.cacheSize, .size(let v)): config.projections.cacheSize = v
        case (.maxRecordSize, .size(let v)): config.limits.maxRecordSize = v
        case (.maxBatchSize, .size(let v)): config.limits.maxBatchSize = v
        case (.syncMode, .syncMode(let v)): config.storage.syncMode = v
        case (.heartbeatInterval, .duration(let v)): config.consensus.heartbeatInterval = v
        case (.electionTimeoutMin, .duration(let v)): config.consensus.electionTimeoutMin = v
        case (.electionTimeoutMax, .duration(let v)): config.consensus.electionTimeoutMax = v
        case (.maxClockSkew, .duration(let v)): config.consensus.maxClockSkew = v
        case (.requestTimeout, .duration(let v)): config.limits.requestTimeout = v
        case (.slowQueryThreshold, .duration(let v)): config.logging.slowQueryThreshold = v
        case (.slowFsyncThreshold, .duration(let v)): config.logging.slowFsyncThreshold = v
        case (.maxEntriesPerRPC, .count(let v)): config.consensus.maxEntriesPerRPC = v
        case (.checkpointInterval, .count(let v)): config.projections.checkpointInterval = v
        case (.maxResultRows, .count(let v)): config.limits.maxResultRows = v
        case (.requireClientCert, .bool(let v)): config.security.requireClientCert = v
        case (.compaction, .bool(let v)): config.storage.compaction = v
        case (.logFormat, .logFormat(let v)): config.logging.format = v
        case (.logLevel, .logFilter(let bare, let directives)):
            config.logging.level = LogFilter(defaultLevel: bare ?? config.logging.level.defaultLevel, directives: directives)
        default:
            preconditionFailure("ConfigKey \(self) given a value of another kind")
        }
    }

    /// The value as a TOML literal, or nil for an unset optional key.
    func tomlLiteral(in config: ServerConfig) -> String? {
        func quoted(_ s: String) -> String { TOMLText.quote(s) }
        switch self {
        case .bindAddress: return quoted(config.server.bindAddress.description)
        case .clusterAddress: return quoted(config.server.clusterAddress.description)
        case .metricsAddress: return quoted(config.telemetry.metricsAddress.description)
        case .nodeID: return String(config.server.nodeID)
        case .clusterName: return quoted(config.server.clusterName)
        case .clusterPeers:
            let entries = config.server.joinAddresses.isEmpty ? config.server.clusterPeers.map(\.description) : config.server.joinAddresses.map(\.description)
            return "[" + entries.map(quoted).joined(separator: ", ") + "]"
        case .dataDir: return quoted(config.storage.dataDir)
        case .tlsCert: return config.security.tlsCert.map(quoted)
        case .tlsKey: return config.security.tlsKey.map(quoted)
        case .tlsCA: return config.security.tlsCA.map(quoted)
        case .logFile: return config.logging.file.map(quoted)
        case .segmentSize: return quoted(ConfigValueParser.render(size: config.storage.segmentSize))
        case .cacheSize: return quoted(ConfigValueParser.render(size: config.projections.cacheSize))
        case .maxRecordSize: return quoted(ConfigValueParser.render(size: config.limits.maxRecordSize))
        case .maxBatchSize: return quoted(ConfigValueParser.render(size: config.limits.maxBatchSize))
        case .syncMode: return quoted(config.storage.syncMode.rawValue)
        case .compaction: return String(config.storage.compaction)
        case .heartbeatInterval: return quoted(ConfigValueParser.render(duration: config.consensus.heartbeatInterval))
        case .electionTimeoutMin: return quoted(ConfigValueParser.render(duration: config.consensus.electionTimeoutMin))
        case .electionTimeoutMax: return quoted(ConfigValueParser.render(duration: config.consensus.electionTimeoutMax))
        case .maxClockSkew: return quoted(ConfigValueParser.render(duration: config.consensus.maxClockSkew))
        case .requestTimeout: return quoted(ConfigValueParser.render(duration: config.limits.requestTimeout))
        case .slowQueryThreshold: return quoted(ConfigValueParser.render(duration: config.logging.slowQueryThreshold))
        case .slowFsyncThreshold: return quoted(ConfigValueParser.render(duration: config.logging.slowFsyncThreshold))
        case .maxEntriesPerRPC: return String(config.consensus.maxEntriesPerRPC)
        case .checkpointInterval: return String(config.projections.checkpointInterval)
        case .maxResultRows: return String(config.limits.maxResultRows)
        case .requireClientCert: return String(config.security.requireClientCert)
        case .logLevel: return quoted(config.logging.level.description)
        case .logFormat: return quoted(config.logging.format.rawValue)
        }
    }
}

/// TOML text helpers.
enum TOMLText {
    /// A TOML basic string literal with escapes (also a valid JSON string:
    /// the log formatter uses it for JSON lines).
    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    out += String(format: "\\u%04X", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}
