import Foundation
import KimberliteCore
import KimberliteStorage
import Logging
import NIOCore

/// Membership changes (DESIGN.md §2b, VRR §7, one change at a time), made
/// by the leader: `POST /members/remove` `{"node_id": N, "force": false}`
/// on the operations port commits a reconfiguration without node N, and a
/// joining node's `joinRequest` on the cluster port one that adds it.
struct MembershipService: Sendable {
    let driver: ReplicaDriver
    let registry: RequestRegistry
    let transport: ClusterTransport
    let selfID: NodeID
    let clusterName: String
    let logger: Logger
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
        let live = remaining.filter { $0 == selfID || peerIsLive($0) }
        let quorum = remaining.count / 2 + 1
        if live.count < quorum && request.force != true {
            return APIError(.membershipChangeRefused,
                            "removing node \(node) would leave members \(Self.list(remaining)) with \(live.count) live of the \(quorum) a quorum needs "
                            + "(live: \(Self.list(live))); nothing changed. Use --force to remove it anyway").response
        }
        let change = Reconfiguration(epoch: snapshot.epoch + 1, members: remaining, detail: MembershipDetail(removed: node).json)
        switch await commit(change) {
        case .applied(let op):
            return APIResponse(status: 200, body: ClientAPI.encode(Changed(epoch: change.epoch, members: remaining, op: op, removed: node)))
        case .refused(let error):
            return error.response
        }
    }

    /// How a change ended: applied at `op`, or the error to answer with.
    enum CommitOutcome {
        case applied(op: OpNumber)
        case refused(APIError)
    }

    /// Logs `change` through the replica and waits (at most `timeout`) until it is applied.
    private func commit(_ change: Reconfiguration) async -> CommitOutcome {
        let id = registry.makeID()
        // No session: a second change must meet the first one and be refused, not pass for its retry.
        let result = await registry.write(id: id, timeout: timeout) { [driver] in
            driver.submit(.write(ClientRequest(id: id, session: nil, payload: change.encode())))
        }
        switch result {
        case .applied(let op, _):
            return .applied(op: op)
        case .rejected(.reconfigurationInProgress(let op)):
            return .refused(APIError(.membershipChangeInProgress, "a membership change (op \(op)) has not committed yet; one change at a time, retry once it has"))
        case .rejected(.invalidReconfiguration(let reason)):
            return .refused(APIError(.membershipChangeRefused, reason))
        case .rejected:
            return .refused(APIError.noLeader("this node stopped leading before the change was logged; nothing changed"))
        case .timedOut(let op):
            return .refused(APIError(.outcomeUnknown, "the change did not commit within request_timeout; check `members list` before retrying", op: op))
        case .replaced(let op):
            return .refused(APIError(.outcomeUnknown, "a view change replaced the change at op \(op); check `members list` before retrying", op: op))
        }
    }

    /// Answers a joining node (DESIGN.md §2b "Join"). A node that does not
    /// lead redirects it to the leader. The leader refuses, with the reason
    /// the joiner logs after "Rejected by leader: ", another cluster's node,
    /// an epoch older than its own, an id that is a member at another
    /// address, an address that is another member's, a change the
    /// superblock could not hold, and a join while another change is
    /// uncommitted (409); otherwise it commits the reconfiguration adding
    /// the node and answers with the new epoch's member ids and addresses.
    /// A member asking again from its own address with a new data directory
    /// (its answer was lost, or its disk wiped) is answered `recover`.
    func join(_ request: Envelope.JoinRequest, remoteHost: String?) async -> Envelope.JoinAnswer {
        let snapshot = driver.snapshot
        guard snapshot.isPrimary, snapshot.leader == selfID, snapshot.superseded == nil else {
            if let leader = snapshot.leader, leader != selfID, snapshot.superseded == nil, let address = transport.address(of: leader) {
                return .redirect(leader: leader, address: address.address)
            }
            return .rejected(reason: "node \(selfID) knows no leader now (status \(snapshot.status.rawValue)); retrying", byLeader: false)
        }
        let resolved = ClusterTransport.resolveWildcard(request.clusterAddress, host: remoteHost)
        func refuse(_ reason: String) -> Envelope.JoinAnswer {
            logger.warning("refused a joining node: \(reason)", metadata: [
                "peer": "\(request.nodeID)", "address": "\(resolved)", "remote": "\(remoteHost ?? "?")"])
            return .rejected(reason: reason, byLeader: true)
        }
        if request.clusterName != clusterName {
            return refuse("cluster name \"\(request.clusterName)\" does not match \"\(clusterName)\"")
        }
        if request.epoch > 0 && request.epoch < snapshot.epoch {
            return refuse("epoch \(request.epoch) is older than the cluster's epoch \(snapshot.epoch)")
        }
        guard let address = try? ConfigValueParser.address(resolved) else {
            return refuse("cluster address \"\(request.clusterAddress)\" is not host:port")
        }
        let members = snapshot.members
        if members.contains(request.nodeID) {
            let known = transport.address(of: request.nodeID)
            if let known, request.epoch == 0, known.listens(at: address) {
                // The member itself with a new data directory: its first answer
                // was lost, or its disk was wiped. It may have acknowledged
                // ops it no longer holds, so it recovers before it votes.
                logger.notice("node \(request.nodeID) asks again from its own address with a new data directory; it recovers as a member",
                              metadata: ["epoch": "\(snapshot.epoch)", "address": "\(address)"])
                return accepted(epoch: snapshot.epoch, members: members, joiner: nil, recover: true)
            }
            return refuse("node id \(request.nodeID) is already a member (\(known?.address ?? "address unknown"))")
        }
        if let other = transport.addresses.first(where: { members.contains($0.nodeID) && $0.listens(at: address) }) {
            return refuse("cluster address \(address) is member \(other.nodeID)'s; give node \(request.nodeID) its own cluster_address")
        }
        let joiner = MemberAddress(nodeID: request.nodeID, host: address.host, port: address.port, sinceEpoch: snapshot.epoch + 1)
        let book = transport.addresses.filter { $0.nodeID != request.nodeID } + [joiner]
        guard Superblock.fits(clusterName: clusterName, members: members + [request.nodeID], addresses: book) else {
            return refuse("the superblock cannot hold another member's address (cluster name and host names too long); nothing changed")
        }
        let change = Reconfiguration(epoch: snapshot.epoch + 1, members: members + [request.nodeID],
                                     detail: MembershipDetail(added: request.nodeID, address: "\(address)").json)
        let live = members.filter { $0 == selfID || peerIsLive($0) }.count
        let quorum = change.members.count / 2 + 1
        logger.notice("node \(request.nodeID) asks to join from \(address): logging the reconfiguration that adds it",
                      metadata: ["epoch": "\(change.epoch)", "members": "\(change.members)"])
        if live < quorum {
            logger.warning("after node \(request.nodeID) joins, a quorum of epoch \(change.epoch) needs it: writes wait until it has caught up",
                           metadata: ["live_members": "\(live)", "quorum": "\(quorum)"])
        }
        switch await commit(change) {
        case .applied(let op):
            logger.notice("node \(request.nodeID) joined at epoch \(change.epoch)", metadata: ["op": "\(op)", "members": "\(change.members)"])
            return accepted(epoch: change.epoch, members: change.members, joiner: joiner, recover: false)
        case .refused(let error):
            return refuse("\(error.code.status) \(error.code.rawValue): \(error.message)")
        }
    }

    /// The answer: every member id, and the addresses known for them.
    private func accepted(epoch: UInt64, members: [NodeID], joiner: MemberAddress?, recover: Bool) -> Envelope.JoinAnswer {
        var book = Dictionary(transport.addresses.map { ($0.nodeID, $0) }, uniquingKeysWith: { _, last in last })
        if let joiner { book[joiner.nodeID] = joiner }
        return .accepted(clusterName: clusterName, epoch: epoch, members: members, addresses: members.compactMap { book[$0] }, recover: recover)
    }

    /// Heard from within `liveWindow`.
    private func peerIsLive(_ member: NodeID) -> Bool {
        let window = TimeAmount.nanoseconds(liveWindow.nanoseconds)
        return transport.snapshot()[member]?.lastSeen.map { NIODeadline.now() - $0 <= window } == true
    }

    static func list(_ members: [NodeID]) -> String { "[" + members.map(String.init).joined(separator: ",") + "]" }
}

/// What the runtime writes in a reconfiguration's `detail` (JSON, audited in
/// `_kmb_audit`): `{"added": N, "address": "host:port"}` for a join,
/// `{"removed": N}` for a removal.
struct MembershipDetail: Codable, Equatable {
    var added: NodeID?
    /// The added node's cluster address.
    var address: String?
    var removed: NodeID?

    init(added: NodeID, address: String) { self.added = added; self.address = address }
    init(removed: NodeID) { self.removed = removed }

    /// Decodes a detail; nil when it is not this shape.
    init?(json: String) {
        guard let decoded = try? JSONDecoder().decode(Self.self, from: Data(json.utf8)) else { return nil }
        self = decoded
    }

    var json: String { String(decoding: ClientAPI.encode(self), as: UTF8.self) }

    /// The added member and where it listens, when this detail adds one with a valid address.
    var addedMember: (nodeID: NodeID, host: String, port: Int)? {
        guard let added, let address, let parsed = try? ConfigValueParser.address(address) else { return nil }
        return (added, parsed.host, parsed.port)
    }
}

extension MemberAddress {
    /// Whether this member's cluster address is `address`.
    func listens(at address: HostPort) -> Bool { host == address.host && port == address.port }
}
