import KimberliteCore

/// A deterministic cluster simulator in the style of TigerBeetle's VOPR:
/// real `Replica` values driven by a seeded network (drop, delay, reorder,
/// duplicate, partition), a seeded disk (writes are volatile until a sync;
/// a crash keeps a random prefix of unsynced writes) and crash/restart of
/// any minority. Safety is checked after every step; liveness after the
/// faults heal.
struct Simulator {
    struct Options {
        var replicaCount = 3
        var faultTicks = 600
        var healTicks = 2500
        var dropProbability = 0.05
        var duplicateProbability = 0.02
        var maxDelayTicks = 6
        var crashProbability = 0.004
        var partitionProbability = 0.004
        var clientCount = 3
        var requestProbability = 0.3
        /// The primaries' pipeline bound (`ReplicaConfiguration.maxUncommittedOps`).
        var maxUncommittedOps = 1024
        /// Its queue bound (`ReplicaConfiguration.maxQueuedRequests`).
        var maxQueuedRequests = 4096
        /// Segments below each replica's checkpoint are deleted now and
        /// then (`[storage] compaction = true`), so lagging and wiped
        /// replicas need state transfer.
        var compaction = true
        /// Chance per tick that the operator asks for a membership change
        /// (VRR §7): one spare node beyond `replicaCount` exists; a change
        /// adds a non-member (wiped first, started once the change commits,
        /// as a joining server is) or removes a member.
        var reconfigurationProbability = 0.004
        var trace = false
    }

    struct Failure: Error, CustomStringConvertible {
        let seed: UInt64
        let tick: Int
        let message: String
        var description: String {
            "seed \(seed) tick \(tick): \(message)\n  reproduce: KMB_SIM_SEED=\(seed) swift test --filter SimulationTests/replaySeed"
        }
    }

    struct Statistics: Sendable {
        var viewChanges = 0
        var crashes = 0
        var partitions = 0
        var logLosses = 0
        var wipes = 0
        var diskFullSpells = 0
        /// Releases of applied ops from memory, and repairs served from the journal.
        var memoryReleases = 0
        var journalReads = 0
        /// Replicas restored from an older copy of their own data directory.
        var restores = 0
        /// Appends refused by a full disk.
        var failedAppends = 0
        var acknowledged = 0
        /// Requests a primary prepared from its queue once commits made room.
        var preparedFromQueue = 0
        var committedOps: OpNumber = 0
        /// Checkpoints taken, journals compacted below one, and checkpoints
        /// installed by state transfer.
        var checkpoints = 0
        var compactions = 0
        var stateTransfers = 0
        /// Membership changes committed (new epochs), members added and removed.
        var reconfigurations = 0
        var joins = 0
        var removals = 0
    }

    private struct Node {
        var replica: Replica
        var up = true
        /// A non-member waiting to be started as a joiner once the change
        /// adding it commits (its data directory is empty).
        var awaitingJoin = false
        /// What the journal holds after its base, durable and not; the first
        /// `synced` entries are durable. `disk[i]` is op `base.op + i + 1`.
        var disk: [LogEntry] = []
        var synced = 0
        /// The op before the journal's first entry and its checksum (moved
        /// up by compaction and state transfer; in the superblock).
        var base: (op: OpNumber, checksum: Checksum) = (0, .zero)
        /// The newest checkpoint: a committed, applied op and its checksum.
        var checkpoint: (op: OpNumber, checksum: Checksum)? = nil
        var diskOp: OpNumber { base.op + OpNumber(disk.count) }
        func journal(_ op: OpNumber) -> LogEntry? {
            op > base.op && op <= diskOp ? disk[Int(op - base.op - 1)] : nil
        }
        /// The checksum of `op` as this disk knows it (the base's, or the entry's).
        func checksum(_ op: OpNumber) -> Checksum? { op == base.op ? base.checksum : journal(op)?.checksum }
        /// The superblock: the last durable record written (nil in a new
        /// or wiped data directory).
        var superblock: DurableRecord? = nil
        /// The projection's last applied op: it survives a lost journal,
        /// not a lost data directory.
        var appliedOp: OpNumber = 0
        /// Commits already checked against the cluster's (`recordCommits`).
        var checkedCommit: OpNumber = 0
        var restartAt = 0
        /// The journal will find, at the next start, that it dropped entries
        /// (the corruption case).
        var journalLostEntries = false
        /// Appends fail (no space left) until this tick.
        var diskFullUntil = 0
        /// An older copy of the data directory (an operator's backup): what
        /// was durable then, the superblock and the projection's applied op.
        var backup: (disk: [LogEntry], base: (op: OpNumber, checksum: Checksum), superblock: DurableRecord?, appliedOp: OpNumber)? = nil
        var waiters: [UInt64: (client: Int, op: OpNumber, checksum: Checksum)] = [:]
        var restarts = 0
    }

    private struct InFlight {
        var deliverAt: Int
        var from: NodeID
        var to: NodeID
        var message: Message
        var epoch: UInt64
    }

    private struct Client {
        var requestNumber: UInt64 = 0
        var outstanding: (payload: [UInt8], sentAt: Int, target: NodeID)? = nil
        var nextTarget: NodeID
    }

    let seed: UInt64
    let options: Options
    private var rng: SplitMix64
    private var nodes: [Node] = []
    private var network: [InFlight] = []
    private var clients: [Client] = []
    private var tick = 0
    private var isolated: Set<NodeID> = []
    private var partitionEndsAt = 0
    private var committed: [OpNumber: Checksum] = [:]
    private var acknowledged: [(op: OpNumber, checksum: Checksum)] = []
    private var nextRequestID: UInt64 = 1
    private(set) var statistics = Statistics()
    private var faultsActive = true
    private var clientsStopped = false
    private var traceLines: [String] = []
    /// Checkpoints on their way to a replica by state transfer.
    private var transfers: [(deliverAt: Int, from: NodeID, to: NodeID, op: OpNumber, checksum: Checksum)] = []
    /// The membership change last asked for, until an epoch reaches it or it is given up.
    private var pendingChange: (change: Reconfiguration, requestID: UInt64, at: Int)? = nil
    /// The primary of each (epoch, view) seen in normal status: never two.
    private var primaries: [String: NodeID] = [:]
    /// Epochs whose start was counted.
    private var countedEpochs: Set<UInt64> = []

    init(seed: UInt64, options: Options = Options()) {
        self.seed = seed
        self.options = options
        self.rng = SplitMix64(seed: seed)
        let members = (1...options.replicaCount).map { NodeID($0) }
        for id in members + [NodeID(options.replicaCount + 1)] {
            var configuration = ReplicaConfiguration(
                members: members, selfID: id, heartbeatTicks: 3,
                electionTimeoutMinTicks: 12, electionTimeoutMaxTicks: 24, maxEntriesPerMessage: 8)
            configuration.maxUncommittedOps = options.maxUncommittedOps
            configuration.maxQueuedRequests = options.maxQueuedRequests
            let start = Startup.decide(stored: nil, members: members, log: [], appliedOp: 0, journalLostEntries: false)
            let replica = Replica(configuration: configuration, durable: start.durable, seed: seed &* 31 &+ UInt64(id))
            // The spare node is not started: it joins when a change adds it.
            let spare = id > options.replicaCount
            nodes.append(Node(replica: replica, up: !spare, awaitingJoin: spare, superblock: spare ? nil : start.durable.record))
        }
        clients = (0..<options.clientCount).map { _ in Client(nextTarget: 1) }
    }

    /// The members of the newest epoch any running replica is in.
    private var members: [NodeID] {
        let newest = nodes.filter { !$0.awaitingJoin }.max { $0.replica.epoch < $1.replica.epoch }!
        return newest.replica.configuration.members
    }
    /// f of both n and n + 1 members (the membership moves between them).
    private var faultTolerance: Int { (options.replicaCount - 1) / 2 }
    private func isMember(_ index: Int) -> Bool { members.contains(NodeID(index + 1)) && !nodes[index].awaitingJoin }

    private mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &rng) < p }

    private func log(_ line: @autoclosure () -> String) {
        if options.trace { print("[\(tick)] \(line())") }
    }

    // MARK: - Running

    /// Runs the fault phase then the heal phase; throws on a safety or liveness failure.
    mutating func run() throws -> Statistics {
        while tick < options.faultTicks {
            try step()
        }
        // Heal: everyone up, no partition, no loss; the cluster must converge.
        faultsActive = false
        isolated.removeAll()
        for index in nodes.indices where !nodes[index].up && !nodes[index].awaitingJoin { restart(index) }
        let healDeadline = tick + options.healTicks
        let target = statistics.acknowledged + options.clientCount * 2
        while tick < healDeadline {
            // Once enough new requests were acknowledged, clients stop
            // sending new ones so the replicas can settle.
            if statistics.acknowledged >= target { clientsStopped = true }
            try step()
            if clientsStopped && converged() { break }
        }
        guard statistics.acknowledged >= target else {
            throw fail("liveness: only \(statistics.acknowledged) of \(target) requests acknowledged after healing; \(stateSummary())")
        }
        guard converged() else { throw fail("liveness: replicas did not converge: \(stateSummary())") }
        try checkFinalState()
        statistics.committedOps = nodes.map(\.replica.commitNumber).max() ?? 0
        return statistics
    }

    private func stateSummary() -> String {
        nodes.map { node in
            let r = node.replica
            return "n\(r.selfID){\(node.awaitingJoin ? "not joined" : node.up ? "up" : "down") \(r.status.rawValue) e\(r.epoch) v\(r.view) lv\(r.logView) op\(r.op) c\(r.commitNumber) d\(r.durableOp) vo\(r.verifiedOp)}"
        }.joined(separator: " ")
    }

    /// Every member of the newest epoch is up, in it, normal in one view,
    /// with everything committed; removed and never-joined nodes aside.
    private func converged() -> Bool {
        let current = members
        let live = nodes.filter { current.contains($0.replica.selfID) && !$0.awaitingJoin }
        guard live.allSatisfy(\.up), live.count == current.count else { return false }
        let first = live[0].replica
        return live.allSatisfy { node in
            node.replica.status == .normal && node.replica.view == first.view && node.replica.epoch == first.epoch
                && node.replica.commitNumber == first.commitNumber && node.replica.op == node.replica.commitNumber
        } && first.leader != nil
    }

    private func fail(_ message: String) -> Failure { Failure(seed: seed, tick: tick, message: message) }

    private mutating func step() throws {
        tick += 1
        if faultsActive { try injectFaults() }
        for index in nodes.indices where !nodes[index].up && !nodes[index].awaitingJoin && tick >= nodes[index].restartAt && faultsActive {
            restart(index)
        }
        // Deliver due messages, in a seeded order.
        var due: [InFlight] = []
        var later: [InFlight] = []
        for message in network { if message.deliverAt <= tick { due.append(message) } else { later.append(message) } }
        network = later
        due.shuffle(using: &rng)
        for message in due {
            let index = Int(message.to) - 1
            guard nodes[index].up, !blocked(message.from, message.to) else { continue }
            try feed(index, .message(message.message, from: message.from, epoch: message.epoch))
        }
        // State transfers complete (a kill of either side loses this one;
        // the requester asks again and gets a new one).
        let dueTransfers = transfers.filter { $0.deliverAt <= tick }
        transfers.removeAll { $0.deliverAt <= tick }
        for transfer in dueTransfers {
            let index = Int(transfer.to) - 1
            guard nodes[index].up, nodes[Int(transfer.from) - 1].up, !blocked(transfer.from, transfer.to) else { continue }
            try install(index, transfer.op, transfer.checksum, from: transfer.from)
        }
        // Disk syncs complete at random (a superblock write syncs the journal too).
        for index in nodes.indices where nodes[index].up {
            if nodes[index].synced < nodes[index].disk.count, chance(0.6) { nodes[index].synced = nodes[index].disk.count }
            let syncedOp = nodes[index].base.op + OpNumber(nodes[index].synced)
            if syncedOp > nodes[index].replica.durableOp {
                try feed(index, .persisted(throughOp: syncedOp))
            }
            // The runtime refreshes the superblock's commit number now and then.
            if chance(0.05) { try refreshCommitHint(index) }
            // ... and lets the replica drop applied ops from memory.
            if chance(0.05), nodes[index].checkedCommit > 0 {
                let through = OpNumber.random(in: 0...nodes[index].checkedCommit, using: &rng)
                try feed(index, .releaseMemory(through: through))
                statistics.memoryReleases += 1
            }
            // Now and then the operator backs up the data directory.
            if chance(0.005) {
                let disk = Array(nodes[index].disk.prefix(nodes[index].synced))
                let base = nodes[index].base
                nodes[index].backup = (disk, base, nodes[index].superblock,
                                       max(base.op, min(nodes[index].appliedOp, base.op + OpNumber(disk.count))))
            }
            // The checkpointer: the projection applied what is committed,
            // and a copy of it is taken; with compaction, the journal then
            // drops what lies wholly below the checkpoint.
            if chance(0.02) { try takeCheckpoint(index) }
        }
        for index in nodes.indices where nodes[index].up { try feed(index, .tick) }
        try driveClients()
    }

    /// The runtime's periodic commit-hint write: the replica's record as it
    /// stands. Every other field must already be on disk, since each change
    /// to one comes with a `persistDurable` action.
    private mutating func refreshCommitHint(_ index: Int) throws {
        guard let stored = nodes[index].superblock else { return }
        let current = nodes[index].replica.durableRecord
        var expected = current
        expected.commitNumber = stored.commitNumber
        guard expected == stored else {
            throw fail("n\(index + 1) durable record changed without persistDurable: stored \(stored), now \(current)")
        }
        if current.commitNumber > stored.commitNumber { nodes[index].superblock = current }
    }

    private func blocked(_ a: NodeID, _ b: NodeID) -> Bool {
        isolated.contains(a) != isolated.contains(b)
    }

    private mutating func injectFaults() throws {
        if tick >= partitionEndsAt, !isolated.isEmpty {
            log("partition healed")
            isolated.removeAll()
        }
        if isolated.isEmpty, chance(options.partitionProbability) {
            let size = Int.random(in: 1...faultTolerance, using: &rng)
            isolated = Set(members.shuffled(using: &rng).prefix(size))
            partitionEndsAt = tick + Int.random(in: 20...200, using: &rng)
            statistics.partitions += 1
            let names = isolated.sorted()
            log("partition isolates \(names)")
        }
        // A disk fills up for a while, within the fault budget: at most f
        // members faulty at once (down, full, or recovering).
        if chance(options.crashProbability) {
            let victim = Int.random(in: 0..<nodes.count, using: &rng)
            let otherFaults = nodes.indices.filter { other in
                other != victim && isMember(other) && (!nodes[other].up || nodes[other].diskFullUntil > tick || nodes[other].replica.status == .recovering
                    || nodes[other].journalLostEntries || nodes[other].superblock?.recovering == true)
            }.count
            if nodes[victim].diskFullUntil <= tick, otherFaults + 1 <= faultTolerance, isMember(victim) {
                nodes[victim].diskFullUntil = tick + Int.random(in: 20...200, using: &rng)
                statistics.diskFullSpells += 1
                log("n\(victim + 1) disk full until tick \(nodes[victim].diskFullUntil)")
            }
        }
        let down = nodes.indices.filter { isMember($0) && !nodes[$0].up }.count
        if down < faultTolerance, chance(options.crashProbability) {
            let candidates = nodes.indices.filter { nodes[$0].up }
            let victim = candidates.randomElement(using: &rng)!
            crash(victim)
        }
        if pendingChange.map({ tick - $0.at > 400 }) ?? false {
            // Refused, lost in a view change or still uncommitted: asked again
            // later (a late commit still starts its joiner).
            pendingChange = nil
        }
        if pendingChange == nil, chance(options.reconfigurationProbability) { try requestReconfiguration() }
    }

    // MARK: - Membership changes (VRR §7)

    /// The operator adds a non-member or removes a member, through the
    /// replica that leads the newest epoch.
    private mutating func requestReconfiguration() throws {
        let current = members
        guard let primaryIndex = nodes.indices.first(where: { index in
            let replica = nodes[index].replica
            return nodes[index].up && replica.status == .normal && replica.isPrimary && replica.configuration.members == current
        }) else { return }
        let epoch = nodes[primaryIndex].replica.epoch
        var next = current
        if current.count > options.replicaCount {
            next.remove(at: Int.random(in: 0..<next.count, using: &rng))
        } else {
            let outsiders = nodes.indices.filter { !current.contains(NodeID($0 + 1)) }
            guard let joiner = outsiders.randomElement(using: &rng) else { return }
            // A joining server starts from an empty data directory; it is
            // started once the change commits (the leader tells it so).
            wipe(joiner)
            nodes[joiner].up = false
            nodes[joiner].awaitingJoin = true
            next.append(NodeID(joiner + 1))
        }
        let change = Reconfiguration(epoch: epoch + 1, members: next, detail: "sim")
        let id = nextRequestID
        nextRequestID += 1
        pendingChange = (change, id, tick)
        log("operator asks n\(primaryIndex + 1) for epoch \(change.epoch) with members \(change.members)")
        try feed(primaryIndex, .clientRequests([ClientRequest(id: id, session: nil, payload: change.encode())],
                                                 nowMs: Int64(1_700_000_000_000 + tick * 10)))
    }

    /// A committed reconfiguration (seen once, at its first commit): its
    /// joiner is started with the new epoch's membership, as a joining
    /// server is once the leader accepted it.
    private mutating func committedReconfiguration(_ change: Reconfiguration) {
        guard !countedEpochs.contains(change.epoch) else { return }
        countedEpochs.insert(change.epoch)
        statistics.reconfigurations += 1
        if pendingChange?.change.epoch == change.epoch { pendingChange = nil }
        log("epoch \(change.epoch) committed with members \(change.members)")
        for index in nodes.indices where nodes[index].awaitingJoin {
            guard change.members.contains(NodeID(index + 1)) else {
                // Its change was superseded: it waits for another one.
                continue
            }
            var configuration = nodes[0].replica.configuration
            configuration.selfID = NodeID(index + 1)
            configuration.members = change.members
            let record = DurableRecord(epoch: change.epoch, members: change.members, formed: true)
            let start = Startup.decide(stored: record, members: change.members, log: [], appliedOp: 0, journalLostEntries: false)
            nodes[index].replica = Replica(configuration: configuration, durable: start.durable, seed: seed &+ UInt64(tick) &* 13 &+ UInt64(index))
            nodes[index].superblock = start.durable.record
            nodes[index].awaitingJoin = false
            nodes[index].up = true
            nodes[index].checkedCommit = 0
            statistics.joins += 1
            log("n\(index + 1) joins at epoch \(change.epoch)")
        }
        // Membership moves between n and n + 1: back to n is a removal.
        if change.members.count == options.replicaCount { statistics.removals += 1 }
    }

    /// The whole data directory is gone: a brand-new node's disk.
    private mutating func wipe(_ index: Int) {
        nodes[index].disk.removeAll()
        nodes[index].synced = 0
        nodes[index].base = (0, .zero)
        nodes[index].checkpoint = nil
        nodes[index].superblock = nil
        nodes[index].appliedOp = 0
        nodes[index].journalLostEntries = false
        nodes[index].backup = nil
        nodes[index].waiters.removeAll()
    }

    private mutating func crash(_ index: Int) {
        var node = nodes[index]
        // Power loss: unsynced writes survive only as a prefix, if at all.
        let unsynced = node.disk.count - node.synced
        let kept = unsynced > 0 ? Int.random(in: 0...unsynced, using: &rng) : 0
        node.disk.removeSubrange((node.synced + kept)...)
        node.synced = node.disk.count
        // The projection has applied some prefix of what was committed.
        node.appliedOp = max(node.appliedOp, node.base.op,
                             OpNumber.random(in: node.appliedOp...max(node.appliedOp, node.replica.commitNumber), using: &rng))
        // Sometimes the journal itself is lost or corrupt (an operator's
        // `rm -rf log/*`, a bad disk): only while at most f replicas are
        // faulty (down, or recovering what they lost), as VSR assumes.
        let otherFaults = nodes.indices.filter { other in
            other != index && isMember(other) && (!nodes[other].up || nodes[other].replica.status == .recovering || nodes[other].diskFullUntil > tick
                || nodes[other].journalLostEntries || nodes[other].superblock?.recovering == true)
        }.count
        let mayLoseData = otherFaults + 1 <= faultTolerance
        if mayLoseData, chance(0.08) {
            // The whole data directory is gone (a lost volume): the replica
            // comes back as a brand-new one and must not pass for one.
            nodes[index] = node
            wipe(index)
            node = nodes[index]
            statistics.wipes += 1
            log("n\(index + 1) loses its whole data directory")
        } else if mayLoseData, let backup = node.backup, chance(0.1) {
            // Restored from its older copy, marked the way a restore marks
            // it: the replica knows it may be behind what it acknowledged.
            node.disk = backup.disk
            node.synced = backup.disk.count
            node.base = backup.base
            node.checkpoint = backup.base.op > 0 ? backup.base : nil
            node.superblock = backup.superblock
            node.superblock?.recovering = true
            node.appliedOp = backup.appliedOp
            statistics.restores += 1
            log("n\(index + 1) restored from an older copy with \(backup.disk.count) entries")
        } else if mayLoseData, chance(0.15) {
            node.disk.removeSubrange(Int.random(in: 0...node.disk.count, using: &rng)...)
            node.synced = node.disk.count
            node.journalLostEntries = true
            statistics.logLosses += 1
            log("n\(index + 1) loses its log beyond op \(node.diskOp)")
        }
        node.up = false
        node.restartAt = tick + Int.random(in: 10...150, using: &rng)
        node.waiters.removeAll()
        nodes[index] = node
        statistics.crashes += 1
        log("crash n\(index + 1) keeping \(node.disk.count) entries")
    }

    private mutating func restart(_ index: Int) {
        let node = nodes[index]
        let configuration = node.replica.configuration
        // The server's own start-up decision, on what this disk holds; like
        // the server, it loads only the journal's tail after some applied op.
        let high = max(node.base.op, min(node.appliedOp, node.diskOp))
        let floor = chance(0.5) ? OpNumber.random(in: node.base.op...high, using: &rng) : node.base.op
        let start = Startup.decide(stored: node.superblock, members: configuration.members,
                                   log: Array(node.disk[Int(floor - node.base.op)...]),
                                   logFloor: floor, floorChecksum: node.checksum(floor)!,
                                   appliedOp: node.appliedOp, journalLostEntries: node.journalLostEntries)
        let durable = start.durable
        nodes[index].journalLostEntries = false
        if durable.record != node.superblock { nodes[index].superblock = durable.record }
        nodes[index].replica = Replica(configuration: configuration, durable: durable,
                                       seed: seed &+ UInt64(tick) &* 7 &+ UInt64(index))
        nodes[index].checkedCommit = nodes[index].replica.commitNumber
        nodes[index].up = true
        nodes[index].restarts += 1
        log("restart n\(index + 1) v\(durable.record.view) lv\(durable.record.logView) op\(durable.log.count) \(start.findings)")
    }

    // MARK: - Performing actions

    private mutating func feed(_ index: Int, _ event: ReplicaEvent) throws {
        let actions = nodes[index].replica.handle(event)
        if case .clientRequests = event {} else {
            statistics.preparedFromQueue += actions.count { if case .accepted = $0 { true } else { false } }
        }
        try perform(index, actions)
        // Never two primaries for one view of one epoch.
        let replica = nodes[index].replica
        if replica.status == .normal, replica.isPrimary {
            let key = "\(replica.epoch)/\(replica.view)"
            if let other = primaries[key], other != replica.selfID {
                throw fail("SAFETY: n\(other) and n\(replica.selfID) both led view \(replica.view) of epoch \(replica.epoch); \(stateSummary())")
            }
            primaries[key] = replica.selfID
        }
    }

    private mutating func perform(_ index: Int, _ actions: [ReplicaAction]) throws {
        let selfID = NodeID(index + 1)
        var appendFailed = false
        for action in actions {
            // As the runtime does: after a failed append, only the truncations of the list are done.
            if appendFailed, case .truncateLog = action {} else if appendFailed { continue }
            switch action {
            case .send(let message, let to, let epoch):
                transmit(message, from: selfID, to: to, epoch: epoch)
            case .persistDurable(let record):
                // Only a recovering replica (which does not vote) may follow a lower view.
                let stored = nodes[index].superblock
                guard record.view >= stored?.view ?? 0 || nodes[index].replica.status == .recovering else {
                    throw fail("n\(selfID) persisted view \(record.view) below \(stored?.view ?? 0)")
                }
                guard record.commitNumber >= stored?.commitNumber ?? 0 else {
                    throw fail("n\(selfID) lowered its durable commit number to \(record.commitNumber)")
                }
                // The record vouches for the log: what it covers is synced first, as the runtime does.
                nodes[index].synced = nodes[index].disk.count
                nodes[index].superblock = record
            case .truncateLog(let after):
                // Past the end only when a failed append left the disk short (the journal then does nothing).
                guard after >= nodes[index].base.op else { throw fail("n\(selfID) truncate after op \(after), below its log's base \(nodes[index].base.op)") }
                let keep = Int(after - nodes[index].base.op)
                guard keep <= nodes[index].disk.count || appendFailed else { throw fail("truncate past the end") }
                if keep < nodes[index].disk.count { nodes[index].disk.removeSubrange(keep...) }
                nodes[index].synced = min(nodes[index].synced, keep)
            case .sendEntriesFromJournal(let to, let view, let commit, let lastOp, let from, let through):
                // The runtime reads the journal: here, the disk.
                guard from >= 1, through <= nodes[index].diskOp, from <= through else {
                    throw fail("n\(selfID) asked to send ops \(from)...\(through) from a journal through \(nodes[index].diskOp)")
                }
                let base = nodes[index].base.op
                if from <= base {
                    // Compacted away: the runtime offers its newest checkpoint instead.
                    guard let checkpoint = nodes[index].checkpoint, checkpoint.op >= base else {
                        throw fail("n\(selfID) compacted through \(base) without a checkpoint at or above it")
                    }
                    guard !(faultsActive && chance(options.dropProbability)) else { continue }
                    let delay = Int.random(in: 2...(options.maxDelayTicks * 4), using: &rng)
                    transfers.append((tick + delay, selfID, to, checkpoint.op, checkpoint.checksum))
                    continue
                }
                let entries = Replica.prefix(nodes[index].disk[Int(from - base - 1)..<Int(through - base)], maxBytes: 8 << 20)
                statistics.journalReads += 1
                transmit(.entries(view: view, commit: commit, lastOp: lastOp, entries: entries), from: selfID, to: to,
                         epoch: nodes[index].replica.epoch)
            case .append(let entries):
                if faultsActive && nodes[index].diskFullUntil > tick {
                    appendFailed = true
                    statistics.failedAppends += 1
                    continue
                }
                guard entries.first?.op == nodes[index].diskOp + 1 else {
                    throw fail("n\(selfID) append of op \(entries.first?.op ?? 0) onto disk through \(nodes[index].diskOp)")
                }
                nodes[index].disk.append(contentsOf: entries)
            case .commit(let through):
                try recordCommits(index, through: through)
            case .accepted(let requestID, let op):
                guard let client = clientIndex(forRequest: requestID),
                      let entry = nodes[index].replica.entry(op) else { continue }
                nodes[index].waiters[requestID] = (client, op, entry.checksum)
                log("n\(selfID) accepted request \(requestID) of client \(client) as op \(op)")
            case .rejected(let requestID, let reason):
                log("n\(selfID) rejected request \(requestID): \(reason)")
                if pendingChange?.requestID == requestID { pendingChange = nil }
                if let client = clientIndex(forRequest: requestID) {
                    clients[client].outstanding?.sentAt = -1000
                    if case .notPrimary(let leader?) = reason { clients[client].nextTarget = leader }
                }
            case .readReady, .readFailed:
                break
            case .note(let note):
                if case .viewChangeStarted = note { statistics.viewChanges += 1 }
                if case .diverged(let op, let peer, let reason) = note {
                    // Within the fault budget no committed log contradicts another.
                    throw fail("SAFETY: n\(selfID) diverged at op \(op) (peer n\(peer)): \(reason); \(stateSummary())")
                }
                log("n\(selfID) \(note)")
            }
        }
        if appendFailed {
            try feed(index, .appendFailed(journalOp: nodes[index].diskOp))
            return
        }
        // The disk must mirror the replica's log exactly.
        let replica = nodes[index].replica
        let inMemory = replica.entries(from: replica.logFloor + 1, through: replica.op)
        guard nodes[index].diskOp == replica.op, replica.logFloor >= nodes[index].base.op,
              inMemory.allSatisfy({ nodes[index].journal($0.op)?.checksum == $0.checksum }) else {
            throw fail("n\(selfID) disk (base \(nodes[index].base.op), through \(nodes[index].diskOp)) and memory (op \(replica.op), floor \(replica.logFloor)) logs differ")
        }
        guard nodes[index].base.op + OpNumber(nodes[index].synced) >= replica.durableOp else {
            throw fail("n\(selfID) claims durable \(replica.durableOp) but disk synced \(nodes[index].synced)")
        }
        try checkWaiters(index)
    }

    /// Puts a message on the network: maybe dropped, delayed, duplicated.
    private mutating func transmit(_ message: Message, from: NodeID, to: NodeID, epoch: UInt64) {
        guard !(faultsActive && chance(options.dropProbability)) else { return }
        let delay = Int.random(in: 1...options.maxDelayTicks, using: &rng)
        network.append(InFlight(deliverAt: tick + delay, from: from, to: to, message: message, epoch: epoch))
        if faultsActive, chance(options.duplicateProbability) {
            network.append(InFlight(deliverAt: tick + delay + Int.random(in: 1...5, using: &rng), from: from, to: to,
                                    message: message, epoch: epoch))
        }
    }

    private var requestOwners: [UInt64: Int] = [:]
    private func clientIndex(forRequest id: UInt64) -> Int? { requestOwners[id] }

    /// Safety: a committed op has one value forever, on every replica, and
    /// timestamps never go backwards along the committed log.
    private mutating func recordCommits(_ index: Int, through: OpNumber) throws {
        let replica = nodes[index].replica
        let first = nodes[index].checkedCommit + 1
        guard first <= through else { return }
        for op in first...through {
            guard let entry = replica.entry(op) else { throw fail("n\(index + 1) committed op \(op) it does not hold") }
            if let known = committed[op] {
                guard known == entry.checksum else {
                    throw fail("SAFETY: op \(op) committed as \(known) elsewhere but \(entry.checksum) on n\(index + 1); \(stateSummary())")
                }
            } else {
                committed[op] = entry.checksum
                if let change = Reconfiguration.decode(entry.payload) { committedReconfiguration(change) }
            }
            if op > 1, let previous = replica.entry(op - 1), previous.timestampMs > entry.timestampMs {
                throw fail("timestamp went backwards at op \(op)")
            }
        }
        nodes[index].checkedCommit = max(nodes[index].checkedCommit, through)
    }

    private mutating func checkWaiters(_ index: Int) throws {
        let replica = nodes[index].replica
        for (requestID, waiter) in nodes[index].waiters where replica.commitNumber >= waiter.op {
            nodes[index].waiters[requestID] = nil
            // Only the entry we were promised counts; a view change may have
            // replaced it with another one.
            guard replica.entry(waiter.op)?.checksum == waiter.checksum else { continue }
            guard clients[waiter.client].outstanding != nil else { continue }
            clients[waiter.client].outstanding = nil
            acknowledged.append((waiter.op, waiter.checksum))
            statistics.acknowledged += 1
        }
    }

    // MARK: - Checkpoints, compaction and state transfer

    /// Takes a checkpoint at the commit number (the projection applies it
    /// first), and with compaction on drops the journal below it, after
    /// letting the replica drop those ops from memory, as the server does.
    private mutating func takeCheckpoint(_ index: Int) throws {
        // What the projection can have applied: ops the replica announced as committed.
        let op = min(nodes[index].replica.commitNumber, nodes[index].checkedCommit)
        guard op > (nodes[index].checkpoint?.op ?? 0), op > nodes[index].base.op, let checksum = nodes[index].checksum(op) else { return }
        guard committed[op] == nil || committed[op] == checksum else {
            throw fail("SAFETY: n\(index + 1) checkpoints op \(op) with a checksum other than the committed one")
        }
        nodes[index].appliedOp = max(nodes[index].appliedOp, op)
        nodes[index].checkpoint = (op, checksum)
        statistics.checkpoints += 1
        guard options.compaction, chance(0.5) else { return }
        try feed(index, .releaseMemory(through: op))
        // Only what the replica let go of, and only what is durable.
        let through = min(nodes[index].replica.logFloor, nodes[index].base.op + OpNumber(nodes[index].synced))
        guard through > nodes[index].base.op, let newChecksum = nodes[index].checksum(through) else { return }
        let dropped = Int(through - nodes[index].base.op)
        nodes[index].disk.removeFirst(dropped)
        nodes[index].synced -= dropped
        nodes[index].base = (through, newChecksum)
        statistics.compactions += 1
        log("n\(index + 1) compacted its journal through op \(through) (checkpoint at \(op))")
    }

    /// A checkpoint arrives by state transfer: installed only when the
    /// replica accepts it (as the server asks it first), then the journal
    /// restarts after it and the projection holds it.
    private mutating func install(_ index: Int, _ op: OpNumber, _ checksum: Checksum, from: NodeID) throws {
        guard nodes[index].replica.acceptsState(at: op) else { return }
        if let known = committed[op], known != checksum {
            throw fail("SAFETY: n\(from) sent a checkpoint at op \(op) that is not the committed op")
        }
        nodes[index].disk.removeAll()
        nodes[index].synced = 0
        nodes[index].base = (op, checksum)
        nodes[index].checkpoint = (op, checksum)
        nodes[index].appliedOp = max(nodes[index].appliedOp, op)
        nodes[index].checkedCommit = max(nodes[index].checkedCommit, op)
        statistics.stateTransfers += 1
        log("n\(index + 1) installed n\(from)'s checkpoint at op \(op) by state transfer")
        try feed(index, .stateInstalled(op: op, checksum: checksum))
    }

    // MARK: - Clients

    private mutating func driveClients() throws {
        for client in clients.indices {
            if let outstanding = clients[client].outstanding {
                // Retry the same request number after a timeout, elsewhere.
                if tick - outstanding.sentAt > 40 {
                    let target = clients[client].nextTarget
                    try submit(client, payload: outstanding.payload, to: target)
                    clients[client].nextTarget = NodeID(Int.random(in: 1...nodes.count, using: &rng))
                }
            } else if !clientsStopped, chance(options.requestProbability) {
                clients[client].requestNumber += 1
                let payload = Array("client-\(client)-request-\(clients[client].requestNumber)".utf8)
                try submit(client, payload: payload, to: clients[client].nextTarget)
            }
        }
    }

    private mutating func submit(_ client: Int, payload: [UInt8], to target: NodeID) throws {
        clients[client].outstanding = (payload, tick, target)
        let index = Int(target) - 1
        guard nodes[index].up else { return }
        let id = nextRequestID
        nextRequestID += 1
        requestOwners[id] = client
        let session = ClientSession(clientID: "client-\(client)", requestNumber: clients[client].requestNumber)
        let request = ClientRequest(id: id, session: session, payload: payload)
        try feed(index, .clientRequests([request], nowMs: Int64(1_700_000_000_000 + tick * 10)))
    }

    // MARK: - Final checks

    /// Checked on the journals (the disks), which hold every op; memory
    /// holds only the tail after each replica's floor.
    private func checkFinalState() throws {
        let current = members
        guard nodes.allSatisfy({ !$0.awaitingJoin || !current.contains($0.replica.selfID) }) else {
            throw fail("a member of the final epoch was never started")
        }
        // Removed nodes keep whatever they held when they left.
        for node in nodes where current.contains(node.replica.selfID) {
            let replica = node.replica
            let disk = node.disk
            // Ops below the base live in the checkpoint: only the base's checksum is left to compare.
            for (op, checksum) in committed where op <= replica.commitNumber && op >= node.base.op && op > 0 {
                guard node.checksum(op) == checksum else {
                    throw fail("SAFETY: n\(replica.selfID) holds a different op \(op) than was committed")
                }
            }
            for ack in acknowledged where ack.op >= node.base.op {
                guard node.checksum(ack.op) == ack.checksum else {
                    throw fail("SAFETY: acknowledged op \(ack.op) missing on n\(replica.selfID); \(stateSummary())")
                }
            }
            for (index, entry) in disk.enumerated() {
                guard entry.isIntact, entry.op == node.base.op + OpNumber(index + 1),
                      entry.parent == (index == 0 ? node.base.checksum : disk[index - 1].checksum) else {
                    throw fail("n\(replica.selfID) log broken at op \(node.base.op + OpNumber(index + 1))")
                }
            }
        }
    }
}
