import Foundation
import KimberliteCore
import KimberliteStorage
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// What this node knows of one peer, for `/status` and metrics.
struct PeerView: Sendable {
    var connected = false
    /// Monotonic time of the last frame received from the peer.
    var lastSeen: NIODeadline? = nil
    var clientAddress: String? = nil
    var metricsAddress: String? = nil
    /// Peer clock minus ours, seconds, smoothed (from ping/pong).
    var clockOffsetSeconds: Double? = nil
}

/// Node-to-node TCP transport on `cluster_address` (DESIGN.md §2).
///
/// Each node dials every other member of its current epoch and sends only
/// on its outbound connection; it receives on the connections others
/// dialled to it. The first frame both ways is a `hello` naming cluster and
/// node id; a peer from another cluster, an unknown id, our own id or an
/// earlier incarnation of a member is refused with a reason. A joining
/// node's connection carries one `joinRequest` instead (DESIGN.md §2b),
/// answered by `onJoinRequest`. Members' addresses live in an address book
/// that committed reconfigurations and hellos update, persisted through
/// `onAddressesChanged`. Hostnames are resolved on every (re)connect, so a
/// peer whose name does not resolve yet is only unreachable. Frames to a
/// peer that is not connected are dropped: VSR retransmits.
final class ClusterTransport: @unchecked Sendable {
    typealias Receive = @Sendable (Envelope, NodeID) -> Void

    let selfID: NodeID
    let clusterName: String
    /// Every node this one knows an address for, by id (members of the
    /// current epoch, and former members until they are replaced).
    private let book: NIOLockedValueBox<[NodeID: MemberAddress]>
    /// Called (on any thread) after the address book changed, so the node
    /// persists it (`addresses`) in the superblock. Set before `start()`.
    var onAddressesChanged: (@Sendable () -> Void)?
    /// Answers a joining node's request (DESIGN.md §2b). Set before `start()`.
    var onJoinRequest: (@Sendable (Envelope.JoinRequest, _ remoteHost: String?) async -> Envelope.JoinAnswer)?
    private let listenHost: String
    private let listenPort: Int
    private let hello: Envelope.Hello
    private let group: EventLoopGroup
    private let logger: Logger
    private let receive: Receive
    private let isLeader: @Sendable () -> Bool
    private let state = NIOLockedValueBox(TransportState())
    private var serverChannel: Channel?
    /// Called (on an event loop) when the outbound connection to a peer closes.
    var onPeerLost: (@Sendable (NodeID) -> Void)?
    /// The epoch and member ids at start; `membership` replaces them once set.
    private let initialEpoch: UInt64
    /// The replica's current epoch and members (they change when a
    /// reconfiguration commits). Set before `start()`.
    var membership: (@Sendable () -> (epoch: UInt64, members: [NodeID]))?
    /// This node's membership epoch now.
    var epoch: UInt64 { membership?().epoch ?? initialEpoch }
    /// Whether `node` is a member of this node's current epoch.
    private func isCurrentMember(_ node: NodeID) -> Bool { currentMembers.contains(node) }
    /// The member ids of this node's current epoch.
    var currentMembers: [NodeID] { membership?().members ?? initialMembers }
    private let initialMembers: [NodeID]
    /// Called (on an event loop) when a peer shows a newer epoch: this node
    /// was left out of the membership (a force-leader elsewhere). Set before `start()`.
    var onSuperseded: (@Sendable (_ newerEpoch: UInt64, _ peer: NodeID) -> Void)?
    /// Set once superseded: no VSR message goes out or comes in any more, so
    /// this node never votes with, or acknowledges for, an old membership.
    private let vsrSilenced = NIOLockedValueBox(false)

    /// Stops all VSR traffic of this node (it was superseded).
    func silenceConsensus() { vsrSilenced.withLockedValue { $0 = true } }
    var isConsensusSilenced: Bool { vsrSilenced.withLockedValue { $0 } }

    private struct TransportState {
        var outbound: [NodeID: Channel] = [:]
        var connecting: Set<NodeID> = []
        var nextAttempt: [NodeID: NIODeadline] = [:]
        var backoff: [NodeID: TimeAmount] = [:]
        var peers: [NodeID: PeerView] = [:]
        var stopped = false
        var rejectionLogged: [NodeID: String] = [:]
    }

    /// - Parameters:
    ///   - members: the member ids of the epoch the node starts in.
    ///   - addresses: the address book (at least every member but unknown ones).
    ///   - advertisedAddress: this node's cluster address as peers dial it.
    init(selfID: NodeID, clusterName: String, epoch: UInt64, members: [NodeID], addresses: [MemberAddress],
         advertisedAddress: String, listenHost: String, listenPort: Int,
         clientAddress: String, metricsAddress: String, version: String, group: EventLoopGroup, logger: Logger,
         isLeader: @escaping @Sendable () -> Bool, receive: @escaping Receive) {
        self.selfID = selfID
        self.clusterName = clusterName
        self.initialMembers = members
        self.book = NIOLockedValueBox(Dictionary(addresses.map { ($0.nodeID, $0) }, uniquingKeysWith: { _, last in last }))
        self.listenHost = listenHost
        self.listenPort = listenPort
        self.initialEpoch = epoch
        self.hello = .init(clusterName: clusterName, nodeID: selfID, clusterAddress: advertisedAddress, clientAddress: clientAddress,
                           metricsAddress: metricsAddress, version: version, epoch: epoch)
        self.group = group
        self.logger = logger
        self.receive = receive
        self.isLeader = isLeader
    }

    /// The other members of the current epoch.
    var peerIDs: [NodeID] { currentMembers.filter { $0 != selfID } }

    /// The address book entry of `node`, if any.
    func address(of node: NodeID) -> MemberAddress? { book.withLockedValue { $0[node] } }

    /// The whole address book, by node id.
    var addresses: [MemberAddress] { book.withLockedValue { $0.values.sorted { $0.nodeID < $1.nodeID } } }

    /// Records where `member` listens (a committed reconfiguration, an
    /// accepted hello); reports the book to `onAddressesChanged` when it
    /// changed. An entry is never replaced by one of an older incarnation;
    /// from a peer's book (`gossip`), only by a newer incarnation.
    func learn(_ member: MemberAddress, gossip: Bool = false) {
        let changed = book.withLockedValue { book -> Bool in
            if let known = book[member.nodeID],
               known == member || known.sinceEpoch > member.sinceEpoch || (gossip && known.sinceEpoch == member.sinceEpoch) { return false }
            book[member.nodeID] = member
            return true
        }
        guard changed else { return }
        logger.info("member address recorded", metadata: ["peer": "\(member.nodeID)", "address": "\(member.address)",
                                                         "since_epoch": "\(member.sinceEpoch)"])
        // A new address: the next dial goes there.
        state.withLockedValue { state in
            state.nextAttempt[member.nodeID] = nil
            state.backoff[member.nodeID] = nil
        }
        onAddressesChanged?()
    }

    /// Binds the cluster port. - Throws: NIO's bind error (address in use, bad address).
    func start() async throws {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(EnvelopeFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(InboundHandler(transport: self))
                }
            }
        serverChannel = try await bootstrap.bind(host: listenHost, port: listenPort).get()
        logger.info("cluster transport listening", metadata: ["address": "\(listenHost):\(listenPort)"])
    }

    func stop() {
        let channels = state.withLockedValue { state -> [Channel] in
            state.stopped = true
            return Array(state.outbound.values)
        }
        for channel in channels { channel.close(promise: nil) }
        serverChannel?.close(promise: nil)
    }

    /// Sends a frame to `node` over our outbound connection; dials if needed.
    /// - Returns: false when there is no connection (the frame is dropped).
    @discardableResult
    func send(_ envelope: Envelope, to node: NodeID) -> Bool {
        if case .vsr = envelope, isConsensusSilenced { return false }
        let channel = state.withLockedValue { $0.outbound[node] }
        guard let channel else {
            connect(to: node)
            return false
        }
        channel.writeAndFlush(envelope.frame(allocator: channel.allocator), promise: nil)
        return true
    }

    /// Dials every peer that is not connected, and closes an outbound
    /// connection to a peer not heard from within `silentAfter` (a dead
    /// link TCP has not noticed), so it is dialled afresh. Called on each heartbeat.
    func maintainConnections(silentAfter: Duration) {
        let now = NIODeadline.now()
        let limit = TimeAmount.nanoseconds(silentAfter.nanoseconds)
        let stale = state.withLockedValue { state -> [Channel] in
            state.outbound.compactMap { node, channel in
                guard let seen = state.peers[node]?.lastSeen, now - seen > limit else { return nil }
                state.outbound[node] = nil
                return channel
            }
        }
        for channel in stale { channel.close(promise: nil) }
        for node in peerIDs { connect(to: node) }
    }

    func snapshot() -> [NodeID: PeerView] { state.withLockedValue { $0.peers } }

    private func connect(to node: NodeID) {
        guard let member = address(of: node) else { return }
        let now = NIODeadline.now()
        let go = state.withLockedValue { state -> Bool in
            guard !state.stopped, state.outbound[node] == nil, !state.connecting.contains(node),
                  now >= state.nextAttempt[node] ?? .distantPast else { return false }
            state.connecting.insert(node)
            // Loopback and LAN dials are cheap; a short cap means a peer
            // that comes back hears heartbeats before its election timeout.
            let backoff = min((state.backoff[node] ?? .milliseconds(25)) * 2, .milliseconds(200))
            state.backoff[node] = backoff
            state.nextAttempt[node] = now + backoff
            return true
        }
        guard go else { return }
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(.seconds(1))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(EnvelopeFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(OutboundHandler(transport: self, peer: node))
                }
            }
        bootstrap.connect(host: member.host, port: member.port).whenComplete { [self] result in
            switch result {
            case .success(let channel):
                var hello = hello
                hello.epoch = epoch
                hello.addresses = addresses
                channel.writeAndFlush(Envelope.hello(hello).frame(allocator: channel.allocator), promise: nil)
                let keep = state.withLockedValue { state -> Bool in
                    state.connecting.remove(node)
                    guard !state.stopped else { return false }
                    state.outbound[node] = channel
                    state.backoff[node] = nil
                    return true
                }
                if keep {
                    logger.debug("connected to peer", metadata: ["peer": "\(node)", "address": "\(member.address)"])
                } else {
                    channel.close(promise: nil)
                }
            case .failure(let error):
                state.withLockedValue { _ = $0.connecting.remove(node) }
                logger.debug("cannot reach peer", metadata: ["peer": "\(node)", "address": "\(member.address)",
                                                             "error": "\(error)"])
            }
        }
    }

    fileprivate func outboundClosed(_ node: NodeID, channel: Channel) {
        state.withLockedValue { state in
            if state.outbound[node] === channel { state.outbound[node] = nil }
            state.peers[node, default: PeerView()].connected = false
        }
        onPeerLost?(node)
    }

    fileprivate func rejected(by node: NodeID, reason: String, isLeader: Bool, epoch peerEpoch: UInt64) {
        if peerEpoch > epoch { onSuperseded?(peerEpoch, node) }
        let first = state.withLockedValue { state -> Bool in
            defer { state.rejectionLogged[node] = reason }
            return state.rejectionLogged[node] != reason
        }
        let text = isLeader ? "Rejected by leader" : "Rejected by peer"
        // Log once per reason at error level, then quietly, to keep the journal readable.
        logger.log(level: first ? .error : .debug, "\(text): \(reason)", metadata: ["peer": "\(node)"])
    }

    /// Checks a peer's hello; returns the refusal reason, nil when accepted.
    fileprivate func check(_ hello: Envelope.Hello) -> String? {
        if hello.clusterName != clusterName {
            // The wording of DESIGN.md §2b's join refusal, with who asked.
            return "cluster name \"\(hello.clusterName)\" does not match \"\(clusterName)\" (node \(hello.nodeID) asked node \(selfID))"
        }
        let current = epoch
        if hello.epoch < current && !isCurrentMember(hello.nodeID) {
            // Left out of the membership (a force-leader, a removal): refused,
            // and told the newer epoch, so it stops serving.
            return "epoch \(hello.epoch) is older than the cluster's epoch \(current)"
        }
        // A member behind by a reconfiguration, or a peer ahead of this
        // node, is let in: the replicas exchange `epoch_started` and the one
        // behind moves to the newer epoch (or finds it was removed).
        // This node stops serving only when a newer epoch refuses it.
        if hello.nodeID == selfID {
            return "node id \(hello.nodeID) is already in use by this node"
        }
        if let since = address(of: hello.nodeID)?.sinceEpoch, hello.epoch < since {
            // The id belongs to a node that joined at `since`; this one is an
            // earlier incarnation (from before a force-leader, or removed and
            // not wiped).
            return "epoch \(hello.epoch) is older than the cluster's epoch \(current)"
        }
        if !isCurrentMember(hello.nodeID) && hello.epoch <= current {
            let members = currentMembers.map(String.init).joined(separator: ",")
            return "node id \(hello.nodeID) is not a member of cluster \"\(clusterName)\" at epoch \(current) (members: \(members))"
        }
        return nil
    }

    fileprivate func accepted(_ hello: Envelope.Hello, remoteHost: String?) {
        if isCurrentMember(hello.nodeID), address(of: hello.nodeID) == nil,
           let advertised = try? ConfigValueParser.address(Self.resolveWildcard(hello.clusterAddress, host: remoteHost)) {
            // A member this node has no address for (it learned the epoch
            // from a peer, not from the reconfiguration entry): its hello says where it listens.
            learn(MemberAddress(nodeID: hello.nodeID, host: advertised.host, port: advertised.port, sinceEpoch: hello.epoch))
        }
        // Newer incarnations of member ids this node missed (it caught up by
        // checkpoint, or learned the epoch from a peer).
        for member in hello.addresses where member.nodeID != selfID { learn(member, gossip: true) }
        let member = address(of: hello.nodeID)
        state.withLockedValue { state in
            var peer = state.peers[hello.nodeID, default: PeerView()]
            peer.clientAddress = Self.resolveWildcard(hello.clientAddress, host: member?.host)
            peer.metricsAddress = Self.resolveWildcard(hello.metricsAddress, host: member?.host)
            peer.lastSeen = .now()
            state.peers[hello.nodeID] = peer
        }
        logger.info("peer connected", metadata: ["peer": "\(hello.nodeID)", "version": "\(hello.version)"])
        // The peer is back: dial it now rather than after the backoff.
        state.withLockedValue { state in
            state.nextAttempt[hello.nodeID] = nil
            state.backoff[hello.nodeID] = nil
        }
        connect(to: hello.nodeID)
    }

    /// A `0.0.0.0` (or `::`) host is replaced by the host of the peer-list entry.
    static func resolveWildcard(_ address: String, host: String?) -> String {
        guard let host, let colon = address.lastIndex(of: ":") else { return address }
        let addressHost = address[..<colon]
        if addressHost == "0.0.0.0" || addressHost == "[::]" || addressHost == "::" {
            return host + address[colon...]
        }
        return address
    }

    fileprivate func received(_ envelope: Envelope, from node: NodeID) {
        let now = NIODeadline.now()
        state.withLockedValue { state in
            state.peers[node, default: PeerView()].lastSeen = now
            state.peers[node, default: PeerView()].connected = state.outbound[node] != nil
        }
        switch envelope {
        case .ping(let sentAt):
            send(.pong(echo: sentAt, responderTime: Self.wallNanos()), to: node)
        case .pong(let echo, let responderTime):
            let arrived = Self.wallNanos()
            let roundTrip = arrived - echo
            guard roundTrip >= 0 else { return }
            // NTP-style estimate: the peer read its clock half a round trip ago.
            let offset = Double(responderTime - (echo + roundTrip / 2)) / 1e9
            state.withLockedValue { state in
                let previous = state.peers[node]?.clockOffsetSeconds
                state.peers[node, default: PeerView()].clockOffsetSeconds = previous.map { 0.8 * $0 + 0.2 * offset } ?? offset
            }
        case .vsr where isConsensusSilenced:
            return
        default:
            receive(envelope, node)
        }
    }

    static func wallNanos() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec)
    }

    fileprivate func makeReject(_ reason: String) -> Envelope {
        .helloReject(reason: reason, rejecterID: selfID, rejecterIsLeader: isLeader(), epoch: epoch)
    }

    fileprivate var log: Logger { logger }
}

/// Inbound connection: expects a hello, then delivers frames from that peer.
private final class InboundHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Envelope
    private let transport: ClusterTransport
    private var peer: NodeID?
    /// A join request arrived on this connection; nothing else is read.
    private var joinAnswered = false

    init(transport: ClusterTransport) { self.transport = transport }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        if joinAnswered { return }
        if let peer {
            transport.received(envelope, from: peer)
            return
        }
        if case .joinRequest(let request) = envelope {
            answerJoin(request, context: context)
            return
        }
        guard case .hello(let hello) = envelope else {
            transport.log.warning("peer sent no hello; closing", metadata: ["remote": "\(context.remoteAddress.map { "\($0)" } ?? "?")"])
            context.close(promise: nil)
            return
        }
        if let reason = transport.check(hello) {
            transport.log.warning("refused peer: \(reason)", metadata: ["peer": "\(hello.nodeID)",
                                                                      "remote": "\(context.remoteAddress.map { "\($0)" } ?? "?")"])
            let frame = transport.makeReject(reason).frame(allocator: context.channel.allocator)
            context.writeAndFlush(NIOAny(frame)).whenComplete { _ in context.close(promise: nil) }
            return
        }
        peer = hello.nodeID
        transport.accepted(hello, remoteHost: context.remoteAddress?.ipAddress)
    }

    /// A joining node's one request: answered (which may take until its
    /// reconfiguration commits), then the connection closes.
    private func answerJoin(_ request: Envelope.JoinRequest, context: ChannelHandlerContext) {
        guard !joinAnswered, let handler = transport.onJoinRequest else {
            context.close(promise: nil)
            return
        }
        joinAnswered = true
        let channel = context.channel
        let remoteHost = context.remoteAddress?.ipAddress
        Task {
            let answer = await handler(request, remoteHost)
            channel.writeAndFlush(Envelope.joinAnswer(answer).frame(allocator: channel.allocator)).whenComplete { _ in
                channel.close(promise: nil)
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        transport.log.warning("closing peer connection: \(error)", metadata: ["peer": "\(peer.map(String.init) ?? "?")"])
        context.close(promise: nil)
    }
}

/// Outbound connection: only refusals come back on it.
private final class OutboundHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Envelope
    private let transport: ClusterTransport
    private let peer: NodeID

    init(transport: ClusterTransport, peer: NodeID) { self.transport = transport; self.peer = peer }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .helloReject(let reason, _, let isLeader, let epoch) = unwrapInboundIn(data) {
            transport.rejected(by: peer, reason: reason, isLeader: isLeader, epoch: epoch)
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        transport.outboundClosed(peer, channel: context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
