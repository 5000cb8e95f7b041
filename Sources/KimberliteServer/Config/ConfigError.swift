/// Where a configuration value came from.
public enum ConfigSource: Sendable, Equatable, CustomStringConvertible {
    case defaultValue
    /// The config file; `line` is nil when the key's line could not be found.
    case file(path: String, line: Int?)
    /// An environment variable, by name (`KMB_NODE_ID`).
    case environment(variable: String)
    /// A command-line flag, by name (`--node-id`).
    case flag(name: String)

    /// Short form for error messages: "/etc/kimberlite/config.toml line 14",
    /// "KMB_NODE_ID", "--node-id", "default".
    public var description: String {
        switch self {
        case .defaultValue: return "default"
        case .file(let path, let line?): return "\(path) line \(line)"
        case .file(let path, nil): return path
        case .environment(let variable): return variable
        case .flag(let name): return name
        }
    }
}

/// A bad configuration: an unreadable or malformed file, an unknown key, a
/// value that does not parse, or values that contradict each other.
///
/// `description` is one line, subject first, naming the exact key and where
/// the value came from, e.g.
/// `[consensus] election_timeout_min = "15o ms" is not a duration (/etc/kimberlite/config.toml line 14)`
/// or `KMB_NODE_ID = "300" is out of range 1-255 (environment variable for [server] node_id)`.
/// The executable prints it after "kimberlite-server: config error: ".
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The key as "[section] name", when the error is about one key.
    public let key: String?
    /// Where the offending value came from, when known.
    public let source: ConfigSource?
    public let description: String

    public init(key: String?, source: ConfigSource?, description: String) {
        self.key = key
        self.source = source
        self.description = description
    }

    /// 78 (EX_CONFIG, sysexits.h) for every configuration error, whatever its source.
    public var exitCode: Int32 { 78 }
}
