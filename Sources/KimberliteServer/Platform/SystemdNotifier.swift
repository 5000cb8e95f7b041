#if canImport(CSystemd)
import CSystemd
#endif
import Foundation
import Synchronization

/// Talks to systemd's service manager over `NOTIFY_SOCKET` (`sd_notify`) for a
/// `Type=notify` unit: `READY=1` once the node has joined its view (or is
/// recovering with its API up), `STATUS=` lines as view, leader and commit
/// change, `WATCHDOG=1` from the replica loop at half of `WATCHDOG_USEC`,
/// `EXTEND_TIMEOUT_USEC=` while a recovery before readiness makes progress,
/// `STOPPING=1` on SIGTERM and `RELOADING=1`/`READY=1` around SIGHUP.
///
/// Everything is a no-op when `NOTIFY_SOCKET` is unset (not under systemd,
/// or in Docker), so the runtime calls it unconditionally.
public final class SystemdNotifier: Sendable {
    /// What the notifier has told systemd so far, and the pure decision of
    /// what to tell it on the next heartbeat (unit-tested without a socket).
    public struct Progress: Sendable, Equatable {
        public var ready = false
        public var stopping = false
        public var listenersUp = 0
        public var lastStatus = ""
        public var lastProgressOp: UInt64 = 0

        public init() {}

        /// The notification lines for one heartbeat: `STATUS=` when the text
        /// changed; `READY=1` once, when `listenersNeeded` listeners are up
        /// and the node is normal with a leader or recovering; before that,
        /// `EXTEND_TIMEOUT_USEC=` while the node recovers or its op grows.
        /// Nothing after `STOPPING=1`.
        public mutating func heartbeat(status: String, view: UInt64, leader: UInt8?, op: UInt64, commit: UInt64,
                                       recovering: Bool, listenersNeeded: Int, extendBy: Duration) -> [String] {
            guard !stopping else { return [] }
            var lines: [String] = []
            let text = SystemdNotifier.statusText(status: status, view: view, leader: leader, commit: commit)
            if text != lastStatus {
                lastStatus = text
                lines.append("STATUS=\(text)")
            }
            if !ready, listenersUp >= listenersNeeded, (status == "normal" && leader != nil) || recovering {
                ready = true
                lines.append("READY=1")
            } else if !ready, recovering || op > lastProgressOp {
                lines.append("EXTEND_TIMEOUT_USEC=\(extendBy.microseconds)")
            }
            lastProgressOp = max(lastProgressOp, op)
            return lines
        }
    }

    private struct State {
        var progress = Progress()
        var lastWatchdog: ContinuousClock.Instant?
    }

    /// The process-wide notifier, reading the environment once.
    public static let shared = SystemdNotifier(environment: ProcessInfo.processInfo.environment)

    /// Whether systemd asked for notifications (`NOTIFY_SOCKET` is set).
    public let isEnabled: Bool
    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC` when systemd
    /// enabled the watchdog for this process, else nil.
    public let watchdogInterval: Duration?
    /// How many listeners (client API, operations) must be up before `READY=1`.
    public let listenersNeeded: Int
    private let state = Mutex(State())

    /// - Parameters:
    ///   - environment: the process environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    ///   - listenersNeeded: listeners that report through `listenerStarted()` before READY.
    public init(environment: [String: String], listenersNeeded: Int = 2) {
        let socket = environment["NOTIFY_SOCKET"] ?? ""
        isEnabled = SystemdJournal.isAvailable && !socket.isEmpty
        self.listenersNeeded = listenersNeeded
        watchdogInterval = isEnabled ? SystemdNotifier.watchdogPeriod(environment: environment, pid: getpid()) : nil
    }

    /// Half of `WATCHDOG_USEC` when it is set for this process (`WATCHDOG_PID`
    /// unset or equal to `pid`, as `sd_watchdog_enabled` decides), else nil.
    public static func watchdogPeriod(environment: [String: String], pid: Int32) -> Duration? {
        guard let text = environment["WATCHDOG_USEC"], let usec = UInt64(text), usec > 0 else { return nil }
        if let owner = environment["WATCHDOG_PID"], Int32(owner) != pid { return nil }
        return .microseconds(Int64(usec / 2))
    }

    /// The `STATUS=` text: "normal · view 5 · leader 1 · commit 12345"
    /// ("leader none" while there is no leader).
    public static func statusText(status: String, view: UInt64, leader: UInt8?, commit: UInt64) -> String {
        "\(status) · view \(view) · leader \(leader.map(String.init) ?? "none") · commit \(commit)"
    }

    /// Sends one notification; false when systemd did not take it (or notifications are off).
    @discardableResult
    public func notify(_ text: String) -> Bool {
        guard isEnabled else { return false }
        #if canImport(CSystemd)
        return sd_notify(0, text) > 0
        #else
        return false
        #endif
    }

    /// A listener (client API or operations port) is accepting connections.
    public func listenerStarted() {
        guard isEnabled else { return }
        state.withLock { $0.progress.listenersUp += 1 }
    }

    /// Called on every heartbeat with the replica's state: updates `STATUS=`,
    /// sends `READY=1` once the node has joined its view with a leader (or is
    /// recovering with both listeners up), and before that extends the start
    /// timeout by `extendBy` while a recovery makes progress (its op grows).
    public func heartbeat(status: String, view: UInt64, leader: UInt8?, op: UInt64, commit: UInt64,
                          recovering: Bool, extendBy: Duration = .seconds(30)) {
        guard isEnabled else { return }
        let lines = state.withLock { state in
            state.progress.heartbeat(status: status, view: view, leader: leader, op: op, commit: commit,
                                     recovering: recovering, listenersNeeded: listenersNeeded, extendBy: extendBy)
        }
        if !lines.isEmpty { notify(lines.joined(separator: "\n")) }
    }

    /// Called by the loop that must not get stuck (the replica loop, after each
    /// batch): sends `WATCHDOG=1` when half of `WATCHDOG_USEC` has passed since
    /// the last one. A stuck loop stops calling it, and systemd kills the process.
    public func watchdogIfDue(now: ContinuousClock.Instant = .now) {
        guard let period = watchdogInterval else { return }
        let due = state.withLock { state -> Bool in
            if let last = state.lastWatchdog, now - last < period { return false }
            state.lastWatchdog = now
            return true
        }
        if due { notify("WATCHDOG=1") }
    }

    /// SIGTERM arrived: systemd shows the unit as deactivating.
    public func stopping() {
        guard isEnabled else { return }
        state.withLock { $0.progress.stopping = true }
        notify("STOPPING=1\nSTATUS=stopping: finishing in-flight requests and syncing the journal")
    }

    /// Wraps a reload (the SIGHUP log-file reopen) in `RELOADING=1` … `READY=1`.
    public func reloading<T>(_ body: () throws -> T) rethrows -> T {
        guard isEnabled else { return try body() }
        notify("RELOADING=1\nSTATUS=reopening the log file")
        defer {
            let status = state.withLock { $0.progress.lastStatus }
            notify("READY=1\nSTATUS=\(status)")
        }
        return try body()
    }
}

extension Duration {
    /// Whole microseconds, for `EXTEND_TIMEOUT_USEC`.
    public var microseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000 + attoseconds / 1_000_000_000_000
    }
}
