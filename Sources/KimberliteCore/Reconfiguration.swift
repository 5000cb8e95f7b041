/// A membership change (VRR §7, one member at a time): a log entry whose
/// payload is this record. It is prepared and committed by the members of
/// the epoch it ends; when it commits, every replica that commits it moves
/// to `epoch` with `members`.
///
/// Rules the replica keeps (each a simplification of VRR §7 that this
/// project relies on):
/// - one member added or removed per change, so any quorum of the old
///   members and any quorum of the new ones share a member (the argument
///   behind one-at-a-time changes);
/// - a primary prepares nothing after an uncommitted reconfiguration, so no
///   op of the old epoch follows it, and accepts no second change until it
///   commits (`RequestRejection.reconfigurationInProgress`);
/// - view numbers run on across epochs (VRR resets them; keeping them
///   monotonic keeps log-view comparisons meaningful): the members of the new
///   epoch start a view change to the next view as soon as they commit the
///   entry, and the primary of a view is `members[view % count]` of its epoch;
/// - a replica that meets a message of a newer epoch learns the epoch
///   (`Message.epochStarted`) and recovers in it from the new primary (VRR
///   §7's state transfer to the new group); one no longer a member stops.
///
/// Payload form (little-endian, `ByteWriter`): `tag(u8 = 3) epoch(u64)
/// count(u8) member ids(u8 each, ascending) detail(u32 len + UTF-8)`.
/// Tag 3 never starts a projection payload (a write batch starts with 1, a
/// system record with 2).
public struct Reconfiguration: Sendable, Equatable {
    /// The epoch the change starts.
    public var epoch: UInt64
    /// Every member of that epoch, ascending.
    public var members: [NodeID]
    /// The runtime's own description (say, the new member's addresses as
    /// JSON); opaque to the core.
    public var detail: String

    public static let payloadTag: UInt8 = 3

    public init(epoch: UInt64, members: [NodeID], detail: String = "") {
        self.epoch = epoch
        self.members = members.sorted()
        self.detail = detail
    }

    public func encode() -> [UInt8] {
        var writer = ByteWriter(capacity: 16 + members.count + detail.utf8.count)
        writer.write(Self.payloadTag)
        writer.write(epoch)
        writer.write(UInt8(members.count))
        for member in members { writer.write(member) }
        writer.writeString(detail)
        return writer.bytes
    }

    /// Decodes what `encode()` wrote; nil when `payload` is not a
    /// well-formed reconfiguration (so any other payload is client data).
    public static func decode(_ payload: [UInt8]) -> Reconfiguration? {
        guard payload.first == payloadTag else { return nil }
        var reader = ByteReader(payload)
        guard let _: UInt8 = try? reader.read(), let epoch: UInt64 = try? reader.read(),
              let count: UInt8 = try? reader.read(), count >= 1 else { return nil }
        var members: [NodeID] = []
        for _ in 0..<count {
            guard let member: UInt8 = try? reader.read(), member >= 1, members.last.map({ member > $0 }) ?? true else { return nil }
            members.append(member)
        }
        guard let detail = try? reader.readString(limit: reader.remaining), reader.isAtEnd else { return nil }
        return Reconfiguration(epoch: epoch, members: members, detail: detail)
    }

    /// Why this change cannot follow `current` members at `currentEpoch`, or nil.
    public func problem(after current: [NodeID], epoch currentEpoch: UInt64) -> String? {
        if epoch != currentEpoch + 1 { return "epoch \(epoch) is not the next epoch after \(currentEpoch)" }
        let old = Set(current), new = Set(members)
        let added = new.subtracting(old), removed = old.subtracting(new)
        if added.count + removed.count != 1 {
            return "members \(members) differ from \(current.sorted()) by \(added.count + removed.count) nodes; change one member at a time"
        }
        return nil
    }
}
