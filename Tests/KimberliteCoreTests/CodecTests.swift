import KimberliteCore
import Testing

@Suite struct CodecTests {
    func entry(_ op: OpNumber, parent: Checksum = .zero) -> LogEntry {
        LogEntry(op: op, view: 3, timestampMs: 1_700_000_000_123, session: ClientSession(clientID: "c-ü", requestNumber: 9),
                 payload: Array("insert \(op)".utf8), parent: parent)
    }

    @Test func entryRoundTripAndChecksum() throws {
        let first = entry(1)
        let second = entry(2, parent: first.checksum)
        var reader = ByteReader(second.encoded())
        let decoded = try LogEntry.decode(from: &reader)
        #expect(decoded == second)
        #expect(decoded.isIntact)
        #expect(reader.isAtEnd)
        // Any flipped bit breaks the checksum or the decoding.
        var bytes = second.encoded()
        bytes[40] ^= 0x01
        var corrupt = ByteReader(bytes)
        let damaged = try LogEntry.decode(from: &corrupt)
        #expect(!damaged.isIntact)
    }

    @Test func truncatedEntryIsAnError() {
        let bytes = entry(1).encoded()
        for cut in [0, 10, 40, bytes.count - 1] {
            var reader = ByteReader(Array(bytes.prefix(cut)))
            #expect(throws: DecodeError.self) { try LogEntry.decode(from: &reader) }
        }
    }

    @Test func messagesRoundTrip() throws {
        let e1 = entry(1), e2 = entry(2, parent: e1.checksum)
        let messages: [Message] = [
            .prepare(view: 4, commit: 1, entries: [e1, e2]),
            .prepareOK(view: 4, op: 2),
            .commit(view: 4, commit: 2, commitChecksum: Checksum(bytes: Array(repeating: 7, count: 32)), op: 2, sequence: 77),
            .commitAck(view: 4, sequence: 77, op: 2),
            .startViewChange(view: 5),
            .doViewChange(DoViewChange(view: 5, logView: 4, op: 2, commit: 1, commitChecksum: e1.checksum, suffix: [e2])),
            .startView(StartView(view: 5, op: 2, commit: 2, suffix: [e1, e2])),
            .requestEntries(view: 5, from: 1),
            .entries(view: 5, commit: 2, lastOp: 2, entries: [e1]),
        ]
        for message in messages {
            var writer = ByteWriter()
            message.encode(into: &writer)
            var reader = ByteReader(writer.bytes)
            #expect(try Message.decode(from: &reader) == message)
            #expect(reader.isAtEnd)
        }
        var unknown = ByteReader([0xEE, 0, 0])
        #expect(throws: DecodeError.self) { try Message.decode(from: &unknown) }
    }
}
