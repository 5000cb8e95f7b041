import Foundation
import KimberliteCore
import Testing
@testable import KimberliteStorage

/// Checkpoint files: sealing, checking, damage found, pruning, copying.
@Suite struct CheckpointStoreTests {
    /// A store in a fresh directory with checkpoints at `ops` (random contents, 64 KiB each).
    static func store(_ temp: TempDirectory, ops: [OpNumber]) throws -> CheckpointStore {
        let store = CheckpointStore(dataDir: temp.path)
        try FileIO.makeDirectories(store.directory)
        for op in ops {
            let temporary = store.directory + "/tmp-\(op).sqlite"
            try writeFile(temporary, (0..<65_536).map { _ in UInt8.random(in: 0...255) })
            _ = try store.seal(temporaryFile: temporary, op: op, anchor: Checksum.sha256([UInt8(op & 0xff)]), nowMs: 1_700_000_000_000)
        }
        return store
    }

    static func reason(_ body: () throws -> Void) -> String? {
        do { try body() } catch StorageError.checkpointInvalid(_, let reason) { return reason } catch { return "other error: \(error)" }
        return nil
    }

    @Test func sealedCheckpointChecksWholeAndKeepsItsAnchor() throws {
        let temp = TempDirectory()
        let store = try Self.store(temp, ops: [10, 20])
        #expect(try store.ops() == [20, 10])
        let manifest = try store.check(op: 20)
        #expect(manifest.op == 20 && manifest.bytes == 65_536)
        #expect(Checksum(hex: manifest.anchor) == Checksum.sha256([20]))
        #expect(store.newestValid()?.op == 20)
        #expect(!FileManager.default.fileExists(atPath: store.directory + "/tmp-20.sqlite"), "the temporary file was moved into place")
    }

    @Test func aFlippedByteInTheSQLiteFileIsFoundAndSkipped() throws {
        let temp = TempDirectory()
        let store = try Self.store(temp, ops: [10, 20])
        var bytes = try readFile(store.sqlitePath(op: 20))
        bytes[30_000] ^= 0x01
        try writeFile(store.sqlitePath(op: 20), bytes)
        #expect(Self.reason { try store.check(op: 20) }?.contains("checksum mismatch") == true)
        // The manifest alone still reads: only the whole check finds it.
        #expect(try store.manifest(op: 20).op == 20)
        var skipped: [String] = []
        #expect(store.newestValid { skipped.append("\($0)") }?.op == 10)
        #expect(skipped.count == 1 && skipped[0].contains("00000000000000000020.sqlite"), "\(skipped)")
        // A copy of it is refused and leaves nothing behind.
        let destination = temp.sub("projection.sqlite")
        #expect(Self.reason { try store.copy(op: 20, to: destination) }?.contains("checksum mismatch") == true)
        #expect(!FileManager.default.fileExists(atPath: destination) && !FileManager.default.fileExists(atPath: destination + ".tmp"))
        try store.copy(op: 10, to: destination)
        #expect(try readFile(destination) == readFile(store.sqlitePath(op: 10)))
    }

    @Test func aDamagedOrTruncatedManifestIsFound() throws {
        let temp = TempDirectory()
        let store = try Self.store(temp, ops: [10, 20, 30])
        var manifest = try readFile(store.manifestPath(op: 20))
        manifest[manifest.count - 5] ^= 0x20
        try writeFile(store.manifestPath(op: 20), manifest)
        #expect(Self.reason { try store.manifest(op: 20) } == "checksum mismatch in the manifest")
        let whole = try readFile(store.manifestPath(op: 30))
        try writeFile(store.manifestPath(op: 30), Array(whole.prefix(20)))
        #expect(Self.reason { try store.manifest(op: 30) } != nil)
        #expect(store.newestValid()?.op == 10)
        // A truncated SQLite file is found by its size.
        let sqlite = try readFile(store.sqlitePath(op: 10))
        try writeFile(store.sqlitePath(op: 10), Array(sqlite.prefix(1000)))
        #expect(Self.reason { try store.check(op: 10) }?.contains("1000 bytes") == true)
        #expect(store.newestValid() == nil)
    }

    @Test func pruneKeepsTheNewestAndTheProtectedAndRemovesUnfinishedCopies() throws {
        let temp = TempDirectory()
        let store = try Self.store(temp, ops: [10, 20, 30, 40])
        try writeFile(store.directory + "/tmp-99-1.sqlite", [1, 2, 3])
        try store.quarantine(op: 10)
        let removed = try store.prune(keeping: 2, protecting: [20])
        #expect(removed.isEmpty, "only quarantined and protected checkpoints were below the newest two: \(removed)")
        #expect(try store.ops() == [40, 30, 20])
        let names = try FileIO.list(store.directory)
        #expect(!names.contains("tmp-99-1.sqlite"), "\(names)")
        #expect(names.contains("00000000000000000010.sqlite.corrupt") && names.contains("00000000000000000010.manifest.corrupt"), "\(names)")
        #expect(try store.prune(keeping: 1) == [20, 30].sorted())
        #expect(try store.ops() == [40])
    }

    @Test func verifyNamesADamagedCheckpointAndCountsValidOnes() throws {
        let temp = TempDirectory()
        let store = try Self.store(temp, ops: [10, 20])
        var bytes = try readFile(store.sqlitePath(op: 20))
        bytes[100] ^= 0xff
        try writeFile(store.sqlitePath(op: 20), bytes)
        try writeFile(store.directory + "/00000000000000000030.sqlite", [0])
        try FileIO.makeDirectories(temp.sub("log"))
        let report = DataDirectoryVerifier.verify(dataDir: temp.path)
        #expect(!report.ok)
        #expect(report.checkpoints == [10])
        let damaged = report.problems.first { $0.kind == .checkpointInvalid }
        #expect(damaged?.file == "projections/checkpoints/00000000000000000020.sqlite", "\(report.problems)")
        #expect(damaged?.message.contains("checksum mismatch") == true, "\(damaged?.message ?? "")")
        #expect(report.problems.contains { $0.kind == .unexpectedFile && $0.severity == .warning && $0.file.hasSuffix("30.sqlite") })
    }
}
