import Foundation
import KimberliteStorage

/// A `host:port` address. IPv6 hosts are written in brackets (`[::1]:7000`)
/// and stored without them. `port` is 1–65535.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `host:port`, with brackets around an IPv6 host.
    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// One initial cluster member: `id=host:port`, e.g. `2=node2:7001`.
public struct PeerAddress: Sendable, Hashable, CustomStringConvertible {
    /// The member's node_id, 1–255.
    public var nodeID: UInt8
    public var host: String
    /// 1–65535.
    public var port: Int

    public init(nodeID: UInt8, host: String, port: Int) {
        self.nodeID = nodeID
        self.host = host
        self.port = port
    }

    /// The address part as a `HostPort`.
    public var address: HostPort { HostPort(host: host, port: port) }

    /// `id=host:port`.
    public var description: String { "\(nodeID)=\(address)" }
}

/// `[server] cluster_peers` as given: the initial members with their ids,
/// or, with no ids, addresses of a running cluster this node joins.
public enum ClusterPeers: Sendable, Hashable {
    /// `id=host:port` entries (empty: a one-node cluster).
    case members([PeerAddress])
    /// `host:port` entries: any member of the cluster to join (DESIGN.md §2b).
    case join([HostPort])
}

/// `[logging] format`: one text line or one JSON object per record, or journald native records.
public enum LogFormat: String, Sendable, CaseIterable {
    /// One text line per record (the log file and stderr).
    case text
    /// One JSON object per line.
    case json
    /// Records go to journald with native fields (libsystemd); the log file,
    /// when set, gets text lines. Chosen automatically when systemd connected
    /// stderr to the journal (`JOURNAL_STREAM`).
    case journal
}

/// Why a single configuration value could not be parsed. `problem` completes a
/// sentence whose subject is the key and value: "is not a duration".
public struct ConfigValueError: Error, Sendable, Equatable, CustomStringConvertible {
    public let problem: String
    public init(_ problem: String) { self.problem = problem }
    public var description: String { problem }
}

/// Parsers for the value syntaxes the configuration uses. Each is the same for
/// the config file, the environment and the flags.
public enum ConfigValueParser {
    /// Parses a duration: a number and a unit, `ns`, `us` (or `µs`), `ms`, `s`,
    /// `m` or `h`, e.g. "150ms", "5s", "1m", "500us", "1.5s". Spaces between
    /// the number and the unit are allowed. The result must be a whole number
    /// of nanoseconds and below 2^63 ns.
    /// - Throws: `ConfigValueError` "is not a duration such as …".
    public static func duration(_ text: String) throws(ConfigValueError) -> Duration {
        let failure = ConfigValueError("is not a duration such as \"150ms\", \"5s\" or \"1m\"")
        guard let (number, unit) = splitNumberAndUnit(text) else { throw failure }
        let unitNanos: Int64
        switch unit {
        case "ns": unitNanos = 1
        case "us", "µs": unitNanos = 1_000
        case "ms": unitNanos = 1_000_000
        case "s": unitNanos = 1_000_000_000
        case "m": unitNanos = 60_000_000_000
        case "h": unitNanos = 3_600_000_000_000
        default: throw failure
        }
        guard let nanos = scaled(number, by: unitNanos) else {
            throw ConfigValueError("is not a duration in whole nanoseconds below 292 years")
        }
        return .nanoseconds(nanos)
    }

    /// Parses a size in bytes: a number with an optional unit, "512", "512B",
    /// "4KiB", "64MB", "1GB", "1.5GB". KB/MB/GB/TB mean the same as
    /// KiB/MiB/GiB/TiB (powers of 1024), as in most database configs; K/M/G/T
    /// are accepted too, and units are case-insensitive.
    /// - Throws: `ConfigValueError` "is not a size such as …".
    public static func size(_ text: String) throws(ConfigValueError) -> Int {
        let failure = ConfigValueError("is not a size such as \"64MB\", \"4KiB\" or \"512\"")
        guard let (number, unit) = splitNumberAndUnit(text) else { throw failure }
        let multiplier: Int64
        switch unit.lowercased() {
        case "", "b": multiplier = 1
        case "k", "kb", "kib": multiplier = 1 << 10
        case "m", "mb", "mib": multiplier = 1 << 20
        case "g", "gb", "gib": multiplier = 1 << 30
        case "t", "tb", "tib": multiplier = 1 << 40
        default: throw failure
        }
        guard let bytes = scaled(number, by: multiplier) else {
            throw ConfigValueError("is not a size in whole bytes below 8 EiB")
        }
        return Int(bytes)
    }

    /// Parses `host:port` (`[v6addr]:port` for IPv6).
    /// - Throws: `ConfigValueError` when the host is missing or the port is not 1–65535.
    public static func address(_ text: String) throws(ConfigValueError) -> HostPort {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let host: Substring
        let portText: Substring
        if trimmed.hasPrefix("[") {
            guard let close = trimmed.firstIndex(of: "]"),
                  trimmed[trimmed.index(after: close)...].hasPrefix(":")
            else { throw ConfigValueError("is not a host:port address (IPv6 hosts go in brackets: [::1]:7000)") }
            host = trimmed[trimmed.index(after: trimmed.startIndex)..<close]
            portText = trimmed[trimmed.index(close, offsetBy: 2)...]
        } else {
            guard let colon = trimmed.lastIndex(of: ":") else {
                throw ConfigValueError("is not a host:port address (the port is missing)")
            }
            host = trimmed[..<colon]
            portText = trimmed[trimmed.index(after: colon)...]
            if host.contains(":") {
                throw ConfigValueError("is not a host:port address (IPv6 hosts go in brackets: [::1]:7000)")
            }
        }
        guard !host.isEmpty, host.allSatisfy({ !$0.isWhitespace && $0 != "/" && $0 != "=" && $0 != "," }) else {
            throw ConfigValueError("is not a host:port address (the host is missing or has spaces, '/', '=' or ',')")
        }
        // DNS names end at 253 bytes; every member's superblock keeps the address.
        guard host.utf8.count <= 253 else {
            throw ConfigValueError("is not a host:port address (the host is \(host.utf8.count) bytes; at most 253)")
        }
        guard let port = Int(portText), portText.allSatisfy(\.isASCII) else {
            throw ConfigValueError("is not a host:port address (the port is not a number)")
        }
        guard (1...65535).contains(port) else {
            throw ConfigValueError("has port \(port), outside 1-65535")
        }
        return HostPort(host: String(host), port: port)
    }

    /// Parses a node id, 1–255, from decimal text.
    /// - Throws: `ConfigValueError` when it is not a number or out of range.
    public static func nodeID(_ text: String) throws(ConfigValueError) -> UInt8 {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard let value = Int(trimmed) else { throw ConfigValueError("is not a node id (a number 1-255)") }
        return try nodeID(value)
    }

    /// Checks a node id is 1–255.
    /// - Throws: `ConfigValueError` "is out of range 1-255".
    public static func nodeID(_ value: Int) throws(ConfigValueError) -> UInt8 {
        guard (1...255).contains(value) else { throw ConfigValueError("is out of range 1-255") }
        return UInt8(value)
    }

    /// Parses one peer entry `id=host:port`.
    /// - Throws: `ConfigValueError` naming the entry when the id or the address is bad.
    public static func peer(_ entry: String) throws(ConfigValueError) -> PeerAddress {
        let trimmed = entry.trimmingCharacters(in: .whitespaces)
        guard let equals = trimmed.firstIndex(of: "=") else {
            throw ConfigValueError("has \"\(trimmed)\", which is not an id=host:port entry like \"1=node1:7001\"")
        }
        let idText = String(trimmed[..<equals]).trimmingCharacters(in: .whitespaces)
        let id: UInt8
        do {
            id = try nodeID(idText)
        } catch {
            throw ConfigValueError("has \"\(trimmed)\", whose id \"\(idText)\" \(error.problem)")
        }
        let address: HostPort
        do {
            address = try self.address(String(trimmed[trimmed.index(after: equals)...]))
        } catch {
            throw ConfigValueError("has \"\(trimmed)\", whose address \(error.problem)")
        }
        return PeerAddress(nodeID: id, host: address.host, port: address.port)
    }

    /// Parses peer entries: every entry `id=host:port` (the initial members,
    /// ids unique), or every entry `host:port` (a node joining a running
    /// cluster through any of them, DESIGN.md §2b).
    /// - Throws: `ConfigValueError` naming the first bad or duplicate entry,
    ///   or an entry of the other form.
    public static func peers<S: Sequence>(_ entries: S) throws(ConfigValueError) -> ClusterPeers where S.Element == String {
        let entries = Array(entries)
        let trimmed = entries.map { $0.trimmingCharacters(in: .whitespaces) }
        if let first = trimmed.first, !first.contains("=") {
            var addresses: [HostPort] = []
            for entry in trimmed {
                if entry.contains("=") {
                    throw ConfigValueError("has \"\(entry)\" among host:port entries; list host:port entries only (a node joining a running cluster) or id=host:port for every entry (the initial members)")
                }
                do { addresses.append(try address(entry)) } catch {
                    throw ConfigValueError("has \"\(entry)\", whose address \(error.problem)")
                }
            }
            return .join(addresses)
        }
        return .members(try memberPeers(entries))
    }

    /// Parses `id=host:port` entries and checks the ids are unique.
    static func memberPeers(_ entries: [String]) throws(ConfigValueError) -> [PeerAddress] {
        var result: [PeerAddress] = []
        for entry in entries {
            let peer = try self.peer(entry)
            if let other = result.first(where: { $0.nodeID == peer.nodeID }) {
                throw ConfigValueError("has node id \(peer.nodeID) twice (\"\(other)\" and \"\(peer)\")")
            }
            result.append(peer)
        }
        return result
    }

    /// Parses a comma-separated peer list as the environment and flags give it:
    /// "1=node1:7001,2=node2:7001", or "node1:7001" to join. An empty or
    /// blank string is an empty member list.
    /// - Throws: `ConfigValueError` naming the first bad or duplicate entry.
    public static func peerList(_ text: String) throws(ConfigValueError) -> ClusterPeers {
        let entries = text.split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        if entries.allSatisfy(\.isEmpty) { return .members([]) }
        if entries.contains(where: \.isEmpty) {
            throw ConfigValueError("has an empty entry (write id=host:port entries separated by single commas)")
        }
        return try peers(entries)
    }

    /// Parses a log level or a log filter (`debug`, `kimberlite=debug,kimberlite.vsr=trace`).
    /// The returned bare level is nil when the text names only targets.
    /// - Throws: `ConfigValueError` naming the bad entry.
    public static func logFilter(_ text: String) throws(ConfigValueError) -> (bareLevel: LogLevel?, directives: [LogFilter.Directive]) {
        do {
            return try LogFilter.parse(text)
        } catch {
            throw ConfigValueError(error.description)
        }
    }

    // MARK: - Helpers

    /// Splits "150ms" / "1.5 GB" into ("150", "ms"); nil when there is no leading number.
    private static func splitNumberAndUnit(_ text: String) -> (number: Substring, unit: Substring)? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)[...]
        let numberEnd = trimmed.firstIndex(where: { !($0.isASCII && ($0.isNumber || $0 == ".")) }) ?? trimmed.endIndex
        let number = trimmed[..<numberEnd]
        let unit = trimmed[numberEnd...].drop(while: { $0 == " " })
        guard number.contains(where: \.isNumber), number.filter({ $0 == "." }).count <= 1,
              unit.allSatisfy({ $0.isLetter })
        else { return nil }
        return (number, unit)
    }

    /// "1.5" × 1_000_000 exactly, or nil if not a whole number or too large.
    private static func scaled(_ number: Substring, by multiplier: Int64) -> Int64? {
        let parts = number.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count <= 2, let whole = Int64(parts[0].isEmpty ? "0" : parts[0]) else { return nil }
        var (total, overflow) = whole.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { return nil }
        if parts.count == 2 {
            let fraction = parts[1]
            guard !fraction.isEmpty, fraction.count <= 18, let digits = Int64(fraction) else { return nil }
            var scale: Int64 = 1
            for _ in 0..<fraction.count { scale *= 10 }
            // digits/scale × multiplier must be whole: compute exactly without overflow
            // by splitting the multiplier.
            let (product, productOverflow) = digits.multipliedReportingOverflow(by: multiplier)
            guard !productOverflow, product % scale == 0 else { return nil }
            (total, overflow) = total.addingReportingOverflow(product / scale)
            guard !overflow else { return nil }
        }
        return total
    }

    /// Canonical text for a duration: the largest unit that divides it exactly ("150ms", "5s", "1m").
    public static func render(duration: Duration) -> String {
        let nanos = nanoseconds(duration)
        if nanos == 0 { return "0ms" }
        let units: [(String, Int64)] = [("h", 3_600_000_000_000), ("m", 60_000_000_000), ("s", 1_000_000_000),
                                        ("ms", 1_000_000), ("us", 1_000), ("ns", 1)]
        for (name, size) in units where nanos % size == 0 {
            return "\(nanos / size)\(name)"
        }
        return "\(nanos)ns"
    }

    /// Canonical text for a size: the largest binary unit that divides it exactly ("64MB", "4KB", "512B").
    public static func render(size: Int) -> String {
        let units: [(String, Int)] = [("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)]
        for (name, unit) in units where size != 0 && size % unit == 0 {
            return "\(size / unit)\(name)"
        }
        return "\(size)B"
    }

    /// Whole nanoseconds in a duration (saturating at Int64.max).
    public static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        let (fromSeconds, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return fromSeconds + attoseconds / 1_000_000_000
    }
}
