#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import KimberliteCore

/// Why a storage operation failed. Every case names the file (and the
/// offset, op or errno where one applies); `description` is one line.
public enum StorageError: Error, Equatable, Sendable, CustomStringConvertible {
    /// ENOSPC or EDQUOT while writing or syncing `path`. Nothing half
    /// written is left behind; the journal stays usable once space is freed.
    case diskFull(path: String)
    /// Another process holds the `flock` on `lockFile`; `holderPID` is the
    /// pid it recorded there (nil if unreadable). The server exits 75.
    case locked(lockFile: String, holderPID: Int32?)
    /// A system call failed: `operation` ("open", "write", "fsync"...) on
    /// `path`, at `offset` where it applies, with `errno`.
    case io(operation: String, path: String, offset: Int?, errno: Int32)
    /// The data directory (or a file in it) cannot be written.
    case notWritable(path: String, reason: String)
    /// A path that must be a directory is something else.
    case notADirectory(path: String)
    /// A journal frame failed verification when read back.
    case corrupt(path: String, offset: Int, op: OpNumber, reason: String)
    /// The journal found corruption at open and it has not been quarantined
    /// yet (`Journal.quarantineCorruption()`); appends and truncation wait.
    case corruptionPending(JournalCorruption)
    /// `append` was given entries that do not continue the log.
    case notContiguous(expectedOp: OpNumber, gotOp: OpNumber, reason: String)
    /// No copy of the superblock at `path` is valid.
    case superblockCorrupt(path: String, reason: String)
    /// A caller passed a value outside what the operation accepts.
    case invalidArgument(String)
    /// A projection checkpoint (or its manifest) at `path` fails its checks.
    case checkpointInvalid(path: String, reason: String)

    public var description: String {
        switch self {
        case .diskFull(let path):
            return "disk full: no space left on device writing \(path)"
        case .locked(let lockFile, let pid):
            let holder = pid.map { "process \($0)" } ?? "another process (pid unknown)"
            return "data directory is locked: \(lockFile) is held by \(holder)"
        case .io(let operation, let path, let offset, let code):
            let at = offset.map { " at offset \($0)" } ?? ""
            return "\(operation) \(path)\(at): \(FileIO.errnoText(code)) (errno \(code))"
        case .notWritable(let path, let reason):
            return "data directory \(path) is not writable: \(reason)"
        case .notADirectory(let path):
            return "\(path) exists and is not a directory"
        case .corrupt(let path, let offset, let op, let reason):
            return "segment \(path): \(reason) at offset \(offset) (op \(op))"
        case .corruptionPending(let corruption):
            return "journal has unquarantined corruption (\(corruption)); call quarantineCorruption() first"
        case .notContiguous(let expected, let got, let reason):
            return "append out of order: expected op \(expected), got op \(got): \(reason)"
        case .superblockCorrupt(let path, let reason):
            return "superblock \(path): no valid copy: \(reason)"
        case .invalidArgument(let what):
            return "invalid argument: \(what)"
        case .checkpointInvalid(let path, let reason):
            return "checkpoint \(path): \(reason)"
        }
    }
}

/// Thin wrappers over POSIX file calls: retry EINTR, loop short writes, and
/// turn failures into `StorageError`s that name the path.
enum FileIO {
    static func errnoText(_ code: Int32) -> String {
        guard let text = strerror(code) else { return "errno \(code)" }
        return String(cString: text)
    }

    static func isDiskFull(_ code: Int32) -> Bool { code == ENOSPC || code == EDQUOT }

    static func failure(_ operation: String, _ path: String, offset: Int? = nil, errno code: Int32) -> StorageError {
        isDiskFull(code) ? .diskFull(path: path) : .io(operation: operation, path: path, offset: offset, errno: code)
    }

    static func openFile(_ path: String, flags: Int32, mode: mode_t = 0o644) throws -> Int32 {
        while true {
            let fd = open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            let code = errno
            if code == EINTR { continue }
            throw failure("open", path, errno: code)
        }
    }

    static func closeFile(_ fd: Int32) {
        if fd >= 0 { _ = close(fd) }
    }

    static func write(_ fd: Int32, _ bytes: [UInt8], at offset: Int, path: String) throws {
        try bytes.withUnsafeBytes { raw in try write(fd, raw, at: offset, path: path) }
    }

    static func write(_ fd: Int32, _ raw: UnsafeRawBufferPointer, at offset: Int, path: String) throws {
        var done = 0
        while done < raw.count {
            let n = pwrite(fd, raw.baseAddress! + done, raw.count - done, off_t(offset + done))
            if n < 0 {
                let code = errno
                if code == EINTR { continue }
                throw failure("write", path, offset: offset + done, errno: code)
            }
            if n == 0 { throw StorageError.io(operation: "write", path: path, offset: offset + done, errno: EIO) }
            done += n
        }
    }

    /// Reads up to `count` bytes at `offset`; fewer only at end of file.
    static func read(_ fd: Int32, count: Int, at offset: Int, path: String) throws -> [UInt8] {
        guard count > 0 else { return [] }
        var buffer = [UInt8](repeating: 0, count: count)
        var done = 0
        try buffer.withUnsafeMutableBytes { raw in
            while done < count {
                let n = pread(fd, raw.baseAddress! + done, count - done, off_t(offset + done))
                if n < 0 {
                    let code = errno
                    if code == EINTR { continue }
                    throw failure("read", path, offset: offset + done, errno: code)
                }
                if n == 0 { break }
                done += n
            }
        }
        if done < count { buffer.removeLast(count - done) }
        return buffer
    }

    static func size(_ fd: Int32, path: String) throws -> Int {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw failure("stat", path, errno: errno) }
        return Int(info.st_size)
    }

    static func readWholeFile(_ path: String) throws -> [UInt8] {
        let fd = try openFile(path, flags: O_RDONLY)
        defer { closeFile(fd) }
        return try read(fd, count: try size(fd, path: path), at: 0, path: path)
    }

    static func sync(_ fd: Int32, path: String) throws {
        while fsync(fd) != 0 {
            let code = errno
            if code == EINTR { continue }
            throw failure("fsync", path, errno: code)
        }
    }

    static func syncDirectory(_ path: String) throws {
        let fd = try openFile(path, flags: O_RDONLY | O_DIRECTORY)
        defer { closeFile(fd) }
        try sync(fd, path: path)
    }

    static func truncate(_ fd: Int32, to length: Int, path: String) throws {
        while ftruncate(fd, off_t(length)) != 0 {
            let code = errno
            if code == EINTR { continue }
            throw failure("truncate", path, offset: length, errno: code)
        }
    }

    /// Entry names in `path`, without "." and "..", sorted.
    static func list(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw failure("opendir", path, errno: errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) { pointer in
                pointer.withMemoryRebound(to: CChar.self, capacity: MemoryLayout.size(ofValue: entry.pointee.d_name)) {
                    String(cString: $0)
                }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// What is at a path. `inaccessible` is a path that cannot be looked at
    /// (a parent directory this user may not search): it may well exist, so
    /// it is never taken for missing.
    enum Kind: Equatable { case missing, directory, file, other, inaccessible(errno: Int32) }

    static func kind(_ path: String) -> Kind {
        var info = stat()
        guard stat(path, &info) == 0 else {
            let code = errno
            return code == ENOENT || code == ENOTDIR ? .missing : .inaccessible(errno: code)
        }
        switch info.st_mode & S_IFMT {
        case S_IFDIR: return .directory
        case S_IFREG: return .file
        default: return .other
        }
    }

    static func fileSize(_ path: String) -> Int? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Int(info.st_size)
    }

    /// `mkdir -p`: creates `path` and missing parents; an existing directory is fine.
    static func makeDirectories(_ path: String) throws {
        switch kind(path) {
        case .directory: return
        case .missing: break
        case .file, .other: throw StorageError.notADirectory(path: path)
        case .inaccessible(let code):
            throw StorageError.notWritable(path: path, reason: "cannot look it up: \(errnoText(code)) (a parent directory is not searchable by this user)")
        }
        let parent = parentDirectory(path)
        if parent != path && !parent.isEmpty { try makeDirectories(parent) }
        if mkdir(path, 0o755) != 0 {
            let code = errno
            if code == EEXIST && kind(path) == .directory { return }
            if code == ENOTDIR { throw StorageError.notADirectory(path: parent) }
            throw failure("mkdir", path, errno: code)
        }
    }

    /// Reads `path` front to back in 1 MiB pieces, handing each to `body`
    /// with its offset. - Returns: the bytes read.
    /// - Throws: `StorageError` naming the file, or what `body` throws.
    @discardableResult
    static func forEachChunk(of path: String, _ body: (_ chunk: [UInt8], _ offset: Int) throws -> Void) throws -> Int {
        let fd = try openFile(path, flags: O_RDONLY)
        defer { closeFile(fd) }
        var offset = 0
        while true {
            let chunk = try read(fd, count: 1 << 20, at: offset, path: path)
            if chunk.isEmpty { return offset }
            try body(chunk, offset)
            offset += chunk.count
        }
    }

    /// Replaces (or creates) `path` with `bytes` so a crash leaves the old
    /// file or the new one, never a mix: temporary file, fsync, rename,
    /// directory fsync.
    /// - Throws: `StorageError` naming the file; the temporary file is removed.
    static func writeReplacing(_ bytes: [UInt8], to path: String) throws {
        let temporary = path + ".tmp"
        let fd = try openFile(temporary, flags: O_WRONLY | O_CREAT | O_TRUNC)
        do {
            defer { closeFile(fd) }
            try write(fd, bytes, at: 0, path: temporary)
            try sync(fd, path: temporary)
        } catch {
            try? remove(temporary)
            throw error
        }
        try rename(temporary, path)
        try syncDirectory(parentDirectory(path))
    }

    static func rename(_ from: String, _ to: String) throws {
        if Glibc_rename(from, to) != 0 { throw failure("rename", "\(from) -> \(to)", errno: errno) }
    }

    /// Removes a file; one that is already gone is fine.
    static func remove(_ path: String) throws {
        if unlink(path) != 0 {
            let code = errno
            if code == ENOENT { return }
            throw failure("unlink", path, errno: code)
        }
    }

    static func parentDirectory(_ path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed.removeLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return "." }
        if slash == trimmed.startIndex { return "/" }
        return String(trimmed[..<slash])
    }

    static func lastComponent(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }
}

/// `rename(2)`, named apart from `FileIO.rename` so the call is unambiguous.
@inline(__always)
private func Glibc_rename(_ from: String, _ to: String) -> Int32 {
    rename(from, to)
}
