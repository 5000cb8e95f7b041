import Foundation
import KimberliteCore
import Testing

/// Seeded simulation of the pure VSR core. `KMB_SIM_SEEDS` sets how many
/// seeds per range (default 1,000 in all); `KMB_SIM_SEED=N` replays one seed
/// with a trace: `KMB_SIM_SEED=N swift test --filter SimulationTests/replaySeed`.
@Suite struct SimulationTests {
    static let ranges: [ClosedRange<UInt64>] = {
        let total = UInt64(ProcessInfo.processInfo.environment["KMB_SIM_SEEDS"] ?? "") ?? 1000
        let chunk = max(total / 4, 1)
        return (0..<4).map { part in (UInt64(part) * chunk + 1)...(UInt64(part + 1) * chunk) }
    }()

    @Test(arguments: ranges)
    func seedRange(_ seeds: ClosedRange<UInt64>) async throws {
        // On a thread of its own: a CPU-bound loop on the shared cooperative
        // pool would starve the integration tests' waits running beside it.
        let (totals, seedsWithReconfiguration, failure) = await Self.offPool { () -> (Simulator.Statistics, Int, String?) in
            var totals = Simulator.Statistics()
            var seedsWithReconfiguration = 0
            for seed in seeds {
                if ProcessInfo.processInfo.environment["KMB_SIM_PRINT"] != nil { print("seed \(seed)") }
                var simulator = Simulator(seed: seed, options: Self.options(for: seed))
                let statistics: Simulator.Statistics
                do {
                    statistics = try simulator.run()
                } catch {
                    return (totals, seedsWithReconfiguration, "\(error)")
                }
                totals.viewChanges += statistics.viewChanges
                totals.crashes += statistics.crashes
                totals.partitions += statistics.partitions
                totals.logLosses += statistics.logLosses
                totals.wipes += statistics.wipes
                totals.acknowledged += statistics.acknowledged
                totals.preparedFromQueue += statistics.preparedFromQueue
                totals.diskFullSpells += statistics.diskFullSpells
                totals.failedAppends += statistics.failedAppends
                totals.restores += statistics.restores
                totals.memoryReleases += statistics.memoryReleases
                totals.journalReads += statistics.journalReads
                totals.checkpoints += statistics.checkpoints
                totals.compactions += statistics.compactions
                totals.stateTransfers += statistics.stateTransfers
                totals.reconfigurations += statistics.reconfigurations
                totals.joins += statistics.joins
                totals.removals += statistics.removals
                if statistics.reconfigurations > 0 { seedsWithReconfiguration += 1 }
            }
            return (totals, seedsWithReconfiguration, nil)
        }
        if let failure {
            Issue.record(Comment(rawValue: failure))
            return
        }
        print("simulation seeds \(seeds): view changes \(totals.viewChanges), crashes \(totals.crashes), partitions \(totals.partitions), lost logs \(totals.logLosses), wiped data directories \(totals.wipes), acknowledged writes \(totals.acknowledged), prepared from a full pipeline's queue \(totals.preparedFromQueue), disk-full spells \(totals.diskFullSpells), appends refused by a full disk \(totals.failedAppends), restored from an older copy \(totals.restores), repairs served from the journal \(totals.journalReads), checkpoints \(totals.checkpoints), compactions \(totals.compactions), state transfers \(totals.stateTransfers), membership changes \(totals.reconfigurations) (\(totals.joins) joins, \(totals.removals) removals; in \(seedsWithReconfiguration) of \(seeds.count) seeds)")
        // A range that saw no faults tested nothing.
        #expect(totals.viewChanges > 0, "no view change happened in seeds \(seeds)")
        #expect(totals.crashes > 0, "no crash-restart happened in seeds \(seeds)")
        #expect(totals.logLosses > 0, "no replica lost its log in seeds \(seeds)")
        #expect(totals.wipes > 0, "no replica lost its whole data directory in seeds \(seeds)")
        #expect(totals.acknowledged > 0)
        #expect(totals.failedAppends > 0, "no append met a full disk in seeds \(seeds)")
        #expect(totals.restores > 0, "no replica was restored from an older copy in seeds \(seeds)")
        #expect(totals.journalReads > 0, "no repair was served from the journal (ops below the memory floor) in seeds \(seeds)")
        #expect(totals.compactions > 0, "no journal was compacted in seeds \(seeds)")
        #expect(totals.stateTransfers > 0, "no replica received a checkpoint by state transfer in seeds \(seeds)")
        #expect(totals.preparedFromQueue > 0, "no primary queued a request behind a full pipeline in seeds \(seeds)")
        #expect(totals.joins > 0 && totals.removals > 0, "no member joined or none was removed in seeds \(seeds)")
        #expect(seedsWithReconfiguration * 4 >= seeds.count, "membership changed in only \(seedsWithReconfiguration) of \(seeds.count) seeds \(seeds)")
    }

    /// Runs `body` on a new thread (8 MiB stack) and returns its result.
    static func offPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            let thread = Thread { continuation.resume(returning: body()) }
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    /// Fault mix by seed, so a range covers calm and hostile networks:
    /// every fourth seed runs five replicas; loss 0–20 %, duplication 0–8 %,
    /// delays up to 2–14 ticks, crash and partition rates ×1–×3.
    static func options(for seed: UInt64) -> Simulator.Options {
        var options = Simulator.Options()
        if seed % 4 == 0 { options.replicaCount = 5 }
        options.dropProbability = Double(seed % 5) * 0.05
        options.duplicateProbability = Double(seed % 3) * 0.04
        options.maxDelayTicks = 2 + Int(seed % 7) * 2
        let hostility = Double(1 + seed % 3)
        options.crashProbability *= hostility
        options.partitionProbability *= hostility
        // Pipelines of 1 and 2 ops make primaries queue requests often.
        options.maxUncommittedOps = [1, 2, 1024][Int(seed / 5 % 3)]
        // A queue of one refuses the rest as overloaded; clients retry.
        options.maxQueuedRequests = [1, 4096][Int(seed / 15 % 2)]
        return options
    }

    @Test func replaySeed() throws {
        guard let text = ProcessInfo.processInfo.environment["KMB_SIM_SEED"], let seed = UInt64(text) else { return }
        var options = Self.options(for: seed)
        options.trace = true
        var simulator = Simulator(seed: seed, options: options)
        let statistics = try simulator.run()
        print("seed \(seed): \(statistics)")
    }
}
