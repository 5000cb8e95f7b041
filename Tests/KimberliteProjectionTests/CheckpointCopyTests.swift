import Foundation
import KimberliteCore
import Testing
@testable import KimberliteProjection

/// `writeConsistentCopy`: the copy a checkpoint is made of.
@Suite struct CheckpointCopyTests {
    @Test func copyHoldsTheAppliedPrefixAndItsHashChainAnchor() throws {
        try withProjection { projection, directory in
            var log = LogBuilder()
            _ = try projection.apply(log.next("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"))
            let inserts = (1...50).map { log.next("INSERT INTO t(v) VALUES (?1)", [.text("row-\($0)")], session: ClientSession(clientID: "c", requestNumber: UInt64($0))) }
            _ = try projection.apply(Array(inserts[0..<30]))
            _ = try projection.apply(Array(inserts[30...]))
            let path = directory + "/copy.sqlite"
            let copied = try projection.writeConsistentCopy(to: path)
            #expect(copied.op == 51 && copied.op == projection.appliedOp)
            #expect(copied.anchor == inserts.last!.checksum, "the anchor is the checksum of the last applied entry")
            #expect(try Projection.readCheckpointMetadata(path: path) == copied)

            // Opened as a projection, the copy is the same state, and applies the next entry.
            let restored = directory + "/restored"
            try FileManager.default.createDirectory(atPath: restored, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: path, toPath: restored + "/projection.sqlite")
            let reopened = try Projection(directory: restored)
            defer { reopened.close() }
            #expect(reopened.appliedOp == 51)
            #expect(try reopened.contentDigest() == projection.contentDigest())
            let next = log.next("INSERT INTO t(v) VALUES ('after')")
            _ = try reopened.apply(next)
            _ = try projection.apply(next)
            #expect(try reopened.contentDigest() == projection.contentDigest())
        }
    }

    /// A copy taken in many small steps while entries are applied is one
    /// snapshot: exactly the state after its op, never a mix, never restarted.
    @Test func aSteppedCopyDuringApplyIsOneSnapshot() throws {
        try withProjection { projection, directory in
            var log = LogBuilder()
            var entries = [log.next("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")]
            for n in 1...3000 { entries.append(log.next("INSERT INTO t(v) VALUES (?1)", [.text(String(repeating: "x", count: 200) + "\(n)")])) }
            _ = try projection.apply(Array(entries[0..<1000]))
            let rest = Array(entries[1000...])
            let applied = DispatchSemaphore(value: 0)
            let applier = Thread {
                for start in stride(from: 0, to: rest.count, by: 50) {
                    _ = try? projection.apply(Array(rest[start..<min(start + 50, rest.count)]))
                }
                applied.signal()
            }
            applier.start()
            let path = directory + "/stepped.sqlite"
            let copied = try projection.writeConsistentCopy(to: path, pacing: .init(pagesPerStep: 4, pauseMs: 0))
            #expect(applied.wait(timeout: .now() + 60) == .success, "the applier did not finish")
            #expect(projection.appliedOp == 3001)
            #expect(copied.op >= 1000 && copied.op <= 3001)
            #expect(copied.anchor == entries[Int(copied.op) - 1].checksum)
            // The same prefix applied afresh has the same contents.
            let fresh = makeTemporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: fresh) }
            let replay = try Projection(directory: fresh)
            defer { replay.close() }
            _ = try replay.apply(Array(entries[0..<Int(copied.op)]))
            let restored = directory + "/restored"
            try FileManager.default.createDirectory(atPath: restored, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: path, toPath: restored + "/projection.sqlite")
            let reopened = try Projection(directory: restored)
            defer { reopened.close() }
            #expect(try reopened.contentDigest() == replay.contentDigest())
        }
    }

    @Test func aCopyOfAnEmptyProjectionIsAtOpZero() throws {
        try withProjection { projection, directory in
            let copied = try projection.writeConsistentCopy(to: directory + "/empty-copy.sqlite")
            #expect(copied.op == 0 && copied.anchor == .zero)
        }
    }

    @Test func aCopyIntoAMissingDirectoryFailsNamingThePath() throws {
        try withProjection { projection, directory in
            do {
                _ = try projection.writeConsistentCopy(to: directory + "/no/such/dir/copy.sqlite")
                Issue.record("copy into a missing directory succeeded")
            } catch let error as ProjectionError {
                #expect("\(error)".contains("no/such/dir/copy.sqlite"), "\(error)")
            }
        }
    }

    /// A checkpoint installed by state transfer goes through the WAL: once it
    /// is checkpointed into the database file, the WAL is cut back to
    /// nothing rather than left as large as the checkpoint for good.
    @Test func installingACheckpointLeavesNoWALAsLargeAsIt() throws {
        try withProjection { source, directory in
            var log = LogBuilder()
            _ = try source.apply(log.next("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
            for batch in 0..<8 {
                _ = try source.apply((0..<16).map { index in
                    log.next("INSERT INTO t(id, v) VALUES (?1, zeroblob(65536))", [.integer(Int64(batch * 16 + index))])
                })
            }
            let path = directory + "/checkpoint.sqlite"
            let copied = try source.writeConsistentCopy(to: path)
            let target = directory + "/target"
            try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
            let projection = try Projection(directory: target)
            defer { projection.close() }
            let installed = try projection.replaceContents(withCheckpointAt: path)
            #expect(installed.op == copied.op)
            #expect(try projection.contentDigest() == source.contentDigest())
            let wal = (try? FileManager.default.attributesOfItem(atPath: target + "/projection.sqlite-wal")[.size] as? Int) ?? 0
            #expect(wal == 0, "the WAL is \(wal) bytes after the install (the checkpoint is about 8 MB)")
        }
    }
}
