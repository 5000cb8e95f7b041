import Foundation
import TOMLKit

/// The configuration flags of `kimberlite-server`, as raw text from the
/// command line (nil when the flag is absent). `ConfigLoader` parses and
/// validates them so that a bad value exits 78 with a message naming the flag.
public struct ConfigFlags: Sendable, Equatable {
    /// `--node-id ID`
    public var nodeID: String?
    /// `--bind ADDR` (sets `[server] bind_address`)
    public var bind: String?
    /// `--data-dir PATH`
    public var dataDir: String?
    /// `--cluster-peers LIST` (comma-separated `id=host:port`)
    public var clusterPeers: String?
    /// `--log-level LEVEL` (a level, or a filter like `kimberlite.vsr=trace`)
    public var logLevel: String?

    public init(nodeID: String? = nil, bind: String? = nil, dataDir: String? = nil,
                clusterPeers: String? = nil, logLevel: String? = nil) {
        self.nodeID = nodeID
        self.bind = bind
        self.dataDir = dataDir
        self.clusterPeers = clusterPeers
        self.logLevel = logLevel
    }
}

/// Builds the effective `ServerConfig`: defaults < config file < environment < flags.
///
/// The log level is special (DESIGN.md §2): `--log-level` > `KMB_LOG` >
/// `RUST_LOG` > `KMB_LOG_LEVEL` > `[logging] level`. The first of these that is
/// set decides the per-label directives; labels it does not name get the first
/// plain level (like "debug") found in that same order, or "info". All five
/// accept a plain level or the filter syntax `kimberlite=debug,kimberlite.vsr=trace`.
///
/// Environment variables that are set but empty count as unset (compose files
/// often pass `KMB_X=`); an empty flag value is an error.
public enum ConfigLoader {
    /// Where the config file is read from when `--config` is not given and the file exists.
    public static let defaultConfigPath = "/etc/kimberlite/config.toml"

    /// Environment variables that override one key each.
    static let environmentKeys: [(variable: String, key: ConfigKey)] = [
        ("KMB_NODE_ID", .nodeID),
        ("KMB_BIND_ADDRESS", .bindAddress),
        ("KMB_CLUSTER_ADDRESS", .clusterAddress),
        ("KMB_CLUSTER_NAME", .clusterName),
        ("KMB_CLUSTER_PEERS", .clusterPeers),
        ("KMB_DATA_DIR", .dataDir),
        ("KMB_SYNC_MODE", .syncMode),
        ("KMB_METRICS_ADDRESS", .metricsAddress),
    ]

    /// Every environment variable the loader reads.
    public static let environmentVariables: [String] =
        environmentKeys.map(\.variable) + ["KMB_LOG_LEVEL", "KMB_LOG", "RUST_LOG"]

    /// Loads, merges and validates the configuration.
    /// - Parameters:
    ///   - configPath: `--config`; nil reads `defaultConfigPath` if it exists.
    ///   - environment: usually `ProcessInfo.processInfo.environment`.
    ///   - flags: the raw flag values.
    ///   - defaultConfigPath: overridable for tests.
    /// - Throws: `ConfigError` (exit code 78) for a missing or malformed file,
    ///   an unknown section or key, a bad value from any source, or values that
    ///   contradict each other.
    public static func load(
        configPath: String?,
        environment: [String: String],
        flags: ConfigFlags,
        defaultConfigPath: String = ConfigLoader.defaultConfigPath
    ) throws(ConfigError) -> ServerConfig {
        var merge = Merge()

        // 1. Config file.
        if let path = configPath {
            try merge.readFile(path: path)
        } else if FileManager.default.fileExists(atPath: defaultConfigPath) {
            try merge.readFile(path: defaultConfigPath)
        }

        // 2. Environment.
        for (variable, key) in environmentKeys {
            guard let raw = environment[variable], !raw.trimmingCharacters(in: .whitespaces).isEmpty else { continue }
            try merge.set(key, text: raw, source: .environment(variable: variable))
        }
        for variable in ["KMB_LOG_LEVEL", "RUST_LOG", "KMB_LOG"] {
            // Lowest precedence first: each later one overrides.
            guard let raw = environment[variable], !raw.trimmingCharacters(in: .whitespaces).isEmpty else { continue }
            try merge.setLogFilter(text: raw, source: .environment(variable: variable))
        }

        // 3. Flags.
        let flagKeys: [(String, String?, ConfigKey)] = [
            ("--node-id", flags.nodeID, .nodeID),
            ("--bind", flags.bind, .bindAddress),
            ("--data-dir", flags.dataDir, .dataDir),
            ("--cluster-peers", flags.clusterPeers, .clusterPeers),
        ]
        for (name, value, key) in flagKeys {
            guard let value else { continue }
            try merge.set(key, text: value, source: .flag(name: name))
        }
        if let level = flags.logLevel {
            try merge.setLogFilter(text: level, source: .flag(name: "--log-level"))
        }

        return try merge.finish()
    }

    /// `KMB_*` variables in `environment` that the loader does not read —
    /// probably typos; the server should warn about them.
    public static func unknownEnvironmentVariables(_ environment: [String: String]) -> [String] {
        environment.keys.filter { $0.hasPrefix("KMB_") && !environmentVariables.contains($0) }.sorted()
    }
}

/// The merge in progress: the config so far, where each key came from, and
/// the log-level candidates in precedence order.
private struct Merge {
    var config = ServerConfig(nodeID: 1)
    var nodeIDSet = false
    var sources: [ConfigKey: ConfigSource] = [:]
    /// Log-level sources from lowest to highest precedence.
    var logCandidates: [(source: ConfigSource, bare: LogLevel?, directives: [LogFilter.Directive])] = []

    mutating func store(_ key: ConfigKey, _ value: ConfigValue, source: ConfigSource) {
        if key == .logLevel, case .logFilter(let bare, let directives) = value {
            logCandidates.append((source, bare, directives))
        } else {
            key.apply(value, to: &config)
        }
        if key == .nodeID { nodeIDSet = true }
        sources[key] = source
    }

    /// Sets a key from environment or flag text.
    mutating func set(_ key: ConfigKey, text: String, source: ConfigSource) throws(ConfigError) {
        do {
            store(key, try key.parse(text: text), source: source)
        } catch {
            throw Merge.valueError(key: key, shown: text, problem: error.problem, source: source)
        }
    }

    mutating func setLogFilter(text: String, source: ConfigSource) throws(ConfigError) {
        try set(.logLevel, text: text, source: source)
    }

    // MARK: File

    mutating func readFile(path: String) throws(ConfigError) {
        let text = try Merge.readText(path: path)
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(key: nil, source: .file(path: path, line: error.source.begin.line),
                              description: "\(path): invalid TOML: \(error.description) (line \(error.source.begin.line))")
        } catch {
            throw ConfigError(key: nil, source: .file(path: path, line: nil),
                              description: "\(path): invalid TOML: \(error)")
        }
        let lines = TOMLLineIndex(text: text)

        // Gather every entry, then check them in file order so the first error reported is the first in the file.
        var entries: [(section: String, name: String, value: TOMLValueConvertible, line: Int?)] = []
        for sectionName in table.keys {
            guard let sectionValue = table[sectionName] else { continue }
            guard let sectionTable = sectionValue.table else {
                let line = lines.line(section: "", key: sectionName)
                let subject = ConfigKey.sections.contains(sectionName)
                    ? "\(sectionName) = \(Merge.display(sectionValue)) is not a section (write [\(sectionName)] on its own line)"
                    : "\(sectionName) = \(Merge.display(sectionValue)) is not a known key (keys belong in a section like [server])"
                throw ConfigError(key: sectionName, source: .file(path: path, line: line),
                                  description: "\(subject) (\(ConfigSource.file(path: path, line: line)))")
            }
            guard ConfigKey.sections.contains(sectionName) else {
                let line = lines.line(section: sectionName)
                throw ConfigError(key: "[\(sectionName)]", source: .file(path: path, line: line),
                                  description: "[\(sectionName)] is not a known section\(Merge.suggestion(sectionName, among: ConfigKey.sections)) (\(ConfigSource.file(path: path, line: line)))")
            }
            for name in sectionTable.keys {
                guard let value = sectionTable[name] else { continue }
                entries.append((sectionName, name, value, lines.line(section: sectionName, key: name)))
            }
        }
        entries.sort { ($0.line ?? Int.max) < ($1.line ?? Int.max) }

        for entry in entries {
            let source = ConfigSource.file(path: path, line: entry.line)
            guard let key = ConfigKey.lookup(section: entry.section, name: entry.name) else {
                let hint = Merge.suggestion(entry.name, among: ConfigKey.names(in: entry.section))
                throw ConfigError(key: "[\(entry.section)] \(entry.name)", source: source,
                                  description: "[\(entry.section)] \(entry.name) is not a known key\(hint) (\(source))")
            }
            do {
                store(key, try Merge.parse(key, toml: entry.value), source: source)
            } catch {
                throw Merge.valueError(key: key, shown: Merge.display(entry.value), problem: error.problem, source: source)
            }
        }
    }

    /// Parses a TOML value by the key's kind: strings through the text parser,
    /// integers where the kind allows them.
    static func parse(_ key: ConfigKey, toml value: TOMLValueConvertible) throws(ConfigValueError) -> ConfigValue {
        switch key.kind {
        case .nodeID:
            guard let int = value.int else { throw ConfigValueError("is not an integer (a node id 1-255)") }
            return .nodeID(try ConfigValueParser.nodeID(int))
        case .count:
            guard let int = value.int else { throw ConfigValueError("is not an integer") }
            guard int > 0 else { throw ConfigValueError("must be greater than 0") }
            return .count(int)
        case .bool:
            guard let bool = value.bool else { throw ConfigValueError("is not a boolean (true or false)") }
            return .bool(bool)
        case .size:
            if let int = value.int {
                guard int > 0 else { throw ConfigValueError("must be greater than 0") }
                return .size(int)
            }
            guard let text = value.string else { throw ConfigValueError("is not a size such as \"64MB\" or 512") }
            return try key.parse(text: text)
        case .duration, .threshold:
            guard let text = value.string else {
                throw ConfigValueError("is not a duration string such as \"150ms\"")
            }
            return try key.parse(text: text)
        case .peers:
            guard let array = value.array else {
                throw ConfigValueError("is not an array of \"id=host:port\" strings")
            }
            var entries: [String] = []
            for element in array {
                guard let text = element.string else {
                    throw ConfigValueError("has \(display(element)), which is not an \"id=host:port\" string")
                }
                entries.append(text)
            }
            return .peers(try ConfigValueParser.peers(entries))
        case .address, .name, .path, .syncMode, .logFilter, .logFormat:
            guard let text = value.string else { throw ConfigValueError("is not a string") }
            return try key.parse(text: text)
        }
    }

    // MARK: Merge and validate

    mutating func finish() throws(ConfigError) -> ServerConfig {
        // Log level: highest-precedence source gives the directives; the
        // default comes from the highest-precedence plain level.
        if let winner = logCandidates.last {
            let bare = logCandidates.reversed().lazy.compactMap(\.bare).first ?? .info
            config.logging.level = LogFilter(defaultLevel: bare, directives: winner.directives)
            sources[.logLevel] = winner.source
        }

        guard nodeIDSet else {
            throw ConfigError(key: ConfigKey.nodeID.qualifiedName, source: nil,
                              description: "[server] node_id is required (set it in the config file, KMB_NODE_ID or --node-id)")
        }
        let peers = config.server.clusterPeers
        if !peers.isEmpty, !peers.contains(where: { $0.nodeID == config.server.nodeID }) {
            let ids = peers.map { String($0.nodeID) }.joined(separator: ", ")
            throw conflict(.nodeID, "is not among the ids of cluster_peers (\(ids))", .clusterPeers)
        }
        if config.consensus.electionTimeoutMin >= config.consensus.electionTimeoutMax {
            throw conflict(.electionTimeoutMin, "must be less than", .electionTimeoutMax)
        }
        if config.consensus.heartbeatInterval >= config.consensus.electionTimeoutMin {
            throw conflict(.heartbeatInterval, "must be less than", .electionTimeoutMin)
        }
        return config
    }

    func source(of key: ConfigKey) -> ConfigSource { sources[key] ?? .defaultValue }

    /// "[consensus] election_timeout_min = "300ms" must be less than election_timeout_max = "200ms"
    /// (election_timeout_min from KMB_…, election_timeout_max from default)"
    func conflict(_ key: ConfigKey, _ relation: String, _ other: ConfigKey) -> ConfigError {
        let value = key.tomlLiteral(in: config) ?? "(unset)"
        let otherText: String
        if relation.hasSuffix("than") {
            otherText = " \(other.name) = \(other.tomlLiteral(in: config) ?? "(unset)")"
        } else {
            otherText = ""
        }
        return ConfigError(
            key: key.qualifiedName, source: source(of: key),
            description: "\(key.qualifiedName) = \(value) \(relation)\(otherText) (\(key.name) from \(source(of: key)), \(other.name) from \(source(of: other)))"
        )
    }

    static func valueError(key: ConfigKey, shown: String, problem: String, source: ConfigSource) -> ConfigError {
        let description: String
        switch source {
        case .file, .defaultValue:
            description = "\(key.qualifiedName) = \(shown) \(problem) (\(source))"
        case .environment(let variable):
            description = "\(variable) = \(TOMLText.quote(shown)) \(problem) (environment variable for \(key.qualifiedName))"
        case .flag(let name):
            let shownFlag = shown.isEmpty || shown.contains(where: { $0.isWhitespace || $0 == "\"" }) ? TOMLText.quote(shown) : shown
            description = "\(name) \(shownFlag) \(problem) (command-line flag for \(key.qualifiedName))"
        }
        return ConfigError(key: key.qualifiedName, source: source, description: description)
    }

    // MARK: Helpers

    static func readText(path: String) throws(ConfigError) -> String {
        let source = ConfigSource.file(path: path, line: nil)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ConfigError(key: nil, source: source, description: "\(path): config file not found")
        }
        guard !isDirectory.boolValue else {
            throw ConfigError(key: nil, source: source, description: "\(path): config file is a directory")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(key: nil, source: source, description: "\(path): config file cannot be read (check its permissions)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError(key: nil, source: source, description: "\(path): config file is not UTF-8 text")
        }
        return text
    }

    /// A TOML value as the operator wrote it, for error messages.
    static func display(_ value: TOMLValueConvertible) -> String {
        switch value.type {
        case .string: return TOMLText.quote(value.string ?? "")
        case .int: return value.int.map(String.init) ?? "?"
        case .bool: return value.bool.map(String.init) ?? "?"
        case .double: return value.double.map { String($0) } ?? "?"
        case .array:
            guard let array = value.array else { return "[...]" }
            return "[" + array.map { display($0) }.joined(separator: ", ") + "]"
        case .table: return "{...}"
        default: return value.debugDescription
        }
    }

    /// ", did you mean node_id?" when a known name is within two edits.
    static func suggestion(_ name: String, among names: [String]) -> String {
        let best = names.map { ($0, editDistance($0, name)) }.min { $0.1 < $1.1 }
        guard let (candidate, distance) = best, distance <= 2 else { return "" }
        return " (did you mean \(candidate)?)"
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
}
