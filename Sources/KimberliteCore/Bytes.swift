/// Little-endian binary encoding used by every on-disk and on-wire format.
///
/// `ByteWriter` appends; `ByteReader` consumes and throws `DecodeError` on
/// short or malformed input, so a truncated frame is an error, never a crash.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func write(_ value: UInt8) { bytes.append(value) }
    public mutating func write(_ value: Bool) { bytes.append(value ? 1 : 0) }

    public mutating func write<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    /// Appends raw bytes with no length prefix.
    public mutating func writeRaw<C: Collection>(_ raw: C) where C.Element == UInt8 {
        bytes.append(contentsOf: raw)
    }

    /// Appends a u32 length prefix then the bytes.
    public mutating func writeBlob<C: Collection>(_ blob: C) where C.Element == UInt8 {
        write(UInt32(blob.count))
        bytes.append(contentsOf: blob)
    }

    /// Appends a u32 length prefix then the UTF-8 bytes.
    public mutating func writeString(_ string: String) {
        writeBlob(Array(string.utf8))
    }
}

/// Why a byte sequence could not be decoded.
public enum DecodeError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The input ended `needed` bytes short at `offset`.
    case truncated(offset: Int, needed: Int)
    /// A field holds a value outside its domain (unknown tag, bad UTF-8, oversized length).
    case invalid(String)

    public var description: String {
        switch self {
        case .truncated(let offset, let needed): return "truncated input at offset \(offset) (\(needed) more bytes needed)"
        case .invalid(let what): return "invalid encoding: \(what)"
        }
    }
}

/// Reads what `ByteWriter` wrote. Every read checks bounds first.
public struct ByteReader: Sendable {
    public let bytes: [UInt8]
    public private(set) var offset: Int
    private let end: Int

    public init(_ bytes: [UInt8], offset: Int = 0, end: Int? = nil) {
        self.bytes = bytes
        self.offset = offset
        self.end = end ?? bytes.count
    }

    public var remaining: Int { end - offset }
    public var isAtEnd: Bool { offset >= end }

    private mutating func need(_ count: Int) throws {
        guard count >= 0, remaining >= count else {
            throw DecodeError.truncated(offset: offset, needed: count - max(remaining, 0))
        }
    }

    public mutating func read<T: FixedWidthInteger>(_: T.Type = T.self) throws -> T {
        let size = MemoryLayout<T>.size
        try need(size)
        var value: T = 0
        withUnsafeMutableBytes(of: &value) { raw in
            for i in 0..<size { raw[i] = bytes[offset + i] }
        }
        offset += size
        return T(littleEndian: value)
    }

    public mutating func readBool() throws -> Bool {
        let byte: UInt8 = try read()
        guard byte <= 1 else { throw DecodeError.invalid("boolean byte \(byte)") }
        return byte == 1
    }

    public mutating func readRaw(count: Int) throws -> [UInt8] {
        try need(count)
        let slice = Array(bytes[offset..<(offset + count)])
        offset += count
        return slice
    }

    /// Reads a u32 length prefix then that many bytes; refuses lengths over `limit`.
    public mutating func readBlob(limit: Int = Int(UInt32.max)) throws -> [UInt8] {
        let count = Int(try read(UInt32.self))
        guard count <= limit else { throw DecodeError.invalid("length \(count) over limit \(limit)") }
        return try readRaw(count: count)
    }

    public mutating func readString(limit: Int = 1 << 20) throws -> String {
        let raw = try readBlob(limit: limit)
        guard let string = String(validating: raw, as: UTF8.self) else {
            throw DecodeError.invalid("string is not UTF-8")
        }
        return string
    }
}
