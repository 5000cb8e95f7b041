import CoreMetrics
import Foundation
import KimberliteCore
import Metrics
import NIOConcurrencyHelpers
import Prometheus

/// The metrics of DESIGN.md §2, created at start-up so every name appears
/// in `/metrics` from the first scrape (with 0 where nothing happened yet).
final class NodeMetrics: @unchecked Sendable {
    let registry: PrometheusCollectorRegistry

    let view: Metrics.Gauge
    let leader: Metrics.Gauge
    let viewChanges: Metrics.Counter
    let commits: Metrics.Counter
    let projectionLag: Metrics.Gauge
    let electionTimeouts: Metrics.Counter
    let checksumFailures: Metrics.Counter
    /// `kmb_peer_messages_refused_total`: cluster messages refused because
    /// they contradict this replica's state (an older view, an entry that
    /// fails its checksum or does not chain).
    let messagesRefused: Metrics.Counter
    let requestsInFlight: Meter
    let clockOffset: Metrics.Gauge
    let writeDuration: Metrics.Timer
    let queryDuration: Metrics.Timer
    private let requestCounters: [String: Metrics.Counter]
    /// One `kmb_peer_connected{peer=…}` per peer; members that join later get theirs when first seen.
    private let peerGauges: NIOLockedValueBox<[NodeID: Metrics.Gauge]>
    /// Last commit number counted (driver thread only).
    var committed: OpNumber = 0

    /// Bootstraps swift-metrics with a Prometheus factory (once per process).
    init(peers: [NodeID]) {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        // Buckets from 100 µs to 10 s: fsyncs sit at the low end, timeouts at the top.
        factory.defaultDurationHistogramBuckets = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .microseconds(2500),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .microseconds(2_500_000), .seconds(5), .seconds(10),
        ]
        MetricsSystem.bootstrap(factory)

        view = Metrics.Gauge(label: "kmb_consensus_view")
        leader = Metrics.Gauge(label: "kmb_consensus_leader")
        viewChanges = Metrics.Counter(label: "kmb_consensus_view_changes_total")
        commits = Metrics.Counter(label: "kmb_consensus_commits_total")
        projectionLag = Metrics.Gauge(label: "kmb_projection_lag")
        electionTimeouts = Metrics.Counter(label: "kmb_election_timeouts_total")
        checksumFailures = Metrics.Counter(label: "kmb_checksum_failures_total")
        messagesRefused = Metrics.Counter(label: "kmb_peer_messages_refused_total")
        requestsInFlight = Meter(label: "kmb_requests_in_flight")
        clockOffset = Metrics.Gauge(label: "kmb_clock_offset_seconds")
        writeDuration = Metrics.Timer(label: "kmb_write_duration_seconds")
        queryDuration = Metrics.Timer(label: "kmb_query_duration_seconds")
        var counters: [String: Metrics.Counter] = [:]
        for method in ["execute", "query"] {
            for status in ["ok", "error"] {
                counters["\(method)/\(status)"] = Metrics.Counter(label: "kmb_requests_total", dimensions: [("method", method), ("status", status)])
            }
        }
        requestCounters = counters
        peerGauges = NIOLockedValueBox(Dictionary(uniqueKeysWithValues: peers.map { ($0, Self.peerGauge($0)) }))
        // Storage and projection metrics are created by those layers; touch
        // them here so they exist before the first fsync or apply.
        _ = Metrics.Counter(label: "kmb_log_entries_total")
        _ = Metrics.Counter(label: "kmb_log_bytes_total")
        _ = Metrics.Gauge(label: "kmb_log_size_bytes")
        _ = Metrics.Gauge(label: "kmb_projection_applied_position")
        _ = Metrics.Timer(label: "kmb_fsync_duration_seconds")
        for gauge in [view, leader, projectionLag, clockOffset] { gauge.record(0) }
        requestsInFlight.set(0)
    }

    func countRequest(method: String, ok: Bool) {
        requestCounters["\(method)/\(ok ? "ok" : "error")"]?.increment()
    }

    func peerConnected(_ node: NodeID, _ connected: Bool) {
        let gauge = peerGauges.withLockedValue { gauges in
            if let gauge = gauges[node] { return gauge }
            let gauge = Self.peerGauge(node)
            gauges[node] = gauge
            return gauge
        }
        gauge.record(connected ? 1 : 0)
    }

    private static func peerGauge(_ node: NodeID) -> Metrics.Gauge {
        Metrics.Gauge(label: "kmb_peer_connected", dimensions: [("peer", "\(node)")])
    }

    /// Prometheus text exposition of every metric.
    func exposition() -> [UInt8] { registry.emitToBuffer() }
}
