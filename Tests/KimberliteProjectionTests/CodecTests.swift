import Foundation
import KimberliteCore
import Testing
@testable import KimberliteProjection

@Suite("Codecs")
struct CodecTests {
    static let sample = WriteBatch(statements: [
        SQLStatement(sql: "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?)", params: [
            .null, .integer(.max), .integer(.min), .real(-2.5e-300), .text("héllo ✓"), .blob([0, 1, 255]), .blob([]),
        ]),
        SQLStatement(sql: "", params: [.text("")]),
        SQLStatement(sql: "DELETE FROM t", params: []),
    ])

    @Test func writeBatchRoundTrips() throws {
        let bytes = Self.sample.encode()
        #expect(try WriteBatch.decode(bytes) == Self.sample)
        #expect(try WriteBatch.decode(WriteBatch(statements: []).encode()) == WriteBatch(statements: []))
    }

    @Test func writeBatchRefusesGarbage() throws {
        let good = Self.sample.encode()
        var trailing = good
        trailing.append(0)
        var badVersion = good
        badVersion[0] = 9
        var hugeCount = good
        hugeCount.replaceSubrange(1..<5, with: [0xff, 0xff, 0xff, 0x7f])
        let cases: [[UInt8]] = [
            [],                                  // nothing
            [1],                                 // truncated count
            Array(good.dropLast()),              // truncated last statement
            trailing,                            // trailing byte
            badVersion,                          // unknown version
            hugeCount,                           // count larger than the input
            Array("SELECT 1".utf8),              // text, not a batch
        ]
        for bytes in cases {
            #expect(throws: DecodeError.self) { try WriteBatch.decode(bytes) }
        }
        // An unknown parameter tag.
        var badTag = WriteBatch(statements: [SQLStatement(sql: "x", params: [.null])]).encode()
        badTag[badTag.count - 1] = 7
        #expect(throws: DecodeError.invalid("parameter tag 7")) { try WriteBatch.decode(badTag) }
    }

    @Test func applyOutcomeRoundTrips() throws {
        let outcomes: [ApplyOutcome] = [
            .applied([StatementResult(rowsAffected: 3, lastInsertRowID: -1), StatementResult(rowsAffected: 0, lastInsertRowID: .max)]),
            .applied([]),
            .failed(message: "UNIQUE constraint failed: t.x"),
            .duplicate(.failed(message: "x"), originalOp: 17),
            .duplicate(.applied([StatementResult(rowsAffected: 1, lastInsertRowID: 1)]), originalOp: 1),
            .stale(lastRequestNumber: .max),
            .sessionExpired,
        ]
        for outcome in outcomes {
            #expect(try ApplyOutcome.decode(outcome.encode()) == outcome)
        }
        #expect(throws: DecodeError.self) { try ApplyOutcome.decode([3] + [UInt8](repeating: 0, count: 8) + [3] + [UInt8](repeating: 0, count: 8) + [5]) }  // nested duplicate
        #expect(throws: DecodeError.self) { try ApplyOutcome.decode([5, 0]) }     // trailing byte
        #expect(throws: DecodeError.self) { try ApplyOutcome.decode([]) }
        #expect(throws: DecodeError.self) { try ApplyOutcome.decode([9]) }
    }

    @Test func sqlValueEncodesAsDesignSays() throws {
        let values: [SQLValue] = [.null, .integer(.max), .integer(.min), .real(1.5), .text("x\"y"), .blob([0, 1, 2, 255])]
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let json = String(decoding: try encoder.encode(values), as: UTF8.self)
        #expect(json == #"[null,9223372036854775807,-9223372036854775808,1.5,"x\"y",{"base64":"AAEC\/w=="}]"#)
        #expect(try JSONDecoder().decode([SQLValue].self, from: Data(json.utf8)) == values)
    }

    @Test func sqlValueDecodesNumbersExactly() throws {
        func decode(_ text: String) throws -> SQLValue {
            try JSONDecoder().decode([SQLValue].self, from: Data("[\(text)]".utf8))[0]
        }
        #expect(try decode("9223372036854775807") == .integer(.max))
        #expect(try decode("-9223372036854775808") == .integer(.min))
        #expect(try decode("42") == .integer(42))
        #expect(try decode("1.5") == .real(1.5))
        #expect(try decode("2.5e-3") == .real(0.0025))
        // Beyond 64 bits: not an integer, so a real (the decoder cannot keep the digits).
        #expect(try decode("9223372036854775808") == .real(9223372036854775808.0))
        #expect(try decode(#""1""#) == .text("1"))
        #expect(try decode("null") == .null)
        #expect(try decode(#"{"base64": ""}"#) == .blob([]))
    }

    @Test func sqlValueRefusesOtherJSON() {
        for bad in ["true", "[1]", #"{"x": 1}"#, #"{"base64": "!!"}"#, #"{"base64": 5}"#, #"{"base64": "AA==", "x": 1}"#] {
            #expect(throws: DecodingError.self, "\(bad)") {
                try JSONDecoder().decode([SQLValue].self, from: Data("[\(bad)]".utf8))
            }
        }
    }

    @Test func statementResultUsesSnakeCase() throws {
        let json = String(decoding: try JSONEncoder().encode(StatementResult(rowsAffected: 2, lastInsertRowID: 7)), as: UTF8.self)
        #expect(json.contains(#""rows_affected":2"#) && json.contains(#""last_insert_rowid":7"#))
    }
}
