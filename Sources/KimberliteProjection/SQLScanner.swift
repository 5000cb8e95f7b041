import Foundation

/// A small SQL tokenizer for the leader's static checks. It knows SQLite's
/// lexical rules well enough to skip string literals, blob literals and
/// comments and to read quoted identifiers; it does not parse grammar.
///
/// The checks here complement the authorizer: SQLite does not resolve
/// functions inside DDL (DEFAULT clauses, trigger bodies, views) until they
/// run, and the authorizer cannot see function arguments, so 'now' and
/// CURRENT_TIMESTAMP are found in the text.
enum SQLScanner {
    struct Token: Equatable {
        enum Kind: Equatable {
            /// A bare word: keyword or identifier. `text` as written.
            case word
            /// "x", [x] or `x`; `text` dequoted.
            case quotedIdentifier
            /// 'x'; `text` dequoted.
            case string
            case blob, number, parameter
            /// One punctuation character in `text`.
            case punctuation
        }

        var kind: Kind
        var text: String

        var isName: Bool { kind == .word || kind == .quotedIdentifier }
        var upper: String { text.uppercased() }
        func isPunctuation(_ p: String) -> Bool { kind == .punctuation && text == p }
    }

    static func tokenize(_ sql: String) -> [Token] {
        let b = Array(sql.utf8)
        var tokens: [Token] = []
        var i = 0
        func text(_ range: Range<Int>) -> String { String(decoding: b[range], as: UTF8.self) }
        func isIdentifierByte(_ c: UInt8) -> Bool {
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x24 || c >= 0x80
        }
        /// Reads a quoted run closed by `close`, where a doubled `close` is an
        /// escaped one (unless `doubling` is false); returns the inner text.
        func quoted(_ close: UInt8, doubling: Bool = true) -> String {
            var inner: [UInt8] = []
            i += 1
            while i < b.count {
                if b[i] == close {
                    if doubling, i + 1 < b.count, b[i + 1] == close {
                        inner.append(close)
                        i += 2
                        continue
                    }
                    i += 1
                    return String(decoding: inner, as: UTF8.self)
                }
                inner.append(b[i])
                i += 1
            }
            return String(decoding: inner, as: UTF8.self)  // unterminated: SQLite will refuse it
        }
        while i < b.count {
            let c = b[i]
            switch c {
            case 0x20, 0x09, 0x0A, 0x0C, 0x0D:
                i += 1
            case UInt8(ascii: "-") where i + 1 < b.count && b[i + 1] == UInt8(ascii: "-"):
                while i < b.count, b[i] != 0x0A { i += 1 }
            case UInt8(ascii: "/") where i + 1 < b.count && b[i + 1] == UInt8(ascii: "*"):
                i += 2
                while i < b.count, !(b[i] == UInt8(ascii: "*") && i + 1 < b.count && b[i + 1] == UInt8(ascii: "/")) { i += 1 }
                i = min(i + 2, b.count)
            case UInt8(ascii: "'"):
                tokens.append(Token(kind: .string, text: quoted(c)))
            case UInt8(ascii: "\""), UInt8(ascii: "`"):
                tokens.append(Token(kind: .quotedIdentifier, text: quoted(c)))
            case UInt8(ascii: "["):
                tokens.append(Token(kind: .quotedIdentifier, text: quoted(UInt8(ascii: "]"), doubling: false)))
            case _ where (c | 0x20) == UInt8(ascii: "x") && i + 1 < b.count && b[i + 1] == UInt8(ascii: "'"):
                i += 1
                tokens.append(Token(kind: .blob, text: quoted(UInt8(ascii: "'"))))
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                let start = i
                while i < b.count {
                    let d = b[i]
                    if isIdentifierByte(d) || d == UInt8(ascii: ".") {
                        i += 1
                    } else if (d == UInt8(ascii: "+") || d == UInt8(ascii: "-")) && (b[i - 1] | 0x20) == UInt8(ascii: "e") {
                        i += 1
                    } else {
                        break
                    }
                }
                tokens.append(Token(kind: .number, text: text(start..<i)))
            case UInt8(ascii: ".") where i + 1 < b.count && b[i + 1] >= 0x30 && b[i + 1] <= 0x39:
                let start = i
                i += 1
                while i < b.count, isIdentifierByte(b[i]) || b[i] == UInt8(ascii: ".") { i += 1 }
                tokens.append(Token(kind: .number, text: text(start..<i)))
            case UInt8(ascii: "?"), UInt8(ascii: ":"), UInt8(ascii: "@"), UInt8(ascii: "$"):
                let start = i
                i += 1
                while i < b.count, isIdentifierByte(b[i]) { i += 1 }
                tokens.append(Token(kind: .parameter, text: text(start..<i)))
            default:
                if isIdentifierByte(c) {
                    let start = i
                    while i < b.count, isIdentifierByte(b[i]) { i += 1 }
                    tokens.append(Token(kind: .word, text: text(start..<i)))
                } else {
                    tokens.append(Token(kind: .punctuation, text: String(UnicodeScalar(c))))
                    i += 1
                }
            }
        }
        return tokens
    }

    /// True when `text` holds no statement: only whitespace, comments and semicolons.
    static func isBlank(_ text: String) -> Bool {
        tokenize(text).allSatisfy { $0.isPunctuation(";") }
    }

    /// The statement's first keyword, upper-cased, after any EXPLAIN [QUERY PLAN].
    static func leadingKeyword(_ tokens: [Token]) -> String? {
        var index = 0
        while index < tokens.count, tokens[index].kind == .word,
              ["EXPLAIN", "QUERY", "PLAN"].contains(tokens[index].upper) {
            index += 1
        }
        guard index < tokens.count, tokens[index].kind == .word else { return nil }
        return tokens[index].upper
    }

    /// CREATE, DROP or ALTER: the statement changes the schema.
    static func isSchemaChange(_ tokens: [Token]) -> Bool {
        ["CREATE", "DROP", "ALTER"].contains(leadingKeyword(tokens) ?? "")
    }

    static let refusedFunctions: Set<String> = ["random", "randomblob", "total_changes",
                                                "current_time", "current_date", "current_timestamp"]
    static let dateFunctions: Set<String> = Set(DateFunction.allCases.map(\.rawValue))
    static let clockKeywords: Set<String> = ["CURRENT_TIME", "CURRENT_DATE", "CURRENT_TIMESTAMP"]
    /// A name followed by "(" after one of these is a table, index or CTE, not a call.
    private static let notCallPredecessors: Set<String> = ["TABLE", "INTO", "ON", "REFERENCES", "VIEW", "INDEX",
                                                           "TRIGGER", "EXISTS", "UPDATE", "FROM", "JOIN", "WITH", "."]

    /// The first nondeterministic construct in one statement's tokens, named
    /// the way the client wrote it (e.g. "datetime('now')", "CURRENT_TIMESTAMP",
    /// "ATTACH", "PRAGMA journal_mode = DELETE"), or nil.
    static func nondeterministicConstruct(_ tokens: [Token]) -> String? {
        switch leadingKeyword(tokens) {
        case "ATTACH": return "ATTACH"
        case "DETACH": return "DETACH"
        case "PRAGMA": if let refused = refusedPragma(tokens) { return refused }
        default: break
        }
        for (index, token) in tokens.enumerated() {
            if token.kind == .word, clockKeywords.contains(token.upper) { return token.upper }
            guard token.isName, index + 1 < tokens.count, tokens[index + 1].isPunctuation("(") else { continue }
            if index > 0 {
                let previous = tokens[index - 1]
                if previous.isPunctuation(".") || (previous.kind == .word && notCallPredecessors.contains(previous.upper)) {
                    continue
                }
            }
            let name = token.text.lowercased()
            if refusedFunctions.contains(name) { return "\(name)()" }
            guard dateFunctions.contains(name) else { continue }
            let arguments = callArguments(tokens, openParenAt: index + 1)
            let timeArguments = name == "strftime" ? Array(arguments.dropFirst()) : arguments
            if timeArguments.isEmpty {
                return name == "strftime" ? "strftime() with no time argument" : "\(name)()"
            }
            for argument in arguments {
                for t in argument where t.kind == .string || t.kind == .quotedIdentifier {
                    let literal = t.text.trimmingCharacters(in: .whitespaces).lowercased()
                    if literal == "now" { return "\(name)('now')" }
                    if literal == "localtime" || literal == "utc" { return "\(name)(…, '\(literal)')" }
                }
            }
        }
        return nil
    }

    /// The tokens of each top-level argument of the call whose "(" is at `open`.
    static func callArguments(_ tokens: [Token], openParenAt open: Int) -> [[Token]] {
        var arguments: [[Token]] = []
        var current: [Token] = []
        var depth = 0
        var index = open
        while index < tokens.count {
            let t = tokens[index]
            if t.isPunctuation("(") {
                depth += 1
                if depth > 1 { current.append(t) }
            } else if t.isPunctuation(")") {
                depth -= 1
                if depth == 0 { break }
                current.append(t)
            } else if t.isPunctuation(","), depth == 1 {
                arguments.append(current)
                current = []
            } else {
                current.append(t)
            }
            index += 1
        }
        if !current.isEmpty || !arguments.isEmpty { arguments.append(current) }
        return arguments
    }

    /// For a PRAGMA statement: "PRAGMA name = value" when it writes or has a
    /// side effect, nil when it only reads.
    static func refusedPragma(_ tokens: [Token]) -> String? {
        guard let start = tokens.firstIndex(where: { $0.kind == .word && $0.upper == "PRAGMA" }) else { return nil }
        var index = start + 1
        guard index < tokens.count, tokens[index].isName else { return nil }
        var name = tokens[index].text
        if index + 2 < tokens.count, tokens[index + 1].isPunctuation("."), tokens[index + 2].isName {
            name = tokens[index + 2].text
            index += 2
        }
        index += 1
        var argument: String?
        if index < tokens.count, tokens[index].isPunctuation("=") || tokens[index].isPunctuation("(") {
            argument = tokens[(index + 1)...].prefix { !$0.isPunctuation(")") && !$0.isPunctuation(";") }
                .map(\.text).joined(separator: " ")
        }
        guard let refusal = PragmaPolicy.refusal(name: name, argument: argument) else { return nil }
        return refusal.construct
    }

    /// The first name in the statement that starts with `_kmb_` (our
    /// internal tables and indexes), or nil.
    static func internalName(_ tokens: [Token]) -> String? {
        tokens.first { $0.isName && $0.text.lowercased().hasPrefix("_kmb_") }?.text
    }
}

/// Which PRAGMAs a user statement may run: reads only.
enum PragmaPolicy {
    /// Pragmas whose argument names what to inspect rather than a new value.
    static let readableWithArgument: Set<String> = [
        "table_info", "table_xinfo", "index_info", "index_xinfo", "index_list", "foreign_key_list",
        "foreign_key_check", "integrity_check", "quick_check", "table_list",
    ]
    /// Pragmas that act even without an argument.
    static let actingWithoutArgument: Set<String> = ["optimize", "incremental_vacuum", "wal_checkpoint", "shrink_memory"]

    static func refusal(name: String, argument: String?) -> Refusal? {
        let lower = name.lowercased()
        if let argument {
            return readableWithArgument.contains(lower) ? nil : .pragma(name: lower, argument: argument)
        }
        return actingWithoutArgument.contains(lower) ? .pragma(name: lower, argument: nil) : nil
    }
}

/// Something a user statement may not do, found by the tokenizer or the authorizer.
enum Refusal: Equatable {
    /// Access to an internal `_kmb_` table, index or trigger.
    case internalTable(String)
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE: each entry is one transaction.
    case transactionControl
    /// "ATTACH" or "DETACH".
    case attach(String)
    /// A PRAGMA that writes or acts.
    case pragma(name: String, argument: String?)

    /// True when the refusal is about determinism (400 nondeterministic_sql)
    /// rather than validity (400 invalid_sql).
    var isNondeterminism: Bool {
        switch self {
        case .attach, .pragma: return true
        case .internalTable, .transactionControl: return false
        }
    }

    /// How the construct reads in a message.
    var construct: String {
        switch self {
        case .internalTable(let name): return "internal table \(name)"
        case .transactionControl: return "transaction control"
        case .attach(let verb): return verb
        case .pragma(let name, let argument): return argument.map { "PRAGMA \(name) = \($0)" } ?? "PRAGMA \(name)"
        }
    }

    /// The message a user sees when SQLite denied the statement for this reason.
    var message: String {
        switch self {
        case .internalTable(let name):
            return "access to internal table \(name) is not allowed"
        case .transactionControl:
            return "transaction control statements are not allowed: each request is applied as one transaction"
        case .attach(let verb):
            return "\(verb) is not allowed"
        case .pragma:
            return "\(construct) is not allowed: only reading PRAGMAs are"
        }
    }
}
