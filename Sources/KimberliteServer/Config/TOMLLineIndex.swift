import Foundation

/// Finds the line of each `[section]` header and `key =` assignment in TOML
/// text, because TOMLKit reports lines only for syntax errors. A light scan:
/// it follows multi-line arrays and strings so their contents are not read as
/// keys, and gives up (no line) on dotted keys and inline tables.
struct TOMLLineIndex {
    /// "section" → 1-based line of its header.
    private(set) var sections: [String: Int] = [:]
    /// "section\u{0}key" → 1-based line; top-level keys use section "".
    private(set) var keys: [String: Int] = [:]

    init(text: String) {
        var section = ""
        var depth = 0              // open brackets/braces of a multi-line value
        var multilineQuote: String? // """ or ''' while inside a multi-line string
        for (offset, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let lineNumber = offset + 1
            let line = rawLine.trimmingPrefix(while: { $0 == " " || $0 == "\t" })
            if let quote = multilineQuote {
                if line.contains(quote) { multilineQuote = nil }
                continue
            }
            if depth > 0 {
                depth = max(0, depth + TOMLLineIndex.bracketBalance(line[...]))
                continue
            }
            if line.hasPrefix("[") {
                var name = line.drop(while: { $0 == "[" })
                if let close = name.firstIndex(of: "]") { name = name[..<close] }
                let cleaned = TOMLLineIndex.unquote(name.trimming(" \t"))
                section = cleaned
                if sections[cleaned] == nil { sections[cleaned] = lineNumber }
                continue
            }
            guard let equals = TOMLLineIndex.assignmentEquals(in: line) else { continue }
            let key = TOMLLineIndex.unquote(line[..<equals].trimming(" \t"))
            let id = section + "\u{0}" + key
            if keys[id] == nil { keys[id] = lineNumber }
            let value = line[line.index(after: equals)...]
            for quote in ["\"\"\"", "'''"] where value.occurrences(of: quote) % 2 == 1 {
                multilineQuote = quote
            }
            if multilineQuote == nil { depth = max(0, TOMLLineIndex.bracketBalance(value)) }
        }
    }

    func line(section: String, key: String) -> Int? { keys[section + "\u{0}" + key] }
    func line(section: String) -> Int? { sections[section] }

    /// The `=` of `key = value`, skipping `=` inside a quoted key; nil for other lines.
    private static func assignmentEquals(in line: Substring) -> Substring.Index? {
        guard let first = line.first, first != "#" else { return nil }
        var inQuote: Character?
        var index = line.startIndex
        while index < line.endIndex {
            let c = line[index]
            if let q = inQuote {
                if c == q { inQuote = nil }
            } else if c == "\"" || c == "'" {
                inQuote = c
            } else if c == "=" {
                return index
            } else if c == "#" {
                return nil
            }
            index = line.index(after: index)
        }
        return nil
    }

    /// Net `[`/`{` minus `]`/`}` outside strings and comments.
    private static func bracketBalance(_ text: Substring) -> Int {
        var balance = 0
        var inQuote: Character?
        var escaped = false
        for c in text {
            if let q = inQuote {
                if escaped { escaped = false } else if c == "\\" && q == "\"" { escaped = true } else if c == q { inQuote = nil }
                continue
            }
            switch c {
            case "\"", "'": inQuote = c
            case "[", "{": balance += 1
            case "]", "}": balance -= 1
            case "#": return balance
            default: break
            }
        }
        return balance
    }

    private static func unquote(_ s: String) -> String {
        if s.count >= 2, let f = s.first, f == "\"" || f == "'", s.last == f {
            return String(s.dropFirst().dropLast())
        }
        return s
    }
}

private extension Substring {
    func trimming(_ set: String) -> String {
        var s = self
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }

    /// How many non-overlapping times `needle` occurs.
    func occurrences(of needle: String) -> Int {
        var count = 0
        var rest = self
        while let range = rest.range(of: needle) {
            count += 1
            rest = rest[range.upperBound...]
        }
        return count
    }
}
