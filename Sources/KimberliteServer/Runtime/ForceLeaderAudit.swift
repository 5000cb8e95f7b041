import Foundation
import KimberliteCore
import KimberliteProjection
import KimberliteStorage
import Logging

/// After `kimberlite-admin force-leader`, the node logs the audit record as a
/// `force_leader` entry (DESIGN.md §2b): who, when, old and new membership,
/// readable in `_kmb_audit`. The entry carries a session stamp of its own
/// (request number = the new epoch), so a crash before the pending record
/// is cleared never logs it twice.
struct ForceLeaderAudit {
    let record: ForceLeaderRecord
    let dataDir: String
    let registry: RequestRegistry
    let driver: ReplicaDriver
    let logger: Logger

    static let clientID = "kmb-force-leader"

    /// Logs the audit entry once this node leads, retrying every second (bounded by the node's life).
    func run() async {
        let detail = String(decoding: (try? JSONEncoder.sorted.encode(record)) ?? Data(), as: UTF8.self)
        let payload = SystemRecord(kind: "force_leader", detail: detail).encode()
        while !Task.isCancelled {
            if driver.snapshot.isPrimary {
                let id = registry.makeID()
                let session = ClientSession(clientID: Self.clientID, requestNumber: record.newEpoch)
                let result = await registry.write(id: id, timeout: .seconds(10)) { [driver] in
                    driver.submit(.write(ClientRequest(id: id, session: session, payload: payload)))
                }
                switch result {
                case .applied(let op, _):
                    logger.notice("force_leader entry logged: the audit trail records who forced this node and the membership it replaced",
                                  metadata: ["op": "\(op)", "by": "\(record.by)", "epoch": "\(record.newEpoch)"])
                    do { try ForceLeader.clearPendingRecord(dataDir: dataDir) } catch {
                        logger.error("cannot remove the pending force-leader record (the entry is logged; it is not logged again)",
                                     metadata: ["error": "\(error)"])
                    }
                    return
                default:
                    break
                }
            }
            try? await Task.sleep(for: .seconds(1))  // retry interval while not leading
        }
    }
}
