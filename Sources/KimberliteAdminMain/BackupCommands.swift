import ArgumentParser
import AsyncHTTPClient
import Foundation
import KimberliteServer
import KimberliteStorage
import NIOCore

/// `kimberlite-admin backup --server HOST:9090 --output DIR`: an online
/// backup (DESIGN.md §2b): the node takes a checkpoint through a committed
/// op; the command copies it and the log up to that op, checks every byte
/// against the node's checksums, and writes `backup.manifest`.
struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Take an online backup of a running node (checkpoint, log through its op, manifest of checksums).")

    @Option(help: "The node's metrics address, host:port.")
    var server = "127.0.0.1:9090"
    @Option(help: "A new (or empty) directory for the backup.")
    var output: String
    @Option(help: "Seconds to wait for the node to take its checkpoint.")
    var timeoutSeconds = 600

    func run() async throws {
        let created = try prepareEmptyDirectory(output, purpose: "backup")
        let client = HTTPClient.shared
        var started = HTTPClientRequest(url: "http://\(server)/backup")
        started.method = .POST
        let plan: BackupPlan
        do {
            let response = try await client.execute(started, timeout: .seconds(Int64(timeoutSeconds)))
            let body = try await response.body.collect(upTo: 16 << 20)
            guard response.status == .ok else {
                if created { try? FileManager.default.removeItem(atPath: output) }
                fail("backup: \(server) refused: \(errorMessage(body))")
            }
            plan = try JSONDecoder().decode(BackupPlan.self, from: Data(buffer: body))
        } catch let error as ExitCode {
            throw error
        } catch {
            if created { try? FileManager.default.removeItem(atPath: output) }
            fail("backup: cannot start a backup on \(server): \(error)")
        }
        let began = Date()
        var progress = ProgressBar(total: plan.checkpoint.bytes + plan.segments.reduce(0) { $0 + $1.bytes }, label: "backup")
        do {
            let checkpointDirectory = output + "/checkpoint"
            try FileManager.default.createDirectory(atPath: checkpointDirectory, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: output + "/log", withIntermediateDirectories: true)
            let store = CheckpointStore(directory: checkpointDirectory)
            let checkpointPath = store.sqlitePath(op: plan.checkpoint.op)
            let checkpoint = try await download(client, "/backup/\(plan.backupID)/checkpoint", to: checkpointPath,
                                                bytes: plan.checkpoint.bytes, progress: &progress)
            guard checkpoint.sha256 == plan.checkpoint.sha256 else {
                throw BackupFailure("the checkpoint arrived damaged: SHA-256 \(checkpoint.sha256), the node's manifest says \(plan.checkpoint.sha256)")
            }
            try store.writeManifest(plan.checkpoint)
            var segments: [BackupFile] = []
            for segment in plan.segments {
                guard segment.name.hasSuffix(".kmb"), segment.name.count == 24, !segment.name.contains("/") else {
                    throw BackupFailure("the node named a log file \"\(segment.name)\" that is not a segment file name")
                }
                let digest = try await download(client, "/backup/\(plan.backupID)/log/\(segment.name)", to: output + "/log/" + segment.name,
                                                bytes: segment.bytes, progress: &progress)
                segments.append(BackupFile(path: "log/" + segment.name, bytes: segment.bytes, sha256: digest.sha256))
            }
            let manifest = BackupManifest(
                clusterName: plan.clusterName, nodeID: plan.nodeID, epoch: plan.epoch, members: plan.members, view: plan.view,
                logView: plan.logView, op: plan.checkpoint.op, anchor: plan.checkpoint.anchor,
                createdAtMs: Int64(Date().timeIntervalSince1970 * 1000),
                checkpoint: BackupFile(path: "checkpoint/" + (checkpointPath as NSString).lastPathComponent,
                                       bytes: plan.checkpoint.bytes, sha256: plan.checkpoint.sha256),
                segments: segments)
            try Backup.writeManifest(manifest, in: output)
            progress.finish()
            // Everything the manifest lists must check whole before this is called a backup.
            let report = DataDirectoryVerifier.verify(dataDir: output)
            guard report.ok else {
                throw BackupFailure("the copy does not verify: " + report.errors.map(\.message).joined(separator: "; "))
            }
            await release(client, plan.backupID)
            let megabytes = String(format: "%.1f", Double(manifest.totalBytes) / 1_048_576)
            print("backup: node \(plan.nodeID) of cluster \"\(plan.clusterName)\" at op \(manifest.op): \(manifest.files.count) files, "
                  + "\(megabytes) MB in \(String(format: "%.1f", Date().timeIntervalSince(began))) s -> \(output)")
        } catch {
            progress.finish()
            await release(client, plan.backupID)
            if created { try? FileManager.default.removeItem(atPath: output) }
            fail("backup: \(error)")
        }
    }

    /// Copies one file of the backup to `path` (fsynced), advancing the bar.
    private func download(_ client: HTTPClient, _ urlPath: String, to path: String, bytes: Int,
                          progress: inout ProgressBar) async throws -> (sha256: String, bytes: Int) {
        let request = HTTPClientRequest(url: "http://\(server)\(urlPath)")
        let response = try await client.execute(request, timeout: .seconds(Int64(timeoutSeconds)))
        guard response.status == .ok else {
            throw BackupFailure("\(urlPath): \(errorMessage(try await response.body.collect(upTo: 1 << 20)))")
        }
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
            throw BackupFailure("cannot create \(path)")
        }
        var written = 0
        do {
            defer { try? handle.close() }
            for try await buffer in response.body {
                try handle.write(contentsOf: Data(buffer: buffer))
                written += buffer.readableBytes
                progress.advance(by: buffer.readableBytes)
            }
            try handle.synchronize()
        }
        guard written == bytes else { throw BackupFailure("\(urlPath): received \(written) bytes, expected \(bytes)") }
        return try CheckpointStore.sha256(file: path)
    }

    private func release(_ client: HTTPClient, _ id: String) async {
        var request = HTTPClientRequest(url: "http://\(server)/backup/\(id)")
        request.method = .DELETE
        _ = try? await client.execute(request, timeout: .seconds(10))
    }
}

/// `kimberlite-admin restore --from DIR --data-dir D --node-id N`: seeds an
/// empty data directory from a backup (see `Backup.restore`).
struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Seed an empty data directory from a backup (the node recovers the rest from its cluster, or starts a new one).",
        discussion: """
            Without --new-cluster the node rejoins the cluster the backup came from: its directory is marked recovering, \
            so it takes no part in view changes until the leader has sent it everything after the backup. \
            With --new-cluster, restore every member of a new cluster from the same backup: each starts with the \
            backup's log committed.
            """)

    @Option(help: "The backup directory (written by `kimberlite-admin backup`).")
    var from: String
    @Option(name: .customLong("data-dir"), help: "The data directory to seed; must not exist or be empty.")
    var dataDir: String
    @Option(name: .customLong("node-id"), help: "This node's id (a member of the backed-up cluster).")
    var nodeID: UInt8
    @Flag(name: .customLong("new-cluster"), help: "Start a new cluster from the backup (restore every member this way).")
    var newCluster = false
    @Option(name: .customLong("cluster-name"), help: "With --new-cluster: the new cluster's name (default: the backup's).")
    var clusterName: String?

    func run() throws {
        do {
            let manifest = try Backup.restore(from: from, into: dataDir, nodeID: nodeID, newCluster: newCluster, clusterName: clusterName)
            let next = newCluster || manifest.members.count == 1
                ? "start every member of the new cluster; each begins at op \(manifest.op)"
                : "start the node; it recovers everything after op \(manifest.op) from the leader before it takes part again "
                    + "(restoring every member? use --new-cluster instead: members that all wait to recover wait for ever)"
            print("restore: \(dataDir) now holds node \(nodeID) of cluster \"\(clusterName ?? manifest.clusterName)\" at op \(manifest.op); \(next)")
        } catch {
            try failOffline("restore", error)
        }
    }
}

/// How an offline command ends on an error: 75 when a server holds the
/// data directory (stop it first), 1 otherwise; nothing was changed.
func failOffline(_ command: String, _ error: Error) throws -> Never {
    if case StorageError.locked = error {
        FileHandle.standardError.write(Data("kimberlite-admin: \(command): \(error); stop the server first (nothing was changed)\n".utf8))
        throw ExitCode(75)
    }
    fail("\(command): \(error)")
}

struct BackupFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Creates `path` or accepts it empty; refuses a non-empty one.
/// - Returns: true when this call created it.
func prepareEmptyDirectory(_ path: String, purpose: String) throws -> Bool {
    var isDirectory: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
        guard isDirectory.boolValue else { fail("\(purpose): \(path) exists and is not a directory") }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        guard names.isEmpty else { fail("\(purpose): \(path) is not empty; choose a new directory (nothing was written)") }
        return false
    }
    do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
        fail("\(purpose): cannot create \(path): \(error)")
    }
    return true
}

/// The `message` of an API error body, or the body itself.
func errorMessage(_ body: ByteBuffer) -> String {
    let text = String(buffer: body)
    if let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
       let error = object["error"] as? [String: Any], let message = error["message"] as? String {
        return message
    }
    return text
}

/// A progress bar on stderr: redrawn in place on a terminal, one line per
/// tenth otherwise (logs stay readable).
struct ProgressBar {
    let total: Int
    let label: String
    private var done = 0
    private var lastTenth = -1
    private let terminal = isatty(2) != 0

    init(total: Int, label: String) {
        self.total = max(total, 1)
        self.label = label
    }

    mutating func advance(by bytes: Int) {
        done += bytes
        draw()
    }

    mutating func finish() {
        if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    private mutating func draw() {
        let fraction = min(1, Double(done) / Double(total))
        let tenth = Int(fraction * 10)
        if !terminal && tenth == lastTenth { return }
        lastTenth = tenth
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        let text = "\(label): [\(bar)] \(Int(fraction * 100))% \(String(format: "%.1f/%.1f MB", Double(done) / 1_048_576, Double(total) / 1_048_576))"
        FileHandle.standardError.write(Data((terminal ? "\r" + text : text + "\n").utf8))
    }
}
