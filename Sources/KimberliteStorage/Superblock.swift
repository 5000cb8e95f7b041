#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import KimberliteCore

/// What a replica must not forget across restarts (DESIGN.md §3
/// correctness notes): persisted before it votes or acknowledges a view.
public struct SuperblockState: Equatable, Sendable, Codable {
    public var clusterName: String
    public var nodeID: NodeID
    /// The highest view this replica has seen.
    public var view: ViewNumber
    /// The view in which this replica's log was last known normal (VRR `log_view`).
    public var logView: ViewNumber
    public var commitNumber: OpNumber
    /// Membership epoch (bumped by membership changes and force-leader).
    public var epoch: UInt64
    public var members: [NodeID]
    /// True while the replica is recovering lost entries; kept across
    /// restarts so a replica that crashes while recovering keeps recovering.
    public var recovering = false
    /// While `recovering`: the op its log must reach before it votes again
    /// (at least; the primary's op at recovery time raises it).
    public var recoveryTarget: OpNumber = 0
    /// The replica has joined its cluster: it formed it with the other
    /// members, or recovered from the primary of a cluster that had formed.
    /// False in a new data directory, so a wiped replica never passes for a
    /// member that simply has nothing yet.
    public var formed = false
    /// The journal has held an entry. An empty journal in a data directory
    /// where this is set lost its entries (`rm -rf log/*`): the replica
    /// recovers them before it votes again.
    public var logStarted = false
    /// Where the replica found its committed log contradicts the cluster's
    /// (see `DurableRecord.divergence`); nil while it does not.
    public var divergence: Divergence? = nil
    /// The first op of the newest journal segment this superblock announced
    /// (written before the segment file is created); 0 when unknown. A
    /// segment starting after it was written after this superblock: the
    /// directory was restored from an older copy (see `Journal.setAsideSegments`).
    public var newestSegmentOp: OpNumber = 0
    /// Set (to the newer epoch) once a member of a newer membership epoch
    /// refused this node: it was left out (a force-leader elsewhere) and
    /// serves and votes in nothing from then on; 0 while it is not.
    public var supersededByEpoch: UInt64 = 0
    /// The op just before the journal's first entry: 0 for a log kept from
    /// op 1, else the op through which the log was compacted or the
    /// checkpoint a state transfer installed. Written before any segment at
    /// or below it is deleted.
    public var logBaseOp: OpNumber = 0
    /// The checksum of entry `logBaseOp` (the anchor the journal's first
    /// entry chains onto); `.zero` when `logBaseOp` is 0.
    public var logBaseChecksum: Checksum = .zero
    /// Where each member listens for cluster traffic, and the epoch from
    /// which that node is the member (DESIGN.md §2b: after the first start
    /// membership and addresses come from here, never from the flags).
    /// Empty in directories written before addresses were kept here.
    public var addresses: [MemberAddress] = []

    public init(clusterName: String, nodeID: NodeID, view: ViewNumber = 0, logView: ViewNumber = 0,
                commitNumber: OpNumber = 0, epoch: UInt64 = 0, members: [NodeID]) {
        self.clusterName = clusterName
        self.nodeID = nodeID
        self.view = view
        self.logView = logView
        self.commitNumber = commitNumber
        self.epoch = epoch
        self.members = members
    }
}

/// One member's cluster address as the superblock keeps it.
public struct MemberAddress: Equatable, Sendable, Codable {
    public var nodeID: NodeID
    public var host: String
    public var port: Int
    /// The epoch in which this node became the member with this id (0 for
    /// a founding member). A node showing an older epoch under the same id
    /// is an earlier incarnation (say, from before a force-leader) and is
    /// refused.
    public var sinceEpoch: UInt64

    public init(nodeID: NodeID, host: String, port: Int, sinceEpoch: UInt64) {
        self.nodeID = nodeID; self.host = host; self.port = port; self.sinceEpoch = sinceEpoch
    }

    /// `host:port`, with brackets around an IPv6 host.
    public var address: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// The list as the superblock and the cluster frames carry it:
    /// `count(u8)` then per member `node id(u8) since epoch(u64) host(string) port(u16)`.
    public static func write(_ addresses: [MemberAddress], to writer: inout ByteWriter) {
        writer.write(UInt8(addresses.count))
        for member in addresses {
            writer.write(member.nodeID); writer.write(member.sinceEpoch); writer.writeString(member.host); writer.write(UInt16(member.port))
        }
    }

    /// Reads what `write(_:to:)` wrote. - Throws: `DecodeError` on truncated input or a host over 1 KiB.
    public static func readList(from reader: inout ByteReader) throws -> [MemberAddress] {
        let count: UInt8 = try reader.read()
        var addresses: [MemberAddress] = []
        for _ in 0..<count {
            let nodeID: NodeID = try reader.read()
            let since: UInt64 = try reader.read()
            let host = try reader.readString(limit: 1024)
            let port: UInt16 = try reader.read()
            addresses.append(MemberAddress(nodeID: nodeID, host: host, port: Int(port), sinceEpoch: since))
        }
        return addresses
    }
}

extension SuperblockState {
    /// A new data directory's identity with the replica's record.
    public init(clusterName: String, nodeID: NodeID, record: DurableRecord) {
        self.init(clusterName: clusterName, nodeID: nodeID, members: record.members)
        self.record = record
    }

    /// The replica's durable record: every field but the identity (cluster
    /// name and node id), which the replica never changes.
    public var record: DurableRecord {
        get {
            DurableRecord(view: view, logView: logView, commitNumber: commitNumber, epoch: epoch, members: members,
                          formed: formed, logStarted: logStarted, recovering: recovering, recoveryTarget: recoveryTarget,
                          divergence: divergence)
        }
        set {
            view = newValue.view; logView = newValue.logView; commitNumber = newValue.commitNumber
            epoch = newValue.epoch; members = newValue.members; formed = newValue.formed
            logStarted = newValue.logStarted; recovering = newValue.recovering; recoveryTarget = newValue.recoveryTarget
            divergence = newValue.divergence
        }
    }
}

/// `<data_dir>/superblock`: four checksummed 4 KiB copies of
/// `SuperblockState`, written so a crash at any point leaves a valid one.
///
/// Slot layout (little-endian): `magic "KMBSUPER"(8) version(u32) slot(u32)
/// sequence(u64) payload_length(u32) payload … zero padding … crc32c(u32,
/// last 4 bytes, over the rest of the slot)`. `write` stores slots 0-1, fsyncs,
/// then slots 2-3, fsyncs; `read` takes the valid copy with the highest
/// sequence. The very first write goes to a temporary file renamed into
/// place, so the file is never seen half-created.
///
/// Not thread-safe: one owner.
public final class Superblock {
    public static let slotSize = 4096
    public static let copies = 4
    static let magic: [UInt8] = Array("KMBSUPER".utf8)
    /// 2 added the flags byte (formed, log started, recovering).
    static let version: UInt32 = 2
    static let headerSize = 28
    static let maximumPayload = slotSize - headerSize - 4

    public let path: String
    /// Valid copies found by the last `read` or left by the last `write` (0-4).
    public private(set) var validCopies = 0
    /// Sequence number of the newest valid copy (0 before any).
    public private(set) var sequence: UInt64 = 0

    /// - Throws: `StorageError.notADirectory`-style errors if `path` is a directory.
    public init(path: String) throws {
        if FileIO.kind(path) == .directory {
            throw StorageError.invalidArgument("superblock path \(path) is a directory")
        }
        self.path = path
    }

    /// The newest valid state, or nil if the superblock file does not exist (a new node).
    /// - Throws: `StorageError.superblockCorrupt` naming every copy's fault when none is valid;
    ///   `.io` if the file cannot be read.
    public func read() throws -> SuperblockState? {
        guard FileIO.kind(path) != .missing else {
            validCopies = 0
            return nil
        }
        let slots = try inspect()
        validCopies = slots.filter { $0.state != nil }.count
        guard let best = slots.filter({ $0.state != nil }).max(by: { $0.sequence < $1.sequence }) else {
            let reasons = slots.map { "copy \($0.index): \($0.problem ?? "?")" }.joined(separator: "; ")
            throw StorageError.superblockCorrupt(path: path, reason: reasons)
        }
        sequence = best.sequence
        return best.state
    }

    /// Whether a state with these members and addresses fits a slot even
    /// with every optional field present: the check made before a change
    /// that every member must write (a join), so none of them fails to.
    public static func fits(clusterName: String, members: [NodeID], addresses: [MemberAddress]) -> Bool {
        var state = SuperblockState(clusterName: clusterName, nodeID: 1, members: members)
        state.addresses = addresses
        state.divergence = Divergence(op: 1, peer: 1)
        state.newestSegmentOp = 1
        state.supersededByEpoch = 1
        state.logBaseOp = 1
        return encode(state).count <= maximumPayload
    }

    /// Durably replaces the state: slots 0-1, fsync, slots 2-3, fsync.
    /// - Throws: `.invalidArgument` if the state does not fit a 4 KiB slot;
    ///   `.diskFull`, `.io` naming the file.
    public func write(_ state: SuperblockState) throws {
        let payload = Superblock.encode(state)
        guard payload.count <= Superblock.maximumPayload else {
            throw StorageError.invalidArgument("superblock state is \(payload.count) bytes; at most \(Superblock.maximumPayload) fit (cluster name or member list too long)")
        }
        var highest = sequence
        if FileIO.kind(path) != .missing {
            // Never write a sequence below a valid copy already on disk.
            let slots = try inspect()
            highest = max(highest, slots.compactMap { $0.state == nil ? nil : $0.sequence }.max() ?? 0)
        }
        let next = highest + 1
        var image: [UInt8] = []
        image.reserveCapacity(Superblock.slotSize * Superblock.copies)
        for slot in 0..<Superblock.copies {
            image.append(contentsOf: Superblock.encodeSlot(slot: slot, sequence: next, payload: payload))
        }
        let half = Superblock.slotSize * 2
        if FileIO.kind(path) == .missing {
            try FileIO.writeReplacing(image, to: path)
        } else {
            let fd = try FileIO.openFile(path, flags: O_RDWR)
            defer { FileIO.closeFile(fd) }
            try image.withUnsafeBytes { raw in
                try FileIO.write(fd, UnsafeRawBufferPointer(rebasing: raw[0..<half]), at: 0, path: path)
                try FileIO.sync(fd, path: path)
                try FileIO.write(fd, UnsafeRawBufferPointer(rebasing: raw[half...]), at: half, path: path)
                try FileIO.sync(fd, path: path)
            }
        }
        sequence = next
        validCopies = Superblock.copies
    }

    /// One copy as found on disk.
    struct Slot {
        var index: Int
        var sequence: UInt64
        var state: SuperblockState?
        /// Why the copy is invalid (nil when valid).
        var problem: String?
    }

    /// Decodes all four copies. Throws only if the file cannot be read.
    func inspect() throws -> [Slot] {
        let bytes = try FileIO.readWholeFile(path)
        return (0..<Superblock.copies).map { Superblock.decodeSlot(bytes, index: $0) }
    }

    static func encode(_ state: SuperblockState) -> [UInt8] {
        var writer = ByteWriter(capacity: 64 + state.clusterName.utf8.count + state.members.count)
        writer.writeString(state.clusterName)
        writer.write(state.nodeID)
        writer.write(state.view)
        writer.write(state.logView)
        writer.write(state.commitNumber)
        writer.write(state.epoch)
        writer.writeBlob(state.members)
        writer.write(state.recoveryTarget)
        var flags: UInt8 = 0
        if state.formed { flags |= 1 }
        if state.logStarted { flags |= 2 }
        if state.recovering { flags |= 4 }
        if state.divergence != nil { flags |= 8 }
        if state.newestSegmentOp > 0 { flags |= 16 }
        if state.supersededByEpoch > 0 { flags |= 32 }
        if state.logBaseOp > 0 { flags |= 64 }
        if !state.addresses.isEmpty { flags |= 128 }
        writer.write(flags)
        if let divergence = state.divergence {
            writer.write(divergence.op)
            writer.write(divergence.peer)
        }
        if state.newestSegmentOp > 0 { writer.write(state.newestSegmentOp) }
        if state.supersededByEpoch > 0 { writer.write(state.supersededByEpoch) }
        if state.logBaseOp > 0 {
            writer.write(state.logBaseOp)
            writer.writeRaw(state.logBaseChecksum.bytes)
        }
        if !state.addresses.isEmpty { MemberAddress.write(state.addresses, to: &writer) }
        return writer.bytes
    }

    static func encodeSlot(slot: Int, sequence: UInt64, payload: [UInt8]) -> [UInt8] {
        var writer = ByteWriter(capacity: slotSize)
        writer.writeRaw(magic)
        writer.write(version)
        writer.write(UInt32(slot))
        writer.write(sequence)
        writer.writeBlob(payload)
        var bytes = writer.bytes
        bytes.append(contentsOf: repeatElement(0, count: slotSize - 4 - bytes.count))
        let crc = CRC32C.checksum(bytes)
        withUnsafeBytes(of: crc.littleEndian) { bytes.append(contentsOf: $0) }
        return bytes
    }

    static func decodeSlot(_ file: [UInt8], index: Int) -> Slot {
        let start = index * slotSize
        var slot = Slot(index: index, sequence: 0, state: nil, problem: nil)
        guard file.count >= start + slotSize else {
            slot.problem = file.count <= start ? "missing (file is \(file.count) bytes)" : "truncated (file is \(file.count) bytes)"
            return slot
        }
        let stored = SegmentFormat.readU32(file, start + slotSize - 4)
        let computed = CRC32C.checksum(file, range: start..<(start + slotSize - 4))
        guard stored == computed else {
            slot.problem = "checksum mismatch (stored \(hex(stored)), computed \(hex(computed)))"
            return slot
        }
        guard Array(file[start..<(start + 8)]) == magic else {
            slot.problem = "bad magic"
            return slot
        }
        var reader = ByteReader(file, offset: start + 8, end: start + slotSize - 4)
        do {
            let version: UInt32 = try reader.read()
            guard version == self.version else { slot.problem = "unknown version \(version)"; return slot }
            let storedIndex: UInt32 = try reader.read()
            guard storedIndex == UInt32(index) else { slot.problem = "holds copy \(storedIndex), expected \(index)"; return slot }
            slot.sequence = try reader.read()
            let payload = try reader.readBlob(limit: maximumPayload)
            var body = ByteReader(payload)
            var state = SuperblockState(
                clusterName: try body.readString(limit: maximumPayload),
                nodeID: try body.read(),
                view: try body.read(),
                logView: try body.read(),
                commitNumber: try body.read(),
                epoch: try body.read(),
                members: try body.readBlob(limit: 256))
            state.recoveryTarget = try body.read()
            let flags: UInt8 = try body.read()
            state.formed = flags & 1 != 0
            state.logStarted = flags & 2 != 0
            state.recovering = flags & 4 != 0
            if flags & 8 != 0 { state.divergence = Divergence(op: try body.read(), peer: try body.read()) }
            if flags & 16 != 0 { state.newestSegmentOp = try body.read() }
            if flags & 32 != 0 { state.supersededByEpoch = try body.read() }
            if flags & 64 != 0 {
                state.logBaseOp = try body.read()
                state.logBaseChecksum = Checksum(bytes: try body.readRaw(count: 32))
            }
            if flags & 128 != 0 { state.addresses = try MemberAddress.readList(from: &body) }
            guard body.isAtEnd else { slot.problem = "trailing bytes in state"; return slot }
            slot.state = state
        } catch {
            slot.problem = "malformed: \(error)"
        }
        return slot
    }
}
