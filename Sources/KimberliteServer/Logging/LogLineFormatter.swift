import Foundation
import Logging

/// Formats one log record as one line (no embedded newlines), text or JSON.
///
/// Text: `<RFC 3339 UTC timestamp with ms> <LEVEL> <message> <key=value …>`,
/// e.g. `2024-05-01T12:00:00.123Z WARN query_duration_ms 153.2 label=kimberlite.query sql="SELECT 1"`.
/// Fields are the record's metadata plus `label` (and `error` when the event
/// carries one), sorted by key; a value is quoted only when it is empty or has
/// whitespace, `"`, `=` or `\`. So a slow-query message "query_duration_ms 153.2"
/// puts the duration in whitespace field 4, for `sort -k4 -n`.
///
/// JSON: `{"ts":…,"level":"warn","msg":…,"label":…, <metadata fields>}`, with
/// metadata flattened into the object; a metadata key clashing with ts, level,
/// msg or label gets a trailing underscore. Integer, floating-point and boolean
/// metadata become JSON numbers and booleans.
public enum LogLineFormatter {
    /// The text form, ending in "\n".
    public static func text(millisecondsSinceEpoch: Int64, level: Logger.Level, label: String,
                            message: String, metadata: Logger.Metadata) -> String {
        var line = timestamp(millisecondsSinceEpoch: millisecondsSinceEpoch)
        line += " "
        line += levelName(level).uppercased()
        line += " "
        line += escapeMessage(message)
        var fields = metadata
        if fields["label"] == nil { fields["label"] = .string(label) }
        for key in fields.keys.sorted() {
            line += " "
            line += sanitizeKey(key)
            line += "="
            line += textValue(fields[key]!)
        }
        line += "\n"
        return line
    }

    /// The JSON form, ending in "\n".
    public static func json(millisecondsSinceEpoch: Int64, level: Logger.Level, label: String,
                            message: String, metadata: Logger.Metadata) -> String {
        var out = "{\"ts\":"
        out += jsonString(timestamp(millisecondsSinceEpoch: millisecondsSinceEpoch))
        out += ",\"level\":" + jsonString(levelName(level))
        out += ",\"msg\":" + jsonString(message)
        out += ",\"label\":" + jsonString(label)
        let reserved: Set<String> = ["ts", "level", "msg", "label"]
        for key in metadata.keys.sorted() {
            let name = reserved.contains(key) ? key + "_" : key
            out += "," + jsonString(name) + ":" + jsonValue(metadata[key]!)
        }
        out += "}\n"
        return out
    }

    /// Lower-case level name as operators write it: trace, debug, info, notice, warn, error, critical.
    public static func levelName(_ level: Logger.Level) -> String {
        switch level {
        case .trace: return "trace"
        case .debug: return "debug"
        case .info: return "info"
        case .notice: return "notice"
        case .warning: return "warn"
        case .error: return "error"
        case .critical: return "critical"
        }
    }

    /// RFC 3339 UTC with milliseconds: `2024-05-01T12:00:00.123Z`.
    public static func timestamp(millisecondsSinceEpoch ms: Int64) -> String {
        var seconds = time_t(ms >= 0 ? ms / 1000 : (ms - 999) / 1000)
        let millis = Int(ms - Int64(seconds) * 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(millis), 3))Z"
    }

    /// Milliseconds since the Unix epoch, now.
    public static func nowMilliseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }

    // MARK: Text helpers

    /// Keeps the record on one line.
    static func escapeMessage(_ message: String) -> String {
        guard message.contains(where: { $0.isNewline || $0 == "\t" }) else { return message }
        return message.replacingOccurrences(of: "\r\n", with: "\\n")
            .replacingOccurrences(of: "\n", with: "\\n")
            .replacingOccurrences(of: "\r", with: "\\r")
            .replacingOccurrences(of: "\t", with: "\\t")
    }

    static func sanitizeKey(_ key: String) -> String {
        let cleaned = String(key.map { $0.isWhitespace || $0 == "=" || $0 == "\"" ? "_" : $0 })
        return cleaned.isEmpty ? "_" : cleaned
    }

    static func textValue(_ value: Logger.MetadataValue) -> String {
        let raw = plain(value)
        let needsQuotes = raw.isEmpty || raw.contains(where: { $0.isWhitespace || $0 == "\"" || $0 == "=" || $0 == "\\" })
        guard needsQuotes else { return raw }
        var out = "\""
        for c in raw {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default: out.append(c)
            }
        }
        return out + "\""
    }

    static func plain(_ value: Logger.MetadataValue) -> String {
        switch value {
        case .string(let s): return s
        case .stringConvertible(let c): return c.description
        case .array(let values): return "[" + values.map(plain).joined(separator: ",") + "]"
        case .dictionary(let dict):
            return "{" + dict.keys.sorted().map { "\($0):\(plain(dict[$0]!))" }.joined(separator: ",") + "}"
        }
    }

    // MARK: JSON helpers

    static func jsonValue(_ value: Logger.MetadataValue) -> String {
        switch value {
        case .string(let s): return jsonString(s)
        case .stringConvertible(let c):
            if let b = c as? Bool { return b ? "true" : "false" }
            if c is any BinaryInteger { return c.description }
            if let d = c as? Double, d.isFinite { return String(d) }
            if let f = c as? Float, f.isFinite { return String(f) }
            return jsonString(c.description)
        case .array(let values): return "[" + values.map(jsonValue).joined(separator: ",") + "]"
        case .dictionary(let dict):
            return "{" + dict.keys.sorted().map { jsonString($0) + ":" + jsonValue(dict[$0]!) }.joined(separator: ",") + "}"
        }
    }

    /// A JSON string literal; TOML basic strings use the same escapes.
    static func jsonString(_ s: String) -> String { TOMLText.quote(s) }
}
