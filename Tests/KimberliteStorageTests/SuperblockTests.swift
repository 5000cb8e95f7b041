import KimberliteCore
import Testing
@testable import KimberliteStorage

@Suite struct SuperblockTests {
    let stateA = SuperblockState(clusterName: "production", nodeID: 2, view: 5, logView: 4,
                                 commitNumber: 12_345, epoch: 1, members: [1, 2, 3])
    let stateB = SuperblockState(clusterName: "production", nodeID: 2, view: 6, logView: 6,
                                 commitNumber: 12_400, epoch: 1, members: [1, 2, 3])

    @Test func roundTrip() throws {
        let dir = TempDirectory()
        let path = dir.sub("superblock")
        let superblock = try Superblock(path: path)
        #expect(try superblock.read() == nil, "absent superblock reads as nil")
        #expect(superblock.validCopies == 0)
        try superblock.write(stateA)
        #expect(FileIO.fileSize(path) == Superblock.slotSize * Superblock.copies)
        #expect(FileIO.kind(path + ".tmp") == .missing)
        #expect(try superblock.read() == stateA)
        #expect(superblock.validCopies == 4)
        try superblock.write(stateB)
        let other = try Superblock(path: path)
        #expect(try other.read() == stateB)
        #expect(other.validCopies == 4)
        #expect(other.sequence == 2)
    }

    /// Members' cluster addresses and since-epochs survive a round trip
    /// (DESIGN.md §2b: after the first start they come from the superblock).
    @Test func memberAddressesRoundTrip() throws {
        let dir = TempDirectory()
        let superblock = try Superblock(path: dir.sub("superblock"))
        var state = stateA
        state.addresses = [MemberAddress(nodeID: 1, host: "node1", port: 7001, sinceEpoch: 0),
                           MemberAddress(nodeID: 4, host: "::1", port: 7401, sinceEpoch: 3)]
        state.logBaseOp = 9
        state.supersededByEpoch = 2
        try superblock.write(state)
        #expect(try Superblock(path: dir.sub("superblock")).read() == state)
        #expect(state.addresses[1].address == "[::1]:7401")
    }

    @Test func tornNewestCopiesFallBackToOlderValidCopy() throws {
        let dir = TempDirectory()
        let path = dir.sub("superblock")
        let superblock = try Superblock(path: path)
        try superblock.write(stateA)
        let imageA = try readFile(path)
        try superblock.write(stateB)
        let imageB = try readFile(path)
        let half = Superblock.slotSize * 2

        // Crash after the first fsync: slots 0-1 new, 2-3 old -> the new state.
        try writeFile(path, Array(imageB[..<half]) + Array(imageA[half...]))
        let reader = try Superblock(path: path)
        #expect(try reader.read() == stateB)
        #expect(reader.validCopies == 4)

        // Crash during the first write: slots 0-1 torn, 2-3 old -> the old state.
        var torn = Array(imageB[..<half]) + Array(imageA[half...])
        for index in 100..<300 { torn[index] = 0xAB }
        torn[Superblock.slotSize + 40] ^= 0x01
        try writeFile(path, torn)
        #expect(try reader.read() == stateA)
        #expect(reader.validCopies == 2)

        // The next write repairs every copy and supersedes both.
        try reader.write(stateB)
        #expect(try Superblock(path: path).read() == stateB)
        let slots = try Superblock(path: path).inspect()
        #expect(slots.allSatisfy { $0.state == stateB })
    }

    @Test func allCopiesCorruptIsAClearError() throws {
        let dir = TempDirectory()
        let path = dir.sub("superblock")
        try Superblock(path: path).write(stateA)
        var image = try readFile(path)
        for copy in 0..<Superblock.copies { image[copy * Superblock.slotSize + 20] ^= 0x40 }
        try writeFile(path, image)
        let superblock = try Superblock(path: path)
        do {
            _ = try superblock.read()
            Issue.record("expected superblockCorrupt")
        } catch let error as StorageError {
            guard case .superblockCorrupt(let where_, let reason) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(where_ == path)
            #expect(reason.contains("copy 0") && reason.contains("copy 3"))
            #expect(error.description.contains(path))
            #expect(error.description.contains("checksum mismatch"))
        }
        #expect(superblock.validCopies == 0)

        // A truncated file is as bad: no copy survives.
        try writeFile(path, Array(image[..<100]))
        #expect(throws: StorageError.self) { try superblock.read() }
    }

    @Test func rejectsStateThatDoesNotFit() throws {
        let dir = TempDirectory()
        let superblock = try Superblock(path: dir.sub("superblock"))
        var huge = stateA
        huge.clusterName = String(repeating: "x", count: 5000)
        #expect(throws: StorageError.self) { try superblock.write(huge) }
        #expect(try superblock.read() == nil, "nothing written")
        #expect(throws: StorageError.self) { try Superblock(path: dir.path) }
    }
}
