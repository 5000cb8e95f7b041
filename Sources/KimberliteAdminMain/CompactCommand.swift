import ArgumentParser
import Foundation
import KimberliteStorage
import Logging

/// `kimberlite-admin compact --data-dir D`: offline journal compaction (the
/// guide's "Disk full: … enable log compaction"). Exit 75 when a server
/// holds the directory.
struct CompactCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compact",
        abstract: "Delete journal segments wholly below the older of the two newest checkpoints (node stopped).",
        discussion: """
            The audit log before that checkpoint is then held only by members that keep it (compaction off) \
            and by backups. A node that later needs those ops receives a checkpoint by state transfer.
            """)

    @Option(name: .customLong("data-dir"), help: "The stopped node's data directory.")
    var dataDir = "/var/lib/kimberlite"

    func run() throws {
        var logger = Logger(label: "kimberlite.admin")
        logger.logLevel = .warning
        do {
            let outcome = try OfflineCompaction.run(dataDir: dataDir, logger: logger)
            guard let checkpoint = outcome.checkpointOp else {
                print("compact: nothing to do: fewer than two intact checkpoints in \(dataDir) (the log starts after op \(outcome.baseOp))")
                return
            }
            let megabytes = (Double(outcome.bytesFreed) / 1_048_576 * 10).rounded() / 10
            print("compact: freed \(outcome.bytesFreed) bytes (\(megabytes) MB); the log now starts after op \(outcome.baseOp) (checkpoint at op \(checkpoint))")
        } catch {
            try failOffline("compact", error)
        }
    }
}
