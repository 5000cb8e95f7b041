/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum on
/// every journal frame, segment header and superblock copy.
///
/// Table-driven, slicing-by-8: eight 256-entry tables let the loop fold
/// eight input bytes per step instead of one.
///
/// One-shot: `CRC32C.checksum(bytes)`. Incremental:
/// `var crc = CRC32C(); crc.update(a); crc.update(b); crc.value`, equal to
/// `CRC32C.checksum(a + b)`.
public struct CRC32C: Sendable, Equatable {
    /// Running register (pre-inverted, as the algorithm keeps it).
    private var state: UInt32 = 0xFFFF_FFFF

    /// Starts an empty checksum (its `value` is 0, the CRC of no bytes).
    public init() {}

    /// The CRC-32C of every byte passed to `update` so far.
    public var value: UInt32 { ~state }

    /// Folds `bytes` into the running checksum.
    public mutating func update(_ bytes: some Collection<UInt8>) {
        let current = state
        if let folded = bytes.withContiguousStorageIfAvailable({ buffer in
            CRC32C.fold(current, UnsafeRawBufferPointer(buffer))
        }) {
            state = folded
        } else {
            let copy = Array(bytes)
            state = copy.withUnsafeBytes { CRC32C.fold(current, $0) }
        }
    }

    /// Folds raw memory into the running checksum.
    public mutating func update(raw: UnsafeRawBufferPointer) {
        state = CRC32C.fold(state, raw)
    }

    /// The CRC-32C of `bytes` ("123456789" gives 0xE3069283).
    public static func checksum(_ bytes: some Collection<UInt8>) -> UInt32 {
        var crc = CRC32C()
        crc.update(bytes)
        return crc.value
    }

    /// The CRC-32C of `bytes[range]` without copying the slice.
    static func checksum(_ bytes: [UInt8], range: Range<Int>) -> UInt32 {
        bytes.withUnsafeBytes { raw in
            ~fold(0xFFFF_FFFF, UnsafeRawBufferPointer(rebasing: raw[range]))
        }
    }

    /// 8 x 256 tables, flattened: table k at `k * 256`.
    private static let tables: [UInt32] = {
        let polynomial: UInt32 = 0x82F6_3B78
        var tables = [UInt32](repeating: 0, count: 8 * 256)
        for byte in 0..<256 {
            var crc = UInt32(byte)
            for _ in 0..<8 {
                crc = (crc & 1) != 0 ? (crc >> 1) ^ polynomial : crc >> 1
            }
            tables[byte] = crc
        }
        for k in 1..<8 {
            for byte in 0..<256 {
                let previous = tables[(k - 1) * 256 + byte]
                tables[k * 256 + byte] = (previous >> 8) ^ tables[Int(previous & 0xFF)]
            }
        }
        return tables
    }()

    private static func fold(_ initial: UInt32, _ raw: UnsafeRawBufferPointer) -> UInt32 {
        var crc = initial
        let count = raw.count
        guard count > 0 else { return crc }
        return tables.withUnsafeBufferPointer { t in
            var index = 0
            while count - index >= 8 {
                let low = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: index, as: UInt32.self)) ^ crc
                let high = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: index + 4, as: UInt32.self))
                let a = t[7 * 256 + Int(low & 0xFF)] ^ t[6 * 256 + Int((low >> 8) & 0xFF)]
                let b = t[5 * 256 + Int((low >> 16) & 0xFF)] ^ t[4 * 256 + Int(low >> 24)]
                let c = t[3 * 256 + Int(high & 0xFF)] ^ t[2 * 256 + Int((high >> 8) & 0xFF)]
                let d = t[1 * 256 + Int((high >> 16) & 0xFF)] ^ t[Int(high >> 24)]
                crc = a ^ b ^ c ^ d
                index += 8
            }
            while index < count {
                crc = t[Int((crc ^ UInt32(raw[index])) & 0xFF)] ^ (crc >> 8)
                index += 1
            }
            return crc
        }
    }
}
