import Foundation
import KimberliteCore
import KimberliteProjection
import KimberliteStorage
import Logging
import Metrics

/// Takes projection checkpoints (DESIGN.md §2b "Checkpoints") on a queue of
/// its own: every `checkpoint_interval` applied ops, and on demand (an
/// online backup). A checkpoint is a `VACUUM INTO` copy read from one
/// snapshot while the apply thread goes on, so writes never wait for it.
/// The two newest are kept, plus any a backup is copying.
final class Checkpointer: @unchecked Sendable {
    let store: CheckpointStore
    private let projection: Projection
    /// Applied ops between checkpoints (`[projections] checkpoint_interval`); 0 disables periodic ones.
    private let interval: OpNumber
    private let logger: Logger
    private let queue = DispatchQueue(label: "kimberlite.checkpoint", qos: .utility)
    private let lock = NSLock()
    private var scheduled = false
    /// The newest op the apply thread reported applied.
    private var appliedOp: OpNumber = 0
    private var newestOp: OpNumber
    private var pinned: [OpNumber: Int] = [:]
    private var copies = 0
    /// After a failed periodic checkpoint, none is tried before this (a full
    /// disk must not turn into one failing 500 MB copy per applied chunk).
    private var retryAfter: ContinuousClock.Instant?
    private var failureLog = LogThrottle(every: .seconds(60))
    static let retryDelay: Duration = .seconds(30)
    private let opGauge = Gauge(label: "kmb_checkpoint_op")
    private let durationTimer = Metrics.Timer(label: "kmb_checkpoint_duration_seconds")
    private let checksumFailures = Counter(label: "kmb_checksum_failures_total")

    /// Where in the interval this node checkpoints: members take turns (a
    /// third of the interval apart), so the replicas of one cluster never
    /// all copy 500 MB at once while the leader needs a quorum of them.
    private let phase: OpNumber
    /// Called on the checkpoint queue after each new checkpoint with the
    /// ops of the checkpoints kept, newest first (compaction; set before use).
    var afterCheckpoint: (([OpNumber]) -> Void)?

    /// - Parameters:
    ///   - newestOp: the op of the newest valid checkpoint on disk (0: none).
    ///   - slot: this node's turn (its index among the members); the phase is `slot % 3` thirds of the interval.
    init(store: CheckpointStore, projection: Projection, interval: Int, newestOp: OpNumber, slot: Int = 0, logger: Logger) {
        self.store = store
        self.projection = projection
        self.interval = OpNumber(max(0, interval))
        self.phase = OpNumber(max(0, interval)) * OpNumber(slot % 3) / 3
        self.newestOp = newestOp
        self.logger = logger
        opGauge.record(Int64(bitPattern: newestOp))
    }

    /// The op of the newest checkpoint taken or found (0: none).
    var latestOp: OpNumber { lock.withLock { newestOp } }

    /// Called from the apply thread after each applied chunk: schedules a
    /// checkpoint once `interval` ops were applied since the newest one.
    func applied(through op: OpNumber) {
        lock.withLock { appliedOp = max(appliedOp, op) }
        scheduleIfDue()
    }

    /// Starts a periodic checkpoint when one is due and none is running. Also
    /// called when one finishes: a checkpoint that became due while another
    /// was being taken must not wait for the next write (an idle cluster
    /// would otherwise never take it, and compaction would stall behind it).
    private func scheduleIfDue() {
        let due = lock.withLock { () -> Bool in
            guard interval > 0, !scheduled, appliedOp >= nextDue(after: newestOp) else { return false }
            if let retryAfter, ContinuousClock.now < retryAfter { return false }
            scheduled = true
            return true
        }
        guard due else { return }
        queue.async { [self] in
            do {
                _ = try take()
                lock.withLock { scheduled = false; retryAfter = nil }
                scheduleIfDue()
            } catch {
                // Tried again after a pause; the log keeps everything meanwhile.
                lock.withLock { scheduled = false; retryAfter = .now + Self.retryDelay }
                if failureLog.allow() {
                    logger.error("checkpoint failed; trying again in \(Self.retryDelay) (the log keeps every op meanwhile)",
                                 metadata: ["error": "\(error)"])
                }
            }
        }
    }

    /// The first op of this node's turn after `newest`: `phase + k × interval`.
    func nextDue(after newest: OpNumber) -> OpNumber {
        var due = phase == 0 ? interval : phase
        if newest >= due { due += ((newest - due) / interval + 1) * interval }
        return due
    }

    /// Takes a checkpoint of everything applied now (blocking; serialised
    /// with the periodic ones) and pins it until `unpin` so pruning keeps it.
    /// - Throws: `ProjectionError` or `StorageError` naming what failed.
    func takePinned() throws -> CheckpointManifest {
        try queue.sync {
            let manifest = try take()
            lock.withLock { pinned[manifest.op, default: 0] += 1 }
            return manifest
        }
    }

    /// Pins checkpoint `op` (a state transfer may read it) until `unpin`.
    func pin(_ op: OpNumber) {
        lock.withLock { pinned[op, default: 0] += 1 }
    }

    /// Releases a pin taken by `takePinned` or `pin`.
    func unpin(_ op: OpNumber) {
        lock.withLock {
            pinned[op, default: 1] -= 1
            if pinned[op] == 0 { pinned[op] = nil }
        }
    }

    /// Checks every checkpoint whole in the background (at start): a damaged
    /// one is logged, counted in `kmb_checksum_failures_total` and moved
    /// aside, so it is never installed, sent or backed up.
    func checkAllInBackground() {
        queue.async { [self] in
            for op in (try? store.ops()) ?? [] {
                do { try store.check(op: op) } catch {
                    quarantine(op: op, error)
                }
            }
            let newest = (try? store.ops())?.first ?? 0
            lock.withLock { newestOp = newest }
            opGauge.record(Int64(bitPattern: newest))
        }
    }

    private func quarantine(op: OpNumber, _ error: Error) {
        checksumFailures.increment()
        logger.error("Checksum mismatch: checkpoint is damaged; moved aside, not used (an older checkpoint or the log serves instead)",
                     metadata: ["op": "\(op)", "error": "\(error)"])
        do { try store.quarantine(op: op) } catch {
            logger.error("cannot move the damaged checkpoint aside", metadata: ["op": "\(op)", "error": "\(error)"])
        }
    }

    private func take() throws -> CheckpointManifest {
        try FileManager.default.createDirectory(atPath: store.directory, withIntermediateDirectories: true)
        copies += 1
        let temporary = store.directory + "/tmp-\(getpid())-\(copies).sqlite"
        let started = ContinuousClock.now
        let copied: (op: OpNumber, anchor: Checksum)
        do {
            try? FileManager.default.removeItem(atPath: temporary)
            copied = try projection.writeConsistentCopy(to: temporary)
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
        guard copied.op > 0 else {
            try? FileManager.default.removeItem(atPath: temporary)
            throw CheckpointRefusal("nothing has been applied yet: there is no state to checkpoint")
        }
        guard copied.anchor != .zero else {
            // A projection from before anchors were recorded gets one with its next applied entry.
            try? FileManager.default.removeItem(atPath: temporary)
            throw CheckpointRefusal("the projection at op \(copied.op) has no hash-chain anchor yet; it records one with the next write")
        }
        if FileManager.default.fileExists(atPath: store.manifestPath(op: copied.op)) {
            // Nothing applied since that checkpoint: it is this one, if it is whole.
            do {
                let existing = try store.check(op: copied.op)
                try? FileManager.default.removeItem(atPath: temporary)
                return existing
            } catch {
                quarantine(op: copied.op, error)
            }
        }
        let manifest = try store.seal(temporaryFile: temporary, op: copied.op, anchor: copied.anchor,
                                      nowMs: Int64(Date().timeIntervalSince1970 * 1000))
        let elapsed = ContinuousClock.now - started
        durationTimer.recordNanoseconds(Int64(elapsed.components.seconds) * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
        let protecting = lock.withLock { () -> Set<OpNumber> in
            newestOp = max(newestOp, manifest.op)
            return Set(pinned.keys)
        }
        opGauge.record(Int64(bitPattern: manifest.op))
        do { try store.prune(keeping: 2, protecting: protecting) } catch {
            logger.warning("cannot remove an old checkpoint", metadata: ["error": "\(error)"])
        }
        logger.info("checkpoint taken", metadata: [
            "op": "\(manifest.op)", "bytes": "\(manifest.bytes)", "duration_ms": "\(Int(elapsed.milliseconds))",
            "path": "\(store.sqlitePath(op: manifest.op))",
        ])
        if let afterCheckpoint, let kept = try? store.ops() { afterCheckpoint(kept) }
        return manifest
    }
}

/// Why no checkpoint could be taken now (nothing wrong with the node).
struct CheckpointRefusal: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
