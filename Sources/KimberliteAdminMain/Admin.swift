import ArgumentParser
import AsyncHTTPClient
import Foundation
import KimberliteServer
import KimberliteStorage
import NIOCore

/// `kimberlite-admin`: operator commands. Exit codes: 0 success, 1 the
/// command ran and found a problem, 64 malformed command line.
@main
struct KimberliteAdmin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kimberlite-admin",
        abstract: "Operate a Kimberlite cluster.",
        version: "kimberlite-admin \(KimberliteNode.version)",
        subcommands: [Status.self, Verify.self, Health.self, BackupCommand.self, RestoreCommand.self, ForceLeaderCommand.self, CompactCommand.self, Members.self])
}

/// `kimberlite-admin status --server HOST:9090`: every member in one table.
struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show every member of the cluster, found through one node.")

    @Option(help: "A node's metrics address, host:port.")
    var server = "127.0.0.1:9090"
    @Flag(help: "Print JSON: each member's /status (null where unreachable).")
    var json = false
    @Option(help: "Per-request timeout in milliseconds.")
    var timeoutMs = 2000

    func run() async throws {
        let client = HTTPClient.shared
        let timeout = TimeAmount.milliseconds(Int64(timeoutMs))
        guard let first = await fetchStatus(client, server, timeout) else {
            fail("status: cannot reach \(server)/status")
        }
        var reports: [(StatusReport.Member, StatusReport?)] = []
        for member in first.clusterMembers {
            if member.nodeID == first.nodeID {
                reports.append((member, first))
            } else if let address = member.metricsAddress {
                reports.append((member, await fetchStatus(client, address, timeout)))
            } else {
                reports.append((member, nil))
            }
        }
        if json {
            let array = reports.map { $0.1 }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(array), as: UTF8.self))
        } else {
            print("cluster \"\(first.clusterName)\": \(first.clusterSize) members, leader \(first.leaderID == 0 ? "none (No leader elected)" : String(first.leaderID)), seen from node \(first.nodeID)")
            let header = ["NODE", "ROLE", "STATUS", "VIEW", "OP", "COMMIT", "APPLIED", "LAG", "STATE", "LAST_SEEN_MS", "CLUSTER_ADDRESS"]
            var rows = [header]
            for (member, report) in reports {
                if let report {
                    rows.append(["\(member.nodeID)", report.isLeader ? "leader" : "follower", report.status, "\(report.view)",
                                 "\(report.opNumber)", "\(report.commitNumber)", "\(report.projection.appliedOp)",
                                 "\(report.projection.lag)", member.state, member.lastSeenMs.map(String.init) ?? "-",
                                 member.clusterAddress])
                } else {
                    // Unreachable from here: show what the queried node knows.
                    rows.append(["\(member.nodeID)", "?", "unreachable", "-", "-", "-", "-", "-", member.state,
                                 member.lastSeenMs.map(String.init) ?? "-", member.clusterAddress])
                }
            }
            printTable(rows)
        }
        let problems = Self.disagreements(reports.compactMap(\.1))
        for line in problems { FileHandle.standardError.write(Data("kimberlite-admin: status: \(line)\n".utf8)) }
        if !problems.isEmpty { throw ExitCode(1) }
    }

    /// What an operator must not miss: members that report a problem
    /// (diverged, disk full), and members whose logs disagree at the same
    /// committed op (same commit number, different entry checksum).
    static func disagreements(_ reports: [StatusReport]) -> [String] {
        var lines: [String] = []
        for report in reports.sorted(by: { $0.nodeID < $1.nodeID }) {
            if report.status == "diverged" {
                lines.append("node \(report.nodeID) DIVERGED: \(report.statusReason ?? "its committed log contradicts the cluster's")")
            } else if let reason = report.statusReason {
                lines.append("node \(report.nodeID): \(reason)")
            }
        }
        let byCommit = Dictionary(grouping: reports.filter { $0.commitNumber > 0 && $0.commitChecksum != nil }, by: \.commitNumber)
        for (commit, group) in byCommit.sorted(by: { $0.key < $1.key }) where Set(group.compactMap(\.commitChecksum)).count > 1 {
            let holders = group.sorted { $0.nodeID < $1.nodeID }.map { "node \($0.nodeID) has \($0.commitChecksum!.prefix(16))" }
            lines.append("members DISAGREE at committed op \(commit): \(holders.joined(separator: ", "))")
        }
        return lines
    }

}

/// A node's `/status`, or nil when it cannot be reached or answers something else.
func fetchStatus(_ client: HTTPClient, _ address: String, _ timeout: TimeAmount) async -> StatusReport? {
    var request = HTTPClientRequest(url: "http://\(address)/status")
    request.method = .GET
    guard let response = try? await client.execute(request, timeout: timeout), response.status == .ok,
          let body = try? await response.body.collect(upTo: 4 << 20) else { return nil }
    return try? JSONDecoder().decode(StatusReport.self, from: Data(buffer: body))
}

/// Prints rows as left-aligned columns; the first row is the header.
func printTable(_ rows: [[String]]) {
    guard let header = rows.first else { return }
    let widths = header.indices.map { column in rows.map { $0[column].count }.max()! }
    for row in rows {
        print(row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  "))
    }
}

/// `kimberlite-admin members list --server HOST:9090`: the current epoch's
/// membership as one node sees it; `members remove --node-id N`: the leader
/// commits a membership change without node N (DESIGN.md §2b).
struct Members: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show or change the cluster's membership.", subcommands: [List.self, Remove.self])

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove a member: the leader commits a new epoch without it (one change at a time).",
            discussion: "Refused for the last member, and for a member whose removal would leave the others without a quorum of live nodes, unless --force.")

        @Option(name: .customLong("node-id"), help: "The member to remove.")
        var nodeID: UInt8
        @Option(help: "Any node's metrics address, host:port; the change is sent to the leader it names.")
        var server = "127.0.0.1:9090"
        @Flag(help: "Remove it even when the members left would have no quorum of live nodes (the cluster then waits for them).")
        var force = false

        func run() async throws {
            let client = HTTPClient.shared
            guard let status = await fetchStatus(client, server, .seconds(3)) else {
                fail("members remove: cannot reach \(server)/status")
            }
            guard status.leaderID != 0 else { fail("members remove: No leader elected (as node \(status.nodeID) sees it); nothing changed") }
            let leaderAddress = status.leaderID == status.nodeID ? server
                : status.clusterMembers.first { $0.nodeID == status.leaderID }?.metricsAddress
            guard let leaderAddress else {
                fail("members remove: node \(status.nodeID) does not know the metrics address of the leader, node \(status.leaderID); run it with --server on the leader")
            }
            var request = HTTPClientRequest(url: "http://\(leaderAddress)/members/remove")
            request.method = .POST
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: #"{"node_id":\#(nodeID),"force":\#(force)}"#))
            guard let response = try? await client.execute(request, timeout: .seconds(30)),
                  let body = try? await response.body.collect(upTo: 1 << 20) else {
                fail("members remove: no answer from the leader at \(leaderAddress); check `members list` before retrying")
            }
            let text = String(buffer: body)
            guard response.status == .ok else {
                let message = (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
                    .flatMap { $0["error"] as? [String: Any] }.flatMap { $0["message"] as? String } ?? text
                fail("members remove: refused by the leader (node \(status.leaderID), HTTP \(response.status.code)): \(message)")
            }
            let reply = (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
            let members = (reply["members"] as? [Int])?.map(String.init).joined(separator: ", ") ?? "?"
            print("node \(nodeID) removed: cluster \"\(status.clusterName)\" is at epoch \(reply["epoch"] as? Int ?? 0) with members \(members) (op \(reply["op"] as? Int ?? 0))")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the members of the current epoch, found through one node.")

        @Option(help: "A node's metrics address, host:port.")
        var server = "127.0.0.1:9090"
        @Flag(help: "Print JSON: epoch, leader and members.")
        var json = false

        func run() async throws {
            guard let status = await fetchStatus(HTTPClient.shared, server, .seconds(3)) else {
                fail("members list: cannot reach \(server)/status")
            }
            if json {
                struct Listing: Encodable {
                    var clusterName: String, epoch: UInt64?, leaderID: UInt8, members: [StatusReport.Member]
                    enum CodingKeys: String, CodingKey { case clusterName = "cluster_name", epoch, leaderID = "leader_id", members }
                }
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                let listing = Listing(clusterName: status.clusterName, epoch: status.epoch, leaderID: status.leaderID, members: status.clusterMembers)
                print(String(decoding: try encoder.encode(listing), as: UTF8.self))
                return
            }
            print("cluster \"\(status.clusterName)\" epoch \(status.epoch.map(String.init) ?? "?"): \(status.clusterSize) members, seen from node \(status.nodeID)")
            var rows = [["NODE", "ROLE", "STATE", "LAST_SEEN_MS", "CLUSTER_ADDRESS", "CLIENT_ADDRESS", "METRICS_ADDRESS"]]
            for member in status.clusterMembers {
                rows.append(["\(member.nodeID)", member.nodeID == status.leaderID ? "leader" : "follower", member.state,
                             member.lastSeenMs.map(String.init) ?? "-", member.clusterAddress, member.clientAddress ?? "-",
                             member.metricsAddress ?? "-"])
            }
            printTable(rows)
        }
    }
}

/// `kimberlite-admin verify --data-dir DIR`: offline check of a data directory.
struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check every segment, checksum, hash chain and the superblock of a stopped node's data directory.")

    @Option(name: .customLong("data-dir"), help: "The data directory (default /var/lib/kimberlite).")
    var dataDir = "/var/lib/kimberlite"
    @Flag(help: "Print the report as JSON.")
    var json = false

    func run() throws {
        let report = DataDirectoryVerifier.verify(dataDir: dataDir)
        if json {
            print(report.json(pretty: true))
        } else {
            for line in report.textLines { print(line) }
        }
        if !report.ok { throw ExitCode(1) }
    }
}

/// `kimberlite-admin health --server HOST:9090`: exit 0 when the node is
/// ready (normal status with a known leader), 1 otherwise. Used by the
/// container HEALTHCHECK, where no curl is installed.
struct Health: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Exit 0 when the node answers /health/ready with 200.")

    @Option(help: "The node's metrics address, host:port.")
    var server = "127.0.0.1:9090"
    @Flag(help: "Only check liveness (/health/live).")
    var live = false

    func run() async throws {
        let client = HTTPClient.shared
        let path = live ? "/health/live" : "/health/ready"
        let request = HTTPClientRequest(url: "http://\(server)\(path)")
        guard let response = try? await client.execute(request, timeout: .seconds(3)) else {
            fail("health: cannot reach \(server)\(path)")
        }
        let body = (try? await response.body.collect(upTo: 1 << 16)).map { String(buffer: $0) } ?? ""
        print(body)
        if response.status != .ok { throw ExitCode(1) }
    }
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("kimberlite-admin: \(message)\n".utf8))
    exit(1)
}
