import Foundation
import Hummingbird
import KimberliteCore
import KimberliteProjection
import KimberliteStorage
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// One Kimberlite server process: storage, replica, projection, cluster
/// transport and the two HTTP listeners, started and stopped together.
public final class KimberliteNode: @unchecked Sendable {
    public static let version = "0.1.0"
    /// The replica's clock: one tick every 10 ms.
    static let tickInterval = Duration.milliseconds(10)

    private let config: ServerConfig
    private let logger: Logger
    private let members: [ClusterMember]
    private let dataDirectory: DataDirectory
    private let projection: Projection
    private let journal: Journal
    private let registry = RequestRegistry()
    private let metrics: NodeMetrics
    private let transport: ClusterTransport
    private let driver: ReplicaDriver
    private let applier: ApplyEngine
    private let api: ClientAPI
    private let group: MultiThreadedEventLoopGroup
    private var timer: DispatchSourceTimer?
    /// sd_notify (READY, STATUS, WATCHDOG, STOPPING); a no-op outside systemd.
    let systemd = SystemdNotifier.shared
    private let startedAt = ContinuousClock.now

    /// Opens the data directory and recovers state; binds nothing yet.
    /// - Throws: `StorageError` (`.locked` → exit 75), `NodeStartError`, projection errors.
    public init(config: ServerConfig, logger baseLogger: Logger) throws {
        self.config = config
        var baseLogger = baseLogger
        baseLogger[metadataKey: "node_id"] = "\(config.server.nodeID)"
        let logger = baseLogger
        // One label per layer, so `KMB_LOG=kimberlite.vsr=trace` reaches just that layer.
        func layer(_ name: String) -> Logger {
            var copy = Logger(label: "kimberlite.\(name)")
            copy[metadataKey: "node_id"] = "\(config.server.nodeID)"
            return copy
        }
        self.logger = logger
        let selfID = config.server.nodeID
        if config.server.clusterPeers.isEmpty {
            members = [ClusterMember(nodeID: selfID, host: config.server.clusterAddress.host, port: config.server.clusterAddress.port)]
        } else {
            members = config.server.clusterPeers.map { ClusterMember(nodeID: $0.nodeID, host: $0.host, port: $0.port) }
                .sorted { $0.nodeID < $1.nodeID }
        }
        metrics = NodeMetrics(peers: members.map(\.nodeID).filter { $0 != selfID })

        dataDirectory = try DataDirectory(path: config.storage.dataDir)
        let superblock = try dataDirectory.openSuperblock()
        let stored = try superblock.read()
        var superblockState = stored ?? SuperblockState(clusterName: config.server.clusterName, nodeID: selfID,
                                                        members: members.map(\.nodeID))
        if let stored {
            if stored.clusterName != config.server.clusterName || stored.nodeID != selfID {
                throw NodeStartError.foreignDataDirectory(
                    path: config.storage.dataDir,
                    detail: "it belongs to node \(stored.nodeID) of cluster \"\(stored.clusterName)\", this is node \(selfID) of cluster \"\(config.server.clusterName)\"")
            }
        } else {
            // A one-node cluster forms on its own; larger ones at formation.
            superblockState.formed = members.count == 1
        }

        journal = try dataDirectory.openJournal(segmentSize: config.storage.segmentSize,
                                                syncMode: KimberliteStorage.SyncMode(rawValue: config.storage.syncMode.rawValue) ?? .fsync,
                                                logger: layer("storage"))
        journal.slowFsyncThreshold = config.logging.slowFsyncThreshold
        let journalLostEntries = journal.recovery.corruption != nil
        if let corruption = journal.recovery.corruption {
            logger.error("Checksum mismatch: corrupt journal segment; quarantining it and recovering the lost entries from peers",
                         metadata: ["segment": "\(corruption.segment)", "offset": "\(corruption.offset)", "op": "\(corruption.op)"])
            try journal.quarantineCorruption()
        }
        let log = try journal.loadAll()
        projection = try Projection(directory: dataDirectory.projectionsDirectory, logger: layer("projection"))
        let appliedOp = projection.appliedOp
        registry.setApplied(appliedOp)

        var durable = DurableState(view: superblockState.view, logView: superblockState.logView, log: log,
                                   commitHint: max(superblockState.commitNumber, appliedOp),
                                   isFresh: members.count > 1 && !superblockState.formed)
        let journalEmptied = log.isEmpty && superblockState.logStarted
        // Entries made durable just before a crash, ahead of the flag.
        if !log.isEmpty { superblockState.logStarted = true }
        if OpNumber(log.count) < durable.commitHint || journalLostEntries || journalEmptied || superblockState.recovering {
            // The log lost entries it may have acknowledged (deleted or
            // corrupt). The replica starts recovering: it neither votes nor
            // leads until a primary has sent it its log again.
            durable.lostEntries = true
            logger.warning("Recovering: the journal holds fewer ops than were committed; fetching them from the leader before taking part again",
                           metadata: ["journal_op": "\(log.count)", "committed_op": "\(durable.commitHint)"])
            durable.recoveryTarget = max(durable.commitHint, superblockState.recoveryTarget, OpNumber(log.count))
            superblockState.recovering = true
            superblockState.recoveryTarget = durable.recoveryTarget
        }
        // One write for everything start-up decided, before the replica acts on it.
        if superblockState != stored { try superblock.write(superblockState) }
        if durable.isFresh {
            logger.notice("this data directory has not joined the cluster yet: it starts the cluster when every other member reports an empty data directory too, or recovers from the leader",
                          metadata: ["journal_op": "\(log.count)", "members": "\(members.count)"])
        }
        let ticks = { (duration: Duration) in max(1, Int((duration / Self.tickInterval).rounded(.up))) }
        let heartbeatTicks = ticks(config.consensus.heartbeatInterval)
        let replicaConfiguration = ReplicaConfiguration(
            members: members.map(\.nodeID), selfID: selfID, heartbeatTicks: heartbeatTicks,
            electionTimeoutMinTicks: max(ticks(config.consensus.electionTimeoutMin), heartbeatTicks + 1),
            electionTimeoutMaxTicks: max(ticks(config.consensus.electionTimeoutMax), heartbeatTicks + 1),
            maxEntriesPerMessage: config.consensus.maxEntriesPerRPC)
        let replica = Replica(configuration: replicaConfiguration, durable: durable, seed: UInt64.random(in: 1...UInt64.max))

        group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let forwarder = Forwarder()
        applier = ApplyEngine(projection: projection, registry: registry, logger: layer("projection"))
        api = ClientAPI(limits: .init(maxRecordSize: config.limits.maxRecordSize, maxBatchSize: config.limits.maxBatchSize,
                                      maxResultRows: config.limits.maxResultRows, requestTimeout: config.limits.requestTimeout,
                                      slowQueryThreshold: config.logging.slowQueryThreshold),
                        projection: projection, registry: registry, metrics: metrics, logger: layer("api"),
                        dataDirectory: config.storage.dataDir, forwarder: forwarder)
        let selfMember = members.first { $0.nodeID == selfID }!
        let driverBox = DriverBox()
        let api = self.api
        transport = ClusterTransport(
            selfID: selfID, clusterName: config.server.clusterName, members: members,
            listenHost: config.server.clusterAddress.host, listenPort: config.server.clusterAddress.port,
            clientAddress: ClusterTransport.resolveWildcard("\(config.server.bindAddress)", host: selfMember.host),
            metricsAddress: ClusterTransport.resolveWildcard("\(config.telemetry.metricsAddress)", host: selfMember.host),
            version: Self.version, group: group, logger: layer("transport"),
            isLeader: { driverBox.driver?.snapshot.isPrimary ?? false },
            receive: { envelope, from in
                switch envelope {
                case .vsr(let message):
                    driverBox.driver?.submit(.event(.message(message, from: from)))
                case .forward(let id, let kind, let body):
                    Task {
                        let response = kind == 1 ? await api.execute(body: body, forwarded: true)
                            : await api.query(body: body, forwarded: true)
                        forwarder.transport.send(.forwardReply(id: id, status: UInt16(response.status), body: response.body), to: from)
                    }
                case .forwardReply(let id, let status, let body):
                    forwarder.complete(id, APIResponse(status: Int(status), body: body))
                default:
                    break
                }
            })
        forwarder.transport = transport
        driver = ReplicaDriver(replica: replica, journal: journal, superblock: superblock, superblockState: superblockState,
                               transport: transport, registry: registry, applier: applier, appliedOp: appliedOp,
                               logger: layer("vsr"), metrics: metrics)
        driverBox.driver = driver
        let systemd = self.systemd
        driver.afterBatch = { systemd.watchdogIfDue() }
        api.driver = driver
        for key in config.notInEffectYet {
            logger.warning("configuration key is accepted but not in effect yet", metadata: ["key": "\(key)"])
        }
        logger.info("opened data directory", metadata: [
            "data_dir": "\(config.storage.dataDir)", "op": "\(log.count)", "applied_op": "\(appliedOp)",
            "view": "\(superblockState.view)", "members": "\(members.map(\.nodeID))", "sync_mode": "\(config.storage.syncMode.rawValue)",
        ])
    }

    /// Runs until SIGTERM or SIGINT, then stops gracefully (in-flight
    /// requests answered or failed, journal synced).
    public func run() async throws {
        try await transport.start()
        applier.start()
        driver.start()
        startTimer()
        let service = NodeService(node: self)
        let clientApp = Application(
            router: clientRouter(),
            configuration: .init(address: .hostname(config.server.bindAddress.host, port: config.server.bindAddress.port),
                                 serverName: "kimberlite"),
            onServerRunning: { [systemd] _ in systemd.listenerStarted() }, logger: quiet(logger))
        let opsApp = Application(
            router: operationsRouter(),
            configuration: .init(address: .hostname(config.telemetry.metricsAddress.host, port: config.telemetry.metricsAddress.port),
                                 serverName: "kimberlite"),
            onServerRunning: { [systemd] _ in systemd.listenerStarted() }, logger: quiet(logger))
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: service), .init(service: clientApp), .init(service: opsApp)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: quiet(logger)))
        logger.info("kimberlite-server started", metadata: [
            "node_id": "\(config.server.nodeID)", "client": "\(config.server.bindAddress)",
            "cluster": "\(config.server.clusterAddress)", "metrics": "\(config.telemetry.metricsAddress)",
        ])
        try await group.run()
        shutdown()
    }

    private func quiet(_ logger: Logger) -> Logger {
        var copy = logger
        copy.logLevel = max(logger.logLevel, .warning)
        return copy
    }

    private func shutdown() {
        logger.info("shutting down: stopping the replica and syncing the journal")
        timer?.cancel()
        transport.stop()
        driver.stop()
        registry.failAll()
        applier.stop()
        try? group.syncShutdownGracefully()
        logger.info("clean shutdown complete")
    }

    private func startTimer() {
        let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "kimberlite.tick"))
        let interval = Int(Self.tickInterval.milliseconds)
        timer.schedule(deadline: .now(), repeating: .milliseconds(interval), leeway: .milliseconds(2))
        var count = 0
        let heartbeatEvery = max(1, Int(config.consensus.heartbeatInterval.milliseconds) / interval)
        timer.setEventHandler { [self] in
            driver.submit(.event(.tick))
            count += 1
            if count % heartbeatEvery == 0 {
                transport.maintainConnections(silentAfter: max(config.consensus.electionTimeoutMax * 4, .seconds(2)))
                let now = ClusterTransport.wallNanos()
                for peer in transport.peerIDs { transport.send(.ping(sentAt: now), to: peer) }
                updateGauges()
                let snapshot = driver.snapshot
                systemd.heartbeat(status: snapshot.status.rawValue, view: snapshot.view, leader: snapshot.leader,
                                  op: snapshot.op, commit: snapshot.commit, recovering: snapshot.recovering)
            }
        }
        timer.resume()
        self.timer = timer
    }

    private func updateGauges() {
        let snapshot = driver.snapshot
        let applied = projection.appliedOp
        metrics.view.record(Double(snapshot.view))
        metrics.leader.record(Double(snapshot.leader ?? 0))
        metrics.projectionLag.record(Double(snapshot.commit > applied ? snapshot.commit - applied : 0))
        metrics.clockOffset.record((clockOffsetMs(snapshot) ?? 0) / 1000)
        for (peer, view) in transport.snapshot() { metrics.peerConnected(peer, view.connected) }
    }

    /// This node's clock minus the leader's, in ms (null without a leader).
    private func clockOffsetMs(_ snapshot: ReplicaSnapshot) -> Double? {
        guard let leader = snapshot.leader else { return nil }
        if leader == config.server.nodeID { return 0 }
        // The transport measures the peer's clock minus ours.
        return transport.snapshot()[leader]?.clockOffsetSeconds.map { -$0 * 1000 }
    }

    // MARK: - HTTP

    private func clientRouter() -> Router<BasicRequestContext> {
        let router = Router()
        let api = self.api
        let limit = config.limits.maxBatchSize
        router.post("/v1/execute") { request, _ -> Response in
            guard let body = try? await request.body.collect(upTo: limit + 1) else {
                return Self.json(413, Array(#"{"error":{"code":"too_large","message":"request body exceeds max_batch_size"}}"#.utf8))
            }
            let response = await api.execute(body: Array(buffer: body), forwarded: false)
            return Self.json(response.status, response.body)
        }
        router.post("/v1/query") { request, _ -> Response in
            guard let body = try? await request.body.collect(upTo: limit + 1) else {
                return Self.json(413, Array(#"{"error":{"code":"too_large","message":"request body exceeds max_batch_size"}}"#.utf8))
            }
            let response = await api.query(body: Array(buffer: body), forwarded: false)
            return Self.json(response.status, response.body)
        }
        return router
    }

    private func operationsRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/status") { [self] _, _ -> Response in
            Self.json(200, ClientAPI.encode(status()))
        }
        router.get("/metrics") { [self] _, _ -> Response in
            updateGauges()
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(bytes: metrics.exposition())))
        }
        router.get("/health/live") { _, _ -> Response in
            Self.json(200, Array(#"{"status":"live"}"#.utf8))
        }
        router.get("/health/ready") { [self] _, _ -> Response in
            let snapshot = driver.snapshot
            let ready = snapshot.status == .normal && snapshot.leader != nil
            let body = #"{"ready":\#(ready),"status":"\#(snapshot.status.rawValue)","leader_id":\#(snapshot.leader ?? 0)}"#
            return Self.json(ready ? 200 : 503, Array(body.utf8))
        }
        return router
    }

    static func json(_ status: Int, _ body: [UInt8]) -> Response {
        Response(status: .init(code: status), headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    /// Builds `/status` from measured state.
    func status() -> StatusReport {
        let snapshot = driver.snapshot
        let peers = transport.snapshot()
        let window = config.consensus.electionTimeoutMax
        let now = NIODeadline.now()
        var healthy = 0
        let memberReports = members.map { member -> StatusReport.Member in
            if member.nodeID == config.server.nodeID {
                healthy += 1
                return .init(nodeID: member.nodeID, clusterAddress: member.address,
                             clientAddress: ClusterTransport.resolveWildcard("\(config.server.bindAddress)", host: member.host),
                             metricsAddress: ClusterTransport.resolveWildcard("\(config.telemetry.metricsAddress)", host: member.host),
                             state: "up", lastSeenMs: 0)
            }
            let peer = peers[member.nodeID]
            let sinceMs = peer?.lastSeen.map { Int((now - $0).nanoseconds / 1_000_000) }
            let up = sinceMs.map { Double($0) <= window.milliseconds } ?? false
            if up { healthy += 1 }
            return .init(nodeID: member.nodeID, clusterAddress: member.address, clientAddress: peer?.clientAddress,
                         metricsAddress: peer?.metricsAddress, state: up ? "up" : "down", lastSeenMs: sinceMs)
        }
        let applied = projection.appliedOp
        return StatusReport(
            nodeID: config.server.nodeID, clusterName: config.server.clusterName, version: Self.version,
            status: snapshot.status.rawValue, view: snapshot.view, opNumber: snapshot.op, commitNumber: snapshot.commit,
            isLeader: snapshot.isPrimary, leaderID: snapshot.leader ?? 0, clusterSize: members.count,
            healthyReplicas: healthy, clusterMembers: memberReports,
            projection: .init(appliedOp: applied, lag: snapshot.commit > applied ? snapshot.commit - applied : 0),
            clockOffsetMs: clockOffsetMs(snapshot))
    }
}

/// Why the node refused to start.
public enum NodeStartError: Error, CustomStringConvertible {
    case foreignDataDirectory(path: String, detail: String)

    public var description: String {
        switch self {
        case .foreignDataDirectory(let path, let detail): return "data directory \(path) belongs to another node: \(detail)"
        }
    }
}

private final class DriverBox: @unchecked Sendable {
    var driver: ReplicaDriver?
}

/// Keeps the node in the service group; its end starts the shutdown.
private struct NodeService: Service {
    let node: KimberliteNode
    func run() async throws {
        try? await gracefulShutdown()
        node.systemd.stopping()
    }
}
