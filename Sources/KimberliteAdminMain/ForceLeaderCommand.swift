import ArgumentParser
import Foundation
import KimberliteStorage

/// `kimberlite-admin force-leader --node-id N --data-dir D` (the guide's
/// "Recovering from Quorum Loss"): offline, makes this node alone the
/// membership at the next epoch. Exit 75 when a server holds the directory,
/// 1 when the node id does not match it.
struct ForceLeaderCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "force-leader",
        abstract: "DANGER: make this stopped node the only member (quorum permanently lost).",
        discussion: """
            Rewrites the node's membership so it alone forms the cluster at a new epoch, keeping its log whole. \
            Acknowledged writes held only by the lost members are lost. Members of the old epoch that come back \
            are refused and serve nothing. At its next start the node logs a force_leader entry (who, when, \
            old and new membership), readable in the _kmb_audit table.
            """)

    @Option(name: .customLong("node-id"), help: "This node's id (must match the data directory).")
    var nodeID: UInt8
    @Option(name: .customLong("data-dir"), help: "The stopped node's data directory.")
    var dataDir = "/var/lib/kimberlite"

    func run() throws {
        let user = ProcessInfo.processInfo.environment["SUDO_USER"] ?? ProcessInfo.processInfo.environment["USER"] ?? "uid \(getuid())"
        let by = "\(user)@\(ProcessInfo.processInfo.hostName)"
        do {
            let record = try ForceLeader.run(dataDir: dataDir, nodeID: nodeID, by: by, nowMs: Int64(Date().timeIntervalSince1970 * 1000))
            let lost = record.oldMembers.filter { $0 != nodeID }.map(String.init).joined(separator: ", ")
            FileHandle.standardError.write(Data("""
                WARNING: FORCE LEADER. Node \(nodeID) is now the only member of cluster "\(record.clusterName)" at epoch \(record.newEpoch) \
                (it was one of \(record.oldMembers.count) at epoch \(record.oldEpoch)).
                WARNING: acknowledged writes held only by nodes \(lost) are LOST. This node keeps its log whole (through op \(record.op)).
                WARNING: nodes \(lost) are refused if they come back with their old data; wipe their data directories and join them again.

                """.utf8))
            print("force-leader: node \(nodeID) alone forms cluster \"\(record.clusterName)\" at epoch \(record.newEpoch); start it, then add nodes")
        } catch {
            try failOffline("force-leader", error)
        }
    }
}
