import Foundation
import KimberliteCore
import Testing
@testable import KimberliteStorage

/// A data directory with `count` entries over several segments and a superblock.
private func makeDataDirectory(_ root: String, count: Int = 30, segmentSize: Int = 700) throws -> [LogEntry] {
    let data = try DataDirectory(path: root)
    defer { data.unlock() }
    let entries = makeEntries(count: count, payloadSize: 30)
    let journal = try data.openJournal(segmentSize: segmentSize, syncMode: .fsync, logger: quietLogger)
    try journal.append(entries)
    try journal.sync()
    journal.close()
    try data.openSuperblock().write(SuperblockState(clusterName: "test", nodeID: 1, view: 3, logView: 3,
                                                     commitNumber: OpNumber(count), epoch: 0, members: [1, 2, 3]))
    return entries
}

@Suite struct VerifierTests {
    @Test func cleanDirectoryIsOK() throws {
        let dir = TempDirectory()
        let root = dir.sub("data")
        _ = try makeDataDirectory(root)
        let report = DataDirectoryVerifier.verify(dataDir: root)
        #expect(report.ok)
        #expect(!report.isCorrupt)
        #expect(report.problems.isEmpty, "\(report.textLines)")
        #expect(report.entries == 30)
        #expect(report.lastOp == 30)
        #expect(report.segments == (try segmentNames(root + "/log")).count)
        #expect(report.superblockCopiesValid == 4)
        #expect(report.superblock?.view == 3)
        let summary = try #require(report.textLines.last)
        #expect(summary.hasPrefix("verify: \(report.segments) segments, 30 entries, last op 30, \(report.logBytes) bytes"))
        #expect(summary.hasSuffix("; ok"))
        let json = report.json()
        let decoded = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        #expect(decoded?["ok"] as? Bool == true)
        #expect(decoded?["last_op"] as? Int == 30)
        #expect(decoded?["data_dir"] as? String == root)
    }

    @Test func missingEmptyAndForeignDirectoriesAreNotOK() throws {
        let dir = TempDirectory()
        let missing = DataDirectoryVerifier.verify(dataDir: dir.sub("nope"))
        #expect(!missing.ok)
        #expect(missing.problems.first?.kind == .missingDirectory)
        #expect(missing.textLines.first == "verify: data directory \(dir.sub("nope")): missing data directory: does not exist")

        try FileIO.makeDirectories(dir.sub("empty"))
        let empty = DataDirectoryVerifier.verify(dataDir: dir.sub("empty"))
        #expect(!empty.ok)
        #expect(empty.problems.first?.kind == .emptyDirectory)

        try FileIO.makeDirectories(dir.sub("foreign"))
        try writeFile(dir.sub("foreign/postgresql.conf"), Array("x".utf8))
        let foreign = DataDirectoryVerifier.verify(dataDir: dir.sub("foreign"))
        #expect(!foreign.ok)
        #expect(foreign.isCorrupt)
        #expect(foreign.problems.first?.kind == .notADataDirectory)
        #expect(foreign.textLines.first?.contains("postgresql.conf") == true)

        let file = DataDirectoryVerifier.verify(dataDir: dir.sub("foreign/postgresql.conf"))
        #expect(!file.ok)
        let json = try JSONSerialization.jsonObject(with: Data(foreign.json().utf8)) as? [String: Any]
        #expect(json?["ok"] as? Bool == false)
    }

    @Test func flippedBitNamesSegmentOffsetAndOp() throws {
        let dir = TempDirectory()
        let root = dir.sub("data")
        _ = try makeDataDirectory(root)
        let names = try segmentNames(root + "/log")
        let victim = names[1]
        let path = root + "/log/" + victim
        let firstOp = SegmentFormat.firstOp(fromFileName: victim)!
        let offset = try frameOffsets(path)[1]
        var bytes = try readFile(path)
        bytes[offset + 60] ^= 0x04
        try writeFile(path, bytes)

        let report = DataDirectoryVerifier.verify(dataDir: root)
        #expect(!report.ok)
        #expect(report.errors.count == 1, "\(report.textLines)")
        let problem = try #require(report.errors.first)
        #expect(problem.kind == .checksumMismatch)
        #expect(problem.file == "log/" + victim)
        #expect(problem.offset == offset)
        #expect(problem.op == firstOp + 1)
        #expect(problem.message.hasPrefix("verify: segment log/\(victim): checksum mismatch at offset \(offset) (op \(firstOp + 1))"))
        #expect(report.entries == 29, "the scan resynchronises and counts the rest")
        #expect(report.textLines.last?.contains("FAILED") == true)
    }

    @Test func tornTailIsAWarningNotCorruption() throws {
        let dir = TempDirectory()
        let root = dir.sub("data")
        _ = try makeDataDirectory(root)
        let last = try #require(try segmentNames(root + "/log").last)
        let path = root + "/log/" + last
        let bytes = try readFile(path)
        try writeFile(path, Array(bytes.dropLast(7)))
        let report = DataDirectoryVerifier.verify(dataDir: root)
        #expect(report.ok, "\(report.textLines)")
        #expect(report.warnings.map(\.kind) == [.tornTail, .commitBeyondLog])
        #expect(report.entries == 29)
        #expect(report.textLines.last?.contains("ok with 2 warnings") == true)
    }

    @Test func hashChainBreakOpGapAndBadHeaderAreFound() throws {
        let dir = TempDirectory()
        let root = dir.sub("data")
        let entries = try makeDataDirectory(root)
        let names = try segmentNames(root + "/log")
        #expect(names.count >= 5)

        // Replace op 3 with a well-formed entry whose parent is wrong (same size, valid CRC).
        let path0 = root + "/log/" + names[0]
        let offset = try frameOffsets(path0)[2]
        let forged = LogEntry(op: 3, view: 1, timestampMs: 0, session: entries[2].session,
                              payload: entries[2].payload, parent: entries[0].checksum)
        var frame: [UInt8] = []
        SegmentFormat.appendFrame(forged, to: &frame)
        var bytes = try readFile(path0)
        #expect(Int(SegmentFormat.readU32(bytes, offset)) + 8 == frame.count)
        bytes.replaceSubrange(offset..<(offset + frame.count), with: frame)
        try writeFile(path0, bytes)

        // Remove a middle segment: an op gap at the start of the next one.
        removeTree(root + "/log/" + names[2])
        // Damage the header of another.
        let path4 = root + "/log/" + names[4]
        var header = try readFile(path4)
        header[0] = UInt8(ascii: "X")
        try writeFile(path4, header)

        let report = DataDirectoryVerifier.verify(dataDir: root)
        #expect(!report.ok)
        let kinds = report.errors.map(\.kind)
        #expect(kinds.contains(.hashChainBreak))
        #expect(kinds.contains(.opGap))
        #expect(kinds.contains(.badSegmentHeader))
        let gap = try #require(report.errors.first { $0.kind == .opGap })
        #expect(gap.file == "log/" + names[3])
        #expect(gap.offset == 0)
        let chain = try #require(report.errors.first { $0.kind == .hashChainBreak })
        #expect(chain.file == "log/" + names[0] && chain.offset == offset && chain.op == 3)

        // The journal stops at the first of them.
        let journal = try Journal(directory: root + "/log", segmentSize: 700, syncMode: .async, logger: quietLogger)
        #expect(journal.recovery.corruption?.kind == .hashChainBreak)
        #expect(journal.lastOp == 2)
    }

    @Test func superblockCopiesAreChecked() throws {
        let dir = TempDirectory()
        let root = dir.sub("data")
        _ = try makeDataDirectory(root, count: 3)
        let path = root + "/superblock"
        var image = try readFile(path)
        image[Superblock.slotSize * 2 + 50] ^= 1
        try writeFile(path, image)
        let one = DataDirectoryVerifier.verify(dataDir: root)
        #expect(one.ok, "a valid copy remains; the next write repairs it")
        #expect(one.superblockCopiesValid == 3)
        #expect(one.warnings.first?.message.hasPrefix("verify: superblock: warning: superblock copy 2 invalid") == true)

        for copy in 0..<Superblock.copies { image[copy * Superblock.slotSize + 50] ^= 2 }
        try writeFile(path, image)
        let none = DataDirectoryVerifier.verify(dataDir: root)
        #expect(!none.ok)
        #expect(none.errors.count == 4)
        #expect(none.superblockCopiesValid == 0)

        removeTree(path)
        let missing = DataDirectoryVerifier.verify(dataDir: root)
        #expect(!missing.ok)
        #expect(missing.errors.first?.kind == .superblockMissing)
    }

    @Test func quarantinedEvidenceIsReportedButNotCorruption() throws {
        let dir = TempDirectory()
        let root = dir.sub("data")
        _ = try makeDataDirectory(root, count: 3)
        try writeFile(root + "/log/00000000000000000009.kmb.corrupt", [0, 1, 2])
        let report = DataDirectoryVerifier.verify(dataDir: root)
        #expect(report.ok)
        #expect(report.warnings.first?.kind == .unexpectedFile)
        #expect(report.warnings.first?.file == "log/00000000000000000009.kmb.corrupt")
    }
}
