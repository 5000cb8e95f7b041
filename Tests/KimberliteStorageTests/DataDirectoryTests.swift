#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import KimberliteStorage

@Suite struct DataDirectoryTests {
    @Test func createsLayoutAndRecordsPID() throws {
        let dir = TempDirectory()
        let root = dir.sub("data")
        let data = try DataDirectory(path: root)
        #expect(FileIO.kind(root + "/log") == .directory)
        #expect(FileIO.kind(root + "/projections") == .directory)
        #expect(data.lockPath == root + "/LOCK")
        #expect(DataDirectory.recordedPID(lockFile: data.lockPath) == getpid())
        #expect(try FileIO.list(root).sorted() == ["LOCK", "log", "projections"], "the write probe is removed")
        data.unlock()
    }

    @Test func secondOpenIsLockedAndNamesThePID() throws {
        let dir = TempDirectory()
        let root = dir.sub("data")
        let first = try DataDirectory(path: root)
        #expect(throws: StorageError.locked(lockFile: root + "/LOCK", holderPID: getpid())) {
            try DataDirectory(path: root)
        }
        do {
            _ = try DataDirectory(path: root)
        } catch {
            let text = "\(error)"
            #expect(text.contains(root + "/LOCK"))
            #expect(text.contains("\(getpid())"))
        }
        first.unlock()
        let second = try DataDirectory(path: root)
        #expect(DataDirectory.recordedPID(lockFile: second.lockPath) == getpid())
        let journal = try second.openJournal(segmentSize: 4096, syncMode: .fsync, logger: quietLogger)
        #expect(journal.directory == root + "/log")
        let superblock = try second.openSuperblock()
        #expect(superblock.path == root + "/superblock")
    }

    @Test func unusablePathIsAClearError() throws {
        let dir = TempDirectory()
        let file = dir.sub("plain-file")
        try writeFile(file, [1, 2, 3])
        do {
            _ = try DataDirectory(path: file + "/data")
            Issue.record("expected an error")
        } catch {
            #expect("\(error)".contains(file), "\(error)")
        }
        do {
            _ = try DataDirectory(path: file)
            Issue.record("expected an error")
        } catch {
            #expect("\(error)".contains(file), "\(error)")
        }
    }
}

@Suite struct ReadOnlyDataDirectoryTests {
    @Test func readOnlyFilesystemIsNotWritableNamingThePath() throws {
        let dir = TempDirectory("kmb-readonly")
        let mountPoint = dir.sub("mnt")
        try FileIO.makeDirectories(mountPoint)
        guard mount("tmpfs", mountPoint, "tmpfs", UInt(MS_RDONLY), "size=16k") == 0 else {
            print("ReadOnlyDataDirectoryTests skipped: cannot mount a tmpfs here (needs root)")
            return
        }
        defer { umount(mountPoint) }
        do {
            _ = try DataDirectory(path: mountPoint)
            Issue.record("expected notWritable")
        } catch let error as StorageError {
            guard case .notWritable(let path, let reason) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(path == mountPoint)
            #expect(reason.contains("Read-only"), "\(reason)")
            #expect(error.description.hasPrefix("data directory \(mountPoint) is not writable"))
        }
    }
}
