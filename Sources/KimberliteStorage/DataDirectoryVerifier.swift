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
    /// continuity, hash chain across segments) and every superblock copy.
    /// A torn tail at the very end of the log is a warning; damage anywhere
    /// else is an error, and the scan resynchronises after it to report more.
    public static func verify(dataDir: String) -> VerifyReport {
        var scan = Scan(dataDir: dataDir)
        scan.run()
        return VerifyReport(dataDir: dataDir, ok: !scan.problems.contains { $0.severity == .error },
                            problems: scan.problems, segments: scan.segments, entries: scan.entries,
                            lastOp: scan.lastOp, logBytes: scan.logBytes,
                            superblockCopiesValid: scan.superblockCopiesValid, superblock: scan.superblock)
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
            let hasLog = FileIO.kind(dataDir + "/log") == .directory
            let hasSuperblock = FileIO.kind(dataDir + "/superblock") != .missing
            if !hasLog && !hasSuperblock {
                return directoryProblem(.notADataDirectory, "holds no superblock and no log/ (found \(names.prefix(5).joined(separator: ", "))\(names.count > 5 ? ", …" : ""))")
            }
            if hasLog { scanLog() }
            if hasSuperblock {
                scanSuperblock()
            } else {
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

        mutating func scanLog() {
            let logDir = dataDir + "/log"
            let names: [String]
            do { names = try FileIO.list(logDir) } catch {
                problems.append(VerifyProblem(.error, .unreadable, file: "log", subject: "log directory", detail: "\(error)"))
                return
            }
            var files: [(op: OpNumber, name: String)] = []
            for name in names {
                if let op = SegmentFormat.firstOp(fromFileName: name) {
                    files.append((op, name))
                } else {
                    let detail = name.contains(".corrupt") ? "quarantined evidence of earlier corruption (not part of the log)" : "not a segment file"
                    problems.append(VerifyProblem(.warning, .unexpectedFile, file: "log/" + name, subject: "file log/\(name)", detail: detail))
                }
            }
            files.sort { $0.op < $1.op }

            var expected: OpNumber? = 1
            var previous: Checksum? = .zero
            for (index, file) in files.enumerated() {
                let relative = "log/" + file.name
                let subject = "segment " + relative
                let isLast = index == files.count - 1
                let bytes: [UInt8]
                do { bytes = try FileIO.readWholeFile(dataDir + "/" + relative) } catch {
                    problems.append(VerifyProblem(.error, .unreadable, file: relative, subject: subject, detail: "\(error)"))
                    expected = nil
                    previous = nil
                    continue
                }
                segments += 1
                logBytes += bytes.count

                var offset: Int
                switch SegmentFormat.parseHeader(bytes) {
                case .failure(let headerError):
                    let next = SegmentFormat.findValidFrame(bytes, after: -1, end: bytes.count, minimumOp: expected ?? lastOp + 1)
                    if isLast && next == nil {
                        problems.append(VerifyProblem(.warning, .tornTail, file: relative, subject: subject, offset: 0, op: expected,
                                                      detail: "segment header incomplete (\(headerError)); a crash while creating the segment, the server removes it on start"))
                    } else {
                        problems.append(VerifyProblem(.error, .badSegmentHeader, file: relative, subject: subject, offset: 0, op: expected,
                                                      detail: headerError.description))
                    }
                    guard let next else {
                        // The rest of the segment is unreadable, so its ops are unknown.
                        expected = nil
                        previous = nil
                        continue
                    }
                    offset = next
                    expected = nil
                    previous = nil
                case .success(let headerOp):
                    if headerOp != file.op {
                        problems.append(VerifyProblem(.error, .badSegmentHeader, file: relative, subject: subject, offset: 0, op: headerOp,
                                                      detail: "header says first op \(headerOp), file name says \(file.op)"))
                    }
                    if let want = expected, headerOp != want {
                        problems.append(VerifyProblem(.error, .opGap, file: relative, subject: subject, offset: 0, op: want,
                                                      detail: "segment starts at op \(headerOp), expected op \(want)"))
                        previous = nil
                    }
                    expected = headerOp
                    offset = SegmentFormat.headerSize
                }

                frames: while offset < bytes.count {
                    switch SegmentFormat.parseFrame(bytes, at: offset, end: bytes.count) {
                    case .entry(let entry, let next):
                        if let want = expected, entry.op != want {
                            problems.append(VerifyProblem(.error, .opGap, file: relative, subject: subject, offset: offset, op: entry.op,
                                                          detail: "found op \(entry.op), expected op \(want)"))
                        } else if let parent = previous, entry.parent != parent {
                            problems.append(VerifyProblem(.error, .hashChainBreak, file: relative, subject: subject, offset: offset, op: entry.op,
                                                          detail: "parent is not the checksum of op \(entry.op &- 1)"))
                        }
                        entries += 1
                        lastOp = max(lastOp, entry.op)
                        expected = entry.op + 1
                        previous = entry.checksum
                        offset = next
                    case .bad(let kind, let detail):
                        let next = SegmentFormat.findValidFrame(bytes, after: offset, end: bytes.count, minimumOp: expected ?? lastOp + 1)
                        if next == nil && isLast {
                            problems.append(VerifyProblem(.warning, .tornTail, file: relative, subject: subject, offset: offset, op: expected,
                                                          detail: "\(bytes.count - offset) bytes of an incomplete write at the end of the log (\(kind.rawValue): \(detail)); the server truncates it on start"))
                            break frames
                        }
                        let after = next.map { "; next valid frame at offset \($0)" } ?? "; nothing valid after it in this segment"
                        problems.append(VerifyProblem(.error, kind, file: relative, subject: subject, offset: offset, op: expected,
                                                      detail: detail + after))
                        expected = nil
                        previous = nil
                        guard let next else { break frames }
                        offset = next
                    }
                }
            }
        }
    }
}
