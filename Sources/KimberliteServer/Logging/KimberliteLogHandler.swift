import Foundation
import Logging

/// The swift-log handler of kimberlite-server: formats each record as one
/// text or JSON line (see `LogLineFormatter`) and hands it to a `LogSink`.
/// With `journal` set, each record also goes to journald with native fields
/// (`JournalFields`) and the sink writes only the log file; a record journald
/// does not take is written to stderr instead. Its level comes from the
/// `LogFilter` for its label at creation.
public struct KimberliteLogHandler: LogHandler {
    public let label: String
    public let format: LogFormat
    public let sink: LogSink
    /// Whether records go to journald (`SystemdJournal`).
    public let journal: Bool
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?

    /// - Parameters:
    ///   - label: the logger label, like "kimberlite.vsr".
    ///   - filter: gives this label's level (longest matching prefix wins).
    ///   - journal: send records to journald; the sink should then not write stderr.
    public init(label: String, format: LogFormat, filter: LogFilter, sink: LogSink,
                journal: Bool = false, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.format = format
        self.sink = sink
        self.journal = journal
        self.logLevel = filter.level(forLabel: label).loggerLevel
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() {
            merged.merge(provided) { _, new in new }
        }
        if let eventMetadata = event.metadata {
            merged.merge(eventMetadata) { _, new in new }
        }
        if let error = event.error, merged["error"] == nil {
            merged["error"] = .string(String(describing: error))
        }
        let now = LogLineFormatter.nowMilliseconds()
        let message = event.message.description
        let line: String
        switch format {
        case .text, .journal:
            line = LogLineFormatter.text(millisecondsSinceEpoch: now, level: event.level, label: label,
                                         message: message, metadata: merged)
        case .json:
            line = LogLineFormatter.json(millisecondsSinceEpoch: now, level: event.level, label: label,
                                         message: message, metadata: merged)
        }
        if journal {
            let fields = JournalFields.fields(level: event.level, label: label, message: message, metadata: merged,
                                              file: event.file, function: event.function, line: event.line)
            if !SystemdJournal.send(fields) {
                LogSink.writeAll(Array(line.utf8), to: STDERR_FILENO)
            }
        }
        sink.write(line)
    }
}
