import Foundation
import Testing

/// The Debian package index loaded through the client API with the leader
/// killed once mid-load: every record arrives exactly once and all three
/// nodes answer the example queries identically.
@Suite(.serialized) struct RealDataTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func packageIndexSurvivesALeaderKillMidLoad() async throws {
        let dump = FileManager.default.temporaryDirectory.appendingPathComponent("kmb-dumpavail-\(UUID().uuidString.prefix(6)).txt").path
        defer { try? FileManager.default.removeItem(atPath: dump) }
        _ = try run("/bin/sh", ["-c", "apt-cache dumpavail > \(dump)"])
        let records = try String(contentsOfFile: dump, encoding: .utf8).components(separatedBy: "\nPackage: ").count
        try #require(records > 1000, "apt-cache dumpavail has \(records) records: run apt-get update (scripts/test.sh does)")

        let cluster = try await Cluster.start(nodes: 3)
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        let nodes = cluster.nodes.map { "127.0.0.1:\($0.clientPort)" }.joined(separator: ",")
        let loader = Process()
        loader.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        loader.arguments = [Self.root.appendingPathComponent("examples/load_debian_packages.py").path,
                            "--input", dump, "--nodes", nodes, "--quiet", "--batch", "200",
                            // The harness sets max_record_size = 64KB.
                            "--max-statement-bytes", "40000"]
        let output = Pipe()
        loader.standardOutput = output
        try loader.run()

        // Kill the leader once a fifth of the rows is in.
        try await cluster.waitUntil("a fifth of the package index loaded", timeout: .seconds(300)) {
            guard loader.isRunning else { return true }
            return (try? await cluster.count("packages", on: leader)).flatMap { $0 } ?? 0 >= records / 5
        }
        try #require(loader.isRunning, "the loader stopped early")
        cluster.kill9(leader)
        print("killed leader \(leader) mid-load")
        try await cluster.waitUntil("the loader finishes", timeout: .seconds(600)) { !loader.isRunning }
        let summary = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        print("loader: \(summary)")
        #expect(loader.terminationStatus == 0, "loader failed: \(summary)")
        let loaded = (try JSONSerialization.jsonObject(with: Data(summary.utf8)) as? [String: Any])?["loaded"] as? Int
        #expect(loaded == records, "loader reports \(loaded ?? -1) of \(records)")

        try cluster.restart(leader)
        try await cluster.waitUntil("every node holds every record", timeout: .seconds(120)) {
            for id in 1...3 where try await cluster.count("packages", on: id) != records { return false }
            return true
        }
        let duplicates = try await cluster.query(on: leader,
            "SELECT count(*) FROM (SELECT package, version, architecture FROM packages GROUP BY 1, 2, 3 HAVING count(*) > 1)",
            consistency: "stale")
        #expect((duplicates.body["rows"] as? [[Any]])?.first?.first as? Int == 0, "\(duplicates.text)")
        // The loader's query mode asks every node (strong) and fails if any disagree.
        let queries = try run("/usr/bin/python3", [Self.root.appendingPathComponent("examples/load_debian_packages.py").path,
                                                   "--queries", "--nodes", nodes])
        #expect(queries.status == 0, "nodes disagree: \(queries.output)")
        // Stale reads agree on every node too.
        var answers: Set<String> = []
        for id in 1...3 {
            let reply = try await cluster.query(on: id, "SELECT section, count(*) FROM packages GROUP BY section ORDER BY 1", consistency: "stale")
            answers.insert("\(reply.body["rows"] ?? "none")")
        }
        #expect(answers.count == 1)
    }

    private func run(_ path: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
