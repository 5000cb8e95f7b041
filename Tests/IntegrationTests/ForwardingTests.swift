import Foundation
import Testing

/// Writes a follower forwards to the leader are answered as soon as that
/// leader is lost (its connection closes, or a view change starts), not after
/// `request_timeout`; a retry with the same request number then settles to
/// exactly one application.
@Suite(.serialized) struct ForwardingTests {
    /// Sends one write to `follower` in the background.
    static func forwardedWrite(_ cluster: Cluster, to follower: Int, name: String)
        -> Task<(reply: Cluster.HTTPReply, seconds: Double), Error> {
        Task {
            let started = ContinuousClock.now
            let reply = try await cluster.execute(on: follower, ErrorOutcomeTests.insert(name), clientID: name, requestNumber: 1)
            let elapsed = ContinuousClock.now - started
            return (reply: reply, seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        }
    }

    @Test func forwardedWriteIsAnsweredWhenTheLeaderStopsAnsweringAndAViewChangeStarts() async throws {
        let cluster = try await ErrorOutcomeTests.clusterWithTable()
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        let follower = cluster.nodes.map(\.id).first { $0 != leader }!
        cluster.signal(leader, SIGSTOP)
        let (reply, seconds) = try await Self.forwardedWrite(cluster, to: follower, name: "stalled").value
        cluster.signal(leader, SIGCONT)
        ErrorOutcomeTests.expectRefusal(reply, 504, "outcome_unknown", "forwarded write whose leader stopped")
        // Answered because the view changed, not because request_timeout (3 s here) ran out.
        #expect(reply.errorMessage?.contains("leader changed") == true, "\(reply.text)")
        print("forwarded write answered \(String(format: "%.2f", seconds)) s after the leader stopped (request_timeout 3 s)")
        _ = try await cluster.waitForLeader()
        let retry = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("stalled"), clientID: "stalled", requestNumber: 1)
        #expect(retry.status == 200, "\(retry.text)")
        try await ErrorOutcomeTests.expectExactlyOnce("stalled", in: cluster)
    }

    @Test func forwardedWriteIsAnsweredAtOnceWhenTheLeaderIsKilled() async throws {
        // Long election and request timeouts: the write waits at the stopped
        // leader (in flight, observable) until the kill, and only the closed
        // connection can answer it early.
        let cluster = try await ErrorOutcomeTests.clusterWithTable(timeouts: .init(electionMin: "8s", electionMax: "10s", request: "12s"))
        defer { cluster.shutdown() }
        let leader = try await cluster.waitForLeader()
        let follower = cluster.nodes.map(\.id).first { $0 != leader }!
        // Stopped first so the write is surely in flight when the process dies.
        cluster.signal(leader, SIGSTOP)
        let pending = Self.forwardedWrite(cluster, to: follower, name: "orphaned")
        try await cluster.waitUntil("node \(follower) holds the forwarded write in flight", timeout: .seconds(7)) {
            (await cluster.metric(follower, "kmb_requests_in_flight") ?? 0) >= 1
        }
        cluster.kill9(leader)
        let (reply, seconds) = try await pending.value
        ErrorOutcomeTests.expectRefusal(reply, 504, "outcome_unknown", "forwarded write whose leader was killed")
        #expect(reply.errorMessage?.contains("connection to leader \(leader) closed") == true, "\(reply.text)")
        print("forwarded write answered \(String(format: "%.2f", seconds)) s after it was sent; the leader was killed meanwhile")
        let survivors = cluster.nodes.map(\.id).filter { $0 != leader }
        _ = try await cluster.waitForLeader(among: survivors)
        let retry = try await cluster.executeWithRetry(ErrorOutcomeTests.insert("orphaned"), clientID: "orphaned", requestNumber: 1,
                                                       nodes: survivors)
        #expect(retry.status == 200, "\(retry.text)")
        try cluster.restart(leader)
        _ = try await cluster.waitForLeader()
        try await ErrorOutcomeTests.expectExactlyOnce("orphaned", in: cluster)
    }
}
