import KimberliteCore

/// What is wrong at a place in the data directory. The raw value is the
/// phrase used in log lines, `verify` output and its JSON.
public enum StorageProblemKind: String, Codable, Sendable {
    /// A frame's CRC32C, or an entry's SHA-256, does not match its bytes.
    case checksumMismatch = "checksum mismatch"
    /// An entry's `parent` is not the previous entry's checksum.
    case hashChainBreak = "hash chain break"
    /// An op number is missing or out of order (within or across segments).
    case opGap = "op gap"
    /// A frame runs past the end of its segment.
    case truncatedFrame = "truncated frame"
    /// A frame length no entry can have (too small or too large).
    case badFrame = "bad frame"
    /// The CRC matched but the body does not decode as a log entry.
    case malformedEntry = "malformed entry"
    /// A segment header is short, has the wrong magic, version, first op or CRC.
    case badSegmentHeader = "bad segment header"
    /// An incomplete write at the very end of the log (recoverable: the
    /// server truncates it on open).
    case tornTail = "torn tail"
    /// One of the superblock's copies fails verification.
    case superblockCopyInvalid = "superblock copy invalid"
    /// No superblock file.
    case superblockMissing = "superblock missing"
    /// The superblock's commit number is past the end of the log.
    case commitBeyondLog = "commit beyond log"
    /// The data directory does not exist.
    case missingDirectory = "missing data directory"
    /// The data directory exists and is empty.
    case emptyDirectory = "empty data directory"
    /// The directory holds neither a superblock nor `log/`.
    case notADataDirectory = "not a kimberlite data directory"
    /// A file could not be read.
    case unreadable = "unreadable"
    /// A file in `log/` that is not a segment (quarantined `.corrupt`
    /// evidence, or something foreign).
    case unexpectedFile = "unexpected file"
    /// A projection checkpoint whose manifest or SQLite file fails its checks.
    case checkpointInvalid = "checkpoint invalid"
}

/// On-disk layout of journal segments.
///
/// Segment file `log/<first op, 20 digits>.kmb`:
/// header `magic "KMBSEG01"(8) version(u32) first_op(u64) crc32c(u32 over the
/// previous 20 bytes)`, then frames `[u32 body length][u32 CRC32C of body][body
/// = LogEntry.encoded()]`, little-endian.
enum SegmentFormat {
    static let magic: [UInt8] = Array("KMBSEG01".utf8)
    static let version: UInt32 = 1
    static let headerSize = 24
    static let frameHeaderSize = 8
    /// checksum 32 + op 8 + view 8 + timestamp 8 + parent 32 + session flag 1 + payload length 4.
    static let minimumBodySize = 93
    /// No entry is this large (the request limits are megabytes); a longer
    /// length field is damage.
    static let maximumBodySize = 1 << 30
    static let fileExtension = ".kmb"

    static func fileName(firstOp: OpNumber) -> String {
        let digits = String(firstOp)
        return String(repeating: "0", count: max(0, 20 - digits.count)) + digits + fileExtension
    }

    /// The first op a segment file name carries, or nil if `name` is not a segment name.
    static func firstOp(fromFileName name: String) -> OpNumber? {
        guard name.hasSuffix(fileExtension) else { return nil }
        let digits = name.dropLast(fileExtension.count)
        guard digits.count == 20, digits.allSatisfy({ $0 >= "0" && $0 <= "9" }) else { return nil }
        return OpNumber(digits)
    }

    static func encodeHeader(firstOp: OpNumber) -> [UInt8] {
        var writer = ByteWriter(capacity: headerSize)
        writer.writeRaw(magic)
        writer.write(version)
        writer.write(firstOp)
        writer.write(CRC32C.checksum(writer.bytes))
        return writer.bytes
    }

    /// The header's first op, or why the header is bad.
    static func parseHeader(_ bytes: [UInt8]) -> Result<OpNumber, HeaderError> {
        guard bytes.count >= headerSize else { return .failure(.short(bytes.count)) }
        guard Array(bytes[0..<8]) == magic else { return .failure(.magic) }
        var reader = ByteReader(bytes, offset: 8, end: headerSize)
        let version: UInt32 = (try? reader.read()) ?? 0
        let firstOp: UInt64 = (try? reader.read()) ?? 0
        let stored: UInt32 = (try? reader.read()) ?? 0
        let computed = CRC32C.checksum(bytes, range: 0..<20)
        guard stored == computed else { return .failure(.checksum(stored: stored, computed: computed)) }
        guard version == self.version else { return .failure(.version(version)) }
        return .success(firstOp)
    }

    enum HeaderError: Error, CustomStringConvertible {
        case short(Int), magic, checksum(stored: UInt32, computed: UInt32), version(UInt32)
        var description: String {
            switch self {
            case .short(let n): return "file is \(n) bytes, shorter than the \(SegmentFormat.headerSize)-byte header"
            case .magic: return "magic is not KMBSEG01"
            case .checksum(let stored, let computed): return "header CRC32C \(hex(stored)) != computed \(hex(computed))"
            case .version(let v): return "unknown format version \(v)"
            }
        }
    }

    /// Appends the frame for `entry` to `buffer`; returns the frame size.
    @discardableResult
    static func appendFrame(_ entry: LogEntry, to buffer: inout [UInt8]) -> Int {
        let body = entry.encoded()
        var header = ByteWriter(capacity: frameHeaderSize)
        header.write(UInt32(body.count))
        header.write(CRC32C.checksum(body))
        buffer.append(contentsOf: header.bytes)
        buffer.append(contentsOf: body)
        return frameHeaderSize + body.count
    }

    enum Frame {
        /// A verified entry; the next frame starts at `next`.
        case entry(LogEntry, next: Int)
        /// The frame at this offset is bad.
        case bad(StorageProblemKind, String)
    }

    /// Parses and verifies (CRC32C, decoding, entry SHA-256) the frame at
    /// `offset` in `bytes[..<end]`. Op order and the hash chain are the caller's.
    static func parseFrame(_ bytes: [UInt8], at offset: Int, end: Int) -> Frame {
        let remaining = end - offset
        guard remaining >= frameHeaderSize else {
            return .bad(.truncatedFrame, "\(remaining) bytes left, a frame header is \(frameHeaderSize)")
        }
        let length = Int(readU32(bytes, offset))
        guard length >= minimumBodySize, length <= maximumBodySize else {
            return .bad(.badFrame, "frame length \(length) is impossible")
        }
        guard length <= remaining - frameHeaderSize else {
            return .bad(.truncatedFrame, "frame length \(length) runs past the end (\(remaining - frameHeaderSize) bytes left)")
        }
        let stored = readU32(bytes, offset + 4)
        let bodyStart = offset + frameHeaderSize
        let computed = CRC32C.checksum(bytes, range: bodyStart..<(bodyStart + length))
        guard stored == computed else {
            return .bad(.checksumMismatch, "frame CRC32C \(hex(stored)) != computed \(hex(computed))")
        }
        var reader = ByteReader(bytes, offset: bodyStart, end: bodyStart + length)
        let entry: LogEntry
        do {
            entry = try LogEntry.decode(from: &reader)
        } catch {
            return .bad(.malformedEntry, "\(error)")
        }
        guard reader.isAtEnd else {
            return .bad(.malformedEntry, "\(reader.remaining) trailing bytes after the entry")
        }
        guard entry.isIntact else {
            return .bad(.checksumMismatch, "entry SHA-256 does not match its contents")
        }
        return .entry(entry, next: bodyStart + length)
    }

    /// The offset of the first verified frame after `offset` whose op is at
    /// least `minimumOp`, or nil. Tells a torn tail (nothing valid after the
    /// bad frame) from corruption (valid data after it). Linear: a position
    /// is CRC-checked only if its length and op fields are plausible.
    static func findValidFrame(_ bytes: [UInt8], after offset: Int, end: Int, minimumOp: OpNumber) -> Int? {
        let smallestFrame = frameHeaderSize + minimumBodySize
        var position = offset + 1
        while position + smallestFrame <= end {
            defer { position += 1 }
            let length = Int(readU32(bytes, position))
            guard length >= minimumBodySize, length <= end - position - frameHeaderSize else { continue }
            let op = readU64(bytes, position + frameHeaderSize + 32)
            let framesLeft = UInt64((end - position) / smallestFrame)
            guard op >= minimumOp, op <= minimumOp &+ framesLeft &+ 1 else { continue }
            if case .entry = parseFrame(bytes, at: position, end: end) { return position }
        }
        return nil
    }

    static func readU32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24
    }

    static func readU64(_ bytes: [UInt8], _ offset: Int) -> UInt64 {
        UInt64(readU32(bytes, offset)) | UInt64(readU32(bytes, offset + 4)) << 32
    }
}

func hex(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}
