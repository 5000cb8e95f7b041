import KimberliteCore
import Testing

/// Direct, hand-driven checks of single rules; the simulator covers the rest.
@Suite struct ReplicaTests {
    func replica(_ id: NodeID, members: [NodeID] = [1, 2, 3], fresh: Bool = true) -> Replica {
        Replica(configuration: ReplicaConfiguration(members: members, selfID: id, heartbeatTicks: 2,
                                                    electionTimeoutMinTicks: 5, electionTimeoutMaxTicks: 8),
                durable: DurableState(isFresh: fresh), seed: 1)
    }

    @Test func singleNodeCommitsOnItsOwnFsync() {
        var node = replica(1, members: [1])
        var actions = node.handle(.clientRequests([ClientRequest(id: 1, session: nil, payload: [1])], nowMs: 5))
        #expect(actions.contains(.accepted(requestID: 1, op: 1)))
        #expect(!actions.contains(.commit(through: 1)), "not committed before the fsync")
        actions = node.handle(.persisted(throughOp: 1))
        #expect(actions.contains(.commit(through: 1)))
        actions = node.handle(.readRequest(id: 9))
        #expect(actions.contains(.readReady(id: 9, atOp: 1)))
    }

    @Test func backupRefusesWritesNamingTheLeader() {
        var node = replica(2)
        let actions = node.handle(.clientRequests([ClientRequest(id: 1, session: nil, payload: [1])], nowMs: 5))
        #expect(actions == [.rejected(requestID: 1, .notPrimary(leader: 1))])
    }

    @Test func retryOfAPreparedRequestIsNotPreparedTwice() {
        var primary = replica(1)
        let session = ClientSession(clientID: "a", requestNumber: 4)
        _ = primary.handle(.clientRequests([ClientRequest(id: 1, session: session, payload: [1])], nowMs: 5))
        let retry = primary.handle(.clientRequests([ClientRequest(id: 2, session: session, payload: [1])], nowMs: 6))
        #expect(retry == [.accepted(requestID: 2, op: 1)])
        #expect(primary.op == 1)
        let newer = primary.handle(.clientRequests(
            [ClientRequest(id: 3, session: ClientSession(clientID: "a", requestNumber: 5), payload: [2])], nowMs: 7))
        #expect(newer == [.rejected(requestID: 3, .inProgress(outstanding: 4))])
    }

    @Test func primaryWithoutQuorumStepsDown() {
        var primary = replica(1)
        var steppedDown = false
        for _ in 0..<20 {
            let actions = primary.handle(.tick)
            if actions.contains(.note(.steppedDown(view: 0))) { steppedDown = true; break }
        }
        #expect(steppedDown)
        #expect(primary.leader == nil)
        #expect(primary.status == .viewChange)
    }

    @Test func restartedPrimaryDoesNotResumeItsView() {
        let node = Replica(configuration: ReplicaConfiguration(members: [1, 2, 3], selfID: 1),
                           durable: DurableState(view: 3, logView: 3, log: []), seed: 1)
        #expect(node.status == .viewChange, "primary of view 3 (3 % 3 = 0 → node 1) must not resume as primary")
    }
}
