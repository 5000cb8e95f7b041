#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import Crypto
import KimberliteCore

/// A checkpoint arriving by state transfer (DESIGN.md §2b), written to
/// `<data_dir>/projections/incoming/<op>-<first 16 hex of its SHA-256>.partial`
/// in order, chunk after chunk. The file name ties the bytes to one
/// checkpoint, so a transfer cut by a kill of either side resumes from the
/// bytes already there (`receivedBytes`); a different checkpoint starts
/// afresh and removes the others. `finish` checks the whole file against
/// the offered size and SHA-256 before it becomes a checkpoint of this node.
///
/// Not thread-safe: one owner.
public final class IncomingCheckpoint {
    /// The checkpoint's op, anchor, size in bytes and SHA-256 (hex), as offered.
    public let op: OpNumber
    public let anchor: Checksum
    public let bytes: Int
    public let sha256: String
    /// The partial file.
    public let path: String
    /// Bytes written so far (the offset of the next chunk).
    public private(set) var receivedBytes: Int
    private let store: CheckpointStore
    private var fd: Int32
    private var hasher = SHA256()

    /// `<data_dir>/projections/incoming`.
    public static func directory(dataDir: String) -> String { dataDir + "/projections/incoming" }

    /// Opens (or resumes) the partial file of the checkpoint offered. Other
    /// partial files are removed; the bytes already in this one are hashed
    /// again, so `finish` checks the whole file.
    /// - Throws: `StorageError` naming the file; `.invalidArgument` for a malformed offer.
    public init(dataDir: String, op: OpNumber, anchor: Checksum, bytes: Int, sha256: String) throws {
        guard op > 0, bytes > 0, sha256.count == 64, sha256.allSatisfy(\.isHexDigit) else {
            throw StorageError.invalidArgument("malformed checkpoint offer: op \(op), \(bytes) bytes, SHA-256 \"\(sha256)\"")
        }
        self.op = op
        self.anchor = anchor
        self.bytes = bytes
        self.sha256 = sha256.lowercased()
        self.store = CheckpointStore(dataDir: dataDir)
        let directory = Self.directory(dataDir: dataDir)
        try FileIO.makeDirectories(directory)
        let name = "\(op)-\(self.sha256.prefix(16)).partial"
        path = directory + "/" + name
        for other in try FileIO.list(directory) where other != name { try FileIO.remove(directory + "/" + other) }
        let fd = try FileIO.openFile(path, flags: O_RDWR | O_CREAT)
        var kept = 0
        var hasher = SHA256()
        do {
            // Resume: hash what is there (at most the offered size).
            if let existing = FileIO.fileSize(path), existing > 0 {
                kept = min(existing, bytes)
                _ = try FileIO.forEachChunk(of: path) { chunk, offset in
                    guard offset < kept else { return }
                    hasher.update(data: chunk.prefix(kept - offset))
                }
                try FileIO.truncate(fd, to: kept, path: path)
            }
        } catch {
            FileIO.closeFile(fd)
            throw error
        }
        self.fd = fd
        self.hasher = hasher
        receivedBytes = kept
    }

    deinit { FileIO.closeFile(fd) }

    /// Writes the next chunk (it must start at `receivedBytes` and not pass `bytes`).
    /// - Throws: `.invalidArgument` for a chunk out of place; `.diskFull`, `.io` naming the file.
    public func append(_ chunk: [UInt8], at offset: Int) throws {
        guard offset == receivedBytes, offset + chunk.count <= bytes else {
            throw StorageError.invalidArgument("chunk at \(offset) (\(chunk.count) bytes) does not follow \(receivedBytes) of \(bytes)")
        }
        try FileIO.write(fd, chunk, at: offset, path: path)
        hasher.update(data: chunk)
        receivedBytes += chunk.count
    }

    /// Every byte is here: fsyncs the file, checks its SHA-256 against the
    /// offer and seals it as this node's checkpoint at `op`.
    /// - Returns: the manifest written.
    /// - Throws: `StorageError.checkpointInvalid` when the bytes do not match
    ///   the offer (the partial file is removed: the next offer starts afresh);
    ///   other `StorageError`s naming the file.
    public func finish(nowMs: Int64) throws -> CheckpointManifest {
        guard receivedBytes == bytes else {
            throw StorageError.invalidArgument("\(receivedBytes) of \(bytes) bytes received")
        }
        let digest = CheckpointStore.hex(hasher.finalize())
        guard digest == sha256 else {
            FileIO.closeFile(fd)
            fd = -1
            try? FileIO.remove(path)
            throw StorageError.checkpointInvalid(path: path, reason: "checksum mismatch: SHA-256 \(digest), the sender's manifest says \(sha256)")
        }
        try FileIO.sync(fd, path: path)
        FileIO.closeFile(fd)
        fd = -1
        try FileIO.makeDirectories(store.directory)
        let manifest = CheckpointManifest(op: op, anchor: anchor, bytes: bytes, sha256: sha256, createdAtMs: nowMs)
        try store.place(synced: path, as: manifest)
        return manifest
    }
}

extension CheckpointStore {
    /// Up to `length` bytes of checkpoint `op`'s SQLite file from `offset`
    /// (fewer at its end), for a state transfer.
    /// - Throws: `StorageError` naming the file (gone: pruned meanwhile).
    public func readChunk(op: OpNumber, offset: Int, length: Int) throws -> [UInt8] {
        let path = sqlitePath(op: op)
        let fd = try FileIO.openFile(path, flags: O_RDONLY)
        defer { FileIO.closeFile(fd) }
        let size = FileIO.fileSize(path) ?? 0
        guard offset <= size else { throw StorageError.invalidArgument("offset \(offset) is past the end of \(path) (\(size) bytes)") }
        return try FileIO.read(fd, count: min(length, size - offset), at: offset, path: path)
    }
}
