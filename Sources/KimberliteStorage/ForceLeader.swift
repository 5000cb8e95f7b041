import Foundation
import KimberliteCore
import Logging

/// The audit record of a force-leader, kept in `<data_dir>/force-leader.json`
/// until the node has logged it as a `force_leader` entry.
public struct ForceLeaderRecord: Codable, Equatable, Sendable {
    public var clusterName: String
    public var nodeID: NodeID
    public var oldEpoch: UInt64
    public var newEpoch: UInt64
    public var oldMembers: [NodeID]
    public var newMembers: [NodeID]
    /// Who ran it (`user@host`) and when (ms since the Unix epoch).
    public var by: String
    public var atMs: Int64
    /// The node's last op and commit number when it was forced.
    public var op: OpNumber
    public var commitNumber: OpNumber
}

/// `kimberlite-admin force-leader` (DESIGN.md §2b "Force leader"): offline,
/// makes one node the whole membership at `epoch + 1`, keeping its log whole.
public enum ForceLeader {
    public static let pendingRecordName = "force-leader.json"

    /// Why force-leader refused; nothing was changed.
    public struct Refusal: Error, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    /// Rewrites the superblock of the stopped node in `dataDir` so that node
    /// `nodeID` alone is the membership at the next epoch, and leaves the
    /// audit record for the server to log as an entry at its next start.
    /// - Returns: the audit record.
    /// - Throws: `StorageError.locked` when a server holds the directory (exit
    ///   75); `Refusal` when the directory has no superblock, belongs to
    ///   another node, or is diverged (nothing changed); other `StorageError`s.
    public static func run(dataDir: String, nodeID: NodeID, by: String, nowMs: Int64) throws -> ForceLeaderRecord {
        guard FileIO.kind(dataDir + "/superblock") == .file else {
            throw Refusal("\(dataDir) has no superblock: it is not the data directory of a node that has run")
        }
        let data = try DataDirectory(path: dataDir)
        defer { data.unlock() }
        let superblock = try data.openSuperblock()
        guard var state = try superblock.read() else {
            throw Refusal("\(dataDir) has no valid superblock")
        }
        guard state.nodeID == nodeID else {
            throw Refusal("node id \(nodeID) does not match \(dataDir), which belongs to node \(state.nodeID) of cluster \"\(state.clusterName)\"; nothing was changed")
        }
        if let divergence = state.divergence {
            throw Refusal("node \(nodeID) is diverged (its committed log contradicts the cluster's at op \(divergence.op)); it must not lead. Nothing was changed")
        }
        // Only a node whose log holds everything it knew of may lead alone:
        // as the only member it could never recover what it lacks.
        if state.recovering {
            throw Refusal("node \(nodeID) is recovering lost entries (it needs ops through \(state.recoveryTarget) from a leader); force-leader the member with the longest log instead. Nothing was changed")
        }
        let journal = try data.openJournal(segmentSize: 64 << 20, syncMode: .fsync, logger: .init(label: "kimberlite.force-leader"))
        let op = journal.lastOp
        let corruption = journal.recovery.corruption
        journal.close()
        if let corruption {
            throw Refusal("node \(nodeID)'s journal is damaged (\(corruption)); it lacks entries from op \(corruption.op). Force-leader the member with the longest log instead. Nothing was changed")
        }
        if state.commitNumber > op {
            throw Refusal("node \(nodeID)'s journal ends at op \(op) but ops through \(state.commitNumber) were committed; force-leader the member with the longest log instead. Nothing was changed")
        }
        // Past any epoch this node has heard of, so two forced clusters never share one.
        let newEpoch = max(state.epoch, state.supersededByEpoch) + 1
        let record = ForceLeaderRecord(clusterName: state.clusterName, nodeID: nodeID, oldEpoch: state.epoch, newEpoch: newEpoch,
                                       oldMembers: state.members, newMembers: [nodeID], by: by, atMs: nowMs, op: op,
                                       commitNumber: state.commitNumber)
        // The audit record first; the server logs it only if the superblock
        // says the same (`pendingRecord(dataDir:matching:)`), so a crash
        // between the two writes leaves no false entry.
        let path = data.path + "/" + pendingRecordName
        try FileIO.writeReplacing(Array(try JSONEncoder.sorted.encode(record)), to: path)
        state.epoch = newEpoch
        state.members = [nodeID]
        state.logView = state.view
        state.formed = true
        state.recoveryTarget = 0
        state.supersededByEpoch = 0
        do { try superblock.write(state) } catch {
            try? FileIO.remove(path)
            throw error
        }
        return record
    }

    /// What start-up finds of a force-leader's audit record.
    public enum Pending: Equatable, Sendable {
        case none
        /// The record matches the superblock: log it as an entry.
        case record(ForceLeaderRecord)
        /// A record the superblock does not bear out (a crash between the
        /// two writes, or a damaged file): moved aside, never logged.
        case setAside(reason: String)
    }

    /// The pending audit record of a force-leader, checked against the
    /// superblock (same node, its epoch, it alone the membership); one that
    /// does not match is moved aside as `force-leader.json.unused`.
    public static func pendingRecord(dataDir: String, matching state: SuperblockState) -> Pending {
        let path = dataDir + "/" + pendingRecordName
        guard FileIO.kind(path) != .missing else { return .none }
        let reason: String
        do {
            let record = try JSONDecoder().decode(ForceLeaderRecord.self, from: Data(try FileIO.readWholeFile(path)))
            if record.nodeID == state.nodeID && record.newEpoch == state.epoch && state.members == [state.nodeID] {
                return .record(record)
            }
            reason = "it names node \(record.nodeID) at epoch \(record.newEpoch), the superblock node \(state.nodeID) at epoch \(state.epoch) with members \(state.members)"
        } catch {
            reason = "it cannot be read: \(error)"
        }
        try? FileIO.rename(path, path + ".unused")
        return .setAside(reason: "\(path) was not used (\(reason)); kept as \(pendingRecordName).unused")
    }

    /// Removes the pending record once its entry is in the log.
    public static func clearPendingRecord(dataDir: String) throws {
        try FileIO.remove(dataDir + "/" + pendingRecordName)
        try FileIO.syncDirectory(dataDir)
    }
}

extension JSONEncoder {
    /// JSON with sorted keys (stable bytes for records and manifests).
    public static var sorted: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }
}
