import Logging

/// Wires swift-log to kimberlite's handlers, once per process.
public enum KimberliteLogging {
    /// A handler factory for `LoggingSystem.bootstrap` or `Logger(label:factory:)`.
    public static func makeFactory(config: ServerConfig.Log, sink: LogSink)
        -> @Sendable (String) -> any LogHandler
    {
        let filter = config.level
        let format = config.format
        return { label in
            KimberliteLogHandler(label: label, format: format, filter: filter, sink: sink)
        }
    }

    /// Opens the log sink (stderr, plus `[logging] file` when set), bootstraps
    /// swift-log with it and, when asked, reopens the file on SIGHUP. Call it
    /// once, early in `main`; swift-log allows only one bootstrap per process.
    /// - Returns: the sink, for `reopen()`.
    /// - Throws: `ConfigError` (exit 78) naming `[logging] file` when it cannot be opened.
    @discardableResult
    public static func bootstrap(config: ServerConfig, reopenOnSIGHUP: Bool = true) throws(ConfigError) -> LogSink {
        let sink: LogSink
        do {
            sink = try LogSink(filePath: config.logging.file)
        } catch {
            throw ConfigError(key: "[logging] file", source: nil,
                              description: "[logging] file = \(TOMLText.quote(error.path)) cannot be opened: \(error.reason)")
        }
        LoggingSystem.bootstrap(makeFactory(config: config.logging, sink: sink))
        if reopenOnSIGHUP, config.logging.file != nil {
            sink.reopenOnSIGHUP()
        }
        return sink
    }
}
