import Crypto

/// A replica's identity in the cluster, 1...255 (`node_id` in the configuration).
public typealias NodeID = UInt8
/// A VSR view number (VRR §4): view `v` has primary `members[v % n]`.
public typealias ViewNumber = UInt64
/// A position in the replicated log. Op 1 is the first entry; 0 means "none".
public typealias OpNumber = UInt64

/// A SHA-256 digest, 32 bytes, held as four words so equality is cheap.
public struct Checksum: Hashable, Sendable, CustomStringConvertible {
    public var words: (UInt64, UInt64, UInt64, UInt64)

    public static let zero = Checksum(words: (0, 0, 0, 0))

    public init(words: (UInt64, UInt64, UInt64, UInt64)) { self.words = words }

    /// Builds a checksum from exactly 32 bytes.
    public init(bytes: some Collection<UInt8>) {
        precondition(bytes.count == 32, "a checksum is 32 bytes")
        var reader = ByteReader(Array(bytes))
        // Reading 32 bytes from a 32-byte buffer cannot fail.
        words = (try! reader.read(), try! reader.read(), try! reader.read(), try! reader.read())
    }

    /// SHA-256 of `bytes`.
    public static func sha256(_ bytes: some Sequence<UInt8>) -> Checksum {
        var hasher = SHA256()
        hasher.update(data: Array(bytes))
        return Checksum(bytes: Array(hasher.finalize()))
    }

    public var bytes: [UInt8] {
        var writer = ByteWriter(capacity: 32)
        writer.write(words.0); writer.write(words.1); writer.write(words.2); writer.write(words.3)
        return writer.bytes
    }

    public static func == (a: Checksum, b: Checksum) -> Bool {
        a.words.0 == b.words.0 && a.words.1 == b.words.1 && a.words.2 == b.words.2 && a.words.3 == b.words.3
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(words.0); hasher.combine(words.1); hasher.combine(words.2); hasher.combine(words.3)
    }

    /// Lower-case hex, 64 characters.
    public var description: String {
        bytes.map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }
}

/// A client session stamp: at most one request outstanding per `clientID`,
/// request numbers strictly increasing (gaps allowed).
public struct ClientSession: Hashable, Sendable {
    /// Any unique text chosen by the client, at most 256 bytes of UTF-8.
    public var clientID: String
    public var requestNumber: UInt64

    public init(clientID: String, requestNumber: UInt64) {
        self.clientID = clientID
        self.requestNumber = requestNumber
    }
}

/// One entry of the replicated log: one client request (an atomic batch of
/// statements, opaque to the core) stamped by the primary.
///
/// Entries form a hash chain: `parent` is the checksum of entry `op - 1`
/// (`Checksum.zero` for op 1) and `checksum` is SHA-256 over every other
/// field, so equal checksums at an op mean equal logs up to that op.
public struct LogEntry: Sendable, Equatable {
    public var op: OpNumber
    /// The view in which the primary assigned this op.
    public var view: ViewNumber
    /// Leader-assigned time, milliseconds since the Unix epoch; never
    /// decreases along the log.
    public var timestampMs: Int64
    public var session: ClientSession?
    /// The request body, encoded by the projection layer.
    public var payload: [UInt8]
    public var parent: Checksum
    public private(set) var checksum: Checksum

    /// Stamps a new entry and computes its checksum.
    public init(op: OpNumber, view: ViewNumber, timestampMs: Int64, session: ClientSession?,
                payload: [UInt8], parent: Checksum) {
        self.init(op: op, view: view, timestampMs: timestampMs, session: session, payload: payload,
                  parent: parent, checksum: .zero)
        self.checksum = computeChecksum()
    }

    /// SHA-256 over the encoded fields other than `checksum`.
    public func computeChecksum() -> Checksum {
        var writer = ByteWriter(capacity: 96 + payload.count)
        encodeBody(into: &writer)
        return Checksum.sha256(writer.bytes)
    }

    /// True when the stored checksum matches the contents.
    public var isIntact: Bool { computeChecksum() == checksum }

    private func encodeBody(into writer: inout ByteWriter) {
        writer.write(op)
        writer.write(view)
        writer.write(timestampMs)
        writer.writeRaw(parent.bytes)
        if let session {
            writer.write(UInt8(1))
            writer.writeString(session.clientID)
            writer.write(session.requestNumber)
        } else {
            writer.write(UInt8(0))
        }
        writer.writeBlob(payload)
    }

    /// Appends the entry, checksum first: `checksum(32) op(u64) view(u64)
    /// timestamp(i64) parent(32) has_session(u8) [client_id(str) request(u64)]
    /// payload(u32 len + bytes)`.
    public func encode(into writer: inout ByteWriter) {
        writer.writeRaw(checksum.bytes)
        encodeBody(into: &writer)
    }

    public func encoded() -> [UInt8] {
        var writer = ByteWriter(capacity: 128 + payload.count)
        encode(into: &writer)
        return writer.bytes
    }

    /// A list of entries as messages carry it: `count(u32)` then each entry's encoding.
    public static func write(_ entries: [LogEntry], to writer: inout ByteWriter) {
        writer.write(UInt32(entries.count))
        for entry in entries { entry.encode(into: &writer) }
    }

    /// Reads what `write(_:to:)` wrote.
    /// - Throws: `DecodeError` on a count larger than the input, or a truncated or malformed entry.
    public static func readList(from reader: inout ByteReader) throws -> [LogEntry] {
        let count = Int(try reader.read(UInt32.self))
        guard count <= reader.remaining else { throw DecodeError.invalid("entry count \(count)") }
        var entries: [LogEntry] = []
        entries.reserveCapacity(count)
        for _ in 0..<count { entries.append(try decode(from: &reader)) }
        return entries
    }

    /// Decodes an entry written by `encode(into:)`. Does not verify the
    /// checksum (use `isIntact`), so callers can report a mismatch precisely.
    /// - Throws: `DecodeError` on truncated or malformed input.
    public static func decode(from reader: inout ByteReader) throws -> LogEntry {
        let checksum = Checksum(bytes: try reader.readRaw(count: 32))
        let op: UInt64 = try reader.read()
        let view: UInt64 = try reader.read()
        let timestamp: Int64 = try reader.read()
        let parent = Checksum(bytes: try reader.readRaw(count: 32))
        let hasSession: UInt8 = try reader.read()
        var session: ClientSession?
        switch hasSession {
        case 0: session = nil
        case 1: session = ClientSession(clientID: try reader.readString(limit: 4096), requestNumber: try reader.read())
        default: throw DecodeError.invalid("session flag \(hasSession)")
        }
        let payload = try reader.readBlob()
        return LogEntry(op: op, view: view, timestampMs: timestamp, session: session, payload: payload, parent: parent,
                        checksum: checksum)
    }

    private init(op: OpNumber, view: ViewNumber, timestampMs: Int64, session: ClientSession?,
                 payload: [UInt8], parent: Checksum, checksum: Checksum) {
        self.op = op
        self.view = view
        self.timestampMs = timestampMs
        self.session = session
        self.payload = payload
        self.parent = parent
        self.checksum = checksum
    }
}
