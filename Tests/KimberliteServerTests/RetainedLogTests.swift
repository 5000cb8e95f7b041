import KimberliteCore
import Testing
@testable import KimberliteServer

/// Which applied ops a replica keeps in memory: the newest ones, at most
/// `retainedAppliedOps` of them and at most `retainedAppliedBytes`, so
/// memory grows with neither the number of entries nor their size.
@Suite struct RetainedLogTests {
    typealias Driver = ReplicaDriver

    @Test func smallEntriesAreBoundedByCount() {
        let kept = Driver.retainedSuffix(below: 10_000, floor: 0) { _ in 100 }
        #expect(kept.fromOp == 10_000 - Driver.retainedAppliedOps + 1 && !kept.cutByBytes)
        // Fewer applied ops than the bound: all of them, down to the floor.
        let all = Driver.retainedSuffix(below: 700, floor: 200) { _ in 100 }
        #expect(all.fromOp == 201 && !all.cutByBytes)
    }

    @Test func largeEntriesAreBoundedByBytes() {
        // Entries of 1 MiB: 8 fit in 8 MiB.
        let kept = Driver.retainedSuffix(below: 5_000, floor: 0) { _ in 1 << 20 }
        #expect(kept.fromOp == 5_000 - 7 && kept.cutByBytes)
        // One entry larger than the whole bound (max_batch_size is 10 MiB): none kept.
        let none = Driver.retainedSuffix(below: 42, floor: 0) { _ in 10 << 20 }
        #expect(none.fromOp == 43 && none.cutByBytes)
        // Sizes are read newest first, and the walk stops at the first that does not fit.
        var asked: [OpNumber] = []
        let mixed = Driver.retainedSuffix(below: 100, floor: 0) { op in asked.append(op); return op == 97 ? 9 << 20 : 1_000 }
        #expect(mixed.fromOp == 98 && mixed.cutByBytes && asked == [100, 99, 98, 97])
    }
}
