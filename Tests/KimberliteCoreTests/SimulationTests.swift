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
    func seedRange(_ seeds: ClosedRange<UInt64>) throws {
        var totals = Simulator.Statistics()
        for seed in seeds {
            var options = Simulator.Options()
            // Every fourth seed runs five replicas.
            if seed % 4 == 0 { options.replicaCount = 5 }
            if ProcessInfo.processInfo.environment["KMB_SIM_PRINT"] != nil { print("seed \(seed)") }
            var simulator = Simulator(seed: seed, options: options)
            let statistics: Simulator.Statistics
            do {
                statistics = try simulator.run()
            } catch {
                Issue.record("\(error)")
                return
            }
            totals.viewChanges += statistics.viewChanges
            totals.crashes += statistics.crashes
            totals.partitions += statistics.partitions
            totals.logLosses += statistics.logLosses
            totals.acknowledged += statistics.acknowledged
        }
        print("simulation seeds \(seeds): view changes \(totals.viewChanges), crashes \(totals.crashes), partitions \(totals.partitions), lost logs \(totals.logLosses), acknowledged writes \(totals.acknowledged)")
        // A range that saw no faults tested nothing.
        #expect(totals.viewChanges > 0, "no view change happened in seeds \(seeds)")
        #expect(totals.crashes > 0, "no crash-restart happened in seeds \(seeds)")
        #expect(totals.logLosses > 0, "no replica lost its log in seeds \(seeds)")
        #expect(totals.acknowledged > 0)
    }

    @Test func replaySeed() throws {
        guard let text = ProcessInfo.processInfo.environment["KMB_SIM_SEED"], let seed = UInt64(text) else { return }
        var options = Simulator.Options()
        if seed % 4 == 0 { options.replicaCount = 5 }
        options.trace = true
        var simulator = Simulator(seed: seed, options: options)
        let statistics = try simulator.run()
        print("seed \(seed): \(statistics)")
    }
}
