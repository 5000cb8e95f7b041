import Testing
@testable import KimberliteStorage

/// Bit-at-a-time reference, to check the table-driven version against.
private func referenceCRC32C(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in bytes {
        crc ^= UInt32(byte)
        for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
    }
    return ~crc
}

@Suite struct CRC32CTests {
    @Test func knownVectors() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8]()) == 0)
        // RFC 3720 (iSCSI) appendix B.4.
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
        #expect(CRC32C.checksum((0..<32).reversed().map { UInt8($0) }) == 0x113F_DB5C)
    }

    @Test func matchesBitwiseReferenceAtEveryLength() {
        var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
        for length in 0..<300 {
            let bytes = (0..<length).map { _ -> UInt8 in
                seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                return UInt8(truncatingIfNeeded: seed >> 56)
            }
            #expect(CRC32C.checksum(bytes) == referenceCRC32C(bytes), "length \(length)")
        }
    }

    @Test func incrementalEqualsOneShotAtEverySplit() {
        let bytes = (0..<97).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        let whole = CRC32C.checksum(bytes)
        for split in 0...bytes.count {
            var crc = CRC32C()
            crc.update(bytes[..<split])
            crc.update(bytes[split...])
            #expect(crc.value == whole, "split at \(split)")
        }
        #expect(CRC32C().value == 0)
    }

    @Test func acceptsNonContiguousCollections() {
        let text = "123456789"
        #expect(CRC32C.checksum(text.utf8) == 0xE306_9283)
        #expect(CRC32C.checksum(repeatElement(UInt8(0), count: 32)) == 0x8A91_36AA)
    }
}
