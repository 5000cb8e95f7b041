/// VSR protocol messages (Viewstamped Replication Revisited, Liskov & Cowling
/// 2012). Section numbers below refer to that paper.
///
/// Deviations, each needed by DESIGN.md §3:
/// - `commit` heartbeats carry a sequence number and backups answer them with
///   `commitAck`, so a primary can confirm leadership for strong reads and
///   step down when a quorum stops answering (plain VSR has no such ack).
/// - `doViewChange` and `startView` carry the log suffix after the sender's
///   commit number plus the checksum of the entry at that commit number
///   (the hash chain proves the receiver's prefix matches), not the whole log.
/// - Missing entries are fetched with `requestEntries` / `entries` (VRR §5.2
///   state transfer, without checkpoints yet).
public enum Message: Sendable, Equatable {
    /// §4.1 step 3: primary → backups. `entries` are contiguous and chain
    /// onto the entry before the first one.
    case prepare(view: ViewNumber, commit: OpNumber, entries: [LogEntry])
    /// §4.1 step 4: backup → primary: my log equals yours through `op`, durably.
    case prepareOK(view: ViewNumber, op: OpNumber)
    /// §4.1 step 7 heartbeat: primary → backups, every heartbeat interval.
    /// `op` is the primary's op number, so a backup can see a gap;
    /// `commitChecksum` is the checksum of its entry at `commit`, so a backup
    /// holding a different committed entry there finds out (divergence).
    case commit(view: ViewNumber, commit: OpNumber, commitChecksum: Checksum, op: OpNumber, sequence: UInt64)
    /// Backup → primary answer to `commit`; `op` restates prepare_ok.
    case commitAck(view: ViewNumber, sequence: UInt64, op: OpNumber)
    /// §4.2 step 1.
    case startViewChange(view: ViewNumber)
    /// §4.2 step 2: to the new primary.
    case doViewChange(DoViewChange)
    /// §4.2 step 5: new primary → backups.
    case startView(StartView)
    /// §5.2: send me your log from op `from`.
    case requestEntries(view: ViewNumber, from: OpNumber)
    /// Answer to `requestEntries`; `lastOp` is the sender's op number.
    case entries(view: ViewNumber, commit: OpNumber, lastOp: OpNumber, entries: [LogEntry])
    /// §4.3: a replica that lost entries, or has never joined the cluster,
    /// asks who leads now; `nonce` ties answers to this request.
    case recovery(nonce: UInt64)
    /// §4.3: a replica in normal status answers (`isNormal`); the primary
    /// includes its op number. `isFresh` says the sender's log is empty (in
    /// any view): replicas with an empty log answer in any status, for
    /// cluster formation, but only `isNormal` answers count for §4.3.
    case recoveryResponse(view: ViewNumber, nonce: UInt64, op: OpNumber, commit: OpNumber, isPrimary: Bool, isFresh: Bool,
                          isNormal: Bool)
    /// VRR §7: the sender is in `epoch` with `members`, and has committed
    /// through `commit` (at least the reconfiguration that began the
    /// epoch), whose entry has `commitChecksum`. Sent in answer to a message of an older epoch, so its sender
    /// learns the epoch and recovers in it, and in answer to a message of a
    /// newer one, so its sender answers with this message in turn.
    case epochStarted(epoch: UInt64, members: [NodeID], commit: OpNumber, commitChecksum: Checksum)
}

/// §4.2 DOVIEWCHANGE: the sender's log state for the new primary.
public struct DoViewChange: Sendable, Equatable {
    public var view: ViewNumber
    /// The last view in which the sender's status was normal.
    public var logView: ViewNumber
    public var op: OpNumber
    public var commit: OpNumber
    /// Checksum of the sender's entry at `commit` (`.zero` when commit is 0).
    public var commitChecksum: Checksum
    /// The sender's entries `commit+1 ... op`.
    public var suffix: [LogEntry]

    public init(view: ViewNumber, logView: ViewNumber, op: OpNumber, commit: OpNumber,
                commitChecksum: Checksum, suffix: [LogEntry]) {
        self.view = view; self.logView = logView; self.op = op; self.commit = commit
        self.commitChecksum = commitChecksum; self.suffix = suffix
    }
}

/// §4.2 STARTVIEW: the new view's log from `suffix.first.op`, its op and commit.
public struct StartView: Sendable, Equatable {
    public var view: ViewNumber
    public var op: OpNumber
    public var commit: OpNumber
    /// Entries `op - suffix.count + 1 ... op`; the first chains onto the
    /// receiver's entry before it, or the receiver fetches the gap.
    public var suffix: [LogEntry]

    public init(view: ViewNumber, op: OpNumber, commit: OpNumber, suffix: [LogEntry]) {
        self.view = view; self.op = op; self.commit = commit; self.suffix = suffix
    }
}

extension Message {
    /// The view the message belongs to.
    public var view: ViewNumber {
        switch self {
        case .prepare(let view, _, _), .prepareOK(let view, _), .commit(let view, _, _, _, _),
             .commitAck(let view, _, _), .startViewChange(let view), .requestEntries(let view, _),
             .entries(let view, _, _, _):
            return view
        case .doViewChange(let dvc): return dvc.view
        case .startView(let sv): return sv.view
        case .recovery, .epochStarted: return 0
        case .recoveryResponse(let view, _, _, _, _, _, _): return view
        }
    }

    /// A short stable name for logs and metrics.
    public var name: String {
        switch self {
        case .prepare: return "prepare"
        case .prepareOK: return "prepare_ok"
        case .commit: return "commit"
        case .commitAck: return "commit_ack"
        case .startViewChange: return "start_view_change"
        case .doViewChange: return "do_view_change"
        case .startView: return "start_view"
        case .requestEntries: return "request_entries"
        case .entries: return "entries"
        case .recovery: return "recovery"
        case .recoveryResponse: return "recovery_response"
        case .epochStarted: return "epoch_started"
        }
    }

    /// Binary encoding: a tag byte then the fields, little-endian.
    public func encode(into writer: inout ByteWriter) {
        func writeEntries(_ entries: [LogEntry]) { LogEntry.write(entries, to: &writer) }
        switch self {
        case .prepare(let view, let commit, let entries):
            writer.write(UInt8(1)); writer.write(view); writer.write(commit); writeEntries(entries)
        case .prepareOK(let view, let op):
            writer.write(UInt8(2)); writer.write(view); writer.write(op)
        case .commit(let view, let commit, let commitChecksum, let op, let sequence):
            writer.write(UInt8(3)); writer.write(view); writer.write(commit); writer.writeRaw(commitChecksum.bytes)
            writer.write(op); writer.write(sequence)
        case .commitAck(let view, let sequence, let op):
            writer.write(UInt8(4)); writer.write(view); writer.write(sequence); writer.write(op)
        case .startViewChange(let view):
            writer.write(UInt8(5)); writer.write(view)
        case .doViewChange(let dvc):
            writer.write(UInt8(6)); writer.write(dvc.view); writer.write(dvc.logView); writer.write(dvc.op)
            writer.write(dvc.commit); writer.writeRaw(dvc.commitChecksum.bytes); writeEntries(dvc.suffix)
        case .startView(let sv):
            writer.write(UInt8(7)); writer.write(sv.view); writer.write(sv.op); writer.write(sv.commit)
            writeEntries(sv.suffix)
        case .requestEntries(let view, let from):
            writer.write(UInt8(8)); writer.write(view); writer.write(from)
        case .entries(let view, let commit, let lastOp, let entries):
            writer.write(UInt8(9)); writer.write(view); writer.write(commit); writer.write(lastOp)
            writeEntries(entries)
        case .recovery(let nonce):
            writer.write(UInt8(10)); writer.write(nonce)
        case .recoveryResponse(let view, let nonce, let op, let commit, let isPrimary, let isFresh, let isNormal):
            writer.write(UInt8(11)); writer.write(view); writer.write(nonce); writer.write(op); writer.write(commit)
            writer.write(isPrimary); writer.write(isFresh); writer.write(isNormal)
        case .epochStarted(let epoch, let members, let commit, let commitChecksum):
            writer.write(UInt8(12)); writer.write(epoch); writer.write(UInt8(members.count))
            for member in members { writer.write(member) }
            writer.write(commit); writer.writeRaw(commitChecksum.bytes)
        }
    }

    /// Decodes what `encode(into:)` wrote.
    /// - Throws: `DecodeError` on an unknown tag, truncated input or a bad entry.
    public static func decode(from reader: inout ByteReader) throws -> Message {
        func readEntries() throws -> [LogEntry] { try LogEntry.readList(from: &reader) }
        let tag: UInt8 = try reader.read()
        switch tag {
        case 1: return .prepare(view: try reader.read(), commit: try reader.read(), entries: try readEntries())
        case 2: return .prepareOK(view: try reader.read(), op: try reader.read())
        case 3:
            return .commit(view: try reader.read(), commit: try reader.read(), commitChecksum: Checksum(bytes: try reader.readRaw(count: 32)),
                           op: try reader.read(), sequence: try reader.read())
        case 4: return .commitAck(view: try reader.read(), sequence: try reader.read(), op: try reader.read())
        case 5: return .startViewChange(view: try reader.read())
        case 6:
            let view: UInt64 = try reader.read(), logView: UInt64 = try reader.read(), op: UInt64 = try reader.read()
            let commit: UInt64 = try reader.read()
            let checksum = Checksum(bytes: try reader.readRaw(count: 32))
            return .doViewChange(DoViewChange(view: view, logView: logView, op: op, commit: commit,
                                              commitChecksum: checksum, suffix: try readEntries()))
        case 7:
            let view: UInt64 = try reader.read(), op: UInt64 = try reader.read(), commit: UInt64 = try reader.read()
            return .startView(StartView(view: view, op: op, commit: commit, suffix: try readEntries()))
        case 8: return .requestEntries(view: try reader.read(), from: try reader.read())
        case 9:
            return .entries(view: try reader.read(), commit: try reader.read(), lastOp: try reader.read(),
                            entries: try readEntries())
        case 10: return .recovery(nonce: try reader.read())
        case 11:
            return .recoveryResponse(view: try reader.read(), nonce: try reader.read(), op: try reader.read(),
                                     commit: try reader.read(), isPrimary: try reader.readBool(), isFresh: try reader.readBool(),
                                     isNormal: try reader.readBool())
        case 12:
            let epoch: UInt64 = try reader.read()
            let count: UInt8 = try reader.read()
            var members: [NodeID] = []
            for _ in 0..<count { members.append(try reader.read()) }
            return .epochStarted(epoch: epoch, members: members, commit: try reader.read(),
                                 commitChecksum: Checksum(bytes: try reader.readRaw(count: 32)))
        default: throw DecodeError.invalid("message tag \(tag)")
        }
    }
}
