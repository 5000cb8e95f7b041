#if canImport(Glibc)
import Glibc
#endif
import KimberliteCore
import Testing
@testable import KimberliteStorage

/// A 64 KiB tmpfs, so ENOSPC is real. Needs root; nil (test skipped) if mount fails.
private final class SmallDisk {
    let dir = TempDirectory("kmb-diskfull")
    let mountPoint: String
    private var mounted = false

    init?() {
        mountPoint = dir.sub("mnt")
        guard (try? FileIO.makeDirectories(mountPoint)) != nil,
              mount("tmpfs", mountPoint, "tmpfs", 0, "size=64k") == 0 else { return nil }
        mounted = true
    }

    deinit {
        if mounted {
            removeTree(mountPoint)
            umount(mountPoint)
        }
    }
}

@Suite struct DiskFullTests {
    @Test(arguments: [1 << 20, 5000])
    func appendOnFullDiskThrowsDiskFullAndLeavesJournalUsable(segmentSize: Int) throws {
        guard let disk = SmallDisk() else {
            print("DiskFullTests skipped: cannot mount a tmpfs here (needs root)")
            return
        }
        let log = disk.mountPoint + "/log"
        let journal = try Journal(directory: log, segmentSize: segmentSize, syncMode: .fsync, logger: quietLogger)
        var entries: [LogEntry] = []
        var parent = Checksum.zero
        var failure: StorageError?
        for op in 1...200 {   // 64 KiB fills long before 200 x 2 KiB
            let entry = makeEntries(count: 1, from: OpNumber(op), parent: parent, payloadSize: 2000)[0]
            do {
                try journal.append([entry])
                try journal.sync()
            } catch let error as StorageError {
                failure = error
                break
            }
            entries.append(entry)
            parent = entry.checksum
        }
        let error = try #require(failure)
        guard case .diskFull(let path) = error else {
            Issue.record("expected diskFull, got \(error)")
            return
        }
        #expect(path.hasPrefix(log))
        #expect(error.description.contains("no space left"))
        #expect(journal.lastOp == OpNumber(entries.count))
        #expect(journal.lastChecksum == parent)
        let onDisk = try segmentNames(log).reduce(0) { $0 + (FileIO.fileSize(log + "/" + $1) ?? 0) }
        #expect(onDisk == journal.sizeBytes, "no half frame or half segment left behind")
        #expect(try journal.loadAll() == entries)

        // Free space by dropping a suffix; appending works again.
        let keep = OpNumber(entries.count - 6)
        try journal.truncate(after: keep)
        let retry = makeEntries(count: 2, from: keep + 1, parent: entries[Int(keep) - 1].checksum, payloadSize: 2000, salt: 1)
        try journal.append(retry)
        try journal.sync()
        journal.close()

        let reopened = try Journal(directory: log, segmentSize: segmentSize, syncMode: .fsync, logger: quietLogger)
        #expect(reopened.recovery.isClean)
        #expect(try reopened.loadAll() == Array(entries[..<Int(keep)]) + retry)
        reopened.close()
    }

    @Test func superblockWriteOnFullDiskIsDiskFull() throws {
        guard let disk = SmallDisk() else {
            print("DiskFullTests skipped: cannot mount a tmpfs here (needs root)")
            return
        }
        // Fill the disk, then ask for a new superblock.
        let filler = disk.mountPoint + "/filler"
        let fd = try FileIO.openFile(filler, flags: O_WRONLY | O_CREAT)
        var written = 0
        while written < 1 << 20 {
            do { try FileIO.write(fd, [UInt8](repeating: 7, count: 4096), at: written, path: filler) } catch { break }
            written += 4096
        }
        FileIO.closeFile(fd)
        let superblock = try Superblock(path: disk.mountPoint + "/superblock")
        #expect(throws: StorageError.diskFull(path: disk.mountPoint + "/superblock.tmp")) {
            try superblock.write(SuperblockState(clusterName: "c", nodeID: 1, members: [1]))
        }
        #expect(FileIO.kind(disk.mountPoint + "/superblock.tmp") == .missing)
        #expect(try superblock.read() == nil)
    }
}
