import Foundation
import Hummingbird
import KimberliteCore
import KimberliteStorage
import NIOCore

/// What `POST /backup` answers: a checkpoint taken for this backup, and the
/// log bytes from op 1 through its op. The files are then fetched one by
/// one (`GET /backup/<id>/checkpoint`, `GET /backup/<id>/log/<name>`), and
/// `DELETE /backup/<id>` releases the checkpoint.
public struct BackupPlan: Codable, Sendable {
    public struct Segment: Codable, Sendable {
        /// File name in `log/`.
        public var name: String
        /// Bytes to copy: the file's prefix through the checkpoint's op.
        public var bytes: Int
    }

    public var backupID: String
    public var clusterName: String
    public var nodeID: NodeID
    public var epoch: UInt64
    public var members: [NodeID]
    public var view: ViewNumber
    public var logView: ViewNumber
    public var checkpoint: CheckpointManifest
    public var segments: [Segment]
}

/// Online backups served on the operations port (DESIGN.md §2b "Backup and
/// restore"). A backup pins its checkpoint until it is released, or until
/// it has been idle for `idleLimit`.
final class BackupService: @unchecked Sendable {
    private let checkpointer: Checkpointer
    private let driver: ReplicaDriver
    private let clusterName: String
    private let nodeID: NodeID
    private let lock = NSLock()
    private var active: [String: Active] = [:]
    static let idleLimit: Duration = .seconds(3600)
    /// Backups in progress at once (each pins a checkpoint and its disk space).
    static let maxConcurrent = 4

    private struct Active {
        var checkpointOp: OpNumber
        var segments: [String: (path: String, bytes: Int)]
        var lastUsed: ContinuousClock.Instant
    }

    init(checkpointer: Checkpointer, driver: ReplicaDriver, clusterName: String, nodeID: NodeID) {
        self.checkpointer = checkpointer
        self.driver = driver
        self.clusterName = clusterName
        self.nodeID = nodeID
    }

    /// Takes the checkpoint and plans the backup.
    /// - Throws: `APIError` (`diverged`, `operationFailed`) saying why.
    func start() async throws -> BackupPlan {
        releaseIdle()
        let running = lock.withLock { active.count }
        guard running < Self.maxConcurrent else {
            throw APIError(.overloaded, "\(running) backups are in progress on this node (at most \(Self.maxConcurrent)); finish or release one first")
        }
        if driver.snapshot.divergence != nil {
            throw APIError(.diverged, "this node's committed log contradicts the cluster's; back up another member")
        }
        let checkpointer = self.checkpointer
        let manifest: CheckpointManifest
        do {
            manifest = try await withCheckedThrowingContinuation { continuation in
                DispatchQueue.global().async { continuation.resume(with: Result { try checkpointer.takePinned() }) }
            }
        } catch {
            throw APIError(.operationFailed, "cannot take a checkpoint for the backup: \(error)")
        }
        guard manifest.op > 0 else {
            checkpointer.unpin(manifest.op)
            throw APIError(.operationFailed, "nothing to back up yet: no committed op has been applied")
        }
        let found: ([(path: String, bytes: Int)], DurableRecord)
        do {
            found = try await driver.inspect { journal, record in (try journal.extent(through: manifest.op), record) }
        } catch {
            checkpointer.unpin(manifest.op)
            throw APIError(.operationFailed, "cannot plan the log part of the backup: \(error)")
        }
        let id = UUID().uuidString.lowercased()
        let segments = found.0.map { (name: ($0.path as NSString).lastPathComponent, path: $0.path, bytes: $0.bytes) }
        lock.withLock {
            active[id] = Active(checkpointOp: manifest.op,
                                segments: Dictionary(uniqueKeysWithValues: segments.map { ($0.name, ($0.path, $0.bytes)) }),
                                lastUsed: .now)
        }
        let record = found.1
        return BackupPlan(backupID: id, clusterName: clusterName, nodeID: nodeID, epoch: record.epoch, members: record.members,
                          view: record.view, logView: record.logView, checkpoint: manifest,
                          segments: segments.map { .init(name: $0.name, bytes: $0.bytes) })
    }

    /// The file to send: the checkpoint, or a segment's prefix.
    /// - Throws: `APIError.notFound` for an unknown backup or file.
    func file(backupID: String, log name: String?) throws -> (path: String, bytes: Int) {
        releaseIdle()
        return try lock.withLock {
            guard var backup = active[backupID] else {
                throw APIError(.notFound, "no backup \(backupID) in progress on this node (finished, or idle for over an hour)")
            }
            backup.lastUsed = .now
            active[backupID] = backup
            guard let name else {
                let path = checkpointer.store.sqlitePath(op: backup.checkpointOp)
                do { return (path, try checkpointer.store.manifest(op: backup.checkpointOp).bytes) } catch {
                    throw APIError(.operationFailed, "the backup's checkpoint cannot be served: \(error)")
                }
            }
            guard let segment = backup.segments[name] else {
                throw APIError(.notFound, "backup \(backupID) has no log file \(name)")
            }
            return segment
        }
    }

    /// Releases a backup's checkpoint; false when there is no such backup.
    func finish(backupID: String) -> Bool {
        releaseIdle()
        guard let backup = lock.withLock({ active.removeValue(forKey: backupID) }) else { return false }
        checkpointer.unpin(backup.checkpointOp)
        return true
    }

    private func releaseIdle() {
        let idle = lock.withLock { () -> [Active] in
            let expired = active.filter { ContinuousClock.now - $0.value.lastUsed > Self.idleLimit }
            for key in expired.keys { active[key] = nil }
            return Array(expired.values)
        }
        for backup in idle { checkpointer.unpin(backup.checkpointOp) }
    }

    /// Streams the first `bytes` bytes of `path` in 1 MiB pieces.
    static func stream(path: String, bytes: Int) -> Response {
        Response(status: .ok, headers: [.contentType: "application/octet-stream"],
                 body: ResponseBody(contentLength: bytes) { writer in
                     guard let handle = FileHandle(forReadingAtPath: path) else {
                         throw APIError(.operationFailed, "cannot open \(path)")
                     }
                     defer { try? handle.close() }
                     var remaining = bytes
                     while remaining > 0 {
                         let data = try handle.read(upToCount: min(remaining, 1 << 20)) ?? Data()
                         guard !data.isEmpty else { throw APIError(.operationFailed, "\(path) ended \(remaining) bytes early") }
                         try await writer.write(ByteBuffer(bytes: data))
                         remaining -= data.count
                     }
                     try await writer.finish(nil)
                 })
    }
}
