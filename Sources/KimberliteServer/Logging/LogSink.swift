import Dispatch
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why the log file could not be opened.
public struct LogFileError: Error, Sendable, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "\(path): cannot open log file: \(reason)" }
}

/// Where log lines go: stderr and, when configured, a log file opened for
/// append. Each line is written with one `write(2)` under a lock, so lines
/// from concurrent loggers never interleave. `reopen()` (and SIGHUP, after
/// `reopenOnSIGHUP()`) opens the path anew, for logrotate.
public final class LogSink: Sendable {
    private struct State {
        var fileDescriptor: Int32 = -1
        var signalSource: (any DispatchSourceSignal)?
    }

    /// The log file, if any.
    public let filePath: String?
    /// Whether lines also go to stderr.
    public let writesStandardError: Bool
    private let state: Mutex<State>

    /// Opens the sink, creating the log file and its parent directory if missing.
    /// - Parameters:
    ///   - filePath: `[logging] file`, or nil for stderr only.
    ///   - standardError: false in tests, to keep their output quiet.
    /// - Throws: `LogFileError` when the directory or file cannot be created or opened.
    public init(filePath: String?, standardError: Bool = true) throws(LogFileError) {
        self.filePath = filePath
        self.writesStandardError = standardError
        var initial = State()
        if let filePath {
            initial.fileDescriptor = try LogSink.open(path: filePath)
        }
        self.state = Mutex(initial)
    }

    deinit {
        state.withLock { state in
            state.signalSource?.cancel()
            if state.fileDescriptor >= 0 { posixClose(state.fileDescriptor) }
        }
    }

    /// Writes one complete line (it should end in "\n") to stderr and the file.
    /// Write errors are dropped: logging never stops the server.
    public func write(_ line: String) {
        var bytes = Array(line.utf8)
        if bytes.last != UInt8(ascii: "\n") { bytes.append(UInt8(ascii: "\n")) }
        state.withLock { state in
            if writesStandardError { LogSink.writeAll(bytes, to: STDERR_FILENO) }
            if state.fileDescriptor >= 0 { LogSink.writeAll(bytes, to: state.fileDescriptor) }
        }
    }

    /// Opens `filePath` again and switches to it, closing the old descriptor
    /// (after logrotate renamed the file). On failure the old file stays in use.
    /// A sink without a file does nothing.
    /// - Throws: `LogFileError` when the new file cannot be opened.
    public func reopen() throws(LogFileError) {
        guard let filePath else { return }
        let fresh = try LogSink.open(path: filePath)
        let old = state.withLock { state in
            let old = state.fileDescriptor
            state.fileDescriptor = fresh
            return old
        }
        if old >= 0 { posixClose(old) }
    }

    /// Reopens the log file on every SIGHUP, through a Dispatch signal source.
    /// SIGHUP's default action (terminate) is first replaced by "ignore", so a
    /// SIGHUP arriving before the source is registered is lost rather than
    /// fatal; on Linux, Dispatch then installs its own handler when it
    /// registers the source. Returns once the source is registered (or after
    /// 5 s), so a SIGHUP sent after it returns is handled. A failed reopen is
    /// reported on stderr and the old file stays in use. Calling it again does
    /// nothing.
    /// - Returns: false if registration was not confirmed within 5 s.
    @discardableResult
    public func reopenOnSIGHUP(notifier: SystemdNotifier? = nil) -> Bool {
        let registered = DispatchSemaphore(value: 0)
        let installed: Bool = state.withLock { state in
            guard state.signalSource == nil else { return false }
            signal(SIGHUP, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global(qos: .utility))
            source.setEventHandler { [weak self] in
                if let notifier {
                    notifier.reloading { self?.reopenAfterSignal() }
                } else {
                    self?.reopenAfterSignal()
                }
            }
            source.setRegistrationHandler { registered.signal() }
            source.resume()
            state.signalSource = source
            return true
        }
        guard installed else { return true }
        return registered.wait(timeout: .now() + .seconds(5)) == .success
    }

    private func reopenAfterSignal() {
        do {
            try reopen()
        } catch {
            let line = LogLineFormatter.text(
                millisecondsSinceEpoch: LogLineFormatter.nowMilliseconds(), level: .error,
                label: "kimberlite.logging", message: "log file reopen failed",
                metadata: ["error": .string(String(describing: error))])
            LogSink.writeAll(Array(line.utf8), to: STDERR_FILENO)
        }
    }

    // MARK: Helpers

    private static func open(path: String) throws(LogFileError) -> Int32 {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw LogFileError(path: path, reason: "cannot create directory \(directory): \(error.localizedDescription)")
            }
        }
        let fd = posixOpen(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw LogFileError(path: path, reason: String(cString: strerror(errno)))
        }
        return fd
    }

    /// Writes everything, retrying short writes and EINTR; gives up on any
    /// other error or after a bounded number of attempts.
    static func writeAll(_ bytes: [UInt8], to fd: Int32) {
        bytes.withUnsafeBytes { buffer in
            guard var base = buffer.baseAddress else { return }
            var remaining = buffer.count
            var attempts = 0
            while remaining > 0, attempts < 64 {
                attempts += 1
                let written = posixWrite(fd, base, remaining)
                if written < 0 {
                    if errno == EINTR { continue }
                    return
                }
                remaining -= written
                base += written
            }
        }
    }
}

// The libc calls under other names, because LogSink's own `write` and the
// module's `open`-like helpers would otherwise shadow them.
private func posixOpen(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 {
    #if canImport(Glibc)
    return Glibc.open(path, flags, mode)
    #else
    return Darwin.open(path, flags, mode)
    #endif
}

private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
    #if canImport(Glibc)
    return Glibc.write(fd, buffer, count)
    #else
    return Darwin.write(fd, buffer, count)
    #endif
}

private func posixClose(_ fd: Int32) {
    #if canImport(Glibc)
    _ = Glibc.close(fd)
    #else
    _ = Darwin.close(fd)
    #endif
}
