#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import KimberliteCore
import Logging
import Metrics
@testable import KimberliteStorage

/// A fresh directory under /tmp, removed (recursively) on deinit.
final class TempDirectory {
    let path: String

    init(_ name: String = "kmb-storage") {
        var template = Array("/tmp/\(name)-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    deinit { removeTree(path) }

    func sub(_ name: String) -> String { path + "/" + name }
}

func removeTree(_ path: String) {
    switch FileIO.kind(path) {
    case .missing:
        return
    case .directory:
        for name in (try? FileIO.list(path)) ?? [] { removeTree(path + "/" + name) }
        rmdir(path)
    default:
        unlink(path)
    }
}

/// `count` chained entries starting at `op`, with deterministic payloads.
func makeEntries(count: Int, from op: OpNumber = 1, parent: Checksum = .zero,
                 payloadSize: Int = 24, view: ViewNumber = 1, salt: UInt8 = 0) -> [LogEntry] {
    var entries: [LogEntry] = []
    var parent = parent
    for index in 0..<count {
        let current = op + UInt64(index)
        let payload = (0..<payloadSize).map { UInt8(truncatingIfNeeded: Int(current) &* 31 &+ $0 &+ Int(salt)) }
        let session = index % 3 == 0 ? ClientSession(clientID: "client-\(current % 7)", requestNumber: current) : nil
        let entry = LogEntry(op: current, view: view, timestampMs: 1_700_000_000_000 + Int64(current),
                             session: session, payload: payload, parent: parent)
        entries.append(entry)
        parent = entry.checksum
    }
    return entries
}

func readFile(_ path: String) throws -> [UInt8] { try FileIO.readWholeFile(path) }

func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    let fd = try FileIO.openFile(path, flags: O_WRONLY | O_CREAT | O_TRUNC)
    defer { FileIO.closeFile(fd) }
    try FileIO.write(fd, bytes, at: 0, path: path)
}

/// Segment file names in a log directory, oldest first.
func segmentNames(_ directory: String) throws -> [String] {
    try FileIO.list(directory).filter { $0.hasSuffix(".kmb") }
}

/// Frame start offsets of a segment file, walking the length fields.
func frameOffsets(_ path: String) throws -> [Int] {
    let bytes = try readFile(path)
    var offsets: [Int] = []
    var offset = SegmentFormat.headerSize
    while offset + 8 <= bytes.count {
        offsets.append(offset)
        offset += 8 + Int(SegmentFormat.readU32(bytes, offset))
    }
    return offsets
}

/// Copies every regular file of `from` into `to` (created).
func copyDirectory(_ from: String, _ to: String) throws {
    try FileIO.makeDirectories(to)
    for name in try FileIO.list(from) where FileIO.kind(from + "/" + name) == .file {
        try writeFile(to + "/" + name, try readFile(from + "/" + name))
    }
}

// MARK: Logs

/// Collects log records so tests can check the lines operators grep for.
final class LogRecorder: @unchecked Sendable {
    struct Record {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }

    private let lock = NSLock()
    private var storage: [Record] = []

    var records: [Record] { lock.withLock { storage } }

    func append(_ record: Record) { lock.withLock { storage.append(record) } }

    var logger: Logger {
        let recorder = self
        var logger = Logger(label: "kimberlite.storage.test") { _ in RecordingHandler(recorder: recorder) }
        logger.logLevel = .trace
        return logger
    }

    func find(level: Logger.Level, prefix: String) -> Record? {
        records.first { $0.level == level && $0.message.hasPrefix(prefix) }
    }
}

struct RecordingHandler: LogHandler {
    let recorder: LogRecorder
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    var metadataProvider: Logger.MetadataProvider?

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields: [String: String] = [:]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
            fields[key] = "\(value)"
        }
        recorder.append(.init(level: event.level, message: event.message.description, metadata: fields))
    }
}

// MARK: Metrics

/// A metrics factory that keeps values, so tests can read `kmb_*` metrics
/// without bootstrapping the process-wide system.
final class RecordingMetrics: MetricsFactory, @unchecked Sendable {
    private let lock = NSLock()
    private var counters: [String: Int64] = [:]
    private var timers: [String: [Int64]] = [:]
    private var gauges: [String: Double] = [:]

    func counter(_ label: String) -> Int64 { lock.withLock { counters[label] ?? 0 } }
    func timerCount(_ label: String) -> Int { lock.withLock { timers[label]?.count ?? 0 } }
    func gauge(_ label: String) -> Double? { lock.withLock { gauges[label] } }

    fileprivate func add(_ label: String, _ amount: Int64) { lock.withLock { counters[label, default: 0] += amount } }
    fileprivate func time(_ label: String, _ ns: Int64) { lock.withLock { timers[label, default: []].append(ns) } }
    fileprivate func set(_ label: String, _ value: Double) { lock.withLock { gauges[label] = value } }

    final class CounterBox: CounterHandler, FloatingPointCounterHandler, @unchecked Sendable {
        let label: String
        weak var owner: RecordingMetrics?
        init(_ label: String, _ owner: RecordingMetrics) { self.label = label; self.owner = owner }
        func increment(by amount: Int64) { owner?.add(label, amount) }
        func increment(by amount: Double) { owner?.add(label, Int64(amount)) }
        func reset() {}
    }

    final class RecorderBox: RecorderHandler, TimerHandler, MeterHandler, @unchecked Sendable {
        let label: String
        weak var owner: RecordingMetrics?
        init(_ label: String, _ owner: RecordingMetrics) { self.label = label; self.owner = owner }
        func record(_ value: Int64) { owner?.set(label, Double(value)) }
        func record(_ value: Double) { owner?.set(label, value) }
        func recordNanoseconds(_ duration: Int64) { owner?.time(label, duration) }
        func set(_ value: Int64) { owner?.set(label, Double(value)) }
        func set(_ value: Double) { owner?.set(label, value) }
        func increment(by: Double) {}
        func decrement(by: Double) {}
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> CounterHandler { CounterBox(label, self) }
    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> FloatingPointCounterHandler { CounterBox(label, self) }
    func makeMeter(label: String, dimensions: [(String, String)]) -> MeterHandler { RecorderBox(label, self) }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> RecorderHandler { RecorderBox(label, self) }
    func makeTimer(label: String, dimensions: [(String, String)]) -> TimerHandler { RecorderBox(label, self) }
    func destroyCounter(_ handler: CounterHandler) {}
    func destroyMeter(_ handler: MeterHandler) {}
    func destroyFloatingPointCounter(_ handler: FloatingPointCounterHandler) {}
    func destroyRecorder(_ handler: RecorderHandler) {}
    func destroyTimer(_ handler: TimerHandler) {}
}

/// A quiet logger for tests that do not look at logs.
let quietLogger: Logger = {
    var logger = Logger(label: "kimberlite.storage.test") { _ in SwiftLogNoOpLogHandler() }
    logger.logLevel = .critical
    return logger
}()
