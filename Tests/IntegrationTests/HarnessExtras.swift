import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Testing

/// Helpers for the bad-input and corruption tests: one-shot processes with
/// captured output, raw HTTP bodies, graceful stops and segment surgery.
extension Cluster {
    /// What a finished one-shot process left behind.
    struct Outcome: CustomStringConvertible {
        let status: Int32
        /// True when it ended by `exit`, false when killed by a signal.
        let exited: Bool
        let stdout: String
        let stderr: String
        var description: String { "exit \(status)\(exited ? "" : " (signal)"); stdout: \(stdout); stderr: \(stderr)" }
    }

    static let adminBinary: String = {
        URL(fileURLWithPath: binary).deletingLastPathComponent().appendingPathComponent("kimberlite-admin").path
    }()

    /// The inherited environment without any `KMB_*`/`RUST_LOG`, so a
    /// developer's shell never leaks into a test.
    static var cleanEnvironment: [String: String] {
        ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("KMB_") && $0.key != "RUST_LOG" }
    }

    /// Runs `binary` to completion (killed after `timeout`, which then fails
    /// the wait with `TimedOut`) and returns its exit status and output.
    static func run(_ binary: String, _ arguments: [String], environment: [String: String] = [:],
                    timeout: Duration = .seconds(30)) async throws -> Outcome {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("kmb-run-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let outPath = scratch + "/stdout", errPath = scratch + "/stderr"
        FileManager.default.createFile(atPath: outPath, contents: nil)
        FileManager.default.createFile(atPath: errPath, contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        let err = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        defer { try? out.close(); try? err.close() }

        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.environment = cleanEnvironment.merging(environment) { _, new in new }
        process.standardOutput = out
        process.standardError = err
        // Files, not pipes: a chatty child never blocks on a full pipe.
        try process.run()
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))  // poll interval
        }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            let stderr = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
            throw TimedOut(what: "\(binary) \(arguments) to exit (still running after \(timeout); stderr: \(stderr))")
        }
        process.waitUntilExit()
        return Outcome(status: process.terminationStatus, exited: process.terminationReason == .exit,
                       stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
                       stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
    }

    /// Starts a long-running extra process writing to `logFile`; the caller kills it.
    static func spawn(_ binary: String, _ arguments: [String], environment: [String: String], logFile: String) throws -> Process {
        FileManager.default.createFile(atPath: logFile, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: logFile))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.environment = cleanEnvironment.merging(environment) { _, new in new }
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return process
    }

    /// Kills an extra process started by `spawn` and reaps it.
    static func reap(_ process: Process) {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
    }

    /// The lowest port of this cluster's 100-port block (all free when the
    /// cluster was created; nodes use base+10 … base+id*10+2).
    var portBase: Int { nodes[0].clientPort - 10 }

    /// Sends `signal` to node `id` and waits (bounded) for it to exit;
    /// returns its exit status and whether it exited normally (not by a signal).
    func stop(_ id: Int, signal: Int32 = SIGTERM, timeout: Duration = .seconds(10)) async throws -> (status: Int32, exited: Bool) {
        guard let process = nodes[id - 1].process else { throw TimedOut(what: "node \(id) to be running") }
        kill(process.processIdentifier, signal)
        try await waitUntil("node \(id) exits after signal \(signal)", timeout: timeout) { !process.isRunning }
        process.waitUntilExit()
        nodes[id - 1].process = nil
        return (process.terminationStatus, process.terminationReason == .exit)
    }

    /// POSTs `body` bytes exactly as given (for malformed JSON and oversized bodies).
    func rawPost(on id: Int, path: String, body: [UInt8], timeout: Int64 = 10) async throws -> HTTPReply {
        var request = HTTPClientRequest(url: "http://127.0.0.1:\(nodes[id - 1].clientPort)\(path)")
        request.method = .POST
        request.body = .bytes(ByteBuffer(bytes: body))
        request.headers.add(name: "content-type", value: "application/json")
        let response = try await Cluster.client.execute(request, timeout: .seconds(timeout))
        let bytes = try await response.body.collect(upTo: 64 << 20)
        let object = (try? JSONSerialization.jsonObject(with: Data(bytes.readableBytesView))) as? [String: Any] ?? [:]
        return HTTPReply(status: Int(response.status.code), body: object, text: String(buffer: bytes))
    }

    /// Inserts one `items` row per name, request numbers 1, 2, … of session
    /// `clientID`, each retried until a node answers; expects 200 for each.
    func insertItems(_ names: [String], clientID: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        for (index, name) in names.enumerated() {
            let reply = try await executeWithRetry([("INSERT INTO items(name) VALUES (?)", [name])], clientID: clientID,
                                                   requestNumber: index + 1)
            #expect(reply.status == 200, "\(reply.text)", sourceLocation: sourceLocation)
        }
    }

    /// `(op_number, commit_number)` from node `id`'s `/status`, or nil if it does not answer.
    func opAndCommit(_ id: Int) async -> (op: Int, commit: Int)? {
        guard let status = await status(id), let op = status["op_number"] as? Int,
              let commit = status["commit_number"] as? Int else { return nil }
        return (op, commit)
    }

    /// `.../kmb_checksum_failures_total` etc. on node `id`, or nil.
    func metric(_ id: Int, _ name: String) async -> Double? {
        guard let text = try? await metrics(id) else { return nil }
        return Cluster.metricValue(text, name)
    }

    /// Segment files of node `id`, sorted by name (= first op).
    func segments(of id: Int) throws -> [String] {
        let directory = nodes[id - 1].dataDir + "/log"
        return try FileManager.default.contentsOfDirectory(atPath: directory)
            .filter { $0.hasSuffix(".kmb") }.sorted().map { directory + "/" + $0 }
    }
}

/// Reads a segment file's frame layout (24-byte header, then
/// `[u32 length][u32 crc][body]` little-endian) without the storage module,
/// so the tests check the on-disk format independently.
struct SegmentFrames {
    struct Frame {
        let offset: Int
        let bodyLength: Int
        var end: Int { offset + 8 + bodyLength }
    }

    let bytes: [UInt8]
    let frames: [Frame]

    init(path: String) throws {
        bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        var frames: [Frame] = []
        var offset = 24
        while offset + 8 <= bytes.count {
            let length = Int(bytes[offset]) | Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2]) << 16 | Int(bytes[offset + 3]) << 24
            guard length > 0, offset + 8 + length <= bytes.count else { break }
            frames.append(Frame(offset: offset, bodyLength: length))
            offset += 8 + length
        }
        self.frames = frames
    }
}

extension Cluster.HTTPReply {
    /// The error object's code, when the body has DESIGN.md's error shape.
    var errorCode: String? { (body["error"] as? [String: Any])?["code"] as? String }
    var errorMessage: String? { (body["error"] as? [String: Any])?["message"] as? String }
    var errorOp: Int? { (body["error"] as? [String: Any])?["op"] as? Int }

    /// True when the body is exactly `{"error": {"code": String, "message": non-empty String, "op"?: Int}}`.
    var hasErrorShape: Bool {
        guard body.count == 1, let error = body["error"] as? [String: Any] else { return false }
        guard Set(error.keys).isSubset(of: ["code", "message", "op"]) else { return false }
        guard let code = error["code"] as? String, !code.isEmpty,
              let message = error["message"] as? String, !message.isEmpty else { return false }
        if let op = error["op"] { return op is Int }
        return true
    }
}
