import KimberliteCore
import Testing

/// The start-up decision the server and the simulator share.
@Suite struct StartupTests {
    let members: [NodeID] = [1, 2, 3]

    func log(_ count: Int) -> [LogEntry] {
        var entries: [LogEntry] = []
        for op in 1...max(count, 1) where op <= count {
            entries.append(LogEntry(op: OpNumber(op), view: 0, timestampMs: Int64(op), session: nil, payload: [UInt8(op)],
                                    parent: entries.last?.checksum ?? .zero))
        }
        return entries
    }

    @Test func newDirectoryHasNotJoinedAndWaitsForFormation() {
        let decision = Startup.decide(stored: nil, members: members, log: [], appliedOp: 0, journalLostEntries: false)
        #expect(decision.durable.record == DurableRecord(members: members))
        #expect(decision.findings == [.notJoined(journalOp: 0)])
        let replica = Replica(configuration: ReplicaConfiguration(members: members, selfID: 1), durable: decision.durable, seed: 1)
        #expect(replica.status == .recovering && replica.formationPending)
    }

    @Test func newOneNodeClusterFormsOnItsOwn() {
        let decision = Startup.decide(stored: nil, members: [1], log: [], appliedOp: 0, journalLostEntries: false)
        #expect(decision.durable.record.formed)
        #expect(decision.findings.isEmpty)
    }

    @Test func intactLogStartsNormallyAndMarksTheLogStarted() {
        let stored = DurableRecord(view: 2, logView: 2, commitNumber: 3, members: members, formed: true)
        let decision = Startup.decide(stored: stored, members: members, log: log(5), appliedOp: 4, journalLostEntries: false)
        var expected = stored
        expected.logStarted = true
        expected.commitNumber = 4
        #expect(decision.durable.record == expected)
        #expect(decision.durable.commitHint == 4)
        #expect(decision.findings.isEmpty)
    }

    @Test func journalBehindTheProjectionRecoversThroughTheAppliedOp() {
        let stored = DurableRecord(view: 2, logView: 2, commitNumber: 3, members: members, formed: true, logStarted: true)
        let decision = Startup.decide(stored: stored, members: members, log: log(2), appliedOp: 7, journalLostEntries: false)
        #expect(decision.durable.record.recovering)
        #expect(decision.durable.record.recoveryTarget == 7)
        #expect(decision.findings == [.recovering(journalOp: 2, committedOp: 7)])
    }

    @Test func emptiedJournalOfAStartedLogRecoversEvenWithNothingCommittedKnown() {
        // `rm -rf log/*` with neither the superblock nor the projection knowing a commit.
        let stored = DurableRecord(members: members, formed: true, logStarted: true)
        let decision = Startup.decide(stored: stored, members: members, log: [], appliedOp: 0, journalLostEntries: false)
        #expect(decision.durable.record.recovering)
        let replica = Replica(configuration: ReplicaConfiguration(members: members, selfID: 2), durable: decision.durable, seed: 1)
        #expect(replica.status == .recovering && !replica.formationPending)
    }

    @Test func quarantinedCorruptionRecoversAndStaysRecoveringAcrossRestarts() {
        let stored = DurableRecord(view: 1, logView: 1, members: members, formed: true, logStarted: true)
        let first = Startup.decide(stored: stored, members: members, log: log(4), appliedOp: 0, journalLostEntries: true)
        #expect(first.durable.record.recovering && first.durable.record.recoveryTarget == 4)
        // Restarted before recovery finished: the record keeps it recovering.
        let second = Startup.decide(stored: first.durable.record, members: members, log: log(4), appliedOp: 0,
                                    journalLostEntries: false)
        #expect(second.durable.record.recovering)
    }

    @Test func recordCommitNumberIsNeverLowered() {
        let stored = DurableRecord(view: 1, logView: 1, commitNumber: 9, members: members, formed: true, logStarted: true)
        let decision = Startup.decide(stored: stored, members: members, log: log(9), appliedOp: 2, journalLostEntries: false)
        #expect(decision.durable.record.commitNumber == 9)
        let replica = Replica(configuration: ReplicaConfiguration(members: members, selfID: 2), durable: decision.durable, seed: 1)
        #expect(replica.durableRecord.commitNumber == 9)
    }
}
