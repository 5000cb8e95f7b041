import KimberliteCore
import NIOCore

/// What the node reports about itself: `/status` and the gauges of `/metrics`.
extension KimberliteNode {
    /// Builds `/status` from measured state.
    func status() -> StatusReport {
        let snapshot = driver.snapshot
        let peers = transport.snapshot()
        let window = config.consensus.electionTimeoutMax
        let now = NIODeadline.now()
        var healthy = 0
        // The current epoch's members (a committed reconfiguration changes them).
        let current = snapshot.members.isEmpty ? transport.currentMembers : snapshot.members
        let memberReports = current.map { id -> StatusReport.Member in
            let member = transport.address(of: id)
            if id == config.server.nodeID {
                healthy += 1
                return .init(nodeID: id, clusterAddress: member?.address ?? "\(config.server.clusterAddress)",
                             clientAddress: ClusterTransport.resolveWildcard("\(config.server.bindAddress)", host: member?.host),
                             metricsAddress: ClusterTransport.resolveWildcard("\(config.telemetry.metricsAddress)", host: member?.host),
                             state: "up", lastSeenMs: 0)
            }
            let peer = peers[id]
            let sinceMs = peer?.lastSeen.map { Int((now - $0).nanoseconds / 1_000_000) }
            let up = sinceMs.map { Double($0) <= window.milliseconds } ?? false
            if up { healthy += 1 }
            return .init(nodeID: id, clusterAddress: member?.address ?? "unknown", clientAddress: peer?.clientAddress,
                         metricsAddress: peer?.metricsAddress, state: up ? "up" : "down", lastSeenMs: sinceMs)
        }
        let applied = projection.appliedOp
        return StatusReport(
            nodeID: config.server.nodeID, clusterName: config.server.clusterName, version: Self.version,
            // Left out of the membership (superseded or removed): "recovering", with the reason.
            status: snapshot.superseded != nil || snapshot.status == .removed ? ReplicaStatus.recovering.rawValue : snapshot.status.rawValue, view: snapshot.view, opNumber: snapshot.op, commitNumber: snapshot.commit,
            commitChecksum: snapshot.commitChecksum?.description,
            isLeader: snapshot.superseded == nil && snapshot.isPrimary, leaderID: snapshot.superseded == nil ? snapshot.leader ?? 0 : 0, clusterSize: current.count,
            healthyReplicas: healthy, clusterMembers: memberReports,
            projection: .init(appliedOp: applied, lag: snapshot.commit > applied ? snapshot.commit - applied : 0),
            clockOffsetMs: clockOffsetMs(snapshot), statusReason: snapshot.statusReason, epoch: snapshot.epoch)
    }

    func updateGauges() {
        let snapshot = driver.snapshot
        let applied = projection.appliedOp
        metrics.view.record(Double(snapshot.view))
        metrics.leader.record(Double(snapshot.leader ?? 0))
        metrics.projectionLag.record(Double(snapshot.commit > applied ? snapshot.commit - applied : 0))
        metrics.clockOffset.record((clockOffsetMs(snapshot) ?? 0) / 1000)
        for (peer, view) in transport.snapshot() { metrics.peerConnected(peer, view.connected) }
    }

    /// This node's clock minus the leader's, in ms (null without a leader).
    func clockOffsetMs(_ snapshot: ReplicaSnapshot) -> Double? {
        guard let leader = snapshot.leader else { return nil }
        if leader == config.server.nodeID { return 0 }
        // The transport measures the peer's clock minus ours.
        return transport.snapshot()[leader]?.clockOffsetSeconds.map { -$0 * 1000 }
    }
}
