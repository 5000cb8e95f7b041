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

    let config: ServerConfig
    let logger: Logger
    let dataDirectory: DataDirectory
    let projection: Projection
    let journal: Journal
    let registry = RequestRegistry()
    let metrics: NodeMetrics
    let transport: ClusterTransport
    let driver: ReplicaDriver
    let applier: ApplyEngine
    let checkpointer: Checkpointer
    let backups: BackupService
    let membership: MembershipService
    let stateTransferSource: StateTransferSource
    let stateTransferSink: StateTransferSink
    /// Fetches the log's older ops after a state transfer (compaction off); nil with compaction on.
    let backfill: LogBackfill?
    /// The superblock as start-up left it.
    private let startupSuperblock: SuperblockState
    let api: ClientAPI
    private let group: MultiThreadedEventLoopGroup
    private var timer: DispatchSourceTimer?
    /// sd_notify (READY, STATUS, WATCHDOG, STOPPING); a no-op outside systemd.
    let systemd = SystemdNotifier.shared
    private let startedAt = ContinuousClock.now

    /// Opens the data directory and recovers state; binds nothing yet.
    /// - Throws: `StorageError` (`.locked` → exit 75), `NodeStartError`, projection errors.
    /// - Parameter dataDirectory: the data directory when the caller opened
    ///   (and locked) it already (a node that has just joined); else it is opened here.
    public init(config: ServerConfig, logger baseLogger: Logger, dataDirectory opened: DataDirectory? = nil) throws {
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
        // The address peers dial this node at: its own peer-list entry, else cluster_address.
        let advertised = config.server.clusterPeers.first { $0.nodeID == selfID }?.address ?? config.server.clusterAddress
        let selfAddress = MemberAddress(nodeID: selfID, host: advertised.host, port: advertised.port, sinceEpoch: 0)
        let configured: [MemberAddress] = config.server.clusterPeers.isEmpty
            ? [selfAddress]
            : config.server.clusterPeers.map { MemberAddress(nodeID: $0.nodeID, host: $0.host, port: $0.port, sinceEpoch: 0) }
                .sorted { $0.nodeID < $1.nodeID }
        // Metrics first: the storage layers create theirs as they open.
        // Peers are the configured ones (a member left out reads 0).
        metrics = NodeMetrics(peers: configured.map(\.nodeID).filter { $0 != selfID })
        let storage = try NodeStorage.open(config: config, members: configured.map(\.nodeID), logger: logger, layer: layer,
                                           dataDirectory: opened)
        // After the first start the membership and the members' addresses
        // are the superblock's, never the flags' (DESIGN.md §2b); the peer
        // list only fills in addresses a superblock from before addresses
        // were kept there does not have.
        let memberIDs = storage.durable.record.members
        var book = Dictionary(storage.superblockState.addresses.map { ($0.nodeID, $0) }, uniquingKeysWith: { _, last in last })
        for member in configured where book[member.nodeID] == nil { book[member.nodeID] = member }
        if book[selfID] == nil { book[selfID] = selfAddress }
        let addresses = book.values.sorted { $0.nodeID < $1.nodeID }
        for id in memberIDs where book[id] == nil {
            logger.warning("member \(id) has no known address yet; it is reached once it connects to this node",
                           metadata: ["members": "\(memberIDs)", "epoch": "\(storage.durable.record.epoch)"])
        }
        if memberIDs != configured.map(\.nodeID) && !config.server.clusterPeers.isEmpty {
            logger.notice("membership comes from the superblock, not from cluster_peers",
                          metadata: ["members": "\(memberIDs)", "cluster_peers": "\(configured.map(\.nodeID))",
                                     "epoch": "\(storage.durable.record.epoch)"])
        }

        dataDirectory = storage.dataDirectory
        startupSuperblock = storage.superblockState
        journal = storage.journal
        projection = storage.projection
        let durable = storage.durable
        let appliedOp = projection.appliedOp
        registry.setApplied(appliedOp)
        let ticks = { (duration: Duration) in max(1, Int((duration / Self.tickInterval).rounded(.up))) }
        let heartbeatTicks = ticks(config.consensus.heartbeatInterval)
        let replicaConfiguration = ReplicaConfiguration(
            members: memberIDs, selfID: selfID, heartbeatTicks: heartbeatTicks,
            electionTimeoutMinTicks: max(ticks(config.consensus.electionTimeoutMin), heartbeatTicks + 1),
            electionTimeoutMaxTicks: max(ticks(config.consensus.electionTimeoutMax), heartbeatTicks + 1),
            maxEntriesPerMessage: config.consensus.maxEntriesPerRPC)
        let replica = Replica(configuration: replicaConfiguration, durable: durable, seed: UInt64.random(in: 1...UInt64.max))

        group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let forwarder = Forwarder()
        applier = ApplyEngine(projection: projection, registry: registry, logger: layer("projection"))
        checkpointer = Checkpointer(store: storage.checkpoints, projection: projection, interval: config.projections.checkpointInterval,
                                    newestOp: storage.newestCheckpointOp,
                                    slot: memberIDs.firstIndex(of: selfID) ?? 0, logger: layer("checkpoint"))
        applier.checkpointer = checkpointer
        api = ClientAPI(limits: .init(maxRecordSize: config.limits.maxRecordSize, maxBatchSize: config.limits.maxBatchSize,
                                      maxResultRows: config.limits.maxResultRows, requestTimeout: config.limits.requestTimeout,
                                      slowQueryThreshold: config.logging.slowQueryThreshold),
                        projection: projection, registry: registry, metrics: metrics, logger: layer("api"),
                        dataDirectory: config.storage.dataDir, forwarder: forwarder)
        let selfMember = book[selfID]!
        let driverBox = DriverBox()
        let transferBox = TransferBox()
        let api = self.api
        transport = ClusterTransport(
            selfID: selfID, clusterName: config.server.clusterName, epoch: durable.record.epoch, members: memberIDs,
            addresses: addresses, advertisedAddress: selfMember.address, listenHost: config.server.clusterAddress.host, listenPort: config.server.clusterAddress.port,
            clientAddress: ClusterTransport.resolveWildcard("\(config.server.bindAddress)", host: selfMember.host),
            metricsAddress: ClusterTransport.resolveWildcard("\(config.telemetry.metricsAddress)", host: selfMember.host),
            version: Self.version, group: group, logger: layer("transport"),
            isLeader: { driverBox.driver?.snapshot.isPrimary ?? false },
            receive: { envelope, from in
                switch envelope {
                case .vsr(let message, let epoch):
                    driverBox.driver?.submit(.event(.message(message, from: from, epoch: epoch)))
                case .forward(let id, let kind, let body):
                    Task {
                        let response = switch kind {
                        case .execute: await api.execute(body: body, forwarded: true)
                        case .query: await api.query(body: body, forwarded: true)
                        }
                        forwarder.transport.send(.forwardReply(id: id, status: UInt16(response.status), body: response.body), to: from)
                    }
                case .forwardReply(let id, let status, let body):
                    forwarder.complete(id, APIResponse(status: Int(status), body: body))
                case .stateTransferOffer(let offer):
                    transferBox.sink?.offered(offer, by: from)
                case .stateTransferRead(let op, let sha256, let offset, let length):
                    transferBox.source?.serve(op: op, sha256: sha256, offset: offset, length: length, to: from)
                case .stateTransferChunk(let op, let offset, let data, let crc, let error):
                    transferBox.sink?.chunk(op: op, offset: offset, data: data, crc32c: crc, error: error, from: from)
                case .stateTransferWanted:
                    transferBox.source?.noteWanted(by: from)
                case .backfillRead(let start, let through):
                    driverBox.driver?.serveBackfill(from: start, through: through, to: from)
                case .backfillEntries(let start, let entries, let error, let compactedThrough):
                    transferBox.backfill?.received(from: from, start: start, entries: entries, error: error, compactedThrough: compactedThrough)
                default:
                    break
                }
            })
        forwarder.transport = transport
        transport.onPeerLost = { peer in forwarder.linkLost(to: peer) }
        driver = ReplicaDriver(replica: replica, journal: journal, superblock: storage.superblock, superblockState: storage.superblockState,
                               transport: transport, registry: registry, applier: applier, appliedOp: appliedOp,
                               logger: layer("vsr"), metrics: metrics)
        driverBox.driver = driver
        stateTransferSource = StateTransferSource(store: storage.checkpoints, checkpointer: checkpointer, transport: transport,
                                                  logger: layer("state_transfer"))
        stateTransferSink = StateTransferSink(dataDir: dataDirectory.path, transport: transport, driver: driver, applier: applier,
                                              logger: layer("state_transfer"))
        transferBox.source = stateTransferSource
        transferBox.sink = stateTransferSink
        if config.storage.compaction {
            backfill = nil
        } else {
            let backfill = LogBackfill(dataDir: dataDirectory.path, segmentSize: config.storage.segmentSize, transport: transport,
                                       driver: driver, logger: layer("state_transfer"))
            self.backfill = backfill
            transferBox.backfill = backfill
            stateTransferSink.afterInstall = { backfill.startIfNeeded() }
        }
        driver.stateTransferSource = stateTransferSource
        let compaction = config.storage.compaction
        checkpointer.afterCheckpoint = { [driver, stateTransferSink] kept in
            // Segments wholly below the older of the two newest checkpoints go (DESIGN.md §2b).
            if compaction && kept.count >= 2 { driver.compact(through: kept[1]) }
            // Applying as usual: a partial transfer left from a state this node no longer needs goes.
            stateTransferSink.discardAbandonedPartials()
        }
        let transport = self.transport
        let startRecord = durable.record
        transport.membership = { [driver] in
            let snapshot = driver.snapshot
            return snapshot.members.isEmpty ? (startRecord.epoch, startRecord.members) : (snapshot.epoch, snapshot.members)
        }
        transport.onSuperseded = { newerEpoch, peer in
            // Silence first: from now on this node neither votes nor acknowledges.
            transport.silenceConsensus()
            driverBox.driver?.markSuperseded(newerEpoch: newerEpoch, by: peer)
        }
        if storage.superblockState.supersededByEpoch > 0 {
            transport.silenceConsensus()
            logger.error("\(supersededReason(epoch: durable.record.epoch, newer: storage.superblockState.supersededByEpoch))")
        }
        let systemd = self.systemd
        driver.afterBatch = { systemd.watchdogIfDue() }
        api.driver = driver
        backups = BackupService(checkpointer: checkpointer, driver: driver, clusterName: config.server.clusterName, nodeID: selfID)
        if addresses != storage.superblockState.addresses { driver.persistAddresses() }
        transport.onAddressesChanged = { [driver] in driver.persistAddresses() }
        membership = MembershipService(driver: driver, registry: registry, transport: transport, selfID: selfID,
                                       clusterName: config.server.clusterName, logger: layer("membership"),
                                       liveWindow: config.consensus.electionTimeoutMax, timeout: config.limits.requestTimeout)
        let membership = self.membership
        transport.onJoinRequest = { request, remoteHost in await membership.join(request, remoteHost: remoteHost) }
        for key in config.notInEffectYet {
            logger.warning("configuration key is accepted but not in effect yet", metadata: ["key": "\(key)"])
        }
        logger.info("opened data directory", metadata: [
            "data_dir": "\(config.storage.dataDir)", "op": "\(durable.journalOp)", "applied_op": "\(appliedOp)",
            "view": "\(durable.record.view)", "members": "\(memberIDs)", "epoch": "\(durable.record.epoch)", "sync_mode": "\(config.storage.syncMode.rawValue)",
        ])
    }

    /// Runs until SIGTERM or SIGINT, then stops gracefully (in-flight
    /// requests answered or failed, journal synced).
    public func run() async throws {
        try await transport.start()
        checkpointer.checkAllInBackground()
        var audit: Task<Void, Never>?
        switch ForceLeader.pendingRecord(dataDir: config.storage.dataDir, matching: startupSuperblock) {
        case .none:
            break
        case .setAside(let reason):
            logger.warning("force-leader record not used: \(reason)")
        case .record(let record):
            logger.warning("force-leader: this node alone forms cluster \"\(record.clusterName)\" at epoch \(record.newEpoch) (members \(record.oldMembers) at epoch \(record.oldEpoch) before); acknowledged writes held only by the other members are lost; members of the old epoch are refused",
                           metadata: ["by": "\(record.by)", "at_ms": "\(record.atMs)", "op": "\(record.op)"])
            let task = ForceLeaderAudit(record: record, dataDir: config.storage.dataDir, registry: registry, driver: driver, logger: logger)
            audit = Task { await task.run() }
        }
        defer { audit?.cancel() }
        applier.start()
        driver.start()
        backfill?.startIfNeeded()
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
        backfill?.stop()
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
            api.forwarder.sweep(currentLeader: driver.snapshot.leader)
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

private final class TransferBox: @unchecked Sendable {
    var source: StateTransferSource?
    var sink: StateTransferSink?
    var backfill: LogBackfill?
}

/// Keeps the node in the service group; its end starts the shutdown.
private struct NodeService: Service {
    let node: KimberliteNode
    func run() async throws {
        try? await gracefulShutdown()
        node.systemd.stopping()
    }
}
