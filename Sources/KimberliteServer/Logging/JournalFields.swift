import Logging

/// A documented failure that journald can explain: each has a fixed 128-bit
/// `MESSAGE_ID`, and `systemd/kimberlite.catalog` holds its runbook step under
/// that id, so `journalctl -x` prints the explanation beside the record.
///
/// The ids never change once published (the catalog and operators' alert
/// rules key on them). Keep this list and `systemd/kimberlite.catalog` in step;
/// `JournalFieldsTests` checks that every id appears in the catalog.
public enum JournalMessageID: String, Sendable, CaseIterable {
    case noLeader = "3b1a6c2e9f7d4e21a8c55d0f6e4b7a01"
    case electionTimeout = "3b1a6c2e9f7d4e21a8c55d0f6e4b7a02"
    case rejectedByLeader = "3b1a6c2e9f7d4e21a8c55d0f6e4b7a03"
    case checksumMismatch = "3b1a6c2e9f7d4e21a8c55d0f6e4b7a04"
    case slowFsync = "3b1a6c2e9f7d4e21a8c55d0f6e4b7a05"
    case diskFull = "3b1a6c2e9f7d4e21a8c55d0f6e4b7a06"
    case clockSkew = "3b1a6c2e9f7d4e21a8c55d0f6e4b7a07"
    case recovering = "3b1a6c2e9f7d4e21a8c55d0f6e4b7a08"
    case diverged = "3b1a6c2e9f7d4e21a8c55d0f6e4b7a09"

    /// The message prefixes (DESIGN.md "Logs": the phrases operators grep for)
    /// that select each id, compared case-insensitively. The first rule whose
    /// prefix starts the message wins; "Recovering complete" is the end of a
    /// recovery, not a failure, so it gets no id.
    static let rules: [(prefix: String, id: JournalMessageID?)] = [
        ("no leader elected", .noLeader),
        ("election timeout", .electionTimeout),
        ("rejected by leader", .rejectedByLeader),
        ("checksum mismatch", .checksumMismatch),
        ("slow fsync", .slowFsync),
        ("disk full", .diskFull),
        ("clock skew", .clockSkew),
        ("recovering complete", nil),
        ("recovering", .recovering),
        ("diverged", .diverged),
    ]

    /// The id for a log message, nil when the message is not a documented failure.
    public static func forMessage(_ message: String) -> JournalMessageID? {
        let lowered = message.lowercased()
        for rule in rules where lowered.hasPrefix(rule.prefix) {
            return rule.id
        }
        return nil
    }
}

/// Pure mapping of one swift-log record to journald fields (the native
/// protocol's `NAME=value` pairs). Kept apart from the libsystemd call so it
/// can be unit-tested anywhere.
public enum JournalFields {
    /// The `SYSLOG_IDENTIFIER` of every record, so `journalctl -t kimberlite` finds them.
    public static let syslogIdentifier = "kimberlite"

    /// syslog priority (0 emerg … 7 debug) of a swift-log level.
    public static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    /// The journal field name of a metadata key: `KMB_` and the key in upper
    /// case, every character outside A–Z, 0–9 and `_` replaced by `_`, cut to
    /// journald's 64-character limit. `node_id` → `KMB_NODE_ID`, `from-op` → `KMB_FROM_OP`.
    public static func fieldName(forMetadataKey key: String) -> String {
        var name = "KMB_"
        for scalar in key.unicodeScalars {
            switch scalar {
            case "a"..."z": name.unicodeScalars.append(Unicode.Scalar(scalar.value - 32)!)
            case "A"..."Z", "0"..."9", "_": name.unicodeScalars.append(scalar)
            default: name.append("_")
            }
        }
        if name == "KMB_" { name += "_" }
        return String(name.prefix(64))
    }

    /// Every field of one record, in a stable order: MESSAGE, PRIORITY,
    /// SYSLOG_IDENTIFIER, MESSAGE_ID (for documented failures), CODE_FILE,
    /// CODE_LINE, CODE_FUNC, KMB_LABEL, then the metadata as `KMB_<NAME>`
    /// sorted by name (values in the text log's plain form). A metadata key
    /// that maps onto a name already used (`label`, or two keys differing only
    /// in case or punctuation) keeps the first value.
    public static func fields(level: Logger.Level, label: String, message: String, metadata: Logger.Metadata,
                              file: String, function: String, line: UInt) -> [(name: String, value: String)] {
        var out: [(name: String, value: String)] = [
            ("MESSAGE", message),
            ("PRIORITY", String(priority(level))),
            ("SYSLOG_IDENTIFIER", syslogIdentifier),
        ]
        if let id = JournalMessageID.forMessage(message) {
            out.append(("MESSAGE_ID", id.rawValue))
        }
        out.append(("CODE_FILE", file))
        out.append(("CODE_LINE", String(line)))
        out.append(("CODE_FUNC", function))
        out.append(("KMB_LABEL", label))
        var used: Set<String> = ["KMB_LABEL"]
        for key in metadata.keys.sorted() {
            let name = fieldName(forMetadataKey: key)
            guard used.insert(name).inserted else { continue }
            out.append((name, LogLineFormatter.plain(metadata[key]!)))
        }
        return out
    }
}
