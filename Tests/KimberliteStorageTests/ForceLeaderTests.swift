import Foundation
import KimberliteCore
import Testing
@testable import KimberliteStorage

/// `kimberlite-admin force-leader`'s storage side: what it rewrites, what it
/// refuses, and the audit record's crash window.
@Suite struct ForceLeaderTests {
    /// A stopped node's directory: node 1 of [1, 2, 3], `ops` entries, the given record fields.
    static func dataDirectory(_ temp: TempDirectory, ops: Int = 10, commit: OpNumber = 10, recovering: Bool = false) throws -> String {
        let data = try DataDirectory(path: temp.sub("data"))
        defer { data.unlock() }
        let journal = try data.openJournal(segmentSize: 4096, syncMode: .fsync, logger: quietLogger)
        try journal.append(makeEntries(count: ops))
        try journal.sync()
        journal.close()
        var state = SuperblockState(clusterName: "prod", nodeID: 1, view: 4, logView: 4, commitNumber: commit, members: [1, 2, 3])
        state.formed = true
        state.logStarted = true
        state.recovering = recovering
        try data.openSuperblock().write(state)
        return data.path
    }

    static func superblock(_ path: String) throws -> SuperblockState? { try Superblock(path: path + "/superblock").read() }

    @Test func theNodeAloneIsTheMembershipAtTheNextEpochAndTheRecordMatches() throws {
        let temp = TempDirectory()
        let path = try Self.dataDirectory(temp)
        let record = try ForceLeader.run(dataDir: path, nodeID: 1, by: "ops@host", nowMs: 1)
        #expect(record.oldMembers == [1, 2, 3] && record.newMembers == [1] && record.oldEpoch == 0 && record.newEpoch == 1 && record.op == 10)
        let state = try #require(try Self.superblock(path))
        #expect(state.members == [1] && state.epoch == 1 && state.commitNumber == 10 && state.logView == state.view)
        #expect(ForceLeader.pendingRecord(dataDir: path, matching: state) == .record(record))
    }

    @Test func incompleteLogsAndStrangersAreRefusedAndNothingChanges() throws {
        for (recovering, commit, nodeID, phrase) in [(true, OpNumber(10), NodeID(1), "recovering"),
                                                     (false, OpNumber(15), NodeID(1), "ends at op 10"),
                                                     (false, OpNumber(10), NodeID(2), "does not match")] {
            let temp = TempDirectory()
            let path = try Self.dataDirectory(temp, commit: commit, recovering: recovering)
            let before = try Self.superblock(path)
            do {
                _ = try ForceLeader.run(dataDir: path, nodeID: nodeID, by: "ops@host", nowMs: 1)
                Issue.record("force-leader accepted: \(phrase)")
            } catch let refusal as ForceLeader.Refusal {
                #expect(refusal.description.contains(phrase) && refusal.description.lowercased().contains("nothing was changed"), "\(refusal)")
            }
            #expect(try Self.superblock(path) == before)
            #expect(!FileManager.default.fileExists(atPath: path + "/" + ForceLeader.pendingRecordName))
        }
    }

    @Test func aRecordTheSuperblockDoesNotBearOutIsNeverLogged() throws {
        let temp = TempDirectory()
        let path = try Self.dataDirectory(temp)
        let old = try #require(try Self.superblock(path))
        _ = try ForceLeader.run(dataDir: path, nodeID: 1, by: "ops@host", nowMs: 1)
        // As if the superblock write had not happened (a crash between the two writes).
        guard case .setAside(let reason) = ForceLeader.pendingRecord(dataDir: path, matching: old) else {
            Issue.record("a record the superblock does not bear out would be logged")
            return
        }
        #expect(reason.contains("epoch 1") && reason.contains("unused"), "\(reason)")
        #expect(FileManager.default.fileExists(atPath: path + "/" + ForceLeader.pendingRecordName + ".unused"))
        #expect(ForceLeader.pendingRecord(dataDir: path, matching: old) == .none)
    }
}
