import Foundation
import Logging
import Testing
@testable import KimberliteServer

/// The pure parts of the systemd platform layer: journald field mapping,
/// MESSAGE_ID selection, JOURNAL_STREAM parsing, watchdog period and STATUS text.
@Suite struct SystemdTests {
    @Test func metadataKeysBecomeKMBFields() {
        #expect(JournalFields.fieldName(forMetadataKey: "node_id") == "KMB_NODE_ID")
        #expect(JournalFields.fieldName(forMetadataKey: "view") == "KMB_VIEW")
        #expect(JournalFields.fieldName(forMetadataKey: "from-op") == "KMB_FROM_OP")
        #expect(JournalFields.fieldName(forMetadataKey: "peer.addr") == "KMB_PEER_ADDR")
        #expect(JournalFields.fieldName(forMetadataKey: "Ünï") == "KMB__N_")
        #expect(JournalFields.fieldName(forMetadataKey: "") == "KMB__")
        #expect(JournalFields.fieldName(forMetadataKey: String(repeating: "a", count: 100)).count == 64)
    }

    @Test func priorityFollowsSyslog() {
        #expect(JournalFields.priority(.trace) == 7)
        #expect(JournalFields.priority(.debug) == 7)
        #expect(JournalFields.priority(.info) == 6)
        #expect(JournalFields.priority(.notice) == 5)
        #expect(JournalFields.priority(.warning) == 4)
        #expect(JournalFields.priority(.error) == 3)
        #expect(JournalFields.priority(.critical) == 2)
    }

    @Test func documentedFailuresGetTheirMessageID() {
        let cases: [(String, JournalMessageID?)] = [
            ("No leader elected", .noLeader),
            ("election timeout: no word from the leader; starting a view change", .electionTimeout),
            ("Rejected by leader: cluster name \"a\" is not \"b\"", .rejectedByLeader),
            ("Rejected by peer: cluster name differs", nil),
            ("Checksum mismatch: corrupt journal entry on read", .checksumMismatch),
            ("slow fsync", .slowFsync),
            ("disk full: no space left on device writing /x", .diskFull),
            ("clock skew: this node's clock is 812 ms off the cluster (max_clock_skew 500ms)", .clockSkew),
            ("Recovering: the journal holds fewer ops than were committed", .recovering),
            ("Recovering complete: the log is whole again", nil),
            ("leader elected", nil),
            ("query_duration_ms 153.2", nil),
        ]
        for (message, id) in cases {
            #expect(JournalMessageID.forMessage(message) == id, "\(message)")
        }
    }

    @Test func messageIDsAreDistinct128BitHex() {
        let ids = JournalMessageID.allCases.map(\.rawValue)
        #expect(Set(ids).count == ids.count)
        for id in ids {
            #expect(id.count == 32 && id.allSatisfy { $0.isHexDigit && !$0.isUppercase }, "\(id)")
        }
    }

    /// Every MESSAGE_ID has an entry in systemd/kimberlite.catalog, and the
    /// catalog explains nothing the server does not send.
    @Test func catalogCoversEveryMessageID() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let catalog = try String(contentsOf: root.appendingPathComponent("systemd/kimberlite.catalog"), encoding: .utf8)
        let headers = catalog.split(separator: "\n").filter { $0.hasPrefix("-- ") }.map { String($0.dropFirst(3)) }
        #expect(Set(headers) == Set(JournalMessageID.allCases.map(\.rawValue)))
    }

    @Test func recordMapsToNativeFields() {
        let fields = JournalFields.fields(
            level: .warning, label: "kimberlite.vsr", message: "No leader elected",
            metadata: ["node_id": "2", "view": "7", "status": "view_change", "label": "shadowed"],
            file: "KimberliteServer/ReplicaDriver.swift", function: "publish()", line: 205)
        let byName = Dictionary(fields.map { ($0.name, $0.value) }, uniquingKeysWith: { first, _ in first })
        #expect(fields.first?.name == "MESSAGE")
        #expect(byName["MESSAGE"] == "No leader elected")
        #expect(byName["PRIORITY"] == "4")
        #expect(byName["SYSLOG_IDENTIFIER"] == "kimberlite")
        #expect(byName["MESSAGE_ID"] == JournalMessageID.noLeader.rawValue)
        #expect(byName["CODE_FILE"] == "KimberliteServer/ReplicaDriver.swift")
        #expect(byName["CODE_LINE"] == "205")
        #expect(byName["CODE_FUNC"] == "publish()")
        #expect(byName["KMB_LABEL"] == "kimberlite.vsr")
        #expect(byName["KMB_NODE_ID"] == "2")
        #expect(byName["KMB_VIEW"] == "7")
        #expect(byName["KMB_STATUS"] == "view_change")
        #expect(fields.count == Set(fields.map(\.name)).count)
        let plain = JournalFields.fields(level: .info, label: "kimberlite", message: "leader elected", metadata: [:],
                                         file: "f", function: "g", line: 1)
        #expect(!plain.contains { $0.name == "MESSAGE_ID" })
    }

    @Test func journalStreamParsing() {
        #expect(SystemdJournal.parseJournalStream("8:12345")! == (8, 12345))
        #expect(SystemdJournal.parseJournalStream("8:") == nil)
        #expect(SystemdJournal.parseJournalStream("x:1") == nil)
        #expect(SystemdJournal.parseJournalStream("1:2:3") == nil)
        // A stream that is not our stderr (inode 1 is never a pipe or socket).
        #expect(!SystemdJournal.stderrIsJournalStream(environment: ["JOURNAL_STREAM": "0:1"]))
        #expect(!SystemdJournal.stderrIsJournalStream(environment: [:]))
    }

    @Test func stderrIsJournalStreamMatchesDeviceAndInode() {
        var info = stat()
        #expect(fstat(STDERR_FILENO, &info) == 0)
        let matching = "\(info.st_dev):\(info.st_ino)"
        #expect(SystemdJournal.stderrIsJournalStream(environment: ["JOURNAL_STREAM": matching]))
    }

    @Test func watchdogPeriodIsHalfOfWatchdogUsec() {
        #expect(SystemdNotifier.watchdogPeriod(environment: ["WATCHDOG_USEC": "10000000"], pid: 42) == .seconds(5))
        #expect(SystemdNotifier.watchdogPeriod(environment: ["WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "42"], pid: 42) == .seconds(5))
        #expect(SystemdNotifier.watchdogPeriod(environment: ["WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "7"], pid: 42) == nil)
        #expect(SystemdNotifier.watchdogPeriod(environment: ["WATCHDOG_USEC": "0"], pid: 42) == nil)
        #expect(SystemdNotifier.watchdogPeriod(environment: [:], pid: 42) == nil)
    }

    @Test func notifierIsInertWithoutNotifySocket() {
        let notifier = SystemdNotifier(environment: ["WATCHDOG_USEC": "1000000"])
        #expect(!notifier.isEnabled)
        #expect(notifier.watchdogInterval == nil)
        #expect(!notifier.notify("READY=1"))
    }

    @Test func statusTextNamesViewLeaderAndCommit() {
        #expect(SystemdNotifier.statusText(status: "normal", view: 5, leader: 1, commit: 12345)
                == "normal · view 5 · leader 1 · commit 12345")
        #expect(SystemdNotifier.statusText(status: "view_change", view: 6, leader: nil, commit: 12)
                == "view_change · view 6 · leader none · commit 12")
    }

    @Test func readyOnceJoinedWithListenersUpAndStatusOnlyOnChange() {
        var progress = SystemdNotifier.Progress()
        func beat(_ status: String, view: UInt64 = 3, leader: UInt8? = 1, op: UInt64 = 0, commit: UInt64 = 0,
                  recovering: Bool = false) -> [String] {
            progress.heartbeat(status: status, view: view, leader: leader, op: op, commit: commit, recovering: recovering,
                               listenersNeeded: 2, extendBy: .seconds(30))
        }
        // Joined, but the HTTP listeners are not up yet: status only.
        #expect(beat("normal") == ["STATUS=normal · view 3 · leader 1 · commit 0"])
        progress.listenersUp = 2
        #expect(beat("normal") == ["READY=1"])
        #expect(beat("normal") == [])
        #expect(beat("normal", commit: 7) == ["STATUS=normal · view 3 · leader 1 · commit 7"])
        #expect(beat("view_change", view: 4, leader: nil, commit: 7) == ["STATUS=view_change · view 4 · leader none · commit 7"])
        progress.stopping = true
        #expect(beat("normal", view: 5, commit: 9) == [])
    }

    @Test func noReadyWithoutLeaderButExtendWhileRecoveryProgresses() {
        var progress = SystemdNotifier.Progress()
        progress.listenersUp = 2
        func beat(_ status: String, leader: UInt8?, op: UInt64, recovering: Bool = false) -> [String] {
            progress.heartbeat(status: status, view: 1, leader: leader, op: op, commit: 0, recovering: recovering,
                               listenersNeeded: 2, extendBy: .seconds(30))
        }
        #expect(beat("view_change", leader: nil, op: 0) == ["STATUS=view_change · view 1 · leader none · commit 0"])
        #expect(beat("view_change", leader: nil, op: 0) == [])          // no progress, no extension
        #expect(beat("view_change", leader: nil, op: 40) == ["EXTEND_TIMEOUT_USEC=30000000"])
        #expect(beat("recovering", leader: nil, op: 40, recovering: true).contains("READY=1"))
    }
}
