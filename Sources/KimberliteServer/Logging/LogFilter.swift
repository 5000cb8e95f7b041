import Foundation
import Logging

/// A log level as operators write it: `trace`, `debug`, `info`, `warn`, `error`.
///
/// Ordered from most to least verbose. `warning` is accepted as an alias of `warn`
/// when parsing, because swift-log spells it that way.
public enum LogLevel: String, Sendable, CaseIterable, Comparable, CustomStringConvertible {
    case trace, debug, info, warn, error

    /// Parses a level name, case-insensitively; nil when it is not a level.
    public init?(name: String) {
        let lowered = name.lowercased()
        if lowered == "warning" {
            self = .warn
        } else if let level = LogLevel(rawValue: lowered) {
            self = level
        } else {
            return nil
        }
    }

    /// The swift-log level a handler filters at.
    public var loggerLevel: Logger.Level {
        switch self {
        case .trace: return .trace
        case .debug: return .debug
        case .info: return .info
        case .warn: return .warning
        case .error: return .error
        }
    }

    public var description: String { rawValue }

    private var rank: Int { LogLevel.allCases.firstIndex(of: self) ?? 0 }
    public static func < (lhs: LogLevel, rhs: LogLevel) -> Bool { lhs.rank < rhs.rank }
}

/// Why a log filter string could not be parsed; `description` names the bad entry.
public struct LogFilterError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
}

/// Per-label log levels, written like `RUST_LOG`: `kimberlite=debug,kimberlite.vsr=trace`,
/// or a bare level such as `debug`, or both (`info,kimberlite.vsr=trace`).
///
/// A label gets the level of the longest directive prefix that matches it on a
/// dot boundary (`kimberlite` matches `kimberlite` and `kimberlite.vsr`, not
/// `kimberlitex`); a label no directive matches gets `defaultLevel`. Rust-style
/// `kimberlite::vsr` is read as `kimberlite.vsr`.
public struct LogFilter: Sendable, Equatable, CustomStringConvertible {
    /// One `target=level` entry.
    public struct Directive: Sendable, Equatable {
        public var target: String
        public var level: LogLevel
        public init(target: String, level: LogLevel) {
            self.target = target
            self.level = level
        }
    }

    /// Level of labels that no directive matches.
    public var defaultLevel: LogLevel
    /// Directives, sorted by target, one per target.
    public private(set) var directives: [Directive]

    /// A filter with only a default level and the given directives (later
    /// directives for the same target win).
    public init(defaultLevel: LogLevel, directives: [Directive] = []) {
        self.defaultLevel = defaultLevel
        var byTarget: [String: LogLevel] = [:]
        for directive in directives { byTarget[directive.target] = directive.level }
        self.directives = byTarget.keys.sorted().map { Directive(target: $0, level: byTarget[$0]!) }
    }

    /// Parses the filter syntax. A string without a bare level gets `defaultLevel`.
    /// - Throws: `LogFilterError` naming the entry that is not `level` or `target=level`.
    public init(parsing text: String, defaultLevel: LogLevel) throws(LogFilterError) {
        let parsed = try LogFilter.parse(text)
        self.init(defaultLevel: parsed.bareLevel ?? defaultLevel, directives: parsed.directives)
    }

    /// The pieces of a filter string: its bare level, if any, and its directives.
    /// - Throws: `LogFilterError` for an empty string, an unknown level or a bad target.
    public static func parse(_ text: String) throws(LogFilterError) -> (bareLevel: LogLevel?, directives: [Directive]) {
        var bare: LogLevel?
        var directives: [Directive] = []
        let entries = text.split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        if entries.isEmpty {
            throw LogFilterError(description: "is empty (expected a level like \"info\" or a filter like \"kimberlite=debug\")")
        }
        for entry in entries {
            guard let equals = entry.firstIndex(of: "=") else {
                guard let level = LogLevel(name: entry) else {
                    throw LogFilterError(description: "has \"\(entry)\", which is not a log level (\(levelList))")
                }
                bare = level
                continue
            }
            let rawTarget = entry[..<equals].trimmingCharacters(in: .whitespaces)
            let rawLevel = entry[entry.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            let target = rawTarget.replacingOccurrences(of: "::", with: ".")
            guard isValidTarget(target) else {
                throw LogFilterError(description: "has \"\(entry)\", whose target \"\(rawTarget)\" is not a logger label like kimberlite.vsr")
            }
            guard let level = LogLevel(name: rawLevel) else {
                throw LogFilterError(description: "has \"\(entry)\", whose level \"\(rawLevel)\" is not a log level (\(levelList))")
            }
            directives.append(Directive(target: target, level: level))
        }
        return (bare, directives)
    }

    /// The level a logger with this label logs at.
    public func level(forLabel label: String) -> LogLevel {
        var best: Directive?
        for directive in directives where LogFilter.matches(label: label, target: directive.target) {
            if best == nil || directive.target.count > best!.target.count { best = directive }
        }
        return best?.level ?? defaultLevel
    }

    /// Canonical text form, parseable by `init(parsing:defaultLevel:)`: `info,kimberlite.vsr=trace`.
    public var description: String {
        ([defaultLevel.rawValue] + directives.map { "\($0.target)=\($0.level.rawValue)" }).joined(separator: ",")
    }

    static let levelList = LogLevel.allCases.map(\.rawValue).joined(separator: ", ")

    private static func matches(label: String, target: String) -> Bool {
        label == target || label.hasPrefix(target + ".")
    }

    private static func isValidTarget(_ target: String) -> Bool {
        guard !target.isEmpty, !target.hasPrefix("."), !target.hasSuffix(".") else { return false }
        return target.unicodeScalars.allSatisfy { scalar in
            (scalar.properties.isAlphabetic && scalar.isASCII) || ("0"..."9").contains(scalar)
                || scalar == "_" || scalar == "-" || scalar == "."
        }
    }
}
