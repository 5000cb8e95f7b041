import Foundation
import KimberliteCore
import NIOCore

/// Membership changes through the operations port (DESIGN.md §2b):
/// `POST /members/remove` `{"node_id": N, "force": false}` on the leader
/// commits a reconfiguration without node N (VRR §7, one change at a time).
struct MembershipService: Sendable {
    let driver: ReplicaDriver
    let registry: RequestRegistry
    let transport: ClusterTransport
    let selfID: NodeID
    /// A member heard from within this window counts as live (`election_timeout_max`).
    let liveWindow: Duration
    /// How long to wait for the change to commit and apply (`request_timeout`).
    let timeout: Duration

    struct RemoveRequest: Decodable {
        var nodeID: NodeID
        var force: Bool?
        enum CodingKeys: String, CodingKey { case nodeID = "node_id", force }
    }

    struct Changed: Encodable {
        var epoch: UInt64
        var members: [NodeID]
        var op: OpNumber
        var removed: NodeID
    }

    /// Removes a member. Refused (409 `membership_change_refused`) for the
    /// last member, and without `force` when the members left would not have
    /// a quorum of live nodes; 409 `membership_change_in_progress` while
    /// another change is uncommitted; 503 on a node that does not lead.
    func remove(body: [UInt8]) async -> APIResponse {
        guard let request = try? JSONDecoder().decode(RemoveRequest.self, from: Data(body)) else {
            return APIError(.invalidRequest, #"the body must be {"node_id": N, "force": false}"#).response
        }
        let snapshot = driver.snapshot
        guard snapshot.isPrimary, snapshot.leader == selfID else {
            let leader = snapshot.leader.map { "send it to node \($0), the leader" } ?? "there is no leader now"
            return APIError.noLeader("membership changes go to the leader; \(leader)").response
        }
        let members = snapshot.members
        let node = request.nodeID
        guard members.contains(node) else {
            return APIError(.membershipChangeRefused, "node \(node) is not a member of epoch \(snapshot.epoch) (members \(Self.list(members)))").response
        }
        guard members.count > 1 else {
            return APIError(.membershipChangeRefused, "node \(node) is the last member; a cluster cannot remove its last member").response
        }
        let remaining = members.filter { $0 != node }
        let peers = transport.snapshot()
        let now = NIODeadline.now()
        let window = TimeAmount.nanoseconds(liveWindow.nanoseconds)
        let live = remaining.filter { member in
            member == selfID || peers[member]?.lastSeen.map { now - $0 <= window } == true
        }
        let quorum = remaining.count / 2 + 1
        if live.count < quorum && request.force != true {
            return APIError(.membershipChangeRefused,
                            "removing node \(node) would leave members \(Self.list(remaining)) with \(live.count) live of the \(quorum) a quorum needs "
                            + "(live: \(Self.list(live))); nothing changed. Use --force to remove it anyway").response
        }
        let change = Reconfiguration(epoch: snapshot.epoch + 1, members: remaining, detail: #"{"removed":\#(node)}"#)
        let id = registry.makeID()
        // No session: a second change must meet the first one and be refused, not pass for its retry.
        let result = await registry.write(id: id, timeout: timeout) { [driver] in
            driver.submit(.write(ClientRequest(id: id, session: nil, payload: change.encode())))
        }
        switch result {
        case .applied(let op, _):
            return APIResponse(status: 200, body: ClientAPI.encode(Changed(epoch: change.epoch, members: remaining, op: op, removed: node)))
        case .rejected(.reconfigurationInProgress(let op)):
            return APIError(.membershipChangeInProgress, "a membership change (op \(op)) has not committed yet; one change at a time, retry once it has").response
        case .rejected(.invalidReconfiguration(let reason)):
            return APIError(.membershipChangeRefused, reason).response
        case .rejected:
            return APIError.noLeader("this node stopped leading before the change was logged; nothing changed").response
        case .timedOut(let op):
            return APIError(.outcomeUnknown, "the change did not commit within request_timeout; check `members list` before retrying", op: op).response
        case .replaced(let op):
            return APIError(.outcomeUnknown, "a view change replaced the change at op \(op); check `members list` before retrying", op: op).response
        }
    }

    static func list(_ members: [NodeID]) -> String { "[" + members.map(String.init).joined(separator: ",") + "]" }
}
