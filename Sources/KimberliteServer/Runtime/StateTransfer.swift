import Foundation
import KimberliteCore
import KimberliteStorage
import Logging
import Metrics

/// State transfer, the sending side (DESIGN.md §2b): when a peer asks for
/// ops this node's journal no longer holds (compacted away), or an empty
/// peer (wiped, or joining) asks for the whole log, the node offers its
/// newest checkpoint at or above the journal's base, then serves its bytes
/// in chunks with a CRC32C each. The offered checkpoint is pinned
/// so pruning keeps it while it may be read.
final class StateTransferSource: @unchecked Sendable {
    /// Largest chunk served (bytes).
    static let maxChunkBytes = 16 << 20
    private let store: CheckpointStore
    private let checkpointer: Checkpointer
    private let transport: ClusterTransport
    private let logger: Logger
    private let queue = DispatchQueue(label: "kimberlite.state-transfer.source", qos: .utility)
    private let lock = NSLock()
    private var lastOffer: [NodeID: ContinuousClock.Instant] = [:]
    private var pinnedOp: OpNumber?
    /// Checkpoints checked whole (SHA-256 against the manifest) before their first offer.
    private var checked: Set<OpNumber> = []
    private let checksumFailures = Counter(label: "kmb_checksum_failures_total")
    private var missingLog = LogThrottle(every: .seconds(10))

    init(store: CheckpointStore, checkpointer: Checkpointer, transport: ClusterTransport, logger: Logger) {
        self.store = store
        self.checkpointer = checkpointer
        self.transport = transport
        self.logger = logger
    }

    /// Peers that said they are empty (`stateTransferWanted`): when they last did.
    private var wanted: [NodeID: ContinuousClock.Instant] = [:]
    /// When a peer that says it is empty was first offered a checkpoint.
    private var offeredSince: [NodeID: ContinuousClock.Instant] = [:]
    /// When each peer last read a chunk.
    private var lastRead: [NodeID: ContinuousClock.Instant] = [:]
    /// Peers that left a checkpoint untaken: they get the log like any other.
    private var gaveUp: Set<NodeID> = []
    /// A peer that has not taken the checkpoint within this gets the log instead.
    static let takeCheckpointWithin: Duration = .seconds(15)

    /// `peer` reported an empty journal and projection: it takes a checkpoint.
    func noteWanted(by peer: NodeID) {
        lock.withLock {
            if let last = wanted[peer], ContinuousClock.now - last > .seconds(60) {
                // Quiet for a minute: a new episode (wiped again), offered afresh.
                gaveUp.remove(peer)
                offeredSince[peer] = nil
            }
            wanted[peer] = .now
        }
    }

    /// Whether `peer` said it is empty within the last 5 s and has not left
    /// a checkpoint offered to it untaken for `takeCheckpointWithin` (a node
    /// that cannot take one still catches up, from the log).
    func prefersCheckpoint(_ peer: NodeID) -> Bool {
        let (prefers, givingUp) = lock.withLock { () -> (Bool, Bool) in
            guard !gaveUp.contains(peer) else { return (false, false) }
            guard let said = wanted[peer], ContinuousClock.now - said < .seconds(5) else {
                offeredSince[peer] = nil
                return (false, false)
            }
            let since = offeredSince[peer] ?? .now
            offeredSince[peer] = since
            // Reading chunks is taking it, however long a large checkpoint takes.
            let reading = lastRead[peer].map { ContinuousClock.now - $0 < Self.takeCheckpointWithin } ?? false
            if ContinuousClock.now - since >= Self.takeCheckpointWithin && !reading {
                gaveUp.insert(peer)
                return (false, true)
            }
            return (true, false)
        }
        if givingUp {
            logger.warning("node \(peer) has not taken the checkpoint offered for \(Self.takeCheckpointWithin); sending it the whole log instead",
                           metadata: ["peer": "\(peer)"])
        }
        return prefers
    }

    /// Whether this node holds a checkpoint it could offer (a transferred one
    /// included, which the checkpointer's newest op does not count). Asked
    /// only for a peer that said it is empty.
    var hasCheckpoint: Bool { !((try? store.ops()) ?? []).isEmpty }

    /// Offers `peer` the newest checkpoint at or above `base` (the op the
    /// journal now starts after); at most once a second per peer, since a
    /// lagging peer repeats its request until it has the state.
    func offer(to peer: NodeID, atLeast base: OpNumber) {
        let due = lock.withLock { () -> Bool in
            if let last = lastOffer[peer], ContinuousClock.now - last < .seconds(1) { return false }
            lastOffer[peer] = .now
            return true
        }
        guard due else { return }
        queue.async { [self] in
            guard let op = newestIntactCheckpoint(atLeast: base),
                  let manifest = try? store.manifest(op: op), let anchor = Checksum(hex: manifest.anchor) else {
                if missingLog.allow() {
                    logger.error("a peer needs ops this journal compacted away, and no checkpoint at or above the journal's base is here to send",
                                 metadata: ["peer": "\(peer)", "base_op": "\(base)"])
                }
                return
            }
            lock.withLock {
                guard pinnedOp != op else { return }
                if let old = pinnedOp { checkpointer.unpin(old) }
                checkpointer.pin(op)
                pinnedOp = op
            }
            logger.debug("offering a checkpoint by state transfer", metadata: ["peer": "\(peer)", "op": "\(op)", "bytes": "\(manifest.bytes)"])
            transport.send(.stateTransferOffer(.init(op: op, anchor: anchor, bytes: UInt64(manifest.bytes), sha256: manifest.sha256)), to: peer)
        }
    }

    /// The checkpoint being sent, else the newest at or above `base`, that
    /// checks whole; a damaged one is logged, counted and moved aside (never sent).
    private func newestIntactCheckpoint(atLeast base: OpNumber) -> OpNumber? {
        // The checkpoint already being sent stays the offer while it covers
        // the base: a receiver that restarts resumes it instead of starting
        // over with each newer checkpoint taken meanwhile.
        let current = lock.withLock { pinnedOp }
        let ops = ((try? store.ops()) ?? []).sorted { a, b in a == current ? true : b == current ? false : a > b }
        for op in ops where op >= base {
            if checked.contains(op) { return op }
            do {
                try store.check(op: op)
                checked.insert(op)
                return op
            } catch {
                checksumFailures.increment()
                logger.error("Checksum mismatch: checkpoint is damaged; moved aside, not sent by state transfer",
                             metadata: ["op": "\(op)", "error": "\(error)"])
                try? store.quarantine(op: op)
            }
        }
        return nil
    }

    /// Answers a `stateTransferRead`: the bytes with their CRC32C, or why there are none.
    func serve(op: OpNumber, sha256: String, offset: UInt64, length: UInt32, to peer: NodeID) {
        lock.withLock { lastRead[peer] = .now }
        queue.async { [self] in
            do {
                let manifest = try store.manifest(op: op)
                guard manifest.sha256 == sha256 else {
                    throw CheckpointRefusal("the checkpoint at op \(op) here is not the one offered (SHA-256 differs)")
                }
                let data = try store.readChunk(op: op, offset: Int(offset), length: min(Int(length), Self.maxChunkBytes))
                transport.send(.stateTransferChunk(op: op, offset: offset, data: data, crc32c: CRC32C.checksum(data), error: ""), to: peer)
            } catch {
                transport.send(.stateTransferChunk(op: op, offset: offset, data: [], crc32c: 0, error: "\(error)"), to: peer)
            }
        }
    }
}

/// State transfer, the receiving side (DESIGN.md §2b): takes an offered
/// checkpoint in chunks (a few requests in flight), each checked by its
/// CRC32C and written in order to a partial file that survives a kill
/// (`IncomingCheckpoint`), then checks the whole file's SHA-256, seals it as
/// this node's checkpoint, replaces the projection with it (apply thread)
/// and restarts the journal after it (replica thread). A stalled transfer
/// (the sender died, a chunk was lost) goes on from the bytes already here
/// at the next offer of the same checkpoint, or starts over with another.
final class StateTransferSink: @unchecked Sendable {
    /// Bytes per chunk request, and requests in flight: 8 MiB × 4 keeps
    /// loopback busy while the receiver checks and writes the previous one.
    static let chunkBytes = 8 << 20
    static let window = 4
    /// A transfer with no progress for this long gives way to another offer.
    static let stallTimeout: Duration = .seconds(5)
    private let dataDir: String
    private let transport: ClusterTransport
    private let driver: ReplicaDriver
    private let applier: ApplyEngine
    private let logger: Logger
    private let bytesCounter = Counter(label: "kmb_state_transfer_bytes_total")
    private let queue = DispatchQueue(label: "kimberlite.state-transfer.sink", qos: .userInitiated)
    private var incoming: IncomingCheckpoint?
    private var source: NodeID = 0
    private var requestedThrough = 0
    private var lastProgress = ContinuousClock.now
    private var startedAt = ContinuousClock.now
    private var resumedAt = 0
    private var refusedOffers = LogThrottle(every: .seconds(10))
    /// Called after a checkpoint was installed (the log backfill starts). Set before `start()`.
    var afterInstall: (@Sendable () -> Void)?

    init(dataDir: String, transport: ClusterTransport, driver: ReplicaDriver, applier: ApplyEngine, logger: Logger) {
        self.dataDir = dataDir
        self.transport = transport
        self.driver = driver
        self.applier = applier
        self.logger = logger
    }

    func offered(_ offer: Envelope.StateTransferOffer, by peer: NodeID) {
        queue.async { [self] in
            if let current = incoming, current.op == offer.op, current.sha256 == offer.sha256 {
                // The same checkpoint: go on, from this sender if the last one went quiet.
                if ContinuousClock.now - lastProgress > .seconds(2) {
                    logger.info("state transfer stalled; asking again", metadata: ["peer": "\(peer)", "received_bytes": "\(current.receivedBytes)"])
                    source = peer
                    requestedThrough = current.receivedBytes
                    lastProgress = .now
                    requestMore()
                }
                return
            }
            if incoming != nil, ContinuousClock.now - lastProgress < Self.stallTimeout { return }
            guard driver.acceptsState(at: offer.op) else {
                if refusedOffers.allow() {
                    logger.info("not taking the checkpoint offered: the replica does not need the state at that op now",
                                metadata: ["peer": "\(peer)", "op": "\(offer.op)"])
                }
                return
            }
            do {
                let next = try IncomingCheckpoint(dataDir: dataDir, op: offer.op, anchor: offer.anchor, bytes: Int(offer.bytes),
                                                  sha256: offer.sha256)
                incoming = next
                source = peer
                requestedThrough = next.receivedBytes
                resumedAt = next.receivedBytes
                lastProgress = .now
                startedAt = .now
                let megabytes = (Double(offer.bytes) / 1_048_576 * 10).rounded() / 10
                var metadata: Logger.Metadata = ["peer": "\(peer)", "op": "\(offer.op)", "bytes": "\(offer.bytes)"]
                if next.receivedBytes > 0 { metadata["resumed_at_bytes"] = "\(next.receivedBytes)" }
                logger.notice("State transfer from node \(peer): checkpoint at op \(offer.op) (\(megabytes) MB)", metadata: metadata)
                if next.receivedBytes == next.bytes { finish() } else { requestMore() }
            } catch {
                logger.error("cannot start the state transfer", metadata: ["peer": "\(peer)", "op": "\(offer.op)", "error": "\(error)"])
            }
        }
    }

    /// Removes partial checkpoint files when no transfer is under way (one
    /// cut short and never resumed, because the node caught up by repair):
    /// they would hold their disk space for good otherwise.
    func discardAbandonedPartials() {
        queue.async { [self] in
            guard incoming == nil else { return }
            let directory = IncomingCheckpoint.directory(dataDir: dataDir)
            for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasSuffix(".partial") {
                do {
                    try FileManager.default.removeItem(atPath: directory + "/" + name)
                    logger.info("removed a partial state transfer this node no longer needs", metadata: ["file": "\(directory)/\(name)"])
                } catch {
                    logger.warning("cannot remove a partial state transfer", metadata: ["file": "\(directory)/\(name)", "error": "\(error)"])
                }
            }
        }
    }

    func chunk(op: OpNumber, offset: UInt64, data: [UInt8], crc32c: UInt32, error: String, from peer: NodeID) {
        queue.async { [self] in
            guard let current = incoming, current.op == op, peer == source, Int(offset) == current.receivedBytes else { return }
            guard error.isEmpty else {
                logger.warning("state transfer: the sender cannot send the checkpoint any more; waiting for a new offer",
                               metadata: ["peer": "\(peer)", "op": "\(op)", "error": "\(error)"])
                incoming = nil
                return
            }
            guard !data.isEmpty, CRC32C.checksum(data) == crc32c else {
                logger.error("Checksum mismatch in a state transfer chunk; asking for it again",
                             metadata: ["peer": "\(peer)", "op": "\(op)", "offset": "\(offset)"])
                requestedThrough = current.receivedBytes
                requestMore()
                return
            }
            do {
                try current.append(data, at: Int(offset))
            } catch {
                logger.error("state transfer: cannot write the checkpoint; waiting for a new offer",
                             metadata: ["path": "\(current.path)", "error": "\(error)"])
                incoming = nil
                return
            }
            bytesCounter.increment(by: Int64(data.count))
            lastProgress = .now
            if current.receivedBytes == current.bytes { finish() } else { requestMore() }
        }
    }

    private func requestMore() {
        guard let current = incoming else { return }
        while requestedThrough < current.bytes, requestedThrough - current.receivedBytes < Self.window * Self.chunkBytes {
            let length = min(Self.chunkBytes, current.bytes - requestedThrough)
            transport.send(.stateTransferRead(op: current.op, sha256: current.sha256, offset: UInt64(requestedThrough),
                                              length: UInt32(length)), to: source)
            requestedThrough += length
        }
    }

    /// Seals, installs into the projection, then into the journal and the
    /// replica. Each step is safe to be interrupted: a sealed checkpoint is
    /// a checkpoint like any other, and a projection already replaced is
    /// finished at the next start (`NodeStorage`: journal reset to it).
    private func finish() {
        guard let current = incoming else { return }
        incoming = nil
        let elapsed = ContinuousClock.now - startedAt
        do {
            let manifest = try current.finish(nowMs: Int64(Date().timeIntervalSince1970 * 1000))
            let seconds = max(Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18, 0.001)
            let rate = Double(current.bytes - resumedAt) / 1_048_576 / seconds
            logger.notice("state transfer received the checkpoint; installing it", metadata: [
                "op": "\(manifest.op)", "bytes": "\(manifest.bytes)", "seconds": "\((seconds * 1000).rounded() / 1000)",
                "mb_per_second": "\((rate * 10).rounded() / 10)",
            ])
            guard driver.acceptsState(at: manifest.op) else {
                logger.info("state transfer no longer needed (the log caught up meanwhile); the checkpoint is kept", metadata: ["op": "\(manifest.op)"])
                return
            }
            let path = CheckpointStore(dataDir: dataDir).sqlitePath(op: manifest.op)
            let installed = try applier.replaceProjection(withCheckpointAt: path)
            if driver.installState(op: installed.op, anchor: installed.anchor) {
                logger.notice("State transfer complete: the projection and the log now start at the checkpoint; catching up from the leader",
                              metadata: ["op": "\(installed.op)", "peer": "\(source)"])
                afterInstall?()
            }
        } catch {
            logger.error("state transfer failed; waiting for a new offer", metadata: ["op": "\(current.op)", "error": "\(error)"])
        }
    }
}
