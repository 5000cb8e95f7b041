import Foundation
import KimberliteCore
import Testing
@testable import KimberliteStorage

/// A data directory restored from an older copy over a newer one: segments
/// the superblock never announced are set aside, not taken for damage.
@Suite struct RestoredDirectoryTests {
    @Test func everySegmentIsAnnouncedBeforeItsFileExists() throws {
        let temp = TempDirectory()
        let log = temp.sub("log")
        let journal = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger)
        var announced: [OpNumber] = []
        journal.willCreateSegment = { op in
            #expect(!FileManager.default.fileExists(atPath: log + "/" + SegmentFormat.fileName(firstOp: op)), "segment \(op) existed before it was announced")
            announced.append(op)
        }
        try journal.append(makeEntries(count: 40))
        try journal.sync()
        let names = try FileIO.list(log)
        #expect(announced.count == names.count && announced.count > 2, "\(announced) \(names)")
        #expect(announced.map { SegmentFormat.fileName(firstOp: $0) } == names)
    }

    @Test func aFailingAnnouncementFailsTheAppendAndCreatesNoFile() throws {
        let temp = TempDirectory()
        let log = temp.sub("log")
        let journal = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger)
        journal.willCreateSegment = { _ in throw StorageError.diskFull(path: "superblock") }
        #expect(throws: StorageError.diskFull(path: "superblock")) { try journal.append(makeEntries(count: 3)) }
        #expect(try FileIO.list(log).isEmpty)
        #expect(journal.lastOp == 0)
    }

    @Test func segmentsAfterTheNewestAnnouncedAreSetAsideAndTheRestOpensClean() throws {
        let temp = TempDirectory()
        let log = temp.sub("log")
        let entries = makeEntries(count: 60)
        var announced: [OpNumber] = []
        do {
            let journal = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger)
            journal.willCreateSegment = { announced.append($0) }
            try journal.append(Array(entries[0..<20]))
            try journal.sync()
        }
        let backupNewest = try #require(announced.last)
        let backupLast = try #require(try FileIO.list(log).last)
        let backupBytes = try readFile(log + "/" + backupLast)
        do {
            let journal = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger)
            try journal.append(Array(entries[20...]))
            try journal.sync()
        }
        // "rsync -av backup/ ..." without --delete: the backup's files come back, newer ones stay.
        try writeFile(log + "/" + backupLast, backupBytes)
        let later = try FileIO.list(log).filter { (SegmentFormat.firstOp(fromFileName: $0) ?? 0) > backupNewest }
        #expect(!later.isEmpty)
        #expect(try Journal.setAsideSegments(in: log, after: 0).isEmpty, "0 means unknown: nothing is set aside")
        let setAside = try Journal.setAsideSegments(in: log, after: backupNewest)
        #expect(setAside == later)
        let reopened = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger)
        #expect(reopened.recovery.corruption == nil)
        #expect(reopened.lastOp == 20 && reopened.lastChecksum == entries[19].checksum)
        let report = DataDirectoryVerifier.verify(dataDir: temp.path)
        #expect(report.problems.filter { $0.severity == .error }.allSatisfy { $0.kind == .superblockMissing }, "\(report.problems)")
        #expect(report.problems.contains { $0.detail.contains("restored from an older copy") })
    }

    @Test func theSuperblockKeepsTheNewestAnnouncedSegment() throws {
        let temp = TempDirectory()
        let superblock = try Superblock(path: temp.sub("superblock"))
        var state = SuperblockState(clusterName: "c", nodeID: 1, members: [1, 2, 3])
        try superblock.write(state)
        #expect(try superblock.read()?.newestSegmentOp == 0)
        state.newestSegmentOp = 12_345
        try superblock.write(state)
        #expect(try superblock.read() == state)
    }
}
