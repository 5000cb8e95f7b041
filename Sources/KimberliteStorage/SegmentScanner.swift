import KimberliteCore

/// A segment file of a log directory, named by its first op.
struct SegmentFile: Sendable, Equatable {
    var firstOp: OpNumber
    var name: String
    var path: String
}

/// Damage a scan found in a segment.
struct SegmentDamage {
    var file: SegmentFile
    /// Byte offset in the segment (0 for the header).
    var offset: Int
    /// The op the scan expected there, when it knew one (or the op found, for a gap).
    var op: OpNumber?
    var kind: StorageProblemKind
    var detail: String
    /// An incomplete write at the very end of the log (nothing valid follows
    /// it in the last segment): what a crash leaves, not corruption.
    var isTornTail: Bool
    /// Where the scan goes on in this segment; nil when it moves to the next one.
    var resumeAt: Int?
    /// The segment's size in bytes.
    var segmentBytes: Int
    /// The read error, for `.unreadable`.
    var readError: Error? = nil
}

/// What a scan finds, in log order.
enum SegmentFinding {
    /// A segment begins; `bytes` is its size.
    case segmentStart(SegmentFile, bytes: Int, isLast: Bool)
    /// A verified entry (frame CRC32C and entry SHA-256) at `offset`. It
    /// follows the one before it (op + 1, chained), unless a `.damage`
    /// came just before it: the scan then carries on from it.
    case entry(LogEntry, offset: Int)
    /// Damage; see `SegmentDamage.resumeAt` for where the scan goes on.
    case damage(SegmentDamage)
    /// The segment ends (after its last frame, or after damage it cannot read past).
    case segmentEnd(SegmentFile, bytes: Int)
}

/// The one walk over a log directory's segments, shared by the journal's
/// open-time scan (which stops at the first damage) and the offline
/// verifier (which reports everything and resynchronises after damage).
/// It checks segment headers against their file names, frame CRC32C, entry
/// SHA-256, op continuity within and across segments, and the hash chain;
/// it tells a torn tail from corruption.
enum SegmentScanner {
    /// Segment files sorted by first op, and the other names found.
    /// - Throws: `StorageError.io` if the directory cannot be listed.
    static func list(_ directory: String) throws -> (segments: [SegmentFile], others: [String]) {
        var segments: [SegmentFile] = []
        var others: [String] = []
        for name in try FileIO.list(directory) {
            if let op = SegmentFormat.firstOp(fromFileName: name) {
                segments.append(SegmentFile(firstOp: op, name: name, path: directory + "/" + name))
            } else {
                others.append(name)
            }
        }
        segments.sort { $0.firstOp < $1.firstOp }
        return (segments, others.sorted())
    }

    /// Walks `files` in order, reporting each finding to `visit`, which
    /// returns false to stop the scan.
    /// - Parameters:
    ///   - firstOp: the op the log must begin at (1 for a log kept whole,
    ///     base + 1 for one compacted or installed by state transfer); nil
    ///     accepts the first segment's own first op.
    ///   - anchor: the checksum the first entry's parent must equal (the
    ///     base entry's); nil for unknown. A log from op 1 chains onto zero.
    static func scan(_ files: [SegmentFile], firstOp: OpNumber?, anchor: Checksum? = nil,
                     visit: (SegmentFinding) throws -> Bool) rethrows {
        var expected: OpNumber? = firstOp
        // The checksum the next entry's parent must equal, when known.
        var previous: Checksum? = anchor ?? (firstOp == 1 ? .zero : nil)
        var lastOp: OpNumber = (firstOp ?? 1) &- 1
        for (index, file) in files.enumerated() {
            let isLast = index == files.count - 1
            let bytes: [UInt8]
            do {
                bytes = try FileIO.readWholeFile(file.path)
            } catch {
                let damage = SegmentDamage(file: file, offset: 0, op: expected, kind: .unreadable, detail: "\(error)",
                                           isTornTail: false, resumeAt: nil, segmentBytes: 0, readError: error)
                guard try visit(.damage(damage)) else { return }
                expected = nil
                previous = nil
                continue
            }
            guard try visit(.segmentStart(file, bytes: bytes.count, isLast: isLast)) else { return }
            func damage(_ offset: Int, _ op: OpNumber?, _ kind: StorageProblemKind, _ detail: String,
                        torn: Bool = false, resumeAt: Int?) -> SegmentFinding {
                .damage(SegmentDamage(file: file, offset: offset, op: op, kind: kind, detail: detail, isTornTail: torn,
                                      resumeAt: resumeAt, segmentBytes: bytes.count))
            }

            var offset: Int
            switch SegmentFormat.parseHeader(bytes) {
            case .failure(let problem):
                let next = SegmentFormat.findValidFrame(bytes, after: -1, end: bytes.count, minimumOp: expected ?? lastOp + 1)
                guard try visit(damage(0, expected, .badSegmentHeader, problem.description, torn: isLast && next == nil,
                                       resumeAt: next)) else { return }
                expected = nil
                previous = nil
                guard let next else {
                    guard try visit(.segmentEnd(file, bytes: bytes.count)) else { return }
                    continue
                }
                offset = next
            case .success(let headerOp):
                if headerOp != file.firstOp {
                    guard try visit(damage(0, headerOp, .badSegmentHeader, "header says first op \(headerOp), file name says \(file.firstOp)",
                                           resumeAt: SegmentFormat.headerSize)) else { return }
                }
                if let want = expected, headerOp != want {
                    guard try visit(damage(0, want, .opGap, "segment starts at op \(headerOp), expected op \(want)",
                                           resumeAt: SegmentFormat.headerSize)) else { return }
                    previous = nil
                }
                expected = headerOp
                offset = SegmentFormat.headerSize
            }

            frames: while offset < bytes.count {
                switch SegmentFormat.parseFrame(bytes, at: offset, end: bytes.count) {
                case .entry(let entry, let next):
                    if let want = expected, entry.op != want {
                        guard try visit(damage(offset, entry.op, .opGap, "found op \(entry.op), expected op \(want)",
                                               resumeAt: offset)) else { return }
                    } else if let parent = previous, entry.parent != parent {
                        guard try visit(damage(offset, entry.op, .hashChainBreak, "parent is not the checksum of op \(entry.op &- 1)",
                                               resumeAt: offset)) else { return }
                    }
                    guard try visit(.entry(entry, offset: offset)) else { return }
                    lastOp = max(lastOp, entry.op)
                    expected = entry.op + 1
                    previous = entry.checksum
                    offset = next
                case .bad(let kind, let detail):
                    let next = SegmentFormat.findValidFrame(bytes, after: offset, end: bytes.count, minimumOp: expected ?? lastOp + 1)
                    guard try visit(damage(offset, expected, kind, detail, torn: isLast && next == nil, resumeAt: next)) else { return }
                    expected = nil
                    previous = nil
                    guard let next else { break frames }
                    offset = next
                }
            }
            guard try visit(.segmentEnd(file, bytes: bytes.count)) else { return }
        }
    }
}
