#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import Crypto
import Foundation
import KimberliteCore

/// What a checkpoint holds, written next to its SQLite file as
/// `<op, 20 digits>.manifest` (DESIGN.md §2b "Checkpoints").
///
/// File format: `ChecksummedJSON` with magic `KMBCKPT1`. A manifest is written last, after its SQLite file is
/// fsynced, so a checkpoint without one is an unfinished copy.
public struct CheckpointManifest: Codable, Equatable, Sendable {
    public var format: Int
    /// The projection's applied op in the copy: it holds ops `1...op`.
    public var op: OpNumber
    /// Hash-chain anchor: the checksum of log entry `op` (lower-case hex),
    /// so a log that starts at `op + 1` can be chained onto the checkpoint.
    public var anchor: String
    /// Size of the SQLite file in bytes.
    public var bytes: Int
    /// SHA-256 of the SQLite file (lower-case hex).
    public var sha256: String
    /// When it was taken, milliseconds since the Unix epoch.
    public var createdAtMs: Int64

    public init(op: OpNumber, anchor: Checksum, bytes: Int, sha256: String, createdAtMs: Int64) {
        self.format = 1
        self.op = op
        self.anchor = anchor.description
        self.bytes = bytes
        self.sha256 = sha256
        self.createdAtMs = createdAtMs
    }
}

/// The checkpoints of one data directory, under
/// `<data_dir>/projections/checkpoints/`: consistent copies of the
/// projection at an op, each `<op>.sqlite` plus `<op>.manifest`.
///
/// Not thread-safe; one checkpointer owns the writing side. Reading
/// (`list`, `manifest`, `check`) may run alongside from another process
/// (`verify`), since a checkpoint is never modified once sealed.
public struct CheckpointStore: Sendable {
    /// `<data_dir>/projections/checkpoints`.
    public let directory: String

    static let magic = "KMBCKPT1"
    static let sqliteExtension = ".sqlite"
    static let manifestExtension = ".manifest"

    public init(directory: String) { self.directory = directory }

    /// The store of a data directory.
    public init(dataDir: String) { self.init(directory: dataDir + "/projections/checkpoints") }

    /// `<directory>/<op, 20 digits>.sqlite`.
    public func sqlitePath(op: OpNumber) -> String { directory + "/" + Self.baseName(op) + Self.sqliteExtension }
    /// `<directory>/<op, 20 digits>.manifest`.
    public func manifestPath(op: OpNumber) -> String { directory + "/" + Self.baseName(op) + Self.manifestExtension }

    static func baseName(_ op: OpNumber) -> String {
        let digits = String(op)
        return String(repeating: "0", count: max(0, 20 - digits.count)) + digits
    }

    /// Ops that have a manifest (sealed checkpoints), newest first. A
    /// missing directory is no checkpoints.
    /// - Throws: `StorageError.io` when the directory cannot be listed.
    public func ops() throws -> [OpNumber] {
        guard FileIO.kind(directory) == .directory else { return [] }
        return try FileIO.list(directory).compactMap { name -> OpNumber? in
            guard name.hasSuffix(Self.manifestExtension) else { return nil }
            return OpNumber(name.dropLast(Self.manifestExtension.count))
        }.sorted(by: >)
    }

    /// Reads and checks a manifest (its own checksum, format and op).
    /// - Throws: `StorageError.checkpointInvalid` naming the file and what is wrong.
    public func manifest(op: OpNumber) throws -> CheckpointManifest {
        let path = manifestPath(op: op)
        let manifest: CheckpointManifest
        switch ChecksummedJSON.read(CheckpointManifest.self, magic: Self.magic, from: path) {
        case .success(let value): manifest = value
        case .failure(let failure): throw StorageError.checkpointInvalid(path: path, reason: failure.reason)
        }
        guard manifest.format == 1 else {
            throw StorageError.checkpointInvalid(path: path, reason: "unknown manifest format \(manifest.format)")
        }
        guard manifest.op == op else {
            throw StorageError.checkpointInvalid(path: path, reason: "manifest names op \(manifest.op), its file name op \(op)")
        }
        return manifest
    }

    /// Whether checkpoint `op` belongs to `journal`'s history: its anchor is
    /// the checksum of the journal's entry at `op`. Nil when the journal does
    /// not hold `op` (or the entry cannot be read).
    /// - Throws: `StorageError.checkpointInvalid` when the manifest does not read.
    public func belongs(op: OpNumber, to journal: Journal) throws -> Bool? {
        let manifest = try manifest(op: op)
        if op == journal.base.op && op > 0 { return journal.base.checksum.description == manifest.anchor }
        guard let entry = try? journal.entries(from: op, through: op).first, entry.op == op else { return nil }
        return entry.checksum.description == manifest.anchor
    }

    /// Checks a checkpoint whole: manifest, file size and the SHA-256 of
    /// the SQLite file (reads the whole file).
    /// - Returns: the manifest.
    /// - Throws: `StorageError.checkpointInvalid` naming the file and what is wrong.
    @discardableResult
    public func check(op: OpNumber) throws -> CheckpointManifest {
        let manifest = try manifest(op: op)
        let path = sqlitePath(op: op)
        let digest: (sha256: String, bytes: Int)
        do { digest = try Self.sha256(file: path) } catch {
            throw StorageError.checkpointInvalid(path: path, reason: "cannot read it: \(error)")
        }
        guard digest.bytes == manifest.bytes else {
            throw StorageError.checkpointInvalid(path: path, reason: "\(digest.bytes) bytes, the manifest says \(manifest.bytes)")
        }
        guard digest.sha256 == manifest.sha256 else {
            throw StorageError.checkpointInvalid(path: path, reason: "checksum mismatch: SHA-256 \(digest.sha256), the manifest says \(manifest.sha256)")
        }
        return manifest
    }

    /// The newest checkpoint that checks whole, skipping (and reporting)
    /// damaged ones, so nothing is ever served from a corrupt file.
    public func newestValid(onInvalid: (StorageError) -> Void = { _ in }) -> CheckpointManifest? {
        for op in (try? ops()) ?? [] {
            do { return try check(op: op) } catch let error as StorageError { onInvalid(error) } catch {}
        }
        return nil
    }

    /// Seals a finished copy as the checkpoint at `op`: fsyncs it, moves it
    /// into place, then writes the manifest (temporary file, fsync, rename,
    /// directory fsync). An existing checkpoint at `op` is replaced.
    /// - Parameter temporaryFile: a complete SQLite file in `directory`.
    /// - Throws: `StorageError` (`.diskFull`, `.io`) naming the file; the
    ///   temporary file is removed on failure.
    public func seal(temporaryFile: String, op: OpNumber, anchor: Checksum, nowMs: Int64) throws -> CheckpointManifest {
        do {
            let fd = try FileIO.openFile(temporaryFile, flags: O_RDONLY)
            defer { FileIO.closeFile(fd) }
            try FileIO.sync(fd, path: temporaryFile)
        } catch {
            try? FileIO.remove(temporaryFile)
            throw error
        }
        let digest = try Self.sha256(file: temporaryFile)
        let manifest = CheckpointManifest(op: op, anchor: anchor, bytes: digest.bytes, sha256: digest.sha256, createdAtMs: nowMs)
        try place(synced: temporaryFile, as: manifest)
        return manifest
    }

    /// Moves a synced, checked SQLite file into place as checkpoint
    /// `manifest.op`, then writes its manifest (an existing one goes first,
    /// so a crash leaves an unfinished copy, never a wrong manifest).
    /// - Throws: `StorageError` naming the file.
    func place(synced file: String, as manifest: CheckpointManifest) throws {
        try? FileIO.remove(manifestPath(op: manifest.op))
        try FileIO.rename(file, sqlitePath(op: manifest.op))
        try FileIO.syncDirectory(directory)
        try writeManifest(manifest)
    }

    /// Writes `manifest` for a SQLite file already in place.
    /// - Throws: `StorageError` naming the file.
    public func writeManifest(_ manifest: CheckpointManifest) throws {
        try ChecksummedJSON.write(manifest, magic: Self.magic, to: manifestPath(op: manifest.op))
    }

    /// Deletes all but the `keeping` newest checkpoints, and leftovers of
    /// unfinished copies (files without a manifest, temporary files) except
    /// `activeTemporary`.
    /// - Returns: the ops removed.
    /// - Throws: `StorageError` when a file cannot be removed.
    /// Checkpoints in `protecting` (a backup being copied) are kept too, and
    /// so is quarantined evidence (`*.corrupt`).
    @discardableResult
    public func prune(keeping: Int, protecting: Set<OpNumber> = [], activeTemporary: String? = nil) throws -> [OpNumber] {
        let sealed = try ops()
        let kept = Set(sealed.prefix(keeping).map(Self.baseName)).union(protecting.map(Self.baseName))
        var removed: [OpNumber] = []
        for name in try FileIO.list(directory) {
            let path = directory + "/" + name
            if path == activeTemporary || name.hasPrefix(".") || name.hasSuffix(Self.quarantineSuffix)
                || name.hasSuffix(Journal.setAsideSuffix) { continue }
            let base = name.split(separator: ".").first.map(String.init) ?? name
            if kept.contains(base) && (name.hasSuffix(Self.sqliteExtension) || name.hasSuffix(Self.manifestExtension)) { continue }
            if name.hasSuffix(Self.manifestExtension), let op = OpNumber(base) { removed.append(op) }
            // The manifest goes first (sorted names put ".manifest" before ".sqlite"),
            // so a crash here leaves an unfinished copy, never a manifest without its file.
            try FileIO.remove(path)
        }
        if !removed.isEmpty { try FileIO.syncDirectory(directory) }
        return removed
    }

    public static let quarantineSuffix = ".corrupt"

    /// Moves a checkpoint aside (`<op>.manifest<suffix>`, `<op>.sqlite<suffix>`;
    /// `.corrupt` for a damaged one, `Journal.setAsideSuffix` for one from a
    /// later state of a restored directory), kept as evidence: it is no
    /// longer listed, used or pruned.
    /// - Throws: `StorageError` naming the file.
    public func quarantine(op: OpNumber, suffix: String = quarantineSuffix) throws {
        for path in [manifestPath(op: op), sqlitePath(op: op)] where FileIO.kind(path) == .file {
            try FileIO.rename(path, path + suffix)
        }
        try FileIO.syncDirectory(directory)
    }

    /// Copies checkpoint `op` to `destination` as a new file (temporary
    /// file, fsync, rename, directory fsync), checking the bytes copied
    /// against the manifest, so a damaged checkpoint is never installed.
    /// - Returns: the manifest.
    /// - Throws: `StorageError.checkpointInvalid` when the checkpoint fails
    ///   its checks (nothing is left at `destination`), other `StorageError`s
    ///   naming the file.
    @discardableResult
    public func copy(op: OpNumber, to destination: String) throws -> CheckpointManifest {
        let manifest = try manifest(op: op)
        let source = sqlitePath(op: op)
        let temporary = destination + ".tmp"
        let output = try FileIO.openFile(temporary, flags: O_WRONLY | O_CREAT | O_TRUNC)
        var hasher = SHA256()
        do {
            defer { FileIO.closeFile(output) }
            let bytes = try FileIO.forEachChunk(of: source) { chunk, offset in
                hasher.update(data: chunk)
                try FileIO.write(output, chunk, at: offset, path: temporary)
            }
            let digest = Self.hex(hasher.finalize())
            guard bytes == manifest.bytes, digest == manifest.sha256 else {
                throw StorageError.checkpointInvalid(path: source, reason: bytes != manifest.bytes
                    ? "\(bytes) bytes, the manifest says \(manifest.bytes)"
                    : "checksum mismatch: SHA-256 \(digest), the manifest says \(manifest.sha256)")
            }
            try FileIO.sync(output, path: temporary)
        } catch {
            try? FileIO.remove(temporary)
            // A source that cannot be read is a checkpoint not to use, not a failure of the node.
            if case StorageError.io(_, source, _, _) = error {
                throw StorageError.checkpointInvalid(path: source, reason: "cannot read it: \(error)")
            }
            throw error
        }
        try FileIO.rename(temporary, destination)
        try FileIO.syncDirectory(FileIO.parentDirectory(destination))
        return manifest
    }

    /// SHA-256 (hex) and size of a file, read in 1 MiB pieces.
    /// - Throws: `StorageError.io` naming the file.
    public static func sha256(file path: String) throws -> (sha256: String, bytes: Int) {
        var hasher = SHA256()
        let bytes = try FileIO.forEachChunk(of: path) { chunk, _ in hasher.update(data: chunk) }
        return (hex(hasher.finalize()), bytes)
    }

    static func hex(_ digest: some Sequence<UInt8>) -> String { ChecksummedJSON.hex(digest) }
}

extension Checksum {
    /// Parses 64 hex digits (either case); nil otherwise.
    public init?(hex: String) {
        let digits = Array(hex.utf8)
        guard digits.count == 64 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32)
        for index in stride(from: 0, to: 64, by: 2) {
            guard let byte = UInt8(String(decoding: digits[index..<index + 2], as: UTF8.self), radix: 16) else { return nil }
            bytes.append(byte)
        }
        self.init(bytes: bytes)
    }
}

extension Checksum: Codable {
    /// Decodes 64 hex digits (as `description` writes them).
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let checksum = Checksum(hex: text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a 64-digit hex checksum: \(text)")
        }
        self = checksum
    }

    /// Encodes as 64 lower-case hex digits.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
