import KimberliteCore
import Testing

/// Direct, hand-driven checks of single rules; the simulator covers the rest.
@Suite struct ReplicaTests {
    /// A replica of a brand-new cluster after formation (every other member answered "fresh").
    func replica(_ id: NodeID, members: [NodeID] = [1, 2, 3], maxUncommittedOps: Int = 1024,
                 maxQueuedRequests: Int = 4096) -> Replica {
        var node = unformed(id, members: members, maxUncommittedOps: maxUncommittedOps, maxQueuedRequests: maxQueuedRequests)
        guard members.count > 1 else { return node }
        let nonce = recoveryNonce(node.handle(.tick))!
        for other in members where other != id {
            _ = node.handle(.message(fresh(nonce), from: other, epoch: 0))
        }
        if node.isPrimary {
            // The backups formed too and acknowledge the primary.
            for other in members where other != id {
                _ = node.handle(.message(.commitAck(view: 0, sequence: 0, op: 0), from: other, epoch: 0))
            }
        }
        return node
    }

    func unformed(_ id: NodeID, members: [NodeID] = [1, 2, 3], maxUncommittedOps: Int = 1024,
                  maxQueuedRequests: Int = 4096) -> Replica {
        var configuration = ReplicaConfiguration(members: members, selfID: id, heartbeatTicks: 2,
                                                 electionTimeoutMinTicks: 5, electionTimeoutMaxTicks: 8)
        configuration.maxUncommittedOps = maxUncommittedOps
        configuration.maxQueuedRequests = maxQueuedRequests
        return Replica(configuration: configuration, durable: DurableState(record: DurableRecord(members: members)), seed: 1)
    }

    func fresh(_ nonce: UInt64) -> Message {
        .recoveryResponse(view: 0, nonce: nonce, op: 0, commit: 0, isPrimary: false, isFresh: true, isNormal: false)
    }

    func recoveryNonce(_ actions: [ReplicaAction]) -> UInt64? {
        for case .send(.recovery(let nonce), _, _) in actions { return nonce }
        return nil
    }

    @Test func newClusterFormsOnlyWhenEveryOtherMemberHoldsNothing() {
        var node = unformed(1)
        #expect(node.status == .recovering && node.formationPending)
        #expect(node.leader == nil)
        let nonce = recoveryNonce(node.handle(.tick))!
        // A quorum is not enough: a wiped replica would answer "fresh" too.
        let first = node.handle(.message(fresh(nonce), from: 2, epoch: 0))
        #expect(first.contains(.note(.awaitingFormation(fresh: 1, needed: 2))))
        #expect(node.status == .recovering)
        // An answer to an older round does not count.
        _ = node.handle(.message(fresh(nonce &+ 1), from: 3, epoch: 0))
        #expect(node.status == .recovering)
        let second = node.handle(.message(fresh(nonce), from: 3, epoch: 0))
        #expect(second.contains(.note(.formed)))
        #expect(node.status == .normal && node.isPrimary && node.view == 0)
        // It prepares nothing until a quorum acknowledges it, so members still
        // waiting for formation keep seeing an empty log.
        let early = node.handle(.clientRequests([ClientRequest(id: 1, session: nil, payload: [1])], nowMs: 5))
        #expect(early == [.rejected(requestID: 1, .notPrimary(leader: nil))])
        #expect(node.op == 0)
        #expect(node.leader == nil, "not a leader to clients before a quorum acknowledges it")
        _ = node.handle(.message(.commitAck(view: 0, sequence: 1, op: 0), from: 2, epoch: 0))
        #expect(node.leader == nil, "a quorum is not enough while member 3 may still be forming")
        _ = node.handle(.message(.commitAck(view: 0, sequence: 1, op: 0), from: 3, epoch: 0))
        #expect(node.leader == 1)
        let later = node.handle(.clientRequests([ClientRequest(id: 2, session: nil, payload: [1])], nowMs: 6))
        #expect(later.contains(.accepted(requestID: 2, op: 1)))
    }

    @Test func memberThatChangedViewsWhileEmptyLetsOthersFormIntoThatView() {
        var node = unformed(2)
        let nonce = recoveryNonce(node.handle(.tick))!
        _ = node.handle(.message(.recoveryResponse(view: 4, nonce: nonce, op: 0, commit: 0, isPrimary: false, isFresh: true, isNormal: false), from: 1, epoch: 0))
        let actions = node.handle(.message(fresh(nonce), from: 3, epoch: 0))
        #expect(actions.contains(.note(.formed)))
        #expect(node.status == .viewChange && node.view == 4)
        #expect(actions.contains(.persistDurable(DurableRecord(view: 4, logView: 0, members: [1, 2, 3], formed: true))),
                "the record carries the new view and formed, together")
    }

    @Test func replicaThatFindsAFormedClusterRecoversInsteadOfForming() {
        var node = unformed(1)
        let nonce = recoveryNonce(node.handle(.tick))!
        _ = node.handle(.message(fresh(nonce), from: 2, epoch: 0))
        // Node 3 holds entries: the cluster formed (and node 1 may have been wiped).
        let actions = node.handle(.message(.recoveryResponse(view: 0, nonce: nonce, op: 0, commit: 4, isPrimary: false, isFresh: false, isNormal: true), from: 3, epoch: 0))
        #expect(!actions.contains(.note(.formed)))
        #expect(node.status == .recovering && !node.formationPending)
        #expect(node.leader == nil)
        // §4.3 needs a quorum of answers from replicas in normal status: the
        // answer of a replica waiting for formation (maybe wiped) does not count.
        let primaryAnswer = node.handle(.message(.recoveryResponse(view: 5, nonce: nonce, op: 7, commit: 7, isPrimary: true,
                                                                   isFresh: false, isNormal: true), from: 3, epoch: 0))
        #expect(!primaryAnswer.contains { if case .send(.requestEntries, _, _) = $0 { return true } else { return false } })
        // It no longer tells others it may form with them.
        let asked = node.handle(.message(.recovery(nonce: 77), from: 2, epoch: 0))
        #expect(!asked.contains { if case .send(.recoveryResponse, _, _) = $0 { return true } else { return false } })
    }

    @Test func recoveryAnswersSayWhetherTheSenderHoldsAnything() {
        var waiting = unformed(2)
        let answer = waiting.handle(.message(.recovery(nonce: 5), from: 1, epoch: 0))
        #expect(answer.contains(.send(fresh(5), to: 1, epoch: 0)))
        var primary = replica(1)
        _ = primary.handle(.clientRequests([ClientRequest(id: 1, session: nil, payload: [1])], nowMs: 5))
        let after = primary.handle(.message(.recovery(nonce: 6), from: 3, epoch: 0))
        #expect(after.contains(.send(.recoveryResponse(view: 0, nonce: 6, op: 1, commit: 0, isPrimary: true, isFresh: false, isNormal: true), to: 3, epoch: 0)))
    }

    /// VRR §4.3 asks for answers that meet every quorum outside the
    /// recovering replica: n - quorum + 1 of them. In a two-member epoch
    /// (after force-leader and one join) that is the other member alone,
    /// which must answer as primary; in four members, two answers.
    @Test func recoveryWaitsForAnswersThatMeetEveryQuorumAndNoMore() {
        func asksForEntries(_ actions: [ReplicaAction], from leader: NodeID) -> Bool {
            actions.contains { if case .send(.requestEntries, let to, _) = $0 { return to == leader } else { return false } }
        }
        func normal(_ nonce: UInt64, view: ViewNumber, isPrimary: Bool) -> Message {
            .recoveryResponse(view: view, nonce: nonce, op: isPrimary ? 9 : 0, commit: 9, isPrimary: isPrimary,
                              isFresh: false, isNormal: true)
        }
        #expect(ReplicaConfiguration(members: [1, 2], selfID: 1).recoveryQuorum == 1)
        #expect(ReplicaConfiguration(members: [1, 2, 3], selfID: 1).recoveryQuorum == 2)
        #expect(ReplicaConfiguration(members: [1, 2, 3, 4], selfID: 1).recoveryQuorum == 2)
        #expect(ReplicaConfiguration(members: [1, 2, 3, 4, 5], selfID: 1).recoveryQuorum == 3)

        // Two members: a backup's answer is not enough (it names no primary
        // that answered); the primary's alone is.
        var two = unformed(2, members: [1, 2])
        var nonce = recoveryNonce(two.handle(.tick))!
        #expect(!asksForEntries(two.handle(.message(normal(nonce, view: 2, isPrimary: false), from: 1, epoch: 0)), from: 1))
        #expect(two.status == .recovering)
        two = unformed(2, members: [1, 2])
        nonce = recoveryNonce(two.handle(.tick))!
        #expect(asksForEntries(two.handle(.message(normal(nonce, view: 2, isPrimary: true), from: 1, epoch: 0)), from: 1))

        // Four members: the primary of view 1 (node 2) and one backup.
        var four = unformed(4, members: [1, 2, 3, 4])
        nonce = recoveryNonce(four.handle(.tick))!
        #expect(!asksForEntries(four.handle(.message(normal(nonce, view: 1, isPrimary: true), from: 2, epoch: 0)), from: 2))
        #expect(asksForEntries(four.handle(.message(normal(nonce, view: 1, isPrimary: false), from: 3, epoch: 0)), from: 2))
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
                           durable: DurableState(record: DurableRecord(view: 3, logView: 3, members: [1, 2, 3], formed: true)), seed: 1)
        #expect(node.status == .viewChange, "primary of view 3 (3 % 3 = 0 → node 1) must not resume as primary")
    }

    @Test func fullPipelineQueuesRequestsUntilCommitsMakeRoomAndRefusesThemOnLosingTheView() {
        var primary = replica(1, maxUncommittedOps: 2)
        let requests = (1...5).map { ClientRequest(id: UInt64($0), session: nil, payload: [UInt8($0)]) }
        let first = primary.handle(.clientRequests(requests, nowMs: 5))
        #expect(first.contains(.accepted(requestID: 1, op: 1)) && first.contains(.accepted(requestID: 2, op: 2)))
        #expect(!first.contains { if case .accepted(let id, _) = $0 { return id > 2 } else { return false } },
                "requests 3-5 wait: the pipeline holds 2 uncommitted ops")
        #expect(!first.contains { if case .rejected = $0 { return true } else { return false } }, "queued, not refused")
        #expect(primary.op == 2)

        // Op 1 commits (durable here, acknowledged by backup 2): one slot frees, request 3 is prepared.
        _ = primary.handle(.persisted(throughOp: 2))
        let commit = primary.handle(.message(.prepareOK(view: 0, op: 1), from: 2, epoch: 0))
        #expect(commit.contains(.commit(through: 1)))
        #expect(commit.contains(.accepted(requestID: 3, op: 3)))
        #expect(commit.contains { if case .send(.prepare(_, _, let entries), 2, _) = $0 { return entries.map(\.op) == [3] } else { return false } })
        #expect(primary.op == 3 && primary.commitNumber == 1)

        // Losing the view refuses what is still queued: never prepared, so a retry is safe.
        let lost = primary.handle(.message(.startViewChange(view: 1), from: 2, epoch: 0))
        #expect(lost.contains(.rejected(requestID: 4, .notPrimary(leader: nil))))
        #expect(lost.contains(.rejected(requestID: 5, .notPrimary(leader: nil))))
        #expect(primary.op == 3, "nothing prepared after the view was lost")
    }

    /// Answers for the given request ids among `actions`.
    func answers(_ actions: [ReplicaAction], _ ids: Set<UInt64>) -> [ReplicaAction] {
        actions.filter {
            switch $0 {
            case .accepted(let id, _), .rejected(let id, _): ids.contains(id)
            default: false
            }
        }
    }

    @Test func queueIsRefusedWhenThePrimaryPassesThroughAViewChangeInOneEvent() {
        // Node 1 is primary of views 0 and 3: a do_view_change for view 3 can
        // take it from view 0 to normal primary of view 3 in one event.
        var primary = replica(1, maxUncommittedOps: 1)
        _ = primary.handle(.clientRequests([ClientRequest(id: 1, session: nil, payload: [1]),
                                             ClientRequest(id: 2, session: nil, payload: [2])], nowMs: 5))
        _ = primary.handle(.persisted(throughOp: 1))
        let dvc = DoViewChange(view: 3, logView: 1, op: 0, commit: 0, commitChecksum: .zero, suffix: [])
        let actions = primary.handle(.message(.doViewChange(dvc), from: 2, epoch: 0))
        #expect(primary.view == 3)
        #expect(answers(actions, [2]) == [.rejected(requestID: 2, .notPrimary(leader: nil))],
                "request 2 was never prepared: refused, not left waiting for a commit that may never come")
    }

    @Test func retryOfAQueuedRequestRidesWithItAndARetryOfAPreparedOneIsAnsweredAtOnce() {
        var primary = replica(1, maxUncommittedOps: 1)
        let a = ClientSession(clientID: "a", requestNumber: 1), b = ClientSession(clientID: "b", requestNumber: 1)
        _ = primary.handle(.clientRequests([ClientRequest(id: 1, session: a, payload: [1]),
                                             ClientRequest(id: 2, session: b, payload: [2])], nowMs: 5))
        #expect(primary.op == 1, "b waits behind a")
        // Retries: of a (prepared) → answered now; of b (queued) → joins it.
        let retries = primary.handle(.clientRequests([ClientRequest(id: 3, session: a, payload: [1]),
                                                      ClientRequest(id: 4, session: b, payload: [2])], nowMs: 6))
        #expect(answers(retries, [3, 4]) == [.accepted(requestID: 3, op: 1)])
        _ = primary.handle(.persisted(throughOp: 1))
        let commit = primary.handle(.message(.prepareOK(view: 0, op: 1), from: 2, epoch: 0))
        #expect(answers(commit, [2, 4]) == [.accepted(requestID: 2, op: 2), .accepted(requestID: 4, op: 2)])
        #expect(primary.op == 2, "b is logged once")
    }

    @Test func fullQueueRefusesAsOverloadedAndLogsNothing() {
        var primary = replica(1, maxUncommittedOps: 1, maxQueuedRequests: 2)
        let requests = (1...4).map { ClientRequest(id: UInt64($0), session: nil, payload: [UInt8($0)]) }
        let actions = primary.handle(.clientRequests(requests, nowMs: 5))
        #expect(answers(actions, [1, 2, 3, 4]) == [.accepted(requestID: 1, op: 1),
                                                   .rejected(requestID: 4, .overloaded(queued: 2))],
                "1 is prepared, 2 and 3 wait, 4 finds the queue full")
        #expect(primary.op == 1)
    }

    // MARK: - Divergence

    /// A formed replica of [1, 2, 3] holding `count` entries of view `view`, all committed.
    func committedReplica(_ id: NodeID, view: ViewNumber, count: Int, tag: UInt8 = 0) -> Replica {
        var entries: [LogEntry] = []
        for op in 1...count {
            entries.append(LogEntry(op: OpNumber(op), view: view, timestampMs: Int64(op), session: nil, payload: [tag, UInt8(op)],
                                    parent: entries.last?.checksum ?? .zero))
        }
        let record = DurableRecord(view: view, logView: view, commitNumber: OpNumber(count), members: [1, 2, 3],
                                   formed: true, logStarted: true)
        return Replica(configuration: ReplicaConfiguration(members: [1, 2, 3], selfID: id),
                       durable: DurableState(record: record, log: entries, commitHint: OpNumber(count)), seed: 1)
    }

    @Test func backupWhoseCommittedEntryDiffersFromTheLeadersDivergesAndServesNothing() {
        var backup = committedReplica(3, view: 1, count: 2)
        let leaders = committedReplica(2, view: 1, count: 2, tag: 9)  // same ops, other contents
        #expect(backup.status == .normal && backup.commitNumber == 2)
        let actions = backup.handle(.message(.commit(view: 1, commit: 2, commitChecksum: leaders.entry(2)!.checksum, op: 2,
                                                     sequence: 1), from: 2, epoch: 0))
        #expect(backup.status == .diverged)
        #expect(backup.divergence == Divergence(op: 2, peer: 2))
        #expect(actions.contains { if case .note(.diverged(op: 2, peer: 2, _)) = $0 { true } else { false } })
        #expect(actions.contains { if case .persistDurable(let record) = $0 { record.divergence == Divergence(op: 2, peer: 2) } else { false } },
                "kept across restarts")
        #expect(!actions.contains { if case .send = $0 { true } else { false } }, "no acknowledgement of a contradicting log")
        let write = backup.handle(.clientRequests([ClientRequest(id: 1, session: nil, payload: [1])], nowMs: 1))
        #expect(write == [.rejected(requestID: 1, .notPrimary(leader: nil))])
        #expect(backup.handle(.readRequest(id: 2)) == [.readFailed(id: 2)])
        #expect(backup.handle(.message(.startViewChange(view: 5), from: 1, epoch: 0)).isEmpty, "votes in nothing")
        // A restart keeps it diverged.
        let restarted = Replica(configuration: backup.configuration,
                                durable: DurableState(record: backup.durableRecord, log: Array(backup.log), commitHint: 2), seed: 2)
        #expect(restarted.status == .diverged && restarted.leader == nil)
    }

    @Test func matchingCommittedEntryDoesNotDiverge() {
        var backup = committedReplica(3, view: 1, count: 2)
        let leaders = committedReplica(2, view: 1, count: 2)
        _ = backup.handle(.message(.commit(view: 1, commit: 2, commitChecksum: leaders.entry(2)!.checksum, op: 2, sequence: 1), from: 2, epoch: 0))
        #expect(backup.status == .normal && backup.divergence == nil)
    }

    @Test func viewChangeToldOfACommitBeyondTheChosenLogDivergesInsteadOfCrashing() {
        // Node 1 leads view 3 and its log (log view 2, op 2) is chosen; node 2,
        // with an older log view, reports commit 5 (a node restored from an old copy, say).
        var primary = committedReplica(1, view: 2, count: 2)
        _ = primary.handle(.message(.startViewChange(view: 3), from: 2, epoch: 0))
        let claim = DoViewChange(view: 3, logView: 1, op: 5, commit: 5, commitChecksum: .zero, suffix: [])
        let actions = primary.handle(.message(.doViewChange(claim), from: 2, epoch: 0))
        #expect(primary.status == .diverged)
        #expect(primary.divergence == Divergence(op: 5, peer: 2))
        #expect(!actions.contains { if case .send(.startView, _, _) = $0 { true } else { false } }, "leads nothing")
    }

    @Test func selfContradictingMessagesAreRefusedBeforeTheyReachAnInvariant() {
        var backup = committedReplica(3, view: 1, count: 2)
        let before = backup.durableRecord
        for message in [Message.commit(view: 1, commit: 9, commitChecksum: .zero, op: 4, sequence: 1),
                        .prepare(view: 1, commit: 0, entries: []),
                        .entries(view: 1, commit: 7, lastOp: 3, entries: []),
                        .startView(StartView(view: 4, op: 1, commit: 3, suffix: []))] {
            let actions = backup.handle(.message(message, from: 2, epoch: 0))
            #expect(actions.count == 1, "\(message): \(actions)")
            #expect(actions.contains { if case .note(.refusedMessage) = $0 { true } else { false } }, "\(message)")
        }
        #expect(backup.status == .normal && backup.durableRecord == before)
        // A message from an older view is noted as stale, not acted on.
        let stale = backup.handle(.message(.startViewChange(view: 0), from: 2, epoch: 0))
        #expect(stale.contains(.note(.staleMessage(name: "start_view_change", view: 0, from: 2))))
        #expect(backup.view == 1)
    }
}

/// Membership changes (VRR §7): one at a time, committed by the old members,
/// then the new epoch starts with a view change; other epochs are answered.
@Suite struct ReconfigurationTests {
    let base = ReplicaTests()

    func change(_ epoch: UInt64, _ members: [NodeID], id: UInt64) -> ClientRequest {
        ClientRequest(id: id, session: nil, payload: Reconfiguration(epoch: epoch, members: members, detail: "test").encode())
    }

    @Test func payloadRoundTripsAndOnlyItsOwnTagDecodes() {
        let change = Reconfiguration(epoch: 7, members: [4, 1, 2], detail: "{\"4\":\"10.0.0.4:7001\"}")
        #expect(change.members == [1, 2, 4])
        #expect(Reconfiguration.decode(change.encode()) == change)
        #expect(Reconfiguration.decode([1, 0, 0, 0, 0]) == nil, "a write batch is client data")
        var truncated = change.encode()
        truncated.removeLast()
        #expect(Reconfiguration.decode(truncated) == nil)
        #expect(change.problem(after: [1, 2], epoch: 6) == nil)
        #expect(change.problem(after: [1, 2], epoch: 5)?.contains("not the next epoch") == true)
        #expect(change.problem(after: [1], epoch: 6)?.contains("one member at a time") == true)
    }

    @Test func primaryTakesOneChangeAtATimeAndHoldsWritesBehindIt() {
        var primary = base.replica(1)
        let actions = primary.handle(.clientRequests([change(1, [1, 2, 3, 4], id: 1),
                                                      ClientRequest(id: 2, session: nil, payload: [1, 9]),
                                                      change(1, [1, 2], id: 3)], nowMs: 5))
        #expect(base.answers(actions, [1, 2, 3]) == [.accepted(requestID: 1, op: 1),
                                                     .rejected(requestID: 3, .reconfigurationInProgress(op: 1))],
                "the write waits behind the change; a second change is refused at once")
        #expect(primary.op == 1, "nothing of the old epoch follows an uncommitted change")
        let invalid = primary.handle(.clientRequests([change(5, [1, 2, 3, 4], id: 4)], nowMs: 6))
        #expect(invalid.contains { if case .rejected(4, .reconfigurationInProgress) = $0 { true } else { false } })

        // The old members commit it: node 1 tells them (a commit of epoch 0),
        // moves to epoch 1 and starts a view change among the new members;
        // the waiting write is refused (never logged, a retry is safe).
        _ = primary.handle(.persisted(throughOp: 1))
        let commit = primary.handle(.message(.prepareOK(view: 0, op: 1), from: 2, epoch: 0))
        #expect(commit.contains(.commit(through: 1)))
        #expect(commit.contains { if case .send(.commit(_, 1, _, _, _), 2, 0) = $0 { true } else { false } })
        #expect(commit.contains(.note(.reconfigured(epoch: 1, members: [1, 2, 3, 4], op: 1))))
        #expect(commit.contains(.rejected(requestID: 2, .notPrimary(leader: nil))))
        #expect(primary.epoch == 1 && primary.configuration.members == [1, 2, 3, 4])
        #expect(primary.status == .viewChange && primary.view == 1)
        #expect(commit.contains(.send(.startViewChange(view: 1), to: 4, epoch: 1)), "the joiner takes part in the view change")
        #expect(primary.durableRecord.epoch == 1 && primary.durableRecord.members == [1, 2, 3, 4])
    }

    @Test func aChangeThatIsNotOneMemberIsRefused() {
        var primary = base.replica(1)
        let actions = primary.handle(.clientRequests([change(1, [1, 4], id: 1)], nowMs: 5))
        #expect(actions.contains { if case .rejected(1, .invalidReconfiguration(let reason)) = $0 { reason.contains("one member at a time") } else { false } })
        #expect(primary.op == 0)
    }

    @Test func removedPrimaryStopsAndAnOldEpochIsToldTheNewOne() {
        var primary = base.replica(1)
        _ = primary.handle(.clientRequests([change(1, [2, 3], id: 1)], nowMs: 5))
        _ = primary.handle(.persisted(throughOp: 1))
        let commit = primary.handle(.message(.prepareOK(view: 0, op: 1), from: 2, epoch: 0))
        #expect(commit.contains(.note(.removed(epoch: 1))))
        #expect(primary.status == .removed && primary.leader == nil)
        let write = primary.handle(.clientRequests([ClientRequest(id: 9, session: nil, payload: [1, 1])], nowMs: 6))
        #expect(write == [.rejected(requestID: 9, .notPrimary(leader: nil))])

        // Node 3 missed the commit: a message of epoch 0 reaches a member of
        // epoch 1, which answers with its epoch and commit; node 3 holds that
        // op, so it commits it and moves to epoch 1 like any member.
        var backup = base.replica(3)
        let prepare = backup.handle(.message(.prepare(view: 0, commit: 0, entries: [primary.entry(1)!]), from: 1, epoch: 0))
        #expect(prepare.contains(.append([primary.entry(1)!])))
        _ = backup.handle(.persisted(throughOp: 1))
        var member2 = base.replica(2)
        _ = member2.handle(.message(.prepare(view: 0, commit: 1, entries: [primary.entry(1)!]), from: 1, epoch: 0))
        _ = member2.handle(.persisted(throughOp: 1))
        #expect(member2.epoch == 1 && member2.configuration.members == [2, 3])
        let answer = member2.handle(.message(.startViewChange(view: 3), from: 3, epoch: 0))
        let told = answer.first { if case .send(.epochStarted, 3, 1) = $0 { true } else { false } }
        guard case .send(let message, _, _)? = told else {
            Issue.record("an epoch-0 message got no epoch_started: \(answer)")
            return
        }
        let learned = backup.handle(.message(message, from: 2, epoch: 1))
        #expect(learned.contains(.commit(through: 1)))
        #expect(backup.epoch == 1 && backup.configuration.members == [2, 3] && backup.status == .viewChange)
        // A message of the newer epoch, before learning it, is answered the same way (so its sender tells).
        var late = base.replica(3)
        let reply = late.handle(.message(.startViewChange(view: 2), from: 2, epoch: 1))
        #expect(reply.contains { if case .send(.epochStarted(0, [1, 2, 3], _, _), 2, 0) = $0 { true } else { false } })
        #expect(late.epoch == 0, "nothing of a newer epoch is acted on before the epoch is learned")
    }
}
