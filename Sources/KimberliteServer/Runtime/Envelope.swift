import KimberliteCore
import KimberliteStorage
import NIOCore

/// What travels between nodes on the cluster port (7001): VSR messages plus
/// the runtime's own traffic (handshake, clock pings, forwarded client
/// requests). Framed as `u32 big-endian length` + `tag` + fields.
enum Envelope: Sendable, Equatable {
    /// First frame on every connection: who is calling and from which cluster.
    case hello(Hello)
    /// The receiver refuses the connection; `reason` says why. `epoch` is the
    /// rejecter's membership epoch (a newer one tells the dialler it was superseded).
    case helloReject(reason: String, rejecterID: NodeID, rejecterIsLeader: Bool, epoch: UInt64)
    /// A VSR message and the sender's membership epoch when it sent it.
    case vsr(Message, epoch: UInt64)
    /// `sentAt` is the sender's wall clock, nanoseconds since the Unix epoch.
    case ping(sentAt: Int64)
    /// Answers a ping: the ping's `sentAt` and the responder's wall clock.
    case pong(echo: Int64, responderTime: Int64)
    /// A client request a follower forwards to the leader.
    case forward(id: UInt64, kind: ForwardKind, body: [UInt8])
    /// The leader's HTTP status and JSON body for a forwarded request.
    case forwardReply(id: UInt64, status: UInt16, body: [UInt8])
    /// State transfer (DESIGN.md §2b): the primary cannot send the ops a
    /// backup asked for (compacted away); it offers its newest checkpoint.
    case stateTransferOffer(StateTransferOffer)
    /// Receiver → sender: bytes `offset..<offset+length` of checkpoint `op`
    /// (identified by its SHA-256, hex).
    case stateTransferRead(op: OpNumber, sha256: String, offset: UInt64, length: UInt32)
    /// Sender → receiver: those bytes and their CRC32C; `error` (non-empty)
    /// says why there are none (the checkpoint is gone).
    case stateTransferChunk(op: OpNumber, offset: UInt64, data: [UInt8], crc32c: UInt32, error: String)
    /// Receiver → primary: this node's journal and projection are empty (a
    /// wiped or joining node), so it takes the newest checkpoint rather than
    /// the whole log replayed (DESIGN.md §2b); without a checkpoint the
    /// primary sends entries as usual.
    case stateTransferWanted
    /// Backfill after a state transfer (DESIGN.md §2b, compaction off): the
    /// sender asks for ops `from…through` of the peer's journal.
    case backfillRead(from: OpNumber, through: OpNumber)
    /// Answers `backfillRead`: contiguous entries starting at `from` (a
    /// prefix of what was asked, bounded in bytes), or `error` (non-empty)
    /// saying why there are none. `compactedThrough` is the op the peer's
    /// log starts after (ops at or below it are gone there for good).
    case backfillEntries(from: OpNumber, entries: [LogEntry], error: String, compactedThrough: OpNumber)
    /// First (and only) frame of a joining node's connection (DESIGN.md §2b "Join").
    case joinRequest(JoinRequest)
    /// The answer to a `joinRequest`; the connection closes after it.
    case joinAnswer(JoinAnswer)

    /// A node with a new data directory asks to become a member.
    struct JoinRequest: Sendable, Equatable {
        var clusterName: String
        var nodeID: NodeID
        /// The epoch its data directory is at; 0 for a new one.
        var epoch: UInt64
        /// Its cluster address as configured (a `0.0.0.0` host is replaced
        /// by the address the request came from).
        var clusterAddress: String
        var version: String
    }

    /// What the node asked answers a joining node.
    enum JoinAnswer: Sendable, Equatable {
        /// The node is a member of `epoch` with `members`; `addresses` are
        /// the cluster addresses and since-epochs the leader knows (a member
        /// missing there is learned when it connects). `recover`: the node
        /// was a member already (its first answer was lost, or its data
        /// directory was wiped), so it recovers before it votes (VRR §4.3).
        case accepted(clusterName: String, epoch: UInt64, members: [NodeID], addresses: [MemberAddress], recover: Bool)
        /// Ask the leader, node `leader` at `address`, instead.
        case redirect(leader: NodeID, address: String)
        /// Refused, with the reason (`byLeader`: the leader decided it).
        case rejected(reason: String, byLeader: Bool)
    }

    struct Hello: Sendable, Equatable {
        var clusterName: String
        var nodeID: NodeID
        /// The sender's cluster address as it advertises it (its peer-list
        /// entry, or its `cluster_address`): how members that learn of a new
        /// member from its first connection reach it.
        var clusterAddress: String
        var clientAddress: String
        var metricsAddress: String
        var version: String
        /// The sender's membership epoch (DESIGN.md §2b): a node of an older
        /// epoch is refused, and one that meets a newer epoch stops serving.
        var epoch: UInt64
        /// The sender's address book: a receiver that missed a join (it
        /// caught up by checkpoint, or learned the epoch from a peer) learns
        /// the newer incarnations of member ids from it.
        var addresses: [MemberAddress] = []
    }

    /// A checkpoint the sender can transfer: its op, hash-chain anchor,
    /// size (bytes) and SHA-256 (hex), from its manifest.
    struct StateTransferOffer: Sendable, Equatable {
        var op: OpNumber
        var anchor: Checksum
        var bytes: UInt64
        var sha256: String
    }

    /// Largest frame accepted (bytes); a bigger length prefix closes the connection.
    static let maxFrameBytes = 512 * 1024 * 1024

    func encode() -> [UInt8] {
        var writer = ByteWriter(capacity: 64)
        switch self {
        case .hello(let hello):
            writer.write(UInt8(1))
            writer.writeString(hello.clusterName); writer.write(hello.nodeID); writer.writeString(hello.clusterAddress)
            writer.writeString(hello.clientAddress); writer.writeString(hello.metricsAddress)
            writer.writeString(hello.version); writer.write(hello.epoch); MemberAddress.write(hello.addresses, to: &writer)
        case .helloReject(let reason, let rejecterID, let isLeader, let epoch):
            writer.write(UInt8(2)); writer.writeString(reason); writer.write(rejecterID); writer.write(isLeader); writer.write(epoch)
        case .vsr(let message, let epoch):
            writer.write(UInt8(3)); writer.write(epoch); message.encode(into: &writer)
        case .ping(let sentAt):
            writer.write(UInt8(4)); writer.write(sentAt)
        case .pong(let echo, let responderTime):
            writer.write(UInt8(5)); writer.write(echo); writer.write(responderTime)
        case .forward(let id, let kind, let body):
            writer.write(UInt8(6)); writer.write(id); writer.write(kind.rawValue); writer.writeBlob(body)
        case .forwardReply(let id, let status, let body):
            writer.write(UInt8(7)); writer.write(id); writer.write(status); writer.writeBlob(body)
        case .stateTransferOffer(let offer):
            writer.write(UInt8(8)); writer.write(offer.op); writer.writeRaw(offer.anchor.bytes); writer.write(offer.bytes)
            writer.writeString(offer.sha256)
        case .stateTransferRead(let op, let sha256, let offset, let length):
            writer.write(UInt8(9)); writer.write(op); writer.writeString(sha256); writer.write(offset); writer.write(length)
        case .stateTransferChunk(let op, let offset, let data, let crc, let error):
            writer.write(UInt8(10)); writer.write(op); writer.write(offset); writer.writeBlob(data); writer.write(crc)
            writer.writeString(error)
        case .stateTransferWanted:
            writer.write(UInt8(13))
        case .backfillRead(let from, let through):
            writer.write(UInt8(14)); writer.write(from); writer.write(through)
        case .backfillEntries(let from, let entries, let error, let compactedThrough):
            writer.write(UInt8(15)); writer.write(from); LogEntry.write(entries, to: &writer)
            writer.writeString(error); writer.write(compactedThrough)
        case .joinRequest(let request):
            writer.write(UInt8(11)); writer.writeString(request.clusterName); writer.write(request.nodeID); writer.write(request.epoch)
            writer.writeString(request.clusterAddress); writer.writeString(request.version)
        case .joinAnswer(.accepted(let clusterName, let epoch, let members, let addresses, let recover)):
            writer.write(UInt8(12)); writer.write(UInt8(1)); writer.writeString(clusterName); writer.write(epoch)
            writer.writeBlob(members)
            MemberAddress.write(addresses, to: &writer)
            writer.write(recover)
        case .joinAnswer(.redirect(let leader, let address)):
            writer.write(UInt8(12)); writer.write(UInt8(2)); writer.write(leader); writer.writeString(address)
        case .joinAnswer(.rejected(let reason, let byLeader)):
            writer.write(UInt8(12)); writer.write(UInt8(3)); writer.writeString(reason); writer.write(byLeader)
        }
        return writer.bytes
    }

    static func decode(_ bytes: [UInt8]) throws -> Envelope {
        var reader = ByteReader(bytes)
        let tag: UInt8 = try reader.read()
        let envelope: Envelope
        switch tag {
        case 1:
            envelope = .hello(Hello(clusterName: try reader.readString(), nodeID: try reader.read(), clusterAddress: try reader.readString(),
                                    clientAddress: try reader.readString(), metricsAddress: try reader.readString(),
                                    version: try reader.readString(), epoch: try reader.read(), addresses: try MemberAddress.readList(from: &reader)))
        case 2: envelope = .helloReject(reason: try reader.readString(), rejecterID: try reader.read(), rejecterIsLeader: try reader.readBool(),
                                        epoch: try reader.read())
        case 3:
            let epoch: UInt64 = try reader.read()
            envelope = .vsr(try Message.decode(from: &reader), epoch: epoch)
        case 4: envelope = .ping(sentAt: try reader.read())
        case 5: envelope = .pong(echo: try reader.read(), responderTime: try reader.read())
        case 6:
            let id: UInt64 = try reader.read()
            let rawKind: UInt8 = try reader.read()
            guard let kind = ForwardKind(rawValue: rawKind) else { throw DecodeError.invalid("forwarded request kind \(rawKind)") }
            envelope = .forward(id: id, kind: kind, body: try reader.readBlob())
        case 7: envelope = .forwardReply(id: try reader.read(), status: try reader.read(), body: try reader.readBlob())
        case 8:
            envelope = .stateTransferOffer(StateTransferOffer(op: try reader.read(), anchor: Checksum(bytes: try reader.readRaw(count: 32)),
                                                              bytes: try reader.read(), sha256: try reader.readString()))
        case 9:
            envelope = .stateTransferRead(op: try reader.read(), sha256: try reader.readString(), offset: try reader.read(),
                                          length: try reader.read())
        case 10:
            envelope = .stateTransferChunk(op: try reader.read(), offset: try reader.read(), data: try reader.readBlob(),
                                           crc32c: try reader.read(), error: try reader.readString())
        case 13: envelope = .stateTransferWanted
        case 14: envelope = .backfillRead(from: try reader.read(), through: try reader.read())
        case 15:
            envelope = .backfillEntries(from: try reader.read(), entries: try LogEntry.readList(from: &reader), error: try reader.readString(),
                                        compactedThrough: try reader.read())
        case 11:
            envelope = .joinRequest(JoinRequest(clusterName: try reader.readString(), nodeID: try reader.read(), epoch: try reader.read(),
                                                clusterAddress: try reader.readString(), version: try reader.readString()))
        case 12:
            let kind: UInt8 = try reader.read()
            switch kind {
            case 1:
                envelope = .joinAnswer(.accepted(clusterName: try reader.readString(), epoch: try reader.read(), members: try reader.readBlob(limit: 255),
                                                 addresses: try MemberAddress.readList(from: &reader), recover: try reader.readBool()))
            case 2: envelope = .joinAnswer(.redirect(leader: try reader.read(), address: try reader.readString()))
            case 3: envelope = .joinAnswer(.rejected(reason: try reader.readString(), byLeader: try reader.readBool()))
            default: throw DecodeError.invalid("join answer kind \(kind)")
            }
        default: throw DecodeError.invalid("envelope tag \(tag)")
        }
        guard reader.isAtEnd else { throw DecodeError.invalid("\(reader.remaining) trailing bytes after envelope") }
        return envelope
    }
}

/// The client request a follower forwards to the leader (its wire value).
enum ForwardKind: UInt8, Sendable, Equatable {
    /// `POST /v1/execute`
    case execute = 1
    /// `POST /v1/query` with strong consistency
    case query = 2
}

/// Splits the byte stream into length-prefixed frames and refuses a length
/// over `Envelope.maxFrameBytes` (NIOExtras' length-field decoder has no
/// such bound, and a bogus peer must not make us buffer gigabytes).
struct EnvelopeFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = Envelope

    struct FrameTooLarge: Error, CustomStringConvertible {
        let length: Int
        var description: String { "frame of \(length) bytes exceeds \(Envelope.maxFrameBytes)" }
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        guard Int(length) <= Envelope.maxFrameBytes else { throw FrameTooLarge(length: Int(length)) }
        guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        let bytes = buffer.readBytes(length: Int(length))!
        context.fireChannelRead(wrapInboundOut(try Envelope.decode(bytes)))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }
}

extension Envelope {
    /// The frame for the wire: length prefix then the encoded envelope.
    func frame(allocator: ByteBufferAllocator) -> ByteBuffer {
        let body = encode()
        var buffer = allocator.buffer(capacity: 4 + body.count)
        buffer.writeInteger(UInt32(body.count))
        buffer.writeBytes(body)
        return buffer
    }
}
