#if canImport(Glibc)
import Glibc
#endif
import KimberliteCore
import Logging
import Testing
@testable import KimberliteStorage

@Suite struct JournalTests {
    /// The journal keeps a start offset for only some frames (every 64th,
    /// or one per 256 KiB) and walks frame headers to the rest: every read,
    /// size, extent and truncation lands on the exact frame, before and
    /// after a reopen, with small entries (the frame-count stride) and large
    /// ones (the byte stride) in segments of several strides each.
    @Test func sparseFrameIndexFindsEveryFrame() throws {
        let dir = TempDirectory()
        let log = dir.sub("log")
        // 300 small entries, 12 of 100 KiB, 200 small: strides of both kinds.
        var entries = makeEntries(count: 300, payloadSize: 50)
        entries += makeEntries(count: 12, from: 301, parent: entries.last!.checksum, payloadSize: 100 << 10)
        entries += makeEntries(count: 200, from: 313, parent: entries.last!.checksum, payloadSize: 70)
        let journal = try Journal(directory: log, segmentSize: 600 << 10, syncMode: .fsync, logger: quietLogger)
        for start in stride(from: 0, to: entries.count, by: 37) {
            try journal.append(Array(entries[start..<min(entries.count, start + 37)]))
        }
        try journal.sync()

        func check(_ journal: Journal, _ expected: [LogEntry]) throws {
            let count = expected.count
            var fileOffsets: [OpNumber: (path: String, start: Int, end: Int)] = [:]
            for name in try segmentNames(log) {
                let path = log + "/" + name
                let starts = try frameOffsets(path)
                let first = SegmentFormat.firstOp(fromFileName: name)!
                for (index, start) in starts.enumerated() {
                    let end = index + 1 < starts.count ? starts[index + 1] : FileIO.fileSize(path)!
                    fileOffsets[first + OpNumber(index)] = (path, start, end)
                }
            }
            #expect(try journal.frameSizes(from: 1, through: OpNumber(count))
                    == (1...count).map { fileOffsets[OpNumber($0)]!.end - fileOffsets[OpNumber($0)]!.start })
            for low in [1, 2, 63, 64, 65, 129, 300, 301, 305, 313, 314, 400, count] where low <= count {
                for high in [low, low + 1, low + 63, low + 64, low + 130, count] where high <= count {
                    #expect(try journal.entries(from: OpNumber(low), through: OpNumber(high)) == Array(expected[(low - 1)..<high]),
                            "entries \(low)...\(high)")
                }
                let extent = try journal.extent(through: OpNumber(low))
                #expect(extent.last?.path == fileOffsets[OpNumber(low)]!.path && extent.last?.bytes == fileOffsets[OpNumber(low)]!.end,
                        "extent through \(low)")
            }
        }
        try check(journal, entries)
        // Cut back to frames that are not sampled (and one that is), then go on appending.
        for keep in [500, 450, 306, 129] {
            try journal.truncate(after: OpNumber(keep))
            #expect(journal.lastOp == OpNumber(keep))
            try check(journal, Array(entries[..<keep]))
        }
        let more = makeEntries(count: 100, from: 130, parent: entries[128].checksum, payloadSize: 90, salt: 7)
        try journal.append(more)
        try journal.sync()
        let final = Array(entries[..<129]) + more
        try check(journal, final)
        journal.close()
        let reopened = try Journal(directory: log, segmentSize: 600 << 10, syncMode: .fsync, logger: quietLogger)
        #expect(reopened.recovery.isClean && reopened.lastOp == 229)
        try check(reopened, final)
    }

    /// A read bounded in bytes takes the longest prefix whose frames fit
    /// (always one), across segments and past 256-frame steps, and never
    /// reads past the journal's ends.
    @Test func entriesBoundedInBytesTakeTheLongestPrefixThatFits() throws {
        let dir = TempDirectory()
        var entries = makeEntries(count: 600, payloadSize: 40)
        entries += makeEntries(count: 5, from: 601, parent: entries.last!.checksum, payloadSize: 200 << 10)
        let journal = try Journal(directory: dir.sub("log"), segmentSize: 300 << 10, syncMode: .fsync, logger: quietLogger)
        try journal.append(entries)
        let sizes = try journal.frameSizes(from: 1, through: 605)
        for (from, maxBytes) in [(1, 1), (1, 10_000), (1, sizes[..<400].reduce(0, +)), (300, 1 << 30), (598, 300 << 10), (604, 1)] {
            var expected = from
            var total = sizes[from - 1]
            while expected < 605 && total + sizes[expected] <= maxBytes { total += sizes[expected]; expected += 1 }
            let read = try journal.entries(from: OpNumber(from), through: 10_000, maxBytes: maxBytes)
            #expect(read == Array(entries[(from - 1)..<expected]), "from \(from) within \(maxBytes) bytes: \(read.count) entries")
        }
        #expect(try journal.entries(from: 606, through: 700, maxBytes: 1 << 20).isEmpty)
    }

    /// A frame length damaged after open (between two sampled frames) sends
    /// the header walk astray, landing on valid frames one op late: a
    /// truncation there is refused as corrupt and cuts nothing, and so is a
    /// backup extent (which would otherwise end a frame late).
    @Test func aDamagedLengthFieldIsFoundBeforeATruncationCutsAnything() throws {
        let dir = TempDirectory()
        let log = dir.sub("log")
        let entries = makeEntries(count: 100, payloadSize: 50)
        let journal = try Journal(directory: log, segmentSize: 1 << 20, syncMode: .fsync, logger: quietLogger)
        try journal.append(entries)
        try journal.sync()
        let path = log + "/" + (try segmentNames(log)).first!
        let offsets = try frameOffsets(path)
        var bytes = try readFile(path)
        // Frame 10's length made to span frame 11 too: every header the walk
        // reads after it is valid, one frame late.
        let spanning = UInt32(offsets[12] - offsets[10] - SegmentFormat.frameHeaderSize)
        withUnsafeBytes(of: spanning.littleEndian) { for (index, byte) in $0.enumerated() { bytes[offsets[10] + index] = byte } }
        try writeFile(path, bytes)
        #expect(throws: StorageError.self) { try journal.truncate(after: 20) }
        #expect(FileIO.fileSize(path) == bytes.count, "the segment was cut")
        #expect(journal.lastOp == 100)
        #expect(throws: StorageError.self) { _ = try journal.extent(through: 30) }
    }

    @Test func appendAndReopenAcrossSegmentRotations() throws {
        let dir = TempDirectory()
        let log = dir.sub("log")
        let entries = makeEntries(count: 120, payloadSize: 40)
        do {
            let journal = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger)
            #expect(journal.lastOp == 0)
            #expect(journal.lastChecksum == .zero)
            #expect(journal.recovery.isClean)
            var index = 0
            var batch = 1
            while index < entries.count {
                let end = min(entries.count, index + batch)
                try journal.append(Array(entries[index..<end]))
                if batch % 2 == 0 { try journal.sync() }
                index = end
                batch = batch % 7 + 1
            }
            try journal.sync()
            #expect(journal.lastOp == 120)
            #expect(journal.lastChecksum == entries[119].checksum)
            #expect(journal.unsyncedOps == 0)
            #expect(try journal.loadAll() == entries)
        }
        let names = try segmentNames(log)
        #expect(names.count >= 5, "expected several rotations, got \(names)")
        #expect(names.first == "00000000000000000001.kmb")
        for name in names {
            let size = FileIO.fileSize(log + "/" + name) ?? 0
            #expect(size < 600 + 400, "segment \(name) is \(size) bytes")
        }

        let reopened = try Journal(directory: log, segmentSize: 600, syncMode: .fsync, logger: quietLogger)
        #expect(reopened.recovery.isClean)
        #expect(reopened.recovery.entries == 120)
        #expect(reopened.lastOp == 120)
        #expect(reopened.lastChecksum == entries[119].checksum)
        #expect(try reopened.loadAll() == entries)
        #expect(try reopened.entries(from: 17, through: 63) == Array(entries[16..<63]))
        #expect(try reopened.entries(from: 100, through: 500) == Array(entries[99...]))
        #expect(try reopened.entries(from: 121, through: 130).isEmpty)
        let onDisk = try names.reduce(0) { $0 + (try readFile(log + "/" + $1)).count }
        #expect(reopened.sizeBytes == onDisk)

        // Appending continues the chain in the reopened journal.
        let more = makeEntries(count: 5, from: 121, parent: entries[119].checksum)
        try reopened.append(more)
        try reopened.sync()
        #expect(try reopened.loadAll() == entries + more)
    }

    @Test func tornTailAtEveryByteOfTheLastEntryIsTruncated() throws {
        let dir = TempDirectory()
        let original = dir.sub("original")
        let entries = makeEntries(count: 6, payloadSize: 10)
        do {
            let journal = try Journal(directory: original, segmentSize: 400, syncMode: .async, logger: quietLogger)
            try journal.append(entries)
        }
        let names = try segmentNames(original)
        let lastName = try #require(names.last)
        let lastBytes = try readFile(original + "/" + lastName)
        let frameStart = try #require(try frameOffsets(original + "/" + lastName).last)
        #expect(frameStart + 8 + 10 < lastBytes.count)

        for cut in (frameStart + 1)..<lastBytes.count {
            let copy = dir.sub("cut-\(cut)")
            try copyDirectory(original, copy)
            try writeFile(copy + "/" + lastName, Array(lastBytes[..<cut]))
            let recorder = LogRecorder()
            let journal = try Journal(directory: copy, segmentSize: 400, syncMode: .fsync, logger: recorder.logger)
            #expect(journal.lastOp == 5, "cut at \(cut)")
            #expect(journal.lastChecksum == entries[4].checksum)
            #expect(journal.recovery.corruption == nil, "cut at \(cut): \(String(describing: journal.recovery.corruption))")
            #expect(journal.recovery.tornTailBytes == cut - frameStart)
            #expect(journal.recovery.tornTailOffset == frameStart)
            #expect(FileIO.fileSize(copy + "/" + lastName) == frameStart)
            let warning = recorder.find(level: .warning, prefix: "Torn journal tail")
            #expect(warning?.metadata["offset"] == "\(frameStart)")
            #expect(warning?.metadata["segment"] == copy + "/" + lastName)
            #expect(recorder.find(level: .error, prefix: "Checksum mismatch") == nil)

            let replacement = makeEntries(count: 1, from: 6, parent: entries[4].checksum, payloadSize: 12, salt: 9)
            try journal.append(replacement)
            try journal.sync()
            journal.close()
            let again = try Journal(directory: copy, segmentSize: 400, syncMode: .fsync, logger: quietLogger)
            #expect(again.recovery.isClean)
            #expect(try again.loadAll() == Array(entries[..<5]) + replacement)
            removeTree(copy)
        }
    }

    @Test func zeroFilledTailAndTornSegmentHeaderAreTornNotCorrupt() throws {
        let dir = TempDirectory()
        let log = dir.sub("log")
        let entries = makeEntries(count: 4)
        do {
            let journal = try Journal(directory: log, segmentSize: 1 << 20, syncMode: .async, logger: quietLogger)
            try journal.append(entries)
        }
        let name = try #require(try segmentNames(log).first)
        let bytes = try readFile(log + "/" + name)
        // Zeros after the last frame (file extended, data never written).
        try writeFile(log + "/" + name, bytes + [UInt8](repeating: 0, count: 4096))
        let journal = try Journal(directory: log, segmentSize: 1 << 20, syncMode: .fsync, logger: quietLogger)
        #expect(journal.lastOp == 4)
        #expect(journal.recovery.tornTailBytes == 4096)
        #expect(journal.recovery.corruption == nil)
        journal.close()

        // A crash while creating the next segment: only part of its header.
        let torn = log + "/" + SegmentFormat.fileName(firstOp: 5)
        try writeFile(torn, Array(SegmentFormat.encodeHeader(firstOp: 5)[..<10]))
        let second = try Journal(directory: log, segmentSize: 1 << 20, syncMode: .fsync, logger: quietLogger)
        #expect(second.recovery.tornTailSegment == torn)
        #expect(second.recovery.corruption == nil)
        #expect(FileIO.kind(torn) == .missing)
        #expect(second.lastOp == 4)
        try second.append(makeEntries(count: 1, from: 5, parent: entries[3].checksum))
        try second.sync()
        #expect(second.lastOp == 5)
    }

    @Test func flippedBitInCommittedEntryIsCorruptionNotTornTail() throws {
        let dir = TempDirectory()
        let log = dir.sub("log")
        let entries = makeEntries(count: 30, payloadSize: 30)
        do {
            let journal = try Journal(directory: log, segmentSize: 700, syncMode: .fsync, logger: quietLogger)
            try journal.append(entries)
            try journal.sync()
        }
        let names = try segmentNames(log)
        #expect(names.count >= 4)
        // Find the segment holding op 12 and flip one payload bit of it.
        let holder = try #require(names.last { SegmentFormat.firstOp(fromFileName: $0)! <= 12 })
        let holderPath = log + "/" + holder
        let firstInHolder = SegmentFormat.firstOp(fromFileName: holder)!
        let offset = try frameOffsets(holderPath)[Int(12 - firstInHolder)]
        var bytes = try readFile(holderPath)
        bytes[offset + 8 + 120] ^= 0x10
        try writeFile(holderPath, bytes)

        let recorder = LogRecorder()
        let metrics = RecordingMetrics()
        let journal = try Journal(directory: log, segmentSize: 700, syncMode: .fsync, logger: recorder.logger, metricsFactory: metrics)
        let corruption = try #require(journal.recovery.corruption)
        #expect(corruption.segment == holderPath)
        #expect(corruption.offset == offset)
        #expect(corruption.op == 12)
        #expect(corruption.kind == .checksumMismatch)
        #expect(journal.lastOp == 11)
        #expect(journal.lastChecksum == entries[10].checksum)
        #expect(try journal.loadAll() == Array(entries[..<11]))
        #expect(try journal.entries(from: 1, through: 30).count == 11)
        #expect(journal.recovery.tornTailBytes == 0)
        #expect(metrics.counter("kmb_checksum_failures_total") == 1)
        let line = try #require(recorder.find(level: .error, prefix: "Checksum mismatch"))
        #expect(line.message.contains("corrupt"))
        #expect(line.metadata["segment"] == holderPath)
        #expect(line.metadata["offset"] == "\(offset)")
        #expect(line.metadata["op"] == "12")

        // Appends wait until the damage is moved aside.
        #expect(throws: StorageError.corruptionPending(corruption)) {
            try journal.append(makeEntries(count: 1, from: 12, parent: entries[10].checksum))
        }
        #expect(throws: StorageError.self) { try journal.truncate(after: 5) }

        try journal.quarantineCorruption()
        #expect(journal.pendingCorruption == nil)
        let files = try FileIO.list(log)
        #expect(files.contains(holder + ".corrupt"))
        for later in names where later > holder {
            #expect(files.contains(later + ".corrupt"), "\(later) kept as evidence")
            #expect(!files.contains(later))
        }
        #expect(try readFile(holderPath + ".corrupt") == bytes, "evidence is byte-identical")
        #expect(FileIO.fileSize(holderPath) == offset)

        let repaired = makeEntries(count: 3, from: 12, parent: entries[10].checksum, salt: 5)
        try journal.append(repaired)
        try journal.sync()
        journal.close()
        let reopened = try Journal(directory: log, segmentSize: 700, syncMode: .fsync, logger: quietLogger)
        #expect(reopened.recovery.corruption == nil)
        #expect(reopened.recovery.ignoredFiles.contains(holder + ".corrupt"))
        #expect(try reopened.loadAll() == Array(entries[..<11]) + repaired)
    }

    @Test func badFrameWithValidDataAfterItInLastSegmentIsCorruption() throws {
        let dir = TempDirectory()
        let log = dir.sub("log")
        let entries = makeEntries(count: 5)
        do {
            let journal = try Journal(directory: log, segmentSize: 1 << 20, syncMode: .async, logger: quietLogger)
            try journal.append(entries)
        }
        let path = log + "/" + (try segmentNames(log)[0])
        let offsets = try frameOffsets(path)
        var bytes = try readFile(path)
        bytes[offsets[3] + 4] ^= 0xFF   // op 4's frame CRC; op 5 is intact after it
        try writeFile(path, bytes)
        let journal = try Journal(directory: log, segmentSize: 1 << 20, syncMode: .async, logger: quietLogger)
        #expect(journal.recovery.corruption?.op == 4)
        #expect(journal.recovery.corruption?.offset == offsets[3])
        #expect(journal.recovery.tornTailBytes == 0)
        #expect(journal.lastOp == 3)
        #expect(FileIO.fileSize(path) == bytes.count, "corrupt data is never truncated at open")
    }

    @Test func wholeSegmentQuarantinedWhenItsFirstFrameIsBad() throws {
        let dir = TempDirectory()
        let log = dir.sub("log")
        let entries = makeEntries(count: 20, payloadSize: 30)
        do {
            let journal = try Journal(directory: log, segmentSize: 500, syncMode: .async, logger: quietLogger)
            try journal.append(entries)
        }
        let names = try segmentNames(log)
        #expect(names.count >= 3)
        let victim = names[1]
        let path = log + "/" + victim
        var bytes = try readFile(path)
        bytes[2] ^= 0x01   // header magic
        try writeFile(path, bytes)
        let journal = try Journal(directory: log, segmentSize: 500, syncMode: .async, logger: quietLogger)
        #expect(journal.recovery.corruption?.kind == .badSegmentHeader)
        #expect(journal.recovery.corruption?.offset == 0)
        let firstOfVictim = SegmentFormat.firstOp(fromFileName: victim)!
        #expect(journal.lastOp == firstOfVictim - 1)
        try journal.quarantineCorruption()
        let files = try FileIO.list(log)
        #expect(files.contains(victim + ".corrupt"))
        #expect(try segmentNames(log) == [names[0]])
        try journal.append(makeEntries(count: 1, from: firstOfVictim, parent: entries[Int(firstOfVictim) - 2].checksum))
        #expect(journal.lastOp == firstOfVictim)
    }

    @Test func truncateThenAppend() throws {
        let dir = TempDirectory()
        let log = dir.sub("log")
        let entries = makeEntries(count: 40, payloadSize: 30)
        let journal = try Journal(directory: log, segmentSize: 500, syncMode: .fsync, logger: quietLogger)
        try journal.append(entries)
        try journal.sync()
        let segmentsBefore = try segmentNames(log).count

        try journal.truncate(after: 7)
        #expect(journal.lastOp == 7)
        #expect(journal.lastChecksum == entries[6].checksum)
        #expect(try journal.loadAll() == Array(entries[..<7]))
        #expect(try segmentNames(log).count < segmentsBefore)
        #expect(journal.unsyncedOps == 0)

        let replacement = makeEntries(count: 10, from: 8, parent: entries[6].checksum, view: 2)
        try journal.append(replacement)
        try journal.sync()
        #expect(try journal.loadAll() == Array(entries[..<7]) + replacement)

        // Truncating at or past the end is a no-op; an exact segment boundary works.
        try journal.truncate(after: 17)
        try journal.truncate(after: 99)
        #expect(journal.lastOp == 17)
        let second = try #require(try segmentNames(log).dropFirst().first)
        let boundary = SegmentFormat.firstOp(fromFileName: second)! - 1
        try journal.truncate(after: boundary)
        #expect(journal.lastOp == boundary)
        #expect(try segmentNames(log).count == 1)
        journal.close()

        let reopened = try Journal(directory: log, segmentSize: 500, syncMode: .fsync, logger: quietLogger)
        #expect(reopened.recovery.isClean)
        #expect(reopened.lastOp == boundary)
        #expect(try reopened.loadAll() == Array((Array(entries[..<7]) + replacement)[..<Int(boundary)]))

        try reopened.truncate(after: 0)
        #expect(reopened.lastOp == 0)
        #expect(reopened.lastChecksum == .zero)
        #expect(try segmentNames(log).isEmpty)
        let fresh = makeEntries(count: 3, salt: 77)
        try reopened.append(fresh)
        try reopened.sync()
        #expect(try reopened.loadAll() == fresh)
    }

    @Test func appendRejectsEntriesThatDoNotContinueTheLog() throws {
        let dir = TempDirectory()
        let journal = try Journal(directory: dir.sub("log"), segmentSize: 4096, syncMode: .fsync, logger: quietLogger)
        let entries = makeEntries(count: 3)
        try journal.append(Array(entries[..<1]))
        let size = journal.sizeBytes

        #expect(throws: StorageError.notContiguous(expectedOp: 2, gotOp: 3, reason: "ops must continue the log one by one")) {
            try journal.append([entries[2]])
        }
        let stranger = makeEntries(count: 2, salt: 3)[1]   // op 2 with another parent
        #expect(throws: StorageError.self) { try journal.append([stranger]) }
        var tampered = entries[1]
        tampered.payload[0] ^= 1
        #expect(throws: StorageError.invalidArgument("entry op 2: checksum does not match its contents")) {
            try journal.append([tampered])
        }
        // A bad entry in the middle of a batch rejects the whole batch.
        #expect(throws: StorageError.self) { try journal.append([entries[1], stranger]) }
        #expect(journal.lastOp == 1)
        #expect(journal.sizeBytes == size)
        try journal.append([])
        try journal.append(Array(entries[1...]))
        #expect(journal.lastOp == 3)
        #expect(throws: StorageError.self) {
            try Journal(directory: dir.sub("log2"), segmentSize: 10, syncMode: .fsync, logger: quietLogger)
        }
    }

    @Test func metricsAndSlowFsyncWarning() throws {
        let dir = TempDirectory()
        let metrics = RecordingMetrics()
        let recorder = LogRecorder()
        let journal = try Journal(directory: dir.sub("log"), segmentSize: 1 << 20, syncMode: .fsync,
                                  logger: recorder.logger, metricsFactory: metrics)
        #expect(journal.slowFsyncThreshold == .milliseconds(10))
        let entries = makeEntries(count: 10)
        try journal.append(Array(entries[..<4]))
        try journal.append(Array(entries[4...]))
        #expect(metrics.timerCount("kmb_fsync_duration_seconds") == 0, "append alone never fsyncs")
        journal.slowFsyncThreshold = .zero
        try journal.sync()
        let fsyncs = metrics.timerCount("kmb_fsync_duration_seconds")
        #expect(fsyncs == 2, "one fsync for the segment, one for the new directory entry")
        try journal.sync()
        #expect(metrics.timerCount("kmb_fsync_duration_seconds") == fsyncs, "nothing new to sync")
        #expect(metrics.counter("kmb_log_entries_total") == 10)
        let frames = entries.reduce(0) { $0 + 8 + $1.encoded().count }
        #expect(metrics.counter("kmb_log_bytes_total") == Int64(frames))
        #expect(metrics.gauge("kmb_log_size_bytes") == Double(journal.sizeBytes))
        #expect(journal.sizeBytes == frames + SegmentFormat.headerSize)
        let slow = try #require(recorder.find(level: .warning, prefix: "slow fsync"))
        #expect(slow.metadata["duration_ms"] != nil)
        #expect(slow.metadata["segment"] != nil)

        let asyncMetrics = RecordingMetrics()
        let asyncJournal = try Journal(directory: dir.sub("async"), segmentSize: 1 << 20, syncMode: .async,
                                       logger: quietLogger, metricsFactory: asyncMetrics)
        try asyncJournal.append(entries)
        try asyncJournal.sync()
        try asyncJournal.truncate(after: 3)
        #expect(asyncMetrics.timerCount("kmb_fsync_duration_seconds") == 0)
        #expect(asyncMetrics.counter("kmb_log_entries_total") == 10)
    }
}

@Suite struct JournalReadTests {
    @Test func damageAfterOpenIsReportedOnRead() throws {
        let dir = TempDirectory()
        let log = dir.sub("log")
        let metrics = RecordingMetrics()
        let recorder = LogRecorder()
        let journal = try Journal(directory: log, segmentSize: 1 << 20, syncMode: .fsync,
                                  logger: recorder.logger, metricsFactory: metrics)
        try journal.append(makeEntries(count: 5))
        try journal.sync()
        let path = log + "/" + (try segmentNames(log)[0])
        let offset = try frameOffsets(path)[2]
        var bytes = try readFile(path)
        bytes[offset + 50] ^= 0x80
        try writeFile(path, bytes)
        #expect(throws: StorageError.self) { try journal.loadAll() }
        do {
            _ = try journal.entries(from: 3, through: 3)
        } catch let error as StorageError {
            guard case .corrupt(let where_, let at, let op, let reason) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(where_ == path && at == offset && op == 3)
            #expect(reason.hasPrefix("checksum mismatch"))
        }
        #expect(try journal.entries(from: 1, through: 2).count == 2)
        #expect(metrics.counter("kmb_checksum_failures_total") == 2)
        #expect(recorder.find(level: .error, prefix: "Checksum mismatch")?.metadata["op"] == "3")
    }
}
