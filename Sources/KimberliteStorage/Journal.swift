#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import KimberliteCore
import Logging
import Metrics

/// `[storage] sync_mode`: "fsync" makes `Journal.sync()` call fsync(2);
/// "async" never fsyncs (the OS writes back when it likes; a machine crash
/// can lose acknowledged writes).
public enum SyncMode: String, Sendable, CaseIterable {
    case fsync
    case async
}

/// Where a journal stopped trusting its data: the segment file, the byte
/// offset of the bad frame (0 for a bad header), the op expected there, and
/// what is wrong.
public struct JournalCorruption: Sendable, Equatable, Codable, CustomStringConvertible {
    /// Path of the segment file.
    public var segment: String
    /// Byte offset in that file.
    public var offset: Int
    /// The op that should have been at `offset`.
    public var op: OpNumber
    public var kind: StorageProblemKind
    /// Specifics, e.g. "frame CRC32C 0x1234abcd != computed 0x...".
    public var detail: String

    public var description: String {
        "segment \(segment): \(kind.rawValue) at offset \(offset) (op \(op)): \(detail)"
    }
}

/// What `Journal.init` found and repaired while opening.
public struct JournalRecovery: Sendable, Equatable {
    /// Segment files found in the directory.
    public var segmentFiles: Int = 0
    /// Verified entries kept.
    public var entries: Int = 0
    /// Bytes of torn tail truncated (0 if none).
    public var tornTailBytes: Int = 0
    /// The segment the torn tail was cut from (or removed, if only its header was torn).
    public var tornTailSegment: String?
    /// The offset the torn segment was truncated at.
    public var tornTailOffset: Int?
    /// Corruption found before the end of the log; nothing from this point on
    /// is returned. The replica should repair from its peers after
    /// `Journal.quarantineCorruption()`.
    public var corruption: JournalCorruption?
    /// Files in the log directory that are not segments (e.g. `.corrupt` evidence).
    public var ignoredFiles: [String] = []

    /// True when the log opened with nothing torn and nothing corrupt.
    public var isClean: Bool { tornTailBytes == 0 && tornTailSegment == nil && corruption == nil }
}

/// The segmented, append-only, hash-chained log under `<data_dir>/log/`.
///
/// Files are `<first op, 20 digits>.kmb`; each has a 24-byte header and
/// frames `[u32 body length][u32 CRC32C of body][LogEntry.encoded()]`. A new
/// segment starts once the current one reaches `segmentSize` bytes.
///
/// Not thread-safe: one owner thread (or actor) calls it. Durability is
/// explicit: `append` only writes; `sync` makes every earlier append durable
/// with one fsync per touched file (group commit).
public final class Journal {
    /// The log directory (`<data_dir>/log`).
    public let directory: String
    /// Target size of a segment file in bytes; a segment may exceed it by one batch frame.
    public let segmentSize: Int
    public let syncMode: SyncMode
    /// fsyncs slower than this are logged as "slow fsync" warnings.
    public var slowFsyncThreshold: Duration = .milliseconds(10)
    /// Called with a new segment's first op before its file is created (the
    /// server records it in the superblock: `SuperblockState.newestSegmentOp`).
    /// An error fails the append that needed the segment.
    public var willCreateSegment: ((OpNumber) throws -> Void)?

    /// The last op in the log; 0 when empty.
    public private(set) var lastOp: OpNumber = 0
    /// The checksum of entry `lastOp`; `.zero` when empty.
    public private(set) var lastChecksum: Checksum = .zero
    /// What opening found: torn tail truncated, corruption located.
    public let recovery: JournalRecovery
    /// Corruption found at open that `quarantineCorruption()` has not moved
    /// aside yet. While set, `append` and `truncate` throw `.corruptionPending`.
    public private(set) var pendingCorruption: JournalCorruption?

    /// Total bytes of segment files (including corrupt ones not yet quarantined).
    public var sizeBytes: Int { segments.reduce(0) { $0 + $1.size } + quarantineBytes }
    /// The first op held (`base.op + 1` unless the log is empty, then `lastOp + 1`).
    public var firstOp: OpNumber { segments.first?.firstOp ?? lastOp + 1 }
    /// The op just before the first entry and its checksum: (0, .zero) for a
    /// log kept from op 1; moved up by `compact` and `reset`.
    public private(set) var base: (op: OpNumber, checksum: Checksum)
    /// Paths of the segment files holding the log, oldest first.
    public var segmentPaths: [String] { segments.map(\.path) }
    /// Ops appended but not yet made durable by `sync()` (always 0 under `.async`).
    public var unsyncedOps: UInt64 { syncMode == .fsync ? lastOp - syncedOp : 0 }

    struct Segment {
        var firstOp: OpNumber
        var path: String
        /// Bytes in the file that belong to the log (header + verified frames).
        var size: Int
        /// Where the frames start (sparse); frame `i` holds op `firstOp + i`.
        var frames: FrameIndex
        var lastOp: OpNumber { firstOp + UInt64(frames.count) - 1 }
    }

    private var logger: Logger
    private var segments: [Segment]
    /// Corrupt region awaiting quarantine: whole files, and a file whose valid prefix is kept.
    private var quarantineWhole: [String]
    private var quarantineTail: (path: String, validEnd: Int)?
    private var quarantineBytes: Int

    private var currentFD: Int32 = -1
    private var currentFDPath = ""
    private var currentDirty = false
    private var directoryDirty = false
    /// Rotated-out segments written since the last sync.
    private var unsyncedPaths: [String] = []
    private var syncedOp: OpNumber
    private var syncedChecksum: Checksum

    private let fsyncTimer: Timer
    private let entriesCounter: Counter
    private let bytesCounter: Counter
    private let sizeGauge: Gauge
    private let checksumFailures: Counter

    /// Opens the log in `directory` (created if missing), verifying every
    /// frame (CRC32C, entry SHA-256, op order, hash chain).
    ///
    /// A bad or incomplete frame with nothing valid after it in the last
    /// segment is a torn write from a crash: the file is truncated there and
    /// a warning logged. Anything else bad is corruption: logged as
    /// "Checksum mismatch", counted in `kmb_checksum_failures_total`, and
    /// reported in `recovery.corruption`; the log ends before it.
    /// - Parameters:
    ///   - segmentSize: bytes per segment file, at least 64.
    ///   - metricsFactory: where the `kmb_*` metrics go; nil means the
    ///     process-wide `MetricsSystem.factory` (bootstrap it first).
    /// - Throws: `StorageError` if the directory or a segment cannot be read or repaired.
    ///   - base: the op just before the log's first entry and that entry's
    ///     checksum (`SuperblockState.logBaseOp`/`logBaseChecksum`): (0,
    ///     .zero) for a log from op 1. Segment files starting at or below it
    ///     are left over from an interrupted compaction or state transfer
    ///     and are removed; the first kept entry must chain onto the base.
    public init(directory: String, segmentSize: Int, syncMode: SyncMode, logger: Logger,
                base: (op: OpNumber, checksum: Checksum) = (0, .zero),
                metricsFactory: (any MetricsFactory)? = nil) throws {
        guard segmentSize >= 64 else {
            throw StorageError.invalidArgument("segment_size \(segmentSize) bytes is below the 64-byte minimum")
        }
        self.directory = directory
        self.segmentSize = segmentSize
        self.syncMode = syncMode
        self.logger = logger
        let factory = metricsFactory ?? MetricsSystem.factory
        fsyncTimer = Timer(label: "kmb_fsync_duration_seconds", factory: factory)
        entriesCounter = Counter(label: "kmb_log_entries_total", factory: factory)
        bytesCounter = Counter(label: "kmb_log_bytes_total", factory: factory)
        sizeGauge = Gauge(label: "kmb_log_size_bytes", factory: factory)
        checksumFailures = Counter(label: "kmb_checksum_failures_total", factory: factory)
        try FileIO.makeDirectories(directory)
        self.base = base
        let leftovers = try Journal.removeSegments(in: directory, through: base.op)
        if !leftovers.isEmpty {
            logger.notice("removed journal segments below the log's base (an interrupted compaction or state transfer)",
                          metadata: ["segments": "\(leftovers.joined(separator: ","))", "base_op": "\(base.op)"])
        }
        let scan = try Journal.scan(directory: directory, base: base)
        segments = scan.segments
        lastOp = scan.lastOp
        lastChecksum = scan.lastChecksum
        recovery = scan.recovery
        pendingCorruption = scan.recovery.corruption
        quarantineWhole = scan.quarantineWhole
        quarantineTail = scan.quarantineTail
        quarantineBytes = scan.quarantineBytes
        syncedOp = scan.lastOp
        syncedChecksum = scan.lastChecksum
        try repair(scan)
        sizeGauge.record(sizeBytes)
        logger.info("Journal opened", metadata: [
            "directory": "\(directory)", "segments": "\(segments.count)", "op": "\(lastOp)",
            "bytes": "\(sizeBytes)", "sync_mode": "\(syncMode.rawValue)",
        ])
    }

    deinit {
        FileIO.closeFile(currentFD)
    }

    /// Suffix of segment files set aside by `setAsideSegments`.
    public static let setAsideSuffix = ".after-restore"

    /// Sets aside (renames to `<name>.after-restore`, kept as evidence) every
    /// segment file in `directory` whose first op is after `newestAnnounced`:
    /// the superblock announces each segment before creating it, so such a
    /// file was written after the superblock in place, which can only happen
    /// when the data directory was restored from an older copy (the guide's
    /// `rsync -av backup/ /var/lib/kimberlite/` leaves newer files behind).
    /// Call before opening the journal. `newestAnnounced == 0` (unknown) sets
    /// nothing aside.
    /// - Returns: the file names set aside.
    /// - Throws: `StorageError` when the directory cannot be listed or a file renamed.
    public static func setAsideSegments(in directory: String, after newestAnnounced: OpNumber) throws -> [String] {
        guard newestAnnounced > 0, FileIO.kind(directory) == .directory else { return [] }
        var setAside: [String] = []
        for segment in try SegmentScanner.list(directory).segments where segment.firstOp > newestAnnounced {
            try FileIO.rename(directory + "/" + segment.name, directory + "/" + segment.name + setAsideSuffix)
            setAside.append(segment.name)
        }
        if !setAside.isEmpty { try FileIO.syncDirectory(directory) }
        return setAside
    }

    // MARK: Reading

    /// Every entry, in op order.
    /// - Throws: `StorageError.corrupt` if a frame no longer verifies (the disk changed under us).
    public func loadAll() throws -> [LogEntry] {
        try entries(from: firstOp, through: lastOp)
    }

    /// The byte ranges of the segment files that hold ops `firstOp...op`:
    /// each file's path and the length of its prefix up to the end of op
    /// `op`'s frame (segments wholly after `op` are left out). Those bytes
    /// never change while `op` is committed, so they can be copied while the
    /// journal goes on appending (an online backup).
    /// - Throws: `StorageError.invalidArgument` when `op` is not in the log.
    public func extent(through op: OpNumber) throws -> [(path: String, bytes: Int)] {
        guard op >= firstOp, op <= lastOp else {
            throw StorageError.invalidArgument("op \(op) is not in the journal (it holds \(firstOp)...\(lastOp))")
        }
        var result: [(path: String, bytes: Int)] = []
        for segment in segments where segment.firstOp <= op {
            if segment.frames.isEmpty || segment.lastOp <= op {
                result.append((segment.path, segment.size))
            } else {
                result.append((segment.path, try verifiedFrameEnd(segment, Int(op - segment.firstOp))))
            }
        }
        return result
    }

    /// Bytes of the frames (header and entry) of ops `from...through`,
    /// clamped to the ops the log holds, in op order. Reads frame headers
    /// only, never the entries.
    /// - Throws: `StorageError.corrupt` when a frame header no longer fits
    ///   its segment; `StorageError.io`.
    public func frameSizes(from: OpNumber, through: OpNumber) throws -> [Int] {
        let lower = max(from, firstOp)
        let upper = min(through, lastOp)
        guard lower <= upper else { return [] }
        var sizes: [Int] = []
        for segment in segments where !segment.frames.isEmpty && segment.lastOp >= lower && segment.firstOp <= upper {
            let first = Int(max(lower, segment.firstOp) - segment.firstOp)
            let last = Int(min(upper, segment.lastOp) - segment.firstOp)
            let starts = try frameStarts(segment, first, last + 1)
            for index in 0..<(starts.count - 1) { sizes.append(starts[index + 1] - starts[index]) }
        }
        return sizes
    }

    /// Entries from `from` on, as `entries(from:through:)` reads them, but
    /// only as many as fit in `maxBytes` of frames (always at least one):
    /// sizes come from frame headers first, so a log of large entries (up
    /// to `max_batch_size` each) is never read past the bound, however far
    /// `through` reaches.
    /// - Throws: what `frameSizes` and `entries(from:through:)` throw.
    public func entries(from: OpNumber, through: OpNumber, maxBytes: Int) throws -> [LogEntry] {
        let lower = max(from, firstOp)
        let upper = min(through, lastOp)
        var last = lower - 1
        var bytes = 0
        scan: while last < upper {
            let sizes = try frameSizes(from: last + 1, through: min(upper, last + 256))
            guard !sizes.isEmpty else { break }
            for size in sizes {
                if last >= lower && bytes + size > maxBytes { break scan }
                bytes += size
                last += 1
            }
        }
        return last >= lower ? try entries(from: lower, through: last) : []
    }

    /// Start offset of frame `frame` of `segment` (its size for
    /// `frame == count`, the end of the last frame).
    private func frameStart(_ segment: Segment, _ frame: Int) throws -> Int {
        try frameStarts(segment, frame, frame)[0]
    }

    /// The end of frame `frame` of `segment`, checked: the frame the header
    /// walk finds is read whole and must verify and hold its op, so a
    /// damaged length field on the way is an error, never a cut or a copy
    /// that ends in the wrong place.
    /// - Throws: `StorageError.corrupt` naming the frame; `StorageError.io`.
    private func verifiedFrameEnd(_ segment: Segment, _ frame: Int) throws -> Int {
        let starts = try frameStarts(segment, frame, frame + 1)
        let op = segment.firstOp + UInt64(frame)
        let bytes = try readRange(segment.path, from: starts[0], count: starts[1] - starts[0])
        switch SegmentFormat.parseFrame(bytes, at: 0, end: bytes.count) {
        case .entry(let entry, let next) where entry.op == op && next == bytes.count:
            return starts[1]
        case .entry(let entry, _):
            throw readFailure(segment.path, starts[0], op, .opGap, "found op \(entry.op) where the walk expected op \(op)")
        case .bad(let kind, let detail):
            throw readFailure(segment.path, starts[0], op, kind, detail)
        }
    }

    /// Start offsets of frames `first...last` of `segment` (a frame equal to
    /// the segment's frame count starts at its end), found by walking frame
    /// headers from the sampled frame at or before `first`.
    private func frameStarts(_ segment: Segment, _ first: Int, _ last: Int) throws -> [Int] {
        precondition(first <= last && last <= segment.frames.count, "frames within the segment")
        if first == segment.frames.count { return [segment.size] }
        let sample = segment.frames.sample(atOrBefore: first)
        var starts: [Int] = []
        starts.reserveCapacity(last - first + 1)
        var offset = sample.offset
        try withReadFD(segment.path) { fd in
            for frame in sample.frame...last {
                if frame >= first { starts.append(offset) }
                guard frame < last else { break }
                let header = try FileIO.read(fd, count: SegmentFormat.frameHeaderSize, at: offset, path: segment.path)
                let next = header.count == SegmentFormat.frameHeaderSize
                    ? offset + SegmentFormat.frameHeaderSize + Int(SegmentFormat.readU32(header, 0)) : Int.max
                guard next <= segment.size else {
                    throw readFailure(segment.path, offset, segment.firstOp + UInt64(frame), .truncatedFrame,
                                      "the frame header at \(offset) runs past the segment's \(segment.size) bytes")
                }
                offset = next
            }
        }
        if last == segment.frames.count, starts.last != segment.size {
            throw readFailure(segment.path, starts.last ?? 0, segment.lastOp, .badFrame,
                              "the last frame ends at \(starts.last ?? 0), not at the segment's end \(segment.size)")
        }
        return starts
    }

    /// Entries `from...through`, clamped to the ops the log holds; empty if none.
    /// - Throws: `StorageError.corrupt` if a frame no longer verifies.
    public func entries(from: OpNumber, through: OpNumber) throws -> [LogEntry] {
        let lower = max(from, firstOp)
        let upper = min(through, lastOp)
        guard lower <= upper else { return [] }
        var result: [LogEntry] = []
        result.reserveCapacity(Int(min(upper - lower + 1, 1 << 20)))
        for segment in segments where !segment.frames.isEmpty && segment.lastOp >= lower && segment.firstOp <= upper {
            let first = Int(max(lower, segment.firstOp) - segment.firstOp)
            let last = Int(min(upper, segment.lastOp) - segment.firstOp)
            let start = try frameStart(segment, first)
            let end = try frameStart(segment, last + 1)
            let bytes = try readRange(segment.path, from: start, count: end - start)
            var position = 0
            for index in first...last {
                let op = segment.firstOp + UInt64(index)
                switch SegmentFormat.parseFrame(bytes, at: position, end: bytes.count) {
                case .entry(let entry, let next) where entry.op == op:
                    result.append(entry)
                    position = next
                case .entry(let entry, _):
                    throw readFailure(segment.path, start + position, op, .opGap, "found op \(entry.op)")
                case .bad(let kind, let detail):
                    throw readFailure(segment.path, start + position, op, kind, detail)
                }
            }
        }
        return result
    }

    private func readRange(_ path: String, from offset: Int, count: Int) throws -> [UInt8] {
        try withReadFD(path) { fd in try FileIO.read(fd, count: count, at: offset, path: path) }
    }

    /// Runs `body` with a descriptor open for reading `path`: the append
    /// descriptor when `path` is the current segment, else one of its own.
    private func withReadFD<T>(_ path: String, _ body: (Int32) throws -> T) throws -> T {
        if path == currentFDPath && currentFD >= 0 { return try body(currentFD) }
        let fd = try FileIO.openFile(path, flags: O_RDONLY)
        defer { FileIO.closeFile(fd) }
        return try body(fd)
    }

    private func readFailure(_ path: String, _ offset: Int, _ op: OpNumber, _ kind: StorageProblemKind, _ detail: String) -> StorageError {
        checksumFailures.increment()
        logger.error("Checksum mismatch: corrupt journal entry on read", metadata: [
            "segment": "\(path)", "offset": "\(offset)", "op": "\(op)", "problem": "\(kind.rawValue)", "detail": "\(detail)",
        ])
        return StorageError.corrupt(path: path, offset: offset, op: op, reason: "\(kind.rawValue): \(detail)")
    }

    // MARK: Compaction and state transfer

    /// Deletes the segments that hold only ops at or below `op` (never the
    /// newest segment, which takes appends), moving the base up to the last
    /// op deleted. `persistBase` is called with the new base before any file
    /// goes, so the superblock names it first: a crash midway leaves files
    /// the next open removes (`init`'s leftovers), never a log with a hole.
    /// - Returns: bytes freed (0 when no segment lies wholly at or below `op`).
    /// - Throws: what `persistBase` throws (then nothing is deleted), `StorageError.io`.
    @discardableResult
    public func compact(through op: OpNumber, persistBase: ((op: OpNumber, checksum: Checksum)) throws -> Void) throws -> Int {
        let removable = segments.dropLast().prefix { !$0.frames.isEmpty && $0.lastOp <= op }
        guard let last = removable.last else { return 0 }
        guard let entry = try entries(from: last.lastOp, through: last.lastOp).first else {
            throw StorageError.invalidArgument("op \(last.lastOp) is not readable in the journal")
        }
        let newBase = (op: entry.op, checksum: entry.checksum)
        try persistBase(newBase)
        let freed = removable.reduce(0) { $0 + $1.size }
        for segment in removable {
            if currentFDPath == segment.path { closeCurrent() }
            try FileIO.remove(segment.path)
            unsyncedPaths.removeAll { $0 == segment.path }
        }
        segments.removeFirst(removable.count)
        try syncDirectory()
        base = newBase
        sizeGauge.record(sizeBytes)
        logger.notice("journal compacted", metadata: [
            "through_op": "\(newBase.op)", "segments_removed": "\(removable.count)", "bytes_freed": "\(freed)",
            "first_op": "\(firstOp)",
        ])
        return freed
    }

    /// Puts the older part of the log back below this log's base (the
    /// background backfill after a state transfer, DESIGN.md §2b): `staged`
    /// is a journal in another directory holding exactly ops 1…`base.op`,
    /// its last entry being the one this log chains onto. Its segment files
    /// move into this log's directory; then `persistBase` records the base
    /// (0, .zero) and the log runs from op 1 again. A crash before
    /// `persistBase` leaves files at or below the recorded base, which the
    /// next open removes (nothing is lost but the backfill).
    /// - Throws: `.invalidArgument` when `staged` does not end where this log
    ///   begins (then nothing changes); what `persistBase` throws; `StorageError.io`.
    public func adoptOlderLog(from staged: Journal, persistBase: ((op: OpNumber, checksum: Checksum)) throws -> Void) throws {
        guard base.op > 0, staged.base.op == 0, staged.lastOp == base.op, staged.lastChecksum == base.checksum,
              staged.pendingCorruption == nil else {
            throw StorageError.invalidArgument("the backfilled log (ops \(staged.firstOp)…\(staged.lastOp)) does not end where this log begins (after op \(base.op))")
        }
        try staged.sync()
        staged.close()
        var moved: [Segment] = []
        for var segment in staged.segments where !segment.frames.isEmpty {
            let target = directory + "/" + SegmentFormat.fileName(firstOp: segment.firstOp)
            try FileIO.rename(segment.path, target)
            segment.path = target
            moved.append(segment)
        }
        try FileIO.syncDirectory(directory)
        try persistBase((0, .zero))
        segments = moved + segments
        base = (0, .zero)
        sizeGauge.record(sizeBytes)
        logger.notice("journal holds the whole log again: older segments backfilled", metadata: [
            "segments": "\(moved.count)", "first_op": "\(firstOp)", "last_op": "\(lastOp)"])
    }

    /// Replaces the whole log by an empty one based on `newBase` (a
    /// checkpoint installed by state transfer): the next append must be op
    /// `newBase.op + 1` chaining onto `newBase.checksum`. `persistBase` runs
    /// before any file goes (see `compact`).
    /// - Throws: what `persistBase` throws (then nothing changes), `StorageError.io`.
    public func reset(to newBase: (op: OpNumber, checksum: Checksum),
                      persistBase: ((op: OpNumber, checksum: Checksum)) throws -> Void) throws {
        try persistBase(newBase)
        closeCurrent()
        for segment in segments { try FileIO.remove(segment.path) }
        segments = []
        unsyncedPaths = []
        try syncDirectory()
        base = newBase
        lastOp = newBase.op
        lastChecksum = newBase.checksum
        syncedOp = newBase.op
        syncedChecksum = newBase.checksum
        sizeGauge.record(sizeBytes)
    }

    private func closeCurrent() {
        FileIO.closeFile(currentFD)
        currentFD = -1
        currentFDPath = ""
        currentDirty = false
    }

    // MARK: Writing

    /// Appends `entries` with one write(2) per touched segment. Does not fsync: call `sync()`.
    ///
    /// - Precondition checked: `entries[0].op == lastOp + 1`, ops consecutive,
    ///   each `parent` the previous checksum, each entry intact.
    /// - Throws: `.notContiguous` / `.invalidArgument` for bad input;
    ///   `.diskFull(path)` on ENOSPC/EDQUOT; `.io` otherwise;
    ///   `.corruptionPending` until corruption is quarantined. On any failure
    ///   nothing of this call stays on disk or in memory.
    public func append(_ entries: [LogEntry]) throws {
        if let pendingCorruption { throw StorageError.corruptionPending(pendingCorruption) }
        guard !entries.isEmpty else { return }
        var expected = lastOp + 1
        var parent = lastChecksum
        var estimate = 0
        for entry in entries {
            guard entry.op == expected else {
                throw StorageError.notContiguous(expectedOp: expected, gotOp: entry.op, reason: "ops must continue the log one by one")
            }
            guard entry.parent == parent else {
                throw StorageError.notContiguous(expectedOp: expected, gotOp: entry.op,
                                                 reason: "parent checksum is not the checksum of op \(expected - 1)")
            }
            guard entry.isIntact else {
                throw StorageError.invalidArgument("entry op \(entry.op): checksum does not match its contents")
            }
            parent = entry.checksum
            expected += 1
            estimate += 140 + entry.payload.count
        }

        let mark = Mark(segmentCount: segments.count, entryCount: segments.last?.frames.count ?? 0,
                        size: segments.last?.size ?? 0, lastOp: lastOp, lastChecksum: lastChecksum)
        var buffer: [UInt8] = []
        buffer.reserveCapacity(min(estimate, segmentSize + 4096))
        var appended = 0
        do {
            for entry in entries {
                if let last = segments.last, last.size < segmentSize || last.frames.isEmpty {
                    // Still room in the current segment.
                } else {
                    try flush(&buffer)
                    try createSegment(firstOp: entry.op)
                }
                let index = segments.count - 1
                segments[index].frames.append(frameAt: segments[index].size)
                let frameSize = SegmentFormat.appendFrame(entry, to: &buffer)
                segments[index].size += frameSize
                appended += frameSize
            }
            try flush(&buffer)
        } catch {
            rollback(to: mark)
            if case StorageError.diskFull = error {
                logger.error("Disk full: journal append rejected", metadata: [
                    "op": "\(entries[0].op)", "entries": "\(entries.count)", "error": "\(error)",
                ])
            }
            throw error
        }
        lastOp = entries[entries.count - 1].op
        lastChecksum = entries[entries.count - 1].checksum
        entriesCounter.increment(by: entries.count)
        bytesCounter.increment(by: appended)
        sizeGauge.record(sizeBytes)
    }

    /// Makes every append so far durable: one fsync per segment written
    /// since the last sync, and one of the directory if a segment was
    /// created. A no-op under `.async`.
    /// - Throws: `.diskFull` / `.io`. The journal then drops every entry after
    ///   the last successful sync (`lastOp` moves back), because after a
    ///   failed fsync the kernel may have discarded those pages; re-append them.
    public func sync() throws {
        guard syncMode == .fsync else { return }
        guard currentDirty || directoryDirty || !unsyncedPaths.isEmpty else {
            syncedOp = lastOp
            syncedChecksum = lastChecksum
            return
        }
        do {
            while let path = unsyncedPaths.first {
                let fd = try FileIO.openFile(path, flags: O_RDWR)
                defer { FileIO.closeFile(fd) }
                try timedSync(fd, path)
                unsyncedPaths.removeFirst()
            }
            if currentDirty {
                try ensureCurrentFD()
                try timedSync(currentFD, currentFDPath)
                currentDirty = false
            }
            if directoryDirty {
                try syncDirectory()
            }
        } catch {
            logger.error("fsync failed: dropping unsynced journal entries", metadata: [
                "synced_op": "\(syncedOp)", "op": "\(lastOp)", "error": "\(error)",
            ])
            let kept = (syncedOp, syncedChecksum)
            do {
                try dropAfter(kept.0, checksum: kept.1)
            } catch {
                logger.error("could not drop unsynced journal entries", metadata: ["error": "\(error)"])
            }
            currentDirty = true
            directoryDirty = true
            sizeGauge.record(sizeBytes)
            throw error
        }
        syncedOp = lastOp
        syncedChecksum = lastChecksum
    }

    /// Drops every op after `op` (VSR replacing an uncommitted suffix) and
    /// makes that durable (fsync under `.fsync`) before returning. No-op if
    /// `op >= lastOp`.
    /// - Throws: `.corruptionPending`, `.io`, `.diskFull`; `.invalidArgument` if
    ///   `op` is below the first op held.
    public func truncate(after op: OpNumber) throws {
        if let pendingCorruption { throw StorageError.corruptionPending(pendingCorruption) }
        guard op < lastOp else { return }
        guard op >= base.op else {
            throw StorageError.invalidArgument("cannot truncate after op \(op): the log starts after op \(base.op) (compacted or installed by state transfer)")
        }
        let checksum: Checksum
        if op == base.op {
            checksum = base.checksum
        } else {
            guard let entry = try entries(from: op, through: op).first else {
                throw StorageError.invalidArgument("op \(op) is not in the log")
            }
            checksum = entry.checksum
        }
        let dropped = lastOp - op
        try dropAfter(op, checksum: checksum)
        sizeGauge.record(sizeBytes)
        try sync()
        logger.info("Journal truncated", metadata: ["op": "\(op)", "dropped": "\(dropped)"])
    }

    /// If open found corruption: moves the damaged segment and every later
    /// one aside as `<name>.corrupt` (kept as evidence, never deleted; a
    /// damaged segment with valid frames before the damage is copied aside
    /// and then truncated to them), so the verified prefix becomes the log
    /// and appends can resume. No-op without pending corruption.
    /// - Throws: `.io` / `.diskFull` naming the file.
    public func quarantineCorruption() throws {
        guard let corruption = pendingCorruption else { return }
        var evidence: [String] = []
        for path in quarantineWhole.reversed() {
            let destination = try evidencePath(for: path)
            try FileIO.rename(path, destination)
            evidence.append(destination)
        }
        quarantineWhole = []
        if let tail = quarantineTail {
            let destination = try evidencePath(for: tail.path)
            let bytes = try FileIO.readWholeFile(tail.path)
            let out = try FileIO.openFile(destination, flags: O_WRONLY | O_CREAT | O_EXCL)
            do {
                defer { FileIO.closeFile(out) }
                try FileIO.write(out, bytes, at: 0, path: destination)
                if syncMode == .fsync { try timedSync(out, destination) }
            } catch {
                try? FileIO.remove(destination)
                throw error
            }
            try ensureCurrentFD()
            try FileIO.truncate(currentFD, to: tail.validEnd, path: tail.path)
            if syncMode == .fsync { try timedSync(currentFD, tail.path) }
            evidence.append(destination)
            quarantineTail = nil
        }
        if syncMode == .fsync { try syncDirectory() }
        pendingCorruption = nil
        quarantineBytes = 0
        sizeGauge.record(sizeBytes)
        logger.warning("Quarantined corrupt journal data", metadata: [
            "segment": "\(corruption.segment)", "offset": "\(corruption.offset)", "op": "\(corruption.op)",
            "evidence": "\(evidence.joined(separator: ","))", "last_op": "\(lastOp)",
        ])
    }

    /// Closes the open segment file. The journal must not be used afterwards.
    public func close() {
        FileIO.closeFile(currentFD)
        currentFD = -1
        currentFDPath = ""
    }

    // MARK: Internals

    private struct Mark {
        var segmentCount: Int
        var entryCount: Int
        var size: Int
        var lastOp: OpNumber
        var lastChecksum: Checksum
    }

    private func flush(_ buffer: inout [UInt8]) throws {
        guard !buffer.isEmpty, let last = segments.last else { return }
        try ensureCurrentFD()
        currentDirty = true
        try FileIO.write(currentFD, buffer, at: last.size - buffer.count, path: last.path)
        buffer.removeAll(keepingCapacity: true)
    }

    private func ensureCurrentFD() throws {
        guard let last = segments.last else { return }
        if currentFD >= 0 && currentFDPath == last.path { return }
        FileIO.closeFile(currentFD)
        currentFD = -1
        currentFDPath = ""
        currentFD = try FileIO.openFile(last.path, flags: O_RDWR)
        currentFDPath = last.path
        if let index = unsyncedPaths.firstIndex(of: last.path) {
            unsyncedPaths.remove(at: index)
            currentDirty = true
        }
    }

    private func createSegment(firstOp: OpNumber) throws {
        // Announced before the file exists, so a segment the superblock does
        // not know of can only come from a directory restored from an older copy.
        try willCreateSegment?(firstOp)
        if currentFD >= 0 {
            if currentDirty && syncMode == .fsync { unsyncedPaths.append(currentFDPath) }
            FileIO.closeFile(currentFD)
            currentFD = -1
            currentFDPath = ""
            currentDirty = false
        }
        let path = directory + "/" + SegmentFormat.fileName(firstOp: firstOp)
        let fd = try FileIO.openFile(path, flags: O_RDWR | O_CREAT | O_EXCL)
        do {
            try FileIO.write(fd, SegmentFormat.encodeHeader(firstOp: firstOp), at: 0, path: path)
        } catch {
            FileIO.closeFile(fd)
            try? FileIO.remove(path)
            throw error
        }
        segments.append(Segment(firstOp: firstOp, path: path, size: SegmentFormat.headerSize, frames: FrameIndex()))
        currentFD = fd
        currentFDPath = path
        currentDirty = true
        directoryDirty = true
        logger.debug("Journal segment created", metadata: ["segment": "\(path)", "op": "\(firstOp)"])
    }

    /// Undoes a failed append: removes segments it created, cuts the file back.
    private func rollback(to mark: Mark) {
        while segments.count > mark.segmentCount {
            let segment = segments.removeLast()
            if currentFDPath == segment.path {
                FileIO.closeFile(currentFD)
                currentFD = -1
                currentFDPath = ""
                currentDirty = false
            }
            unsyncedPaths.removeAll { $0 == segment.path }
            do { try FileIO.remove(segment.path) } catch {
                logger.error("could not remove segment after failed append", metadata: ["segment": "\(segment.path)", "error": "\(error)"])
            }
            directoryDirty = true
        }
        if mark.segmentCount > 0 {
            let index = segments.count - 1
            if segments[index].frames.count > mark.entryCount { segments[index].frames.keepFirst(mark.entryCount) }
            segments[index].size = mark.size
            do {
                try ensureCurrentFD()
                try FileIO.truncate(currentFD, to: mark.size, path: segments[index].path)
            } catch {
                logger.error("could not cut segment back after failed append", metadata: [
                    "segment": "\(segments[index].path)", "offset": "\(mark.size)", "error": "\(error)",
                ])
            }
            currentDirty = true
        }
        lastOp = mark.lastOp
        lastChecksum = mark.lastChecksum
    }

    /// Removes ops after `op` from disk and memory (no fsync); segments are
    /// removed newest first so a crash midway leaves a contiguous prefix.
    private func dropAfter(_ op: OpNumber, checksum: Checksum) throws {
        while let last = segments.last, last.firstOp > op {
            if currentFDPath == last.path {
                FileIO.closeFile(currentFD)
                currentFD = -1
                currentFDPath = ""
                currentDirty = false
            }
            try FileIO.remove(last.path)
            unsyncedPaths.removeAll { $0 == last.path }
            segments.removeLast()
            directoryDirty = true
        }
        if let last = segments.last {
            let keep = Int(op - last.firstOp + 1)
            if keep < last.frames.count {
                let index = segments.count - 1
                let newSize = try verifiedFrameEnd(last, keep - 1)
                try ensureCurrentFD()
                try FileIO.truncate(currentFD, to: newSize, path: last.path)
                segments[index].frames.keepFirst(keep)
                segments[index].size = newSize
                currentDirty = true
            }
        }
        lastOp = op
        lastChecksum = checksum
        if syncedOp > op {
            syncedOp = op
            syncedChecksum = checksum
        }
    }

    private func timedSync(_ fd: Int32, _ path: String) throws {
        let start = ContinuousClock.now
        try FileIO.sync(fd, path: path)
        let elapsed = ContinuousClock.now - start
        let (seconds, attoseconds) = elapsed.components
        fsyncTimer.recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        if elapsed > slowFsyncThreshold {
            let ms = Double(seconds) * 1000 + Double(attoseconds) / 1e15
            logger.warning("slow fsync", metadata: [
                "duration_ms": "\((ms * 1000).rounded() / 1000)", "segment": "\(path)",
                "threshold_ms": "\(Double(slowFsyncThreshold.components.seconds) * 1000 + Double(slowFsyncThreshold.components.attoseconds) / 1e15)",
            ])
        }
    }

    private func syncDirectory() throws {
        let fd = try FileIO.openFile(directory, flags: O_RDONLY | O_DIRECTORY)
        defer { FileIO.closeFile(fd) }
        try timedSync(fd, directory)
        directoryDirty = false
    }

    private func evidencePath(for path: String) throws -> String {
        for attempt in 0..<100 {
            let candidate = attempt == 0 ? path + ".corrupt" : path + ".corrupt.\(attempt)"
            if FileIO.kind(candidate) == .missing { return candidate }
        }
        throw StorageError.invalidArgument("too many quarantined copies of \(path) (.corrupt ... .corrupt.99 exist)")
    }

    // MARK: Open-time scan

    struct ScanResult {
        var segments: [Segment] = []
        var lastOp: OpNumber = 0
        var lastChecksum: Checksum = .zero
        var recovery = JournalRecovery()
        var quarantineWhole: [String] = []
        var quarantineTail: (path: String, validEnd: Int)?
        var quarantineBytes = 0
        /// Torn tail to cut: truncate `path` to `offset`, or remove it when `offset` is nil.
        var tornRepair: (path: String, offset: Int?)?
    }

    /// Reads and verifies every segment (`SegmentScanner`, stopping at the
    /// first damage); changes nothing on disk.
    /// - Throws: `StorageError.io` if the directory or a segment cannot be read.
    static func scan(directory: String, base: (op: OpNumber, checksum: Checksum)) throws -> ScanResult {
        var result = ScanResult()
        result.lastOp = base.op
        result.lastChecksum = base.checksum
        let (files, others) = try SegmentScanner.list(directory)
        result.recovery.ignoredFiles = others
        result.recovery.segmentFiles = files.count
        var frames = FrameIndex()
        try SegmentScanner.scan(files, firstOp: base.op + 1, anchor: base.checksum) { finding in
            switch finding {
            case .segmentStart:
                frames = FrameIndex()
            case .entry(let entry, let offset):
                frames.append(frameAt: offset)
                result.lastOp = entry.op
                result.lastChecksum = entry.checksum
            case .segmentEnd(let file, let bytes):
                result.segments.append(Segment(firstOp: file.firstOp, path: file.path, size: bytes, frames: frames))
            case .damage(let damage):
                if let error = damage.readError { throw error }
                let path = damage.file.path
                if damage.isTornTail {
                    // A crash's incomplete write: cut it (a torn header removes the file).
                    result.tornRepair = (path, damage.offset == 0 && frames.isEmpty ? nil : damage.offset)
                    result.recovery.tornTailSegment = path
                    result.recovery.tornTailOffset = damage.offset
                    result.recovery.tornTailBytes = damage.segmentBytes - damage.offset
                    if result.tornRepair?.offset != nil {
                        result.segments.append(Segment(firstOp: damage.file.firstOp, path: path, size: damage.offset, frames: frames))
                    }
                    return false
                }
                // Corruption: the log ends before it; this segment's damaged
                // part and every later segment are quarantined.
                result.recovery.corruption = JournalCorruption(segment: path, offset: damage.offset, op: result.lastOp + 1,
                                                               kind: damage.kind, detail: damage.detail)
                if frames.isEmpty {
                    result.quarantineWhole.append(path)
                    result.quarantineBytes += damage.segmentBytes
                } else {
                    result.segments.append(Segment(firstOp: damage.file.firstOp, path: path, size: damage.offset, frames: frames))
                    result.quarantineTail = (path, damage.offset)
                    result.quarantineBytes += damage.segmentBytes - damage.offset
                }
                for later in files.drop(while: { $0.path != path }).dropFirst() {
                    result.quarantineWhole.append(later.path)
                    result.quarantineBytes += FileIO.fileSize(later.path) ?? 0
                }
                return false
            }
            return true
        }
        result.recovery.entries = result.segments.reduce(0) { $0 + $1.frames.count }
        return result
    }

    /// The base a copied log directory starts from, read from its first
    /// entry: (0, .zero) when it starts at op 1 (or is empty), else the op
    /// before its first entry and that entry's parent checksum.
    /// - Throws: `StorageError.io` when the directory cannot be read.
    public static func firstEntryBase(directory: String) throws -> (op: OpNumber, checksum: Checksum) {
        guard let first = try SegmentScanner.list(directory).segments.first, first.firstOp > 1 else { return (0, .zero) }
        var base: (op: OpNumber, checksum: Checksum) = (0, .zero)
        try SegmentScanner.scan([first], firstOp: nil) { finding in
            if case .entry(let entry, _) = finding {
                base = (entry.op - 1, entry.parent)
                return false
            }
            return true
        }
        return base
    }

    /// Removes (and syncs away) the segment files in `directory` whose first
    /// op is at or below `baseOp`; nothing when `baseOp` is 0.
    /// - Returns: the names removed.
    static func removeSegments(in directory: String, through baseOp: OpNumber) throws -> [String] {
        guard baseOp > 0 else { return [] }
        let stale = try SegmentScanner.list(directory).segments.filter { $0.firstOp <= baseOp }
        for file in stale { try FileIO.remove(file.path) }
        if !stale.isEmpty { try FileIO.syncDirectory(directory) }
        return stale.map(\.name)
    }

    /// Applies what the scan decided: cut a torn tail, report corruption.
    private func repair(_ scan: ScanResult) throws {
        for name in scan.recovery.ignoredFiles {
            if name.contains(".corrupt") {
                logger.info("quarantined journal file kept as evidence", metadata: ["file": "\(directory)/\(name)"])
            } else {
                logger.warning("ignoring unexpected file in log directory", metadata: ["file": "\(directory)/\(name)"])
            }
        }
        if let torn = scan.tornRepair {
            if let offset = torn.offset {
                let fd = try FileIO.openFile(torn.path, flags: O_RDWR)
                currentFD = fd
                currentFDPath = torn.path
                try FileIO.truncate(fd, to: offset, path: torn.path)
                if syncMode == .fsync { try timedSync(fd, torn.path) }
            } else {
                try FileIO.remove(torn.path)
                if syncMode == .fsync { try syncDirectory() }
            }
            logger.warning("Torn journal tail truncated (incomplete write from a crash)", metadata: [
                "segment": "\(torn.path)", "offset": "\(torn.offset ?? 0)",
                "bytes": "\(scan.recovery.tornTailBytes)", "op": "\(lastOp + 1)",
            ])
        }
        if let corruption = scan.recovery.corruption {
            checksumFailures.increment()
            logger.error("Checksum mismatch: corrupt journal segment, log ends before it", metadata: [
                "segment": "\(corruption.segment)", "offset": "\(corruption.offset)", "op": "\(corruption.op)",
                "problem": "\(corruption.kind.rawValue)", "detail": "\(corruption.detail)", "last_valid_op": "\(lastOp)",
            ])
        }
    }
}
