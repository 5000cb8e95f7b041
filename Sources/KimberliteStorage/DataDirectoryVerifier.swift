#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

import KimberliteCore

/// One finding of `DataDirectoryVerifier.verify`.
public struct VerifyProblem: Codable, Sendable, Equatable {
    public enum Severity: String, Codable, Sendable {
        /// Data is damaged or missing: `verify` fails.
        case error
        /// Recoverable or informational (a torn tail the server truncates on start).
        case warning
    }

    public var severity: Severity
    public var kind: StorageProblemKind
    /// Path relative to the data directory (`log/00000000000000000007.kmb`,
    /// `superblock`), or the data directory itself for directory-level problems.
    public var file: String
    public var offset: Int?
    public var op: OpNumber?
    /// Superblock copy number (0-3) for `superblockCopyInvalid`.
    public var copy: Int?
    public var detail: String
    /// The one-line text form, e.g.
    /// `verify: segment log/00000000000000000007.kmb: checksum mismatch at offset 1048576 (op 81234): …`.
    public var message: String

    init(_ severity: Severity, _ kind: StorageProblemKind, file: String, subject: String,
         offset: Int? = nil, op: OpNumber? = nil, copy: Int? = nil, detail: String) {
        self.severity = severity
        self.kind = kind
        self.file = file
        self.offset = offset
        self.op = op
        self.copy = copy
        self.detail = detail
        var text = "verify: \(subject): "
        if severity == .warning { text += "warning: " }
        if kind == .superblockCopyInvalid, let copy {
            text += "superblock copy \(copy) invalid"
        } else {
            text += kind.rawValue
        }
        if let offset { text += " at offset \(offset)" }
        if let op { text += " (op \(op))" }
        if !detail.isEmpty { text += ": \(detail)" }
        message = text
    }
}

/// The result of an offline scan of a data directory.
public struct VerifyReport: Codable, Sendable {
    public var dataDir: String
    /// False when any problem is an error (corruption, or a missing, empty or
    /// foreign directory); `kimberlite-admin verify` then exits 1.
    public var ok: Bool
    public var problems: [VerifyProblem]
    /// Segment files scanned.
    public var segments: Int
    /// Entries that verified.
    public var entries: Int
    /// Highest op that verified (0 if none).
    public var lastOp: OpNumber
    /// Bytes of segment files.
    public var logBytes: Int
    /// Valid superblock copies (0-4).
    public var superblockCopiesValid: Int
    /// The newest valid superblock state, if any.
    public var superblock: SuperblockState?
    /// Ops of the checkpoints that checked whole, newest first.
    public var checkpoints: [OpNumber] = []

    /// `!ok`.
    public var isCorrupt: Bool { !ok }
    public var errors: [VerifyProblem] { problems.filter { $0.severity == .error } }
    public var warnings: [VerifyProblem] { problems.filter { $0.severity == .warning } }

    /// One line per problem, then a summary line.
    public var textLines: [String] {
        var lines = problems.map(\.message)
        var summary = "verify: \(segments) segment\(segments == 1 ? "" : "s"), \(entries) entr\(entries == 1 ? "y" : "ies"), last op \(lastOp), \(logBytes) bytes"
        summary += "; superblock \(superblockCopiesValid) of \(Superblock.copies) copies valid"
        if let superblock {
            summary += " (view \(superblock.view), log view \(superblock.logView), commit \(superblock.commitNumber), epoch \(superblock.epoch))"
        }
        if !checkpoints.isEmpty {
            summary += "; \(checkpoints.count) checkpoint\(checkpoints.count == 1 ? "" : "s") valid (newest at op \(checkpoints[0]))"
        }
        let errorCount = errors.count
        let warningCount = warnings.count
        if ok {
            summary += warningCount == 0 ? "; ok" : "; ok with \(warningCount) warning\(warningCount == 1 ? "" : "s")"
        } else {
            summary += "; FAILED: \(errorCount) error\(errorCount == 1 ? "" : "s")"
            if warningCount > 0 { summary += ", \(warningCount) warning\(warningCount == 1 ? "" : "s")" }
        }
        lines.append(summary)
        return lines
    }

    /// The report as JSON with snake_case keys (`data_dir`, `ok`, `problems`, `last_op`, …).
    public func json(pretty: Bool = true) -> String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
        guard let data = try? encoder.encode(self) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Offline verification of a data directory for `kimberlite-admin verify --data-dir`.
/// Reads only; never changes a file. Does not take the directory lock.
public enum DataDirectoryVerifier {
    /// Scans every segment (header, frame CRC32C, entry SHA-256, op
    /// continuity, hash chain across segments), every superblock copy and
    /// every checkpoint. A backup directory (one with `backup.manifest`) is
    /// checked as a backup: every file against the manifest, the checkpoint,
    /// and a log that ends exactly at the backup's op and anchor.
    /// A torn tail at the very end of the log is a warning; damage anywhere
    /// else is an error, and the scan resynchronises after it to report more.
    public static func verify(dataDir: String) -> VerifyReport {
        var scan = Scan(dataDir: dataDir)
        scan.run()
        return VerifyReport(dataDir: dataDir, ok: !scan.problems.contains { $0.severity == .error },
                            problems: scan.problems, segments: scan.segments, entries: scan.entries,
                            lastOp: scan.lastOp, logBytes: scan.logBytes,
                            superblockCopiesValid: scan.superblockCopiesValid, superblock: scan.superblock,
                            checkpoints: scan.checkpoints)
    }

    private struct Scan {
        let dataDir: String
        var problems: [VerifyProblem] = []
        var segments = 0
        var entries = 0
        var lastOp: OpNumber = 0
        var logBytes = 0
        var superblockCopiesValid = 0
        var superblock: SuperblockState?
        var checkpoints: [OpNumber] = []
        var lastChecksum: Checksum?

        init(dataDir: String) { self.dataDir = dataDir }

        mutating func directoryProblem(_ kind: StorageProblemKind, _ detail: String) {
            problems.append(VerifyProblem(.error, kind, file: dataDir, subject: "data directory \(dataDir)", detail: detail))
        }

        mutating func run() {
            switch FileIO.kind(dataDir) {
            case .missing:
                return directoryProblem(.missingDirectory, "does not exist")
            case .file, .other:
                return directoryProblem(.notADataDirectory, "is not a directory")
            case .inaccessible(let code):
                return directoryProblem(.unreadable, "cannot look it up: \(FileIO.errnoText(code))")
            case .directory:
                break
            }
            let names: [String]
            do { names = try FileIO.list(dataDir) } catch {
                return directoryProblem(.unreadable, "\(error)")
            }
            if names.isEmpty {
                return directoryProblem(.emptyDirectory, "holds no superblock and no log/")
            }
            if Backup.isBackup(dataDir) {
                // A backup directory: log, checkpoint, and every file against its manifest.
                if FileIO.kind(dataDir + "/log") == .directory { scanLog(base: nil) }
                scanCheckpoints(CheckpointStore(directory: dataDir + "/checkpoint"), relativeDirectory: "checkpoint/")
                problems += Backup.problems(in: dataDir, scannedLastOp: lastOp, lastChecksum: lastChecksum)
                return
            }
            let hasLog = FileIO.kind(dataDir + "/log") == .directory
            let hasSuperblock = FileIO.kind(dataDir + "/superblock") != .missing
            if !hasLog && !hasSuperblock {
                return directoryProblem(.notADataDirectory, "holds no superblock and no log/ (found \(names.prefix(5).joined(separator: ", "))\(names.count > 5 ? ", …" : ""))")
            }
            // The superblock first: it says where the log begins (its base).
            if hasSuperblock { scanSuperblock() }
            if hasLog { scanLog(base: superblock.map { ($0.logBaseOp, $0.logBaseChecksum) } ?? (0, .zero)) }
            scanCheckpoints(CheckpointStore(dataDir: dataDir), relativeDirectory: "projections/checkpoints/")
            if !hasSuperblock {
                let severity: VerifyProblem.Severity = entries > 0 ? .error : .warning
                problems.append(VerifyProblem(severity, .superblockMissing, file: "superblock", subject: "superblock",
                                              detail: entries > 0 ? "the log has entries but the view and commit state is gone" : "no superblock yet (a node that never started)"))
            }
            if let superblock, superblock.commitNumber > lastOp {
                problems.append(VerifyProblem(.warning, .commitBeyondLog, file: "superblock", subject: "superblock",
                                              op: superblock.commitNumber,
                                              detail: "commit number \(superblock.commitNumber) is past the last op in the log (\(lastOp)); the node recovers the rest from its peers"))
            }
        }

        mutating func scanSuperblock() {
            let path = dataDir + "/superblock"
            let slots: [Superblock.Slot]
            do {
                slots = try Superblock(path: path).inspect()
            } catch {
                problems.append(VerifyProblem(.error, .unreadable, file: "superblock", subject: "superblock", detail: "\(error)"))
                return
            }
            let valid = slots.filter { $0.state != nil }
            superblockCopiesValid = valid.count
            superblock = valid.max(by: { $0.sequence < $1.sequence })?.state
            // With a valid copy left, the next superblock write repairs the others.
            let severity: VerifyProblem.Severity = valid.isEmpty ? .error : .warning
            for slot in slots where slot.state == nil {
                problems.append(VerifyProblem(severity, .superblockCopyInvalid, file: "superblock", subject: "superblock",
                                              offset: slot.index * Superblock.slotSize, copy: slot.index,
                                              detail: slot.problem ?? "invalid"))
            }
        }

        /// Every checkpoint whole (manifest checksum, size, SHA-256 of the
        /// SQLite file). An unfinished copy is a warning: the server removes it.
        mutating func scanCheckpoints(_ store: CheckpointStore, relativeDirectory: String) {
            let ops: [OpNumber]
            do { ops = try store.ops() } catch {
                problems.append(VerifyProblem(.error, .unreadable, file: relativeDirectory, subject: "checkpoint directory", detail: "\(error)"))
                return
            }
            for op in ops {
                let name = CheckpointStore.baseName(op)
                do {
                    try store.check(op: op)
                    checkpoints.append(op)
                } catch StorageError.checkpointInvalid(let path, let reason) {
                    let file = relativeDirectory + FileIO.lastComponent(path)
                    problems.append(VerifyProblem(.error, .checkpointInvalid, file: file, subject: "checkpoint \(file)", op: op,
                                                  detail: reason + "; the server does not use it (it falls back to an older checkpoint or the log)"))
                } catch {
                    problems.append(VerifyProblem(.error, .checkpointInvalid, file: relativeDirectory + name, subject: "checkpoint \(relativeDirectory + name)",
                                                  op: op, detail: "\(error)"))
                }
            }
            let sealed = Set(ops.map(CheckpointStore.baseName))
            for name in (try? FileIO.list(store.directory)) ?? [] where name.hasSuffix(CheckpointStore.sqliteExtension) {
                let base = String(name.dropLast(CheckpointStore.sqliteExtension.count))
                if !sealed.contains(base) {
                    problems.append(VerifyProblem(.warning, .unexpectedFile, file: relativeDirectory + name, subject: "file \(relativeDirectory + name)",
                                                  detail: "an unfinished checkpoint copy (no manifest); the server removes it"))
                }
            }
        }

        /// - Parameter base: the op before the log's first entry and its
        ///   checksum; nil when unknown (a backup of a compacted log starts
        ///   where its first segment says).
        mutating func scanLog(base: (op: OpNumber, checksum: Checksum)?) {
            var listing: (segments: [SegmentFile], others: [String])
            do { listing = try SegmentScanner.list(dataDir + "/log") } catch {
                problems.append(VerifyProblem(.error, .unreadable, file: "log", subject: "log directory", detail: "\(error)"))
                return
            }
            if let base, base.op > 0 {
                for file in listing.segments where file.firstOp <= base.op {
                    problems.append(VerifyProblem(.warning, .unexpectedFile, file: "log/" + file.name, subject: "file log/\(file.name)",
                                                  detail: "a segment below the log's base (op \(base.op)), left by an interrupted compaction or state transfer; the server removes it on start"))
                }
                listing.segments.removeAll { $0.firstOp <= base.op }
            }
            lastOp = base?.op ?? 0
            if let base, base.op > 0 { lastChecksum = base.checksum }
            let firstOp = base.map { $0.op + 1 } ?? (listing.segments.first?.firstOp == 1 ? 1 : nil)
            for name in listing.others {
                let detail = name.contains(".corrupt") ? "quarantined evidence of earlier corruption (not part of the log)"
                    : name.hasSuffix(Journal.setAsideSuffix) ? "set aside at start: written after the superblock in place, so the directory was restored from an older copy (not part of the log)"
                    : "not a segment file"
                problems.append(VerifyProblem(.warning, .unexpectedFile, file: "log/" + name, subject: "file log/\(name)", detail: detail))
            }
            // Reports every damage and reads on past it.
            SegmentScanner.scan(listing.segments, firstOp: firstOp, anchor: base?.checksum) { finding in
                switch finding {
                case .segmentStart(_, let bytes, _):
                    segments += 1
                    logBytes += bytes
                case .entry(let entry, _):
                    entries += 1
                    if entry.op > lastOp { lastChecksum = entry.checksum }
                    lastOp = max(lastOp, entry.op)
                case .segmentEnd:
                    break
                case .damage(let damage):
                    problems.append(Self.problem(damage))
                }
                return true
            }
        }

        /// How `verify` reports one damage: a torn tail is a warning (the
        /// server cuts it on start), anything else an error.
        static func problem(_ damage: SegmentDamage) -> VerifyProblem {
            let relative = "log/" + damage.file.name
            let subject = "segment " + relative
            if damage.isTornTail {
                let detail = damage.offset == 0
                    ? "segment header incomplete (\(damage.detail)); a crash while creating the segment, the server removes it on start"
                    : "\(damage.segmentBytes - damage.offset) bytes of an incomplete write at the end of the log (\(damage.kind.rawValue): \(damage.detail)); the server truncates it on start"
                return VerifyProblem(.warning, .tornTail, file: relative, subject: subject, offset: damage.offset, op: damage.op, detail: detail)
            }
            var detail = damage.detail
            // A bad frame: say whether anything valid follows it.
            if ![.badSegmentHeader, .opGap, .hashChainBreak, .unreadable].contains(damage.kind) {
                detail += damage.resumeAt.map { "; next valid frame at offset \($0)" } ?? "; nothing valid after it in this segment"
            }
            return VerifyProblem(.error, damage.kind, file: relative, subject: subject, offset: damage.offset, op: damage.op, detail: detail)
        }
    }
}
