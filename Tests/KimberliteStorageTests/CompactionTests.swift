#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Foundation
import KimberliteCore
import Logging
import Testing
@testable import KimberliteStorage

/// A log that starts after op 1 (DESIGN.md §2b compaction and state
/// transfer): compaction, reset to an installed checkpoint, reopening from
/// the superblock's base, what an interrupted compaction leaves, and the
/// partial file of a checkpoint arriving by state transfer.
@Suite struct CompactionTests {
    @Test func compactionDeletesWholeSegmentsBelowTheOpAndTheLogReopensFromItsBase() throws {
        let dir = TempDirectory()
        let log = dir.sub("log")
        let entries = makeEntries(count: 120, payloadSize: 40)
        var base: (op: OpNumber, checksum: Checksum) = (0, .zero)
        do {
            let journal = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger)
            try journal.append(entries)
            try journal.sync()
            let before = try segmentNames(log)
            var persisted: (op: OpNumber, checksum: Checksum)?
            let freed = try journal.compact(through: 70) { persisted = $0 }
            base = try #require(persisted)
            #expect(freed > 0)
            // Only whole segments at or below op 70 go; the base is the last op deleted.
            #expect(base.op <= 70 && base.op > 0)
            #expect(base.checksum == entries[Int(base.op) - 1].checksum)
            #expect(journal.firstOp == base.op + 1)
            #expect(try segmentNames(log).count < before.count)
            #expect(try journal.entries(from: 1, through: 120) == Array(entries[Int(base.op)...]))
            // Nothing may be truncated below the base.
            #expect(throws: StorageError.self) { try journal.truncate(after: base.op - 1) }
            // Never the newest segment, whatever the op.
            _ = try journal.compact(through: 1000) { persisted = $0 }
            #expect(try segmentNames(log).count >= 1)
            base = try #require(persisted)
            #expect(journal.base.op == base.op)
        }
        let reopened = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger, base: base)
        #expect(reopened.recovery.isClean)
        #expect(reopened.lastOp == 120)
        #expect(reopened.firstOp <= base.op + 1)
        // Opened without its base, the same log is a gap: the base is what makes it whole.
        let unanchored = try Journal(directory: dir.sub("log"), segmentSize: 600, syncMode: .fsync, logger: quietLogger)
        #expect(unanchored.recovery.corruption != nil)
    }

    @Test func aCrashBetweenTheSuperblockAndTheDeletesLeavesSegmentsTheNextOpenRemoves() throws {
        let dir = TempDirectory()
        let log = dir.sub("log")
        let entries = makeEntries(count: 60, payloadSize: 40)
        let journal = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger)
        try journal.append(entries)
        try journal.sync()
        let names = try segmentNames(log)
        // The base names the op before the third segment; the files below it were not deleted yet.
        let third = try #require(SegmentFormat.firstOp(fromFileName: names[2]))
        let base = (op: third - 1, checksum: entries[Int(third) - 2].checksum)
        let reopened = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger, base: base)
        #expect(reopened.recovery.isClean)
        #expect(try segmentNames(log) == Array(names.dropFirst(2)))
        #expect(try reopened.loadAll() == Array(entries[Int(base.op)...]))
    }

    @Test func resetStartsAnEmptyLogAfterAnInstalledCheckpoint() throws {
        let dir = TempDirectory()
        let log = dir.sub("log")
        let old = makeEntries(count: 30, payloadSize: 40)
        let cluster = makeEntries(count: 80, payloadSize: 40, salt: 9)
        let journal = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger)
        try journal.append(old)
        try journal.sync()
        let anchor = (op: OpNumber(60), checksum: cluster[59].checksum)
        try journal.reset(to: anchor) { _ in }
        #expect(journal.lastOp == 60 && journal.lastChecksum == anchor.checksum)
        #expect(try segmentNames(log).isEmpty)
        // The next append must chain onto the checkpoint's anchor.
        #expect(throws: StorageError.self) { try journal.append(Array(old[0..<1])) }
        try journal.append(Array(cluster[60...]))
        try journal.sync()
        let reopened = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger, base: anchor)
        #expect(reopened.recovery.isClean && reopened.lastOp == 80)
        #expect(try reopened.loadAll() == Array(cluster[60...]))
        // The verifier reads it from the superblock's base.
        let superblock = try Superblock(path: dir.sub("superblock"))
        var state = SuperblockState(clusterName: "c", nodeID: 1, members: [1])
        state.logBaseOp = anchor.op
        state.logBaseChecksum = anchor.checksum
        try superblock.write(state)
        #expect(try superblock.read()?.logBaseOp == 60)
        #expect(try superblock.read()?.logBaseChecksum == anchor.checksum)
        let report = DataDirectoryVerifier.verify(dataDir: dir.path)
        #expect(report.errors.isEmpty, "\(report.errors.map(\.message))")
        #expect(report.lastOp == 80)
    }

    @Test func anIncomingCheckpointResumesFromItsBytesAndIsRefusedWhenTheyDoNotMatch() throws {
        let dir = TempDirectory()
        let content = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let sha = ChecksummedJSON.hex(SHA256.hash(data: content))
        let anchor = makeEntries(count: 1)[0].checksum
        do {
            let first = try IncomingCheckpoint(dataDir: dir.path, op: 42, anchor: anchor, bytes: content.count, sha256: sha)
            #expect(first.receivedBytes == 0)
            try first.append(Array(content[0..<30_000]), at: 0)
            #expect(throws: StorageError.self) { try first.append(Array(content[40_000..<50_000]), at: 40_000) }
        }
        // A kill, then the same offer: it goes on from 30,000 bytes.
        let resumed = try IncomingCheckpoint(dataDir: dir.path, op: 42, anchor: anchor, bytes: content.count, sha256: sha)
        #expect(resumed.receivedBytes == 30_000)
        try resumed.append(Array(content[30_000...]), at: 30_000)
        let manifest = try resumed.finish(nowMs: 1)
        #expect(manifest.op == 42 && manifest.sha256 == sha)
        let store = CheckpointStore(dataDir: dir.path)
        #expect(try store.check(op: 42).anchor == anchor.description)

        // Bytes that do not hash to the offer are never sealed.
        var bad = content
        bad[500] ^= 1
        let other = try IncomingCheckpoint(dataDir: dir.path, op: 43, anchor: anchor, bytes: bad.count, sha256: sha)
        try other.append(bad, at: 0)
        #expect(throws: StorageError.self) { _ = try other.finish(nowMs: 1) }
        #expect(try store.ops() == [42])
        // A malformed offer is refused before anything is written.
        #expect(throws: StorageError.self) { _ = try IncomingCheckpoint(dataDir: dir.path, op: 0, anchor: anchor, bytes: 1, sha256: "zz") }
    }

    /// The backfill after a state transfer: ops 1…60 fetched into a staged
    /// journal are put back below the base, and the log runs from op 1
    /// again, also after a reopen. A staged log that does not end on the
    /// base's checksum (another history) is refused and nothing changes.
    @Test func olderSegmentsBackfilledBelowTheBaseMakeTheLogWholeAgain() throws {
        let dir = TempDirectory()
        let log = dir.sub("log")
        let cluster = makeEntries(count: 80, payloadSize: 40)
        let anchor = (op: OpNumber(60), checksum: cluster[59].checksum)
        let journal = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger)
        try journal.reset(to: anchor) { _ in }
        try journal.append(Array(cluster[60...]))
        try journal.sync()

        let foreign = try Journal(directory: dir.sub("foreign"), segmentSize: 600, syncMode: .fsync, logger: quietLogger)
        try foreign.append(makeEntries(count: 60, payloadSize: 40, salt: 3))
        #expect(throws: StorageError.self) { try journal.adoptOlderLog(from: foreign) { _ in Issue.record("base persisted") } }
        #expect(journal.firstOp == 61)

        let staged = try Journal(directory: dir.sub("backfill"), segmentSize: 600, syncMode: .fsync, logger: quietLogger)
        try staged.append(Array(cluster[0..<30]))
        // Not all of it yet: refused.
        #expect(throws: StorageError.self) { try journal.adoptOlderLog(from: staged) { _ in } }
        try staged.append(Array(cluster[30..<60]))
        var persisted: (op: OpNumber, checksum: Checksum)?
        try journal.adoptOlderLog(from: staged) { persisted = $0 }
        #expect(persisted?.op == 0 && persisted?.checksum == .zero)
        #expect(journal.firstOp == 1 && journal.base.op == 0)
        #expect(try journal.entries(from: 1, through: 80) == cluster)
        #expect(try segmentNames(dir.sub("backfill")).isEmpty)
        try journal.append(makeEntries(count: 1, from: 81, parent: cluster[79].checksum, payloadSize: 40))
        try journal.sync()
        let reopened = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger)
        #expect(reopened.recovery.isClean && reopened.lastOp == 81)
        #expect(Array(try reopened.loadAll().prefix(80)) == cluster)
    }
}
