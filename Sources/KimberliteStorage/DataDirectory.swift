#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import KimberliteCore
import Logging
import Metrics

/// `data_dir`: creates `log/` and `projections/`, checks the directory is
/// writable, and holds an exclusive `flock` on `<data_dir>/LOCK` (with this
/// process's pid written in it) for as long as the object lives, so two
/// processes never open one directory. The kernel drops the lock when the
/// holder dies, so there is no stale-lock cleanup.
public final class DataDirectory {
    public let path: String
    public var logDirectory: String { path + "/log" }
    public var projectionsDirectory: String { path + "/projections" }
    public var superblockPath: String { path + "/superblock" }
    public var lockPath: String { path + "/LOCK" }

    private var lockFD: Int32 = -1

    /// Creates (if needed) and locks the data directory.
    /// - Throws: `StorageError.locked(lockFile:holderPID:)` if another process
    ///   (or another `DataDirectory` in this one) holds it;
    ///   `.notWritable(path:reason:)`, `.notADirectory(path:)` or `.io` naming the path.
    public init(path: String) throws {
        self.path = path
        do {
            try FileIO.makeDirectories(path)
        } catch StorageError.io(_, _, _, let code) {
            throw StorageError.notWritable(path: path, reason: "cannot create it: \(FileIO.errnoText(code))")
        }
        try DataDirectory.checkWritable(path)
        try lock()
        for directory in [logDirectory, projectionsDirectory] {
            try FileIO.makeDirectories(directory)
        }
    }

    deinit {
        unlock()
    }

    /// Releases the lock (also done on deinit and, by the kernel, on exit).
    public func unlock() {
        guard lockFD >= 0 else { return }
        _ = flock(lockFD, LOCK_UN)
        FileIO.closeFile(lockFD)
        lockFD = -1
    }

    /// Opens the journal in `log/`.
    /// - Parameter base: the superblock's log base (see `Journal.init`).
    public func openJournal(segmentSize: Int, syncMode: SyncMode, logger: Logger,
                            base: (op: OpNumber, checksum: Checksum) = (0, .zero),
                            metricsFactory: (any MetricsFactory)? = nil) throws -> Journal {
        try Journal(directory: logDirectory, segmentSize: segmentSize, syncMode: syncMode, logger: logger, base: base,
                    metricsFactory: metricsFactory)
    }

    /// The superblock at `<data_dir>/superblock`.
    public func openSuperblock() throws -> Superblock {
        try Superblock(path: superblockPath)
    }

    /// The pid recorded in a lock file, if it holds one.
    public static func recordedPID(lockFile: String) -> Int32? {
        guard let bytes = try? FileIO.readWholeFile(lockFile) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self).trimmingWhitespace()
        return Int32(text)
    }

    private static func checkWritable(_ path: String) throws {
        let probe = path + "/.kmb-write-probe-\(getpid())"
        let fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let code = errno
            if FileIO.isDiskFull(code) { throw StorageError.diskFull(path: path) }
            throw StorageError.notWritable(path: path, reason: "cannot create a file in it: \(FileIO.errnoText(code))")
        }
        var byte: UInt8 = 0
        let written = write(fd, &byte, 1)
        let code = errno
        FileIO.closeFile(fd)
        unlink(probe)
        if written != 1 {
            if FileIO.isDiskFull(code) { throw StorageError.diskFull(path: path) }
            throw StorageError.notWritable(path: path, reason: "cannot write a file in it: \(FileIO.errnoText(code))")
        }
    }

    private func lock() throws {
        let fd = try FileIO.openFile(lockPath, flags: O_RDWR | O_CREAT)
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            if code == EINTR { continue }
            FileIO.closeFile(fd)
            if code == EWOULDBLOCK || code == EAGAIN {
                throw StorageError.locked(lockFile: lockPath, holderPID: DataDirectory.recordedPID(lockFile: lockPath))
            }
            throw FileIO.failure("flock", lockPath, errno: code)
        }
        do {
            try FileIO.truncate(fd, to: 0, path: lockPath)
            try FileIO.write(fd, Array("\(getpid())\n".utf8), at: 0, path: lockPath)
        } catch {
            FileIO.closeFile(fd)
            throw error
        }
        lockFD = fd
    }
}

extension String {
    func trimmingWhitespace() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" || $0 == "\0" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}
