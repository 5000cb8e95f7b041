#if canImport(CSystemd)
import CSystemd
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes log records to journald through libsystemd's native protocol
/// (`sd_journal_sendv`), one datagram per record, so every field
/// (`MESSAGE`, `PRIORITY`, `KMB_NODE_ID`, …) is indexed and values may hold
/// newlines. Built without libsystemd (macOS), `isAvailable` is false.
public enum SystemdJournal {
    /// Whether this build can talk to journald.
    public static var isAvailable: Bool {
        #if canImport(CSystemd)
        return true
        #else
        return false
        #endif
    }

    /// Whether systemd connected this process's stderr to the journal: the
    /// `JOURNAL_STREAM` variable holds `device:inode` of that stream, and it
    /// names our stderr only when fd 2 still is that stream (a shell that
    /// inherited the variable but redirected stderr does not match).
    /// - Parameter environment: the process environment.
    public static func stderrIsJournalStream(environment: [String: String]) -> Bool {
        guard let value = environment["JOURNAL_STREAM"], let expected = parseJournalStream(value) else { return false }
        var info = stat()
        guard fstat(STDERR_FILENO, &info) == 0 else { return false }
        return UInt64(info.st_dev) == expected.device && UInt64(info.st_ino) == expected.inode
    }

    /// Parses `JOURNAL_STREAM` (`"<device>:<inode>"`, both decimal); nil when malformed.
    public static func parseJournalStream(_ value: String) -> (device: UInt64, inode: UInt64)? {
        let parts = value.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return nil }
        return (device, inode)
    }

    /// Sends one record. Returns false when journald refused it or is not
    /// reachable (the caller decides whether to fall back); never throws,
    /// because logging never stops the server.
    @discardableResult
    public static func send(_ fields: [(name: String, value: String)]) -> Bool {
        #if canImport(CSystemd)
        // All fields in one buffer; each iovec points at its own slice.
        var bytes: [UInt8] = []
        var ranges: [Range<Int>] = []
        ranges.reserveCapacity(fields.count)
        for field in fields {
            let start = bytes.count
            bytes.append(contentsOf: field.name.utf8)
            bytes.append(UInt8(ascii: "="))
            bytes.append(contentsOf: field.value.utf8)
            ranges.append(start..<bytes.count)
        }
        return bytes.withUnsafeMutableBytes { buffer -> Bool in
            guard let base = buffer.baseAddress else { return false }
            let vectors = ranges.map { iovec(iov_base: base + $0.lowerBound, iov_len: $0.count) }
            return vectors.withUnsafeBufferPointer { sd_journal_sendv($0.baseAddress, Int32($0.count)) } == 0
        }
        #else
        return false
        #endif
    }
}
