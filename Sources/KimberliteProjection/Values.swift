import Foundation
import KimberliteCore

/// One SQLite value, typed by storage class.
///
/// JSON form (DESIGN.md §2 "JSON values"): integers are JSON numbers (exact
/// 64-bit), reals numbers, text strings, NULL `null`, blobs
/// `{"base64": "..."}`. Decoding: a number that fits Int64 exactly becomes
/// `.integer`, any other number `.real`. Foundation's `JSONDecoder` does not
/// expose the literal, so `1.0` and `1e3` (integral values) arrive as
/// integers; `1.5`, `2.5e-3` and integers beyond 64 bits arrive as reals.
/// Booleans, arrays and objects other than `{"base64": ...}` are refused.
public enum SQLValue: Sendable, Hashable {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)
    case blob([UInt8])
}

extension SQLValue: Codable {
    private enum BlobKey: String, CodingKey { case base64 }

    /// Any object key, to see keys other than "base64".
    private struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: any Decoder) throws {
        // A single-value container exists for every JSON shape; the typed
        // decodes below fail (without consuming anything) when the shape differs.
        if let single = try? decoder.singleValueContainer() {
            // Most parameters are strings: trying that shape first spares
            // three failed decodes (each builds an error) per parameter.
            // Int64 before Double, so an integral number stays an integer.
            if single.decodeNil() { self = .null; return }
            if let value = try? single.decode(String.self) { self = .text(value); return }
            if let value = try? single.decode(Int64.self) { self = .integer(value); return }
            if let value = try? single.decode(Double.self) { self = .real(value); return }
            if (try? single.decode(Bool.self)) != nil {
                throw DecodingError.dataCorruptedError(
                    in: single, debugDescription: "a boolean is not an SQL value; use 1 or 0")
            }
        }
        if let keyed = try? decoder.container(keyedBy: BlobKey.self),
           let keys = try? decoder.container(keyedBy: AnyKey.self).allKeys {
            guard keys.map(\.stringValue) == ["base64"] else {
                throw DecodingError.dataCorrupted(.init(
                    codingPath: decoder.codingPath,
                    debugDescription: "an object SQL value must be exactly {\"base64\": \"...\"}"))
            }
            let text = try keyed.decode(String.self, forKey: .base64)
            guard let bytes = Base64.decode(text) else {
                throw DecodingError.dataCorruptedError(
                    forKey: .base64, in: keyed, debugDescription: "blob is not valid base64")
            }
            self = .blob(bytes)
            return
        }
        throw DecodingError.dataCorrupted(.init(
            codingPath: decoder.codingPath,
            debugDescription: "an SQL value is a number, a string, null or {\"base64\": \"...\"}; arrays are not allowed"))
    }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .null:
            var c = encoder.singleValueContainer(); try c.encodeNil()
        case .integer(let v):
            var c = encoder.singleValueContainer(); try c.encode(v)
        case .real(let v):
            var c = encoder.singleValueContainer(); try c.encode(v)
        case .text(let v):
            var c = encoder.singleValueContainer(); try c.encode(v)
        case .blob(let v):
            var c = encoder.container(keyedBy: BlobKey.self)
            try c.encode(Base64.encode(v), forKey: .base64)
        }
    }
}

/// Standard base64 (RFC 4648 §4, padded), via Foundation; decoding is
/// strict (whitespace or a wrong length is an error).
enum Base64 {
    static func encode(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }
    static func decode(_ text: String) -> [UInt8]? { Data(base64Encoded: text).map { Array($0) } }
}

/// One SQL statement with its positional parameters (`?`, `?NNN`, `:name`
/// bind by position, 1...n).
public struct SQLStatement: Sendable, Equatable {
    public var sql: String
    public var params: [SQLValue]

    public init(sql: String, params: [SQLValue] = []) {
        self.sql = sql
        self.params = params
    }
}

/// The payload of one log entry: statements applied atomically.
///
/// Binary form (little-endian, `ByteWriter`): `version(u8 = 1)
/// count(u32)` then per statement `sql(u32 len + UTF-8) param_count(u32)`
/// and per parameter `tag(u8)` + value: 0 null, 1 integer(i64), 2 real
/// (IEEE-754 bits, u64), 3 text(u32 len + UTF-8), 4 blob(u32 len + bytes).
public struct WriteBatch: Sendable, Equatable {
    public var statements: [SQLStatement]

    public init(statements: [SQLStatement]) {
        self.statements = statements
    }

    static let formatVersion: UInt8 = 1

    public func encode() -> [UInt8] {
        // The exact size: the payload stays in the replica's memory (and in
        // every follower's) for as long as the entry does, and a buffer left
        // to grow by doubling would hold up to twice its bytes.
        var writer = ByteWriter(capacity: encodedSize)
        writer.write(Self.formatVersion)
        writer.write(UInt32(statements.count))
        for statement in statements {
            writer.writeString(statement.sql)
            writer.write(UInt32(statement.params.count))
            for value in statement.params {
                switch value {
                case .null: writer.write(UInt8(0))
                case .integer(let v): writer.write(UInt8(1)); writer.write(v)
                case .real(let v): writer.write(UInt8(2)); writer.write(v.bitPattern)
                case .text(let v): writer.write(UInt8(3)); writer.writeString(v)
                case .blob(let v): writer.write(UInt8(4)); writer.writeBlob(v)
                }
            }
        }
        assert(writer.bytes.count == encodedSize, "encodedSize matches encode()")
        return writer.bytes
    }

    /// Bytes `encode()` writes.
    var encodedSize: Int {
        statements.reduce(5) { size, statement in
            statement.params.reduce(size + 8 + statement.sql.utf8.count) { size, value in
                switch value {
                case .null: size + 1
                case .integer, .real: size + 9
                case .text(let v): size + 5 + v.utf8.count
                case .blob(let v): size + 5 + v.count
                }
            }
        }
    }

    /// Decodes what `encode()` wrote.
    /// - Throws: `DecodeError` on truncated input, an unknown version or tag,
    ///   bad UTF-8, counts larger than the input, or trailing bytes.
    public static func decode(_ bytes: [UInt8]) throws -> WriteBatch {
        var reader = ByteReader(bytes)
        let version: UInt8 = try reader.read()
        guard version == formatVersion else { throw DecodeError.invalid("write batch version \(version)") }
        let count = Int(try reader.read(UInt32.self))
        // Every statement takes at least 8 bytes, so a larger count is garbage.
        guard count <= reader.remaining / 8 else {
            throw DecodeError.invalid("write batch claims \(count) statements in \(reader.remaining) bytes")
        }
        var statements: [SQLStatement] = []
        statements.reserveCapacity(count)
        for _ in 0..<count {
            let sql = try reader.readString(limit: reader.remaining)
            let paramCount = Int(try reader.read(UInt32.self))
            guard paramCount <= reader.remaining else {
                throw DecodeError.invalid("statement claims \(paramCount) parameters in \(reader.remaining) bytes")
            }
            var params: [SQLValue] = []
            params.reserveCapacity(paramCount)
            for _ in 0..<paramCount {
                let tag: UInt8 = try reader.read()
                switch tag {
                case 0: params.append(.null)
                case 1: params.append(.integer(try reader.read()))
                case 2: params.append(.real(Double(bitPattern: try reader.read())))
                case 3: params.append(.text(try reader.readString(limit: reader.remaining)))
                case 4: params.append(.blob(try reader.readBlob(limit: reader.remaining)))
                default: throw DecodeError.invalid("parameter tag \(tag)")
                }
            }
            statements.append(SQLStatement(sql: sql, params: params))
        }
        guard reader.isAtEnd else { throw DecodeError.invalid("\(reader.remaining) trailing bytes after write batch") }
        return WriteBatch(statements: statements)
    }
}

/// A log entry written by the cluster itself, not by a client: an audit
/// record (`kind` such as "force_leader", `detail` JSON), applied into the
/// read-only table `_kmb_audit(op, at_ms, kind, detail)`.
///
/// Binary form: `version(u8 = 2) kind(u32 len + UTF-8) detail(u32 len + UTF-8)`;
/// version 2 tells it from a `WriteBatch` (version 1), which clients cannot
/// produce in any other form.
public struct SystemRecord: Sendable, Equatable {
    public var kind: String
    public var detail: String

    public init(kind: String, detail: String) { self.kind = kind; self.detail = detail }

    static let formatVersion: UInt8 = 2

    public func encode() -> [UInt8] {
        var writer = ByteWriter(capacity: 16 + kind.utf8.count + detail.utf8.count)
        writer.write(Self.formatVersion)
        writer.writeString(kind)
        writer.writeString(detail)
        return writer.bytes
    }

    /// Decodes what `encode()` wrote; nil when `bytes` is not a system record.
    public static func decode(_ bytes: [UInt8]) -> SystemRecord? {
        guard bytes.first == formatVersion else { return nil }
        var reader = ByteReader(bytes)
        guard let _: UInt8 = try? reader.read(),
              let kind = try? reader.readString(limit: reader.remaining),
              let detail = try? reader.readString(limit: reader.remaining), reader.isAtEnd else { return nil }
        return SystemRecord(kind: kind, detail: detail)
    }
}

/// What one applied statement did: `sqlite3_changes64` (0 when the statement
/// changed no rows, DDL included) and `sqlite3_last_insert_rowid` (reset to 0
/// at the start of each entry, so it is identical on every replica).
public struct StatementResult: Sendable, Equatable, Codable {
    public var rowsAffected: Int64
    public var lastInsertRowID: Int64

    public init(rowsAffected: Int64, lastInsertRowID: Int64) {
        self.rowsAffected = rowsAffected
        self.lastInsertRowID = lastInsertRowID
    }

    enum CodingKeys: String, CodingKey {
        case rowsAffected = "rows_affected"
        case lastInsertRowID = "last_insert_rowid"
    }
}

/// What applying one committed entry produced — identical on every replica.
public indirect enum ApplyOutcome: Sendable, Equatable {
    /// Every statement ran; one result per statement.
    case applied([StatementResult])
    /// A statement failed at apply: the whole entry was rolled back (it stays
    /// in the log); the client gets 409 apply_failed. The message names the
    /// statement (1-based) and carries SQLite's message.
    case failed(message: String)
    /// A session retry of the last request number: the recorded outcome
    /// (`.applied` or `.failed`) and the op that first carried the request;
    /// nothing re-applied.
    case duplicate(ApplyOutcome, originalOp: UInt64)
    /// The request number is lower than the session's last: nothing applied.
    case stale(lastRequestNumber: UInt64)
    /// The session was evicted from the client table: nothing applied.
    case sessionExpired

    /// Binary form stored in the client table: `tag(u8)` then 1 applied
    /// `count(u32) (rows i64, rowid i64)*`, 2 failed `message(str)`,
    /// 3 duplicate `original_op(u64) outcome`, 4 stale `last(u64)`, 5 session expired.
    public func encode() -> [UInt8] {
        var writer = ByteWriter()
        encode(into: &writer)
        return writer.bytes
    }

    private func encode(into writer: inout ByteWriter) {
        switch self {
        case .applied(let results):
            writer.write(UInt8(1))
            writer.write(UInt32(results.count))
            for result in results {
                writer.write(result.rowsAffected)
                writer.write(result.lastInsertRowID)
            }
        case .failed(let message):
            writer.write(UInt8(2))
            writer.writeString(message)
        case .duplicate(let inner, let originalOp):
            writer.write(UInt8(3))
            writer.write(originalOp)
            inner.encode(into: &writer)
        case .stale(let last):
            writer.write(UInt8(4))
            writer.write(last)
        case .sessionExpired:
            writer.write(UInt8(5))
        }
    }

    /// Decodes what `encode()` wrote.
    /// - Throws: `DecodeError` on truncated or malformed input or trailing bytes.
    public static func decode(_ bytes: [UInt8]) throws -> ApplyOutcome {
        var reader = ByteReader(bytes)
        let outcome = try decode(from: &reader, depth: 0)
        guard reader.isAtEnd else { throw DecodeError.invalid("\(reader.remaining) trailing bytes after outcome") }
        return outcome
    }

    private static func decode(from reader: inout ByteReader, depth: Int) throws -> ApplyOutcome {
        let tag: UInt8 = try reader.read()
        switch tag {
        case 1:
            let count = Int(try reader.read(UInt32.self))
            guard count <= reader.remaining / 16 else { throw DecodeError.invalid("outcome claims \(count) results") }
            var results: [StatementResult] = []
            results.reserveCapacity(count)
            for _ in 0..<count {
                results.append(StatementResult(rowsAffected: try reader.read(), lastInsertRowID: try reader.read()))
            }
            return .applied(results)
        case 2:
            return .failed(message: try reader.readString(limit: reader.remaining))
        case 3:
            guard depth == 0 else { throw DecodeError.invalid("nested duplicate outcome") }
            let originalOp: UInt64 = try reader.read()
            return .duplicate(try decode(from: &reader, depth: depth + 1), originalOp: originalOp)
        case 4:
            return .stale(lastRequestNumber: try reader.read())
        case 5:
            return .sessionExpired
        default:
            throw DecodeError.invalid("outcome tag \(tag)")
        }
    }
}

/// Rows of a read-only query, read in one snapshot taken when the projection
/// had applied `appliedOp`.
public struct QueryResult: Sendable {
    public var columns: [String]
    public var rows: [[SQLValue]]
    public var appliedOp: OpNumber

    public init(columns: [String], rows: [[SQLValue]], appliedOp: OpNumber) {
        self.columns = columns
        self.rows = rows
        self.appliedOp = appliedOp
    }
}

/// One row of the replicated client table: a session's last request number,
/// the op that carried it, and the outcome recorded when it was applied
/// (`.applied` or `.failed`).
public struct RecordedSession: Sendable, Equatable {
    public var requestNumber: UInt64
    public var lastOp: UInt64
    public var outcome: ApplyOutcome

    public init(requestNumber: UInt64, lastOp: UInt64, outcome: ApplyOutcome) {
        self.requestNumber = requestNumber
        self.lastOp = lastOp
        self.outcome = outcome
    }
}
