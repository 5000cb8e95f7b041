import KimberliteCore

/// `GET /status` (DESIGN.md §2). Optional fields are written as JSON null,
/// never left out, so `jq '.leader_id'` always finds the key.
public struct StatusReport: Codable, Sendable {
    public struct Member: Codable, Sendable {
        public var nodeID: NodeID
        public var clusterAddress: String
        public var clientAddress: String?
        public var metricsAddress: String?
        /// "up" or "down": heard from within election_timeout_max.
        public var state: String
        /// Milliseconds since the last message from this member; 0 for self; null if never.
        public var lastSeenMs: Int?

        enum CodingKeys: String, CodingKey {
            case nodeID = "node_id", clusterAddress = "cluster_address", clientAddress = "client_address"
            case metricsAddress = "metrics_address", state, lastSeenMs = "last_seen_ms"
        }

        public func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(nodeID, forKey: .nodeID)
            try container.encode(clusterAddress, forKey: .clusterAddress)
            try container.encode(clientAddress, forKey: .clientAddress)
            try container.encode(metricsAddress, forKey: .metricsAddress)
            try container.encode(state, forKey: .state)
            try container.encode(lastSeenMs, forKey: .lastSeenMs)
        }
    }

    public struct Projection: Codable, Sendable {
        public var appliedOp: OpNumber
        public var lag: UInt64
        enum CodingKeys: String, CodingKey { case appliedOp = "applied_op", lag }
    }

    public var nodeID: NodeID
    public var clusterName: String
    public var version: String
    /// "normal", "view_change" or "recovering".
    public var status: String
    public var view: ViewNumber
    public var opNumber: OpNumber
    public var commitNumber: OpNumber
    /// Hex SHA-256 of this node's entry at `commit_number` (null at 0), so
    /// members at the same commit number can be checked for agreement.
    public var commitChecksum: String? = nil
    public var isLeader: Bool
    /// The leader's node id; 0 when there is no leader.
    public var leaderID: NodeID
    public var clusterSize: Int
    public var healthyReplicas: Int
    public var clusterMembers: [Member]
    public var projection: Projection
    /// This node's clock minus the leader's, ms; 0 on the leader; null without a leader.
    public var clockOffsetMs: Double?
    /// Why this node is not taking part as usual (e.g. its disk is full), in
    /// words for the operator; null when nothing is wrong.
    public var statusReason: String? = nil
    /// The membership epoch `cluster_size` and `cluster_members` belong to (DESIGN.md §2b).
    public var epoch: UInt64? = nil

    enum CodingKeys: String, CodingKey {
        case nodeID = "node_id", clusterName = "cluster_name", version, status, view
        case opNumber = "op_number", commitNumber = "commit_number", commitChecksum = "commit_checksum", isLeader = "is_leader", leaderID = "leader_id"
        case clusterSize = "cluster_size", healthyReplicas = "healthy_replicas", clusterMembers = "cluster_members"
        case projection, clockOffsetMs = "clock_offset_ms", statusReason = "status_reason", epoch
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(nodeID, forKey: .nodeID)
        try container.encode(clusterName, forKey: .clusterName)
        try container.encode(version, forKey: .version)
        try container.encode(status, forKey: .status)
        try container.encode(view, forKey: .view)
        try container.encode(opNumber, forKey: .opNumber)
        try container.encode(commitNumber, forKey: .commitNumber)
        try container.encode(commitChecksum, forKey: .commitChecksum)
        try container.encode(isLeader, forKey: .isLeader)
        try container.encode(leaderID, forKey: .leaderID)
        try container.encode(clusterSize, forKey: .clusterSize)
        try container.encode(healthyReplicas, forKey: .healthyReplicas)
        try container.encode(clusterMembers, forKey: .clusterMembers)
        try container.encode(projection, forKey: .projection)
        try container.encode(clockOffsetMs, forKey: .clockOffsetMs)
        try container.encode(statusReason, forKey: .statusReason)
        try container.encode(epoch, forKey: .epoch)
    }
}
