import Foundation
import Logging
import Testing
@testable import KimberliteServer

/// Reads a whole file as text ("" when missing).
private func contents(_ path: String) -> String {
    (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
}

private func lines(_ path: String) -> [String] {
    contents(path).split(separator: "\n").map(String.init)
}

/// A logger writing to a file-only sink, with the given filter and format.
private func makeLogger(_ label: String, sink: LogSink, filter: LogFilter = LogFilter(defaultLevel: .trace),
                        format: LogFormat = .text) -> Logger {
    var log = ServerConfig.Log()
    log.level = filter
    log.format = format
    return Logger(label: label, factory: KimberliteLogging.makeFactory(config: log, sink: sink))
}

@Suite("Logging")
struct LoggingTests {
    @Test func textLineFormat() {
        let line = LogLineFormatter.text(
            millisecondsSinceEpoch: 1_714_564_800_123, level: .warning, label: "kimberlite.query",
            message: "query_duration_ms 153.2",
            metadata: ["sql": "SELECT * FROM t", "op": .stringConvertible(12345), "node_id": "1",
                       "quote": "say \"hi\"", "empty": ""])
        #expect(line == "2024-05-01T12:00:00.123Z WARN query_duration_ms 153.2 empty=\"\" label=kimberlite.query node_id=1 op=12345 quote=\"say \\\"hi\\\"\" sql=\"SELECT * FROM t\"\n")
        let fields = line.split(separator: " ")
        #expect(fields[3] == "153.2")
    }

    @Test func timestampsAreRFC3339UTCWithMilliseconds() {
        #expect(LogLineFormatter.timestamp(millisecondsSinceEpoch: 0) == "1970-01-01T00:00:00.000Z")
        #expect(LogLineFormatter.timestamp(millisecondsSinceEpoch: 951_782_400_007) == "2000-02-29T00:00:00.007Z")
        #expect(LogLineFormatter.timestamp(millisecondsSinceEpoch: -1) == "1969-12-31T23:59:59.999Z")
        let now = LogLineFormatter.timestamp(millisecondsSinceEpoch: LogLineFormatter.nowMilliseconds())
        #expect(now.wholeMatch(of: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z/) != nil)
    }

    @Test func multilineMessagesStayOnOneLine() {
        let line = LogLineFormatter.text(millisecondsSinceEpoch: 0, level: .error, label: "kimberlite",
                                         message: "Checksum mismatch\nat offset 4", metadata: ["detail": "a\nb"])
        #expect(line == "1970-01-01T00:00:00.000Z ERROR Checksum mismatch\\nat offset 4 detail=\"a\\nb\" label=kimberlite\n")
    }

    @Test func slowQueryLinesSortByTheFourthField() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.file("server.log")
        let sink = try LogSink(filePath: path, standardError: false)
        let logger = makeLogger("kimberlite.query", sink: sink)
        let durations = [153.2, 1200.0, 99.5, 7.25, 431.0, 1000.5]
        logger.info("listening", metadata: ["address": "127.0.0.1:7000"])
        for (index, duration) in durations.enumerated() {
            logger.warning("query_duration_ms \(duration)",
                           metadata: ["sql": "SELECT * FROM patients WHERE id = ?", "op": "\(index)", "node_id": "1"])
        }

        // The runbook: grep "query_duration_ms" server.log | sort -k4 -n
        let grep = lines(path).filter { $0.contains("query_duration_ms") }
        let input = dir.file("grepped.log")
        try (grep.joined(separator: "\n") + "\n").write(toFile: input, atomically: true, encoding: .utf8)
        let sort = Process()
        sort.executableURL = URL(fileURLWithPath: "/usr/bin/sort")
        sort.arguments = ["-k4", "-n", input]
        sort.environment = ["LC_ALL": "C", "PATH": "/usr/bin:/bin"]
        let pipe = Pipe()
        sort.standardOutput = pipe
        try sort.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        sort.waitUntilExit()
        #expect(sort.terminationStatus == 0)
        let sorted = String(decoding: output, as: UTF8.self).split(separator: "\n")
            .map { Double($0.split(separator: " ")[3])! }
        #expect(sorted == durations.sorted())
    }

    @Test func jsonLinesAreValidJSON() throws {
        let line = LogLineFormatter.json(
            millisecondsSinceEpoch: 1_714_564_800_123, level: .info, label: "kimberlite.vsr",
            message: "view change \"started\"\n",
            metadata: ["view": .stringConvertible(5), "skew": .stringConvertible(0.5), "leader": .stringConvertible(true),
                       "peer": "2", "level": "shadow", "peers": .array(["1", "2"]), "nested": .dictionary(["a": "b"])])
        #expect(line.hasSuffix("}\n") && line.filter { $0 == "\n" }.count == 1)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["ts"] as? String == "2024-05-01T12:00:00.123Z")
        #expect(object["level"] as? String == "info")
        #expect(object["msg"] as? String == "view change \"started\"\n")
        #expect(object["label"] as? String == "kimberlite.vsr")
        #expect(object["view"] as? Int == 5)
        #expect(object["skew"] as? Double == 0.5)
        #expect(object["leader"] as? Bool == true)
        #expect(object["peer"] as? String == "2")
        #expect(object["level_"] as? String == "shadow")
        #expect(object["peers"] as? [String] == ["1", "2"])
        #expect((object["nested"] as? [String: String])?["a"] == "b")
    }

    @Test func jsonHandlerWritesOneObjectPerLine() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.file("server.log")
        let sink = try LogSink(filePath: path, standardError: false)
        var logger = makeLogger("kimberlite.storage", sink: sink, format: .json)
        logger[metadataKey: "node_id"] = "3"
        logger.error("Checksum mismatch", metadata: ["segment": "log/00000000000000000007.kmb"])
        logger.warning("slow fsync", metadata: ["fsync_duration_ms": "12.5"])
        let written = lines(path)
        #expect(written.count == 2)
        for line in written {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            #expect(object["node_id"] as? String == "3")
            #expect(object["label"] as? String == "kimberlite.storage")
        }
    }

    @Test func filterLongestPrefixWins() throws {
        let filter = try LogFilter(parsing: "kimberlite=debug,kimberlite.vsr=trace,kimberlite.vsr.journal=error", defaultLevel: .warn)
        #expect(filter.level(forLabel: "kimberlite") == .debug)
        #expect(filter.level(forLabel: "kimberlite.storage") == .debug)
        #expect(filter.level(forLabel: "kimberlite.vsr") == .trace)
        #expect(filter.level(forLabel: "kimberlite.vsr.view") == .trace)
        #expect(filter.level(forLabel: "kimberlite.vsr.journal") == .error)
        #expect(filter.level(forLabel: "kimberlitex") == .warn)
        #expect(filter.level(forLabel: "nio") == .warn)
        #expect(filter.description == "warn,kimberlite=debug,kimberlite.vsr=trace,kimberlite.vsr.journal=error")

        #expect(try LogFilter(parsing: "debug", defaultLevel: .info) == LogFilter(defaultLevel: .debug))
        #expect(try LogFilter(parsing: "kimberlite::vsr=trace, info", defaultLevel: .error).description == "info,kimberlite.vsr=trace")
        #expect(try LogFilter(parsing: "WARNING", defaultLevel: .info).defaultLevel == .warn)
        #expect(try LogFilter(parsing: "kimberlite=info,kimberlite=error", defaultLevel: .info).description == "info,kimberlite=error")
        for bad in ["", " , ", "loud", "kimberlite=", "=debug", "kimberlite=off", "kimber lite=info", "kimberlite.=info"] {
            #expect(throws: LogFilterError.self, "\(bad)") { try LogFilter(parsing: bad, defaultLevel: .info) }
        }
    }

    @Test func handlersFilterByLabel() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.file("server.log")
        let sink = try LogSink(filePath: path, standardError: false)
        let filter = try LogFilter(parsing: "kimberlite=info,kimberlite.vsr=trace", defaultLevel: .error)
        let vsr = makeLogger("kimberlite.vsr", sink: sink, filter: filter)
        let storage = makeLogger("kimberlite.storage", sink: sink, filter: filter)
        let other = makeLogger("hummingbird", sink: sink, filter: filter)
        #expect(vsr.logLevel == .trace && storage.logLevel == .info && other.logLevel == .error)
        vsr.trace("election timeout")
        storage.debug("segment opened")
        storage.info("Recovering")
        other.warning("ignored")
        other.error("No leader elected")
        // Drop the timestamp and level, keep the message up to the fields.
        let messages = lines(path).map { line -> String in
            let rest = line.split(separator: " ", maxSplits: 2)[2]
            return String(rest[..<(rest.range(of: " label=")?.lowerBound ?? rest.endIndex)])
        }
        #expect(messages == ["election timeout", "Recovering", "No leader elected"])
    }

    @Test func reopenFollowsARenamedFile() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.file("logs/nested/server.log")   // parent directories are created
        let sink = try LogSink(filePath: path, standardError: false)
        let logger = makeLogger("kimberlite", sink: sink)
        logger.info("first")
        let rotated = path + ".1"
        try FileManager.default.moveItem(atPath: path, toPath: rotated)
        logger.info("second")                           // still the open file, now rotated
        try sink.reopen()
        logger.info("third")
        #expect(lines(rotated).map { $0.split(separator: " ")[2] } == ["first", "second"])
        #expect(lines(path).map { $0.split(separator: " ")[2] } == ["third"])
    }

    @Test func reopenFailureKeepsTheOldFile() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.file("server.log")
        let sink = try LogSink(filePath: path, standardError: false)
        try FileManager.default.moveItem(atPath: path, toPath: path + ".1")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)  // path now unopenable
        #expect(throws: LogFileError.self) { try sink.reopen() }
        sink.write("still logging\n")
        #expect(contents(path + ".1") == "still logging\n")
    }

    @Test func unopenableLogFileIsAnError() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let blocker = try dir.write("plainfile", "x")
        #expect(throws: LogFileError.self) { try LogSink(filePath: blocker + "/server.log", standardError: false) }
    }

    @Test func sighupReopensTheFile() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.file("server.log")
        let sink = try LogSink(filePath: path, standardError: false)
        #expect(sink.reopenOnSIGHUP())
        #expect(sink.reopenOnSIGHUP())                  // a second call is harmless
        sink.write("before\n")
        try FileManager.default.moveItem(atPath: path, toPath: path + ".1")
        kill(getpid(), SIGHUP)
        // Poll until the handler has recreated the file (bounded by a deadline).
        let deadline = Date().addingTimeInterval(10)
        while !FileManager.default.fileExists(atPath: path), Date() < deadline {
            usleep(2_000)
        }
        #expect(FileManager.default.fileExists(atPath: path))
        sink.write("after\n")
        #expect(contents(path) == "after\n")
        #expect(contents(path + ".1") == "before\n")
    }

    @Test func concurrentWritesStayWholeLines() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.file("server.log")
        let sink = try LogSink(filePath: path, standardError: false)
        let writers = 8, perWriter = 250
        await withTaskGroup(of: Void.self) { group in
            for writer in 0..<writers {
                group.addTask {
                    let logger = makeLogger("kimberlite.w\(writer)", sink: sink)
                    for index in 0..<perWriter {
                        logger.info("query_duration_ms \(index)", metadata: ["writer": "\(writer)", "pad": "\(String(repeating: "x", count: 200))"])
                    }
                }
            }
        }
        let written = lines(path)
        #expect(written.count == writers * perWriter)
        let pattern = /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z INFO query_duration_ms \d+ label=kimberlite\.w\d pad=x{200} writer=\d/
        #expect(written.allSatisfy { $0.wholeMatch(of: pattern) != nil })
    }

    @Test func levelNames() {
        #expect(LogLevel(name: "warn")?.loggerLevel == .warning)
        #expect(LogLevel(name: "Error") == .error)
        #expect(LogLevel(name: "off") == nil)
        #expect(LogLevel.trace < LogLevel.error)
    }
}
