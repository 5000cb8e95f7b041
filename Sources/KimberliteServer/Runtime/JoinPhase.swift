import Foundation
import Hummingbird
import KimberliteCore
import KimberliteStorage
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Joining a running cluster (DESIGN.md §2b "Join"): a node started with a
/// new data directory and `cluster_peers` given as `host:port` entries (no
/// ids) asks the cluster to add it before it starts as a member.
///
/// It asks each listed address in turn (`Envelope.joinRequest` on the
/// cluster port); a node that does not lead redirects it to the leader,
/// which refuses it with a reason or commits the reconfiguration adding it
/// and answers with the new epoch's members and their addresses. On
/// acceptance the superblock is written (that epoch and members, formed, the
/// address book) and the node starts as usual: it catches up from the
/// primary by repair or state transfer. While refused it stays up: status
/// `recovering` with the reason on the operations port, 503 on the client
/// port, one line per refusal at most every 5 s, retries with backoff
/// (0.5 s doubling to 5 s).
public enum JoinPhase {
    public enum Outcome {
        /// Start the node; the data directory is open (and locked) when given.
        case start(DataDirectory?)
        /// SIGTERM or SIGINT arrived before the node joined.
        case stopped
    }

    /// Joins when this node must, else returns at once.
    /// - Returns: `.start(nil)` when the peer list names ids (not a joiner);
    ///   `.start(dir)` when the directory is already a member (restarted
    ///   joiner) or the join was accepted; `.stopped` on a signal.
    /// - Throws: `StorageError` (`.locked` → exit 75), the ports' bind errors.
    public static func joinIfNeeded(config: ServerConfig, logger: Logger) async throws -> Outcome {
        guard !config.server.joinAddresses.isEmpty else { return .start(nil) }
        let directory = try DataDirectory(path: config.storage.dataDir)
        if let stored = try directory.openSuperblock().read() {
            logger.info("this data directory is already a member; cluster_peers without ids is used only to join", metadata: [
                "cluster": "\(stored.clusterName)", "epoch": "\(stored.epoch)", "members": "\(stored.members)"])
            return .start(directory)
        }
        let joiner = Joiner(config: config, logger: logger, directory: directory)
        return try await joiner.run() ? .start(directory) : .stopped
    }
}

/// The join loop and the listeners a joining node keeps up meanwhile.
private final class Joiner: @unchecked Sendable {
    let config: ServerConfig
    let logger: Logger
    let directory: DataDirectory
    /// What the operator sees in `/status` `status_reason` while joining.
    private let reason: NIOLockedValueBox<String>
    private let joined = NIOLockedValueBox(false)
    private let systemd = SystemdNotifier.shared

    init(config: ServerConfig, logger: Logger, directory: DataDirectory) {
        self.config = config
        self.logger = logger
        self.directory = directory
        reason = NIOLockedValueBox("joining cluster \"\(config.server.clusterName)\" through \(Joiner.list(config.server.joinAddresses))")
    }

    static func list(_ addresses: [HostPort]) -> String { addresses.map(\.description).joined(separator: ", ") }

    /// - Returns: true once joined, false when stopped by a signal first.
    func run() async throws -> Bool {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        let quiet = { () -> Logger in var copy = self.logger; copy.logLevel = max(self.logger.logLevel, .warning); return copy }()
        let opsApp = Application(
            router: operationsRouter(),
            configuration: .init(address: .hostname(config.telemetry.metricsAddress.host, port: config.telemetry.metricsAddress.port),
                                 serverName: "kimberlite"),
            onServerRunning: { [systemd, reason] _ in
                // Up and answering /status: a joining node is "recovering" (DESIGN.md §2b).
                _ = systemd.notify("READY=1\nSTATUS=\(reason.withLockedValue { $0 })")
            }, logger: quiet)
        let clientApp = Application(
            router: clientRouter(),
            configuration: .init(address: .hostname(config.server.bindAddress.host, port: config.server.bindAddress.port),
                                 serverName: "kimberlite"),
            logger: quiet)
        let service = JoinService(joiner: self, group: group)
        let services = ServiceGroup(configuration: .init(
            services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup),
                       .init(service: opsApp), .init(service: clientApp)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: quiet))
        logger.notice("joining cluster \"\(config.server.clusterName)\" as node \(config.server.nodeID) through \(Self.list(config.server.joinAddresses))",
                      metadata: ["cluster_address": "\(advertisedAddress)"])
        try await services.run()
        return joined.withLockedValue { $0 }
    }

    /// The address members will dial this node at once it joined.
    var advertisedAddress: String { "\(config.server.clusterAddress)" }

    /// Asks until accepted or cancelled (graceful shutdown).
    func joinLoop(group: EventLoopGroup) async {
        let request = Envelope.JoinRequest(clusterName: config.server.clusterName, nodeID: config.server.nodeID, epoch: 0,
                                           clusterAddress: advertisedAddress, version: KimberliteNode.version)
        let addresses = config.server.joinAddresses
        var next = 0
        var redirect: HostPort?
        var redirectsInARow = 0
        var backoff = Duration.milliseconds(500)
        var lines = LogThrottle(every: .seconds(5))
        // Answers wait for the leader's commit: up to request_timeout, plus slack.
        let answerTimeout = config.limits.requestTimeout + .seconds(5)
        while !Task.isCancelled {
            systemd.watchdogIfDue()
            let target = redirect ?? addresses[next % addresses.count]
            if redirect == nil { next += 1 }
            redirect = nil
            let line: String
            switch await Self.ask(target, request, group: group, timeout: answerTimeout) {
            case .success(.joinAnswer(.accepted(let name, let epoch, let members, let addresses, let recover))):
                do {
                    try accept(clusterName: name, epoch: epoch, members: members, addresses: addresses, recover: recover)
                    return
                } catch {
                    // Nothing of the cluster changes if this node cannot write its own superblock; it says why and retries.
                    line = "joined cluster \"\(name)\" at epoch \(epoch) but cannot write the superblock in \(directory.path): \(error)"
                }
            case .success(.joinAnswer(.redirect(let leader, let address))):
                // Two nodes naming each other during a view change: after a few hops, back off like a refusal.
                redirectsInARow += 1
                if let parsed = try? ConfigValueParser.address(address), redirectsInARow <= 3 {
                    logger.debug("redirected to the leader", metadata: ["leader": "\(leader)", "address": "\(address)"])
                    redirect = parsed
                    continue
                }
                line = redirectsInARow > 3 ? "redirected \(redirectsInARow - 1) times without reaching the leader (last: node \(leader) at \(address))"
                    : "node at \(target) named the leader's address \"\(address)\", which is not host:port"
            case .success(.joinAnswer(.rejected(let reason, let byLeader))):
                line = byLeader ? "Rejected by leader: \(reason)" : "Rejected by peer \(target): \(reason)"
            case .success(let other):
                line = "node at \(target) answered with \(other), not a join answer"
            case .failure(let error):
                line = "cannot reach the cluster at \(target): \(error.message)"
            }
            redirectsInARow = 0
            reason.withLockedValue { $0 = line + "; retrying" }
            _ = systemd.notify("STATUS=\(line)")
            if lines.allow() {
                logger.error("\(line)", metadata: ["cluster": "\(config.server.clusterName)", "retry_in_ms": "\(Int(backoff.milliseconds))"])
            }
            do { try await Task.sleep(for: backoff) } catch { return }
            backoff = min(backoff * 2, .seconds(5))
        }
    }

    /// Writes the superblock that makes this directory a member of `epoch`.
    /// A new member starts formed with an empty log (it has acknowledged
    /// nothing, so it cannot have lost anything); one that was a member
    /// already (`recover`) starts as a wiped member does, not formed: it
    /// recovers from the primary before it votes (VRR §4.3).
    private func accept(clusterName: String, epoch: UInt64, members: [NodeID], addresses: [MemberAddress], recover: Bool) throws {
        guard members.contains(config.server.nodeID) else {
            throw JoinError("the leader's answer does not list this node among the members \(members)")
        }
        var state = SuperblockState(clusterName: config.server.clusterName, nodeID: config.server.nodeID,
                                    record: DurableRecord(epoch: epoch, members: members, formed: !recover))
        state.addresses = addresses
        try directory.openSuperblock().write(state)
        joined.withLockedValue { $0 = true }
        logger.notice("Joined cluster \(clusterName) as node \(config.server.nodeID) at epoch \(epoch)",
                      metadata: ["members": "\(members)", "addresses": "\(addresses.map(\.address))",
                                 "recovering": "\(recover)"])
    }

    struct JoinError: Error, CustomStringConvertible {
        let message: String
        init(_ message: String) { self.message = message }
        var description: String { message }
    }

    /// One request on a fresh connection; the answer, or why there is none.
    static func ask(_ target: HostPort, _ request: Envelope.JoinRequest, group: EventLoopGroup,
                    timeout: Duration) async -> Result<Envelope, JoinError> {
        let promise = group.next().makePromise(of: Envelope.self)
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(.seconds(2))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(EnvelopeFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(FirstFrameHandler(promise: promise))
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.connect(host: target.host, port: target.port).get()
        } catch {
            promise.fail(error)
            return .failure(JoinError("\(error)"))
        }
        channel.writeAndFlush(Envelope.joinRequest(request).frame(allocator: channel.allocator), promise: nil)
        let timer = channel.eventLoop.scheduleTask(in: .nanoseconds(timeout.nanoseconds)) {
            promise.fail(JoinError("no answer within \(timeout)"))
        }
        defer {
            timer.cancel()
            channel.close(promise: nil)
        }
        do {
            // A graceful shutdown cancels the wait rather than sitting out the timeout.
            let answer = try await withTaskCancellationHandler {
                try await promise.futureResult.get()
            } onCancel: {
                promise.fail(CancellationError())
            }
            return .success(answer)
        } catch let error as JoinError {
            return .failure(error)
        } catch {
            return .failure(JoinError("\(error)"))
        }
    }

    func operationsRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/status") { [self] _, _ -> Response in
            let report = StatusReport(
                nodeID: config.server.nodeID, clusterName: config.server.clusterName, version: KimberliteNode.version,
                status: ReplicaStatus.recovering.rawValue, view: 0, opNumber: 0, commitNumber: 0, isLeader: false, leaderID: 0,
                clusterSize: 0, healthyReplicas: 0, clusterMembers: [], projection: .init(appliedOp: 0, lag: 0), clockOffsetMs: nil,
                statusReason: reason.withLockedValue { $0 }, epoch: nil)
            return KimberliteNode.json(200, ClientAPI.encode(report))
        }
        router.get("/health/live") { _, _ -> Response in
            KimberliteNode.json(200, Array(#"{"status":"live"}"#.utf8))
        }
        router.get("/health/ready") { _, _ -> Response in
            KimberliteNode.json(503, Array(#"{"ready":false,"status":"recovering","leader_id":0}"#.utf8))
        }
        router.get("/metrics") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(string: "# kimberlite-server is joining its cluster; metrics start once it has joined\n")))
        }
        return router
    }

    func clientRouter() -> Router<BasicRequestContext> {
        let router = Router()
        for path in ["/v1/execute", "/v1/query"] {
            router.post(RouterPath(path)) { [self] _, _ -> Response in
                KimberliteNode.json(APIError.noLeader("this node has not joined cluster \"\(config.server.clusterName)\" yet (\(reason.withLockedValue { $0 }))").response)
            }
        }
        return router
    }
}

/// Runs the join loop inside the service group; returning ends the group.
private struct JoinService: Service {
    let joiner: Joiner
    let group: EventLoopGroup
    func run() async throws {
        await cancelWhenGracefulShutdown { await joiner.joinLoop(group: group) }
    }
}

/// Completes `promise` with the first frame the peer sends.
private final class FirstFrameHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Envelope
    let promise: EventLoopPromise<Envelope>
    init(promise: EventLoopPromise<Envelope>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        promise.succeed(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(Joiner.JoinError("the connection closed without an answer"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        promise.fail(error)
        context.close(promise: nil)
    }
}
