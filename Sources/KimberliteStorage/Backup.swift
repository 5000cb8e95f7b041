#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import Foundation
import KimberliteCore
import Logging

/// One file of a backup, relative to the backup directory.
public struct BackupFile: Codable, Equatable, Sendable {
    /// `checkpoint/<op>.sqlite` or `log/<first op>.kmb`.
    public var path: String
    public var bytes: Int
    /// SHA-256 of the file (lower-case hex).
    public var sha256: String

    public init(path: String, bytes: Int, sha256: String) {
        self.path = path; self.bytes = bytes; self.sha256 = sha256
    }
}

/// `<backup>/backup.manifest` (`ChecksummedJSON`, magic `KMBBKUP1`): what an
/// online backup holds (DESIGN.md §2b "Backup and restore"): a checkpoint of
/// the projection at `op`, the log segments from op 1 through `op` (cut
/// exactly after it), and the membership they belong to.
public struct BackupManifest: Codable, Equatable, Sendable {
    public var format: Int
    public var clusterName: String
    /// The node the backup was taken from.
    public var nodeID: NodeID
    public var epoch: UInt64
    public var members: [NodeID]
    /// The source node's view and log view when the backup was taken.
    public var view: ViewNumber
    public var logView: ViewNumber
    /// Everything through this op, all of it committed.
    public var op: OpNumber
    /// The checksum of entry `op` (lower-case hex).
    public var anchor: String
    public var createdAtMs: Int64
    public var checkpoint: BackupFile
    public var segments: [BackupFile]

    public init(clusterName: String, nodeID: NodeID, epoch: UInt64, members: [NodeID], view: ViewNumber, logView: ViewNumber,
                op: OpNumber, anchor: String, createdAtMs: Int64, checkpoint: BackupFile, segments: [BackupFile]) {
        self.format = 1
        self.clusterName = clusterName; self.nodeID = nodeID; self.epoch = epoch; self.members = members
        self.view = view; self.logView = logView; self.op = op; self.anchor = anchor; self.createdAtMs = createdAtMs
        self.checkpoint = checkpoint; self.segments = segments
    }

    public var files: [BackupFile] { [checkpoint] + segments }
    public var totalBytes: Int { files.reduce(0) { $0 + $1.bytes } }
}

/// Backup directories: writing the manifest, checking them whole, and
/// seeding a data directory from one (`kimberlite-admin restore`).
public enum Backup {
    static let magic = "KMBBKUP1"
    public static let manifestName = "backup.manifest"

    /// True when `directory` holds a backup manifest (it is a backup, not a data directory).
    public static func isBackup(_ directory: String) -> Bool {
        FileIO.kind(directory + "/" + manifestName) == .file
    }

    /// Writes `<directory>/backup.manifest` durably.
    /// - Throws: `StorageError` naming the file.
    public static func writeManifest(_ manifest: BackupManifest, in directory: String) throws {
        // The files and their names are durable before the manifest calls them a backup.
        for subdirectory in ["log", "checkpoint"] where FileIO.kind(directory + "/" + subdirectory) == .directory {
            try FileIO.syncDirectory(directory + "/" + subdirectory)
        }
        try FileIO.syncDirectory(directory)
        try ChecksummedJSON.write(manifest, magic: magic, to: directory + "/" + manifestName)
        try FileIO.syncDirectory(FileIO.parentDirectory(directory))
    }

    /// Reads and checks the manifest.
    /// - Throws: `StorageError.invalidArgument` saying what is wrong with it.
    public static func readManifest(in directory: String) throws -> BackupManifest {
        let path = directory + "/" + manifestName
        switch ChecksummedJSON.read(BackupManifest.self, magic: magic, from: path) {
        case .success(let manifest):
            guard manifest.format == 1 else { throw StorageError.invalidArgument("backup manifest \(path): unknown format \(manifest.format)") }
            return manifest
        case .failure(let failure):
            throw StorageError.invalidArgument("backup manifest \(path): \(failure.reason)")
        }
    }

    /// Problems found checking a backup directory: the manifest, every
    /// file's size and SHA-256, the checkpoint, and that the log runs from
    /// op 1 to `op` and ends on the checkpoint's anchor. Empty when whole.
    static func problems(in directory: String, scannedLastOp: OpNumber, lastChecksum: Checksum?) -> [VerifyProblem] {
        var problems: [VerifyProblem] = []
        func problem(_ kind: StorageProblemKind, _ file: String, _ detail: String) {
            problems.append(VerifyProblem(.error, kind, file: file, subject: "backup file \(file)", detail: detail))
        }
        let manifest: BackupManifest
        do { manifest = try readManifest(in: directory) } catch {
            problem("\(error)".contains("checksum mismatch") ? .checksumMismatch : .unreadable, manifestName, "\(error)")
            return problems
        }
        for file in manifest.files {
            let path = directory + "/" + file.path
            guard FileIO.kind(path) == .file else {
                problem(.unreadable, file.path, "missing (the manifest lists \(file.bytes) bytes)")
                continue
            }
            do {
                let digest = try CheckpointStore.sha256(file: path)
                if digest.bytes != file.bytes {
                    problem(.truncatedFrame, file.path, "\(digest.bytes) bytes, the manifest says \(file.bytes)")
                } else if digest.sha256 != file.sha256 {
                    problem(.checksumMismatch, file.path, "SHA-256 \(digest.sha256), the manifest says \(file.sha256)")
                }
            } catch {
                problem(.unreadable, file.path, "\(error)")
            }
        }
        if scannedLastOp != manifest.op {
            problem(.opGap, "log", "the log ends at op \(scannedLastOp), the backup is of op \(manifest.op)")
        } else if let lastChecksum, lastChecksum.description != manifest.anchor {
            problem(.hashChainBreak, "log", "entry \(manifest.op) has checksum \(lastChecksum), the backup's anchor is \(manifest.anchor)")
        }
        return problems
    }

    /// Why `restore` refused, before changing anything.
    public struct RestoreError: Error, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    /// Seeds the empty data directory `dataDir` from the backup in
    /// `directory`, as node `nodeID`.
    ///
    /// - `newCluster == false` (a member rejoining the cluster it was backed
    ///   up from): the directory is marked `recovering` up to the backup's
    ///   op, so the node takes no part in view changes until the current
    ///   primary has sent it everything it may once have acknowledged
    ///   (VRR §4.3).
    /// - `newCluster == true` (every member of a new cluster restored from
    ///   this backup): the node starts as a formed member at view 0 whose log
    ///   through the backup's op is committed.
    /// - Returns: the manifest.
    /// - Throws: `RestoreError` (backup damaged, directory not empty, node id
    ///   not a member) with nothing changed; `StorageError` (`.locked` when a
    ///   server holds `dataDir`) naming the file.
    @discardableResult
    public static func restore(from directory: String, into dataDir: String, nodeID: NodeID, newCluster: Bool,
                               clusterName: String? = nil) throws -> BackupManifest {
        let report = DataDirectoryVerifier.verify(dataDir: directory)
        guard report.ok else {
            throw RestoreError("the backup in \(directory) is damaged; nothing was changed:\n" + report.errors.map(\.message).joined(separator: "\n"))
        }
        let manifest = try readManifest(in: directory)
        // A one-node cluster has no peer to recover from: it always starts afresh.
        let newCluster = newCluster || manifest.members.count == 1
        if clusterName != nil && !newCluster {
            throw RestoreError("--cluster-name renames the cluster and needs --new-cluster; a node rejoining its cluster keeps the backup's name (\"\(manifest.clusterName)\"); nothing was changed")
        }
        guard manifest.members.contains(nodeID) else {
            throw RestoreError("node \(nodeID) is not a member of the backed-up cluster (members \(manifest.members.map(String.init).joined(separator: ", "))); nothing was changed")
        }
        switch FileIO.kind(dataDir) {
        case .missing: break
        case .directory:
            let names = try FileIO.list(dataDir)
            guard names.isEmpty else {
                throw RestoreError("\(dataDir) is not empty (\(names.prefix(3).joined(separator: ", "))\(names.count > 3 ? ", …" : "")); restore only into an empty or new directory; nothing was changed")
            }
        default:
            throw RestoreError("\(dataDir) exists and is not a directory; nothing was changed")
        }
        let data = try DataDirectory(path: dataDir)
        defer { data.unlock() }
        for file in manifest.segments {
            try copyFile(directory + "/" + file.path, to: data.path + "/" + file.path)
        }
        try FileIO.syncDirectory(data.logDirectory)
        // The copied log must open clean and end exactly at the backup's op.
        // A backup of a compacted log starts after op 1: its first entry's parent anchors it.
        let base = try Journal.firstEntryBase(directory: data.logDirectory)
        let journal = try data.openJournal(segmentSize: 64 << 20, syncMode: .fsync, logger: Logger(label: "kimberlite.restore"), base: base)
        guard journal.recovery.isClean, journal.lastOp == manifest.op, journal.lastChecksum.description == manifest.anchor else {
            throw RestoreError("the restored log in \(data.logDirectory) does not end at op \(manifest.op) with the backup's anchor (it ends at \(journal.lastOp)); remove \(dataDir) and try again")
        }
        journal.close()
        let source = CheckpointStore(directory: directory + "/checkpoint")
        let target = CheckpointStore(dataDir: data.path)
        try FileIO.makeDirectories(target.directory)
        let checkpoint = try source.copy(op: manifest.op, to: data.projectionsDirectory + "/projection.sqlite")
        try source.copy(op: manifest.op, to: target.sqlitePath(op: manifest.op))
        try target.writeManifest(checkpoint)

        var record = DurableRecord(commitNumber: manifest.op, epoch: manifest.epoch, members: manifest.members,
                                   formed: true, logStarted: true)
        if !newCluster {
            record.view = manifest.view
            record.logView = manifest.logView
            record.recovering = true
            record.recoveryTarget = manifest.op
        }
        var state = SuperblockState(clusterName: clusterName ?? manifest.clusterName, nodeID: nodeID, record: record)
        state.logBaseOp = base.op
        state.logBaseChecksum = base.checksum
        state.newestSegmentOp = manifest.segments.compactMap { SegmentFormat.firstOp(fromFileName: ($0.path as NSString).lastPathComponent) }.max() ?? 0
        try data.openSuperblock().write(state)
        return manifest
    }

    /// Copies a file durably (fsync before return).
    static func copyFile(_ source: String, to destination: String) throws {
        let output = try FileIO.openFile(destination, flags: O_WRONLY | O_CREAT | O_TRUNC)
        defer { FileIO.closeFile(output) }
        try FileIO.forEachChunk(of: source) { chunk, offset in try FileIO.write(output, chunk, at: offset, path: destination) }
        try FileIO.sync(output, path: destination)
    }
}
