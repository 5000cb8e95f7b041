import Foundation
import Logging

/// Wires swift-log to kimberlite's handlers, once per process.
public enum KimberliteLogging {
    /// A handler factory for `LoggingSystem.bootstrap` or `Logger(label:factory:)`.
    /// - Parameter journal: send records to journald (see `usesJournal`).
    public static func makeFactory(config: ServerConfig.Log, sink: LogSink, journal: Bool = false)
        -> @Sendable (String) -> any LogHandler
    {
        let filter = config.level
        let format = config.format
        return { label in
            KimberliteLogHandler(label: label, format: format, filter: filter, sink: sink, journal: journal)
        }
    }

    /// Whether records go to journald: `[logging] format = "journal"`, or
    /// systemd connected stderr to the journal (`JOURNAL_STREAM` names fd 2),
    /// in a build with libsystemd.
    public static func usesJournal(config: ServerConfig.Log, environment: [String: String]) -> Bool {
        guard SystemdJournal.isAvailable else { return false }
        return config.format == .journal || SystemdJournal.stderrIsJournalStream(environment: environment)
    }

    /// Opens the log sink (stderr — or journald, see `usesJournal` — plus
    /// `[logging] file` when set), bootstraps swift-log with it and, when
    /// asked, reopens the file on SIGHUP (under systemd always, wrapped in
    /// `RELOADING=1`/`READY=1`, so `systemctl reload` never kills the node).
    /// Call it once, early in `main`; swift-log allows only one bootstrap per process.
    /// - Returns: the sink, for `reopen()`.
    /// - Throws: `ConfigError` (exit 78) naming `[logging] file` when it cannot be opened.
    @discardableResult
    public static func bootstrap(config: ServerConfig, reopenOnSIGHUP: Bool = true,
                                 environment: [String: String] = ProcessInfo.processInfo.environment,
                                 notifier: SystemdNotifier = .shared) throws(ConfigError) -> LogSink {
        let journal = usesJournal(config: config.logging, environment: environment)
        let sink: LogSink
        do {
            sink = try LogSink(filePath: config.logging.file, standardError: !journal)
        } catch {
            throw ConfigError(key: "[logging] file", source: nil,
                              description: "[logging] file = \(TOMLText.quote(error.path)) cannot be opened: \(error.reason)")
        }
        LoggingSystem.bootstrap(makeFactory(config: config.logging, sink: sink, journal: journal))
        if reopenOnSIGHUP, config.logging.file != nil || notifier.isEnabled {
            sink.reopenOnSIGHUP(notifier: notifier)
        }
        return sink
    }
}
