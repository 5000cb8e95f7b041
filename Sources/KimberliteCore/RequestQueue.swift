/// Client requests waiting for room in a primary's pipeline, in arrival
/// order (`ReplicaConfiguration.maxUncommittedOps`). Bounded by
/// `maxQueuedRequests` requests and `maxQueuedBytes` payload bytes.
///
/// A request whose session (client id and request number) is already queued
/// is not queued again: its id rides along with the first one and gets the
/// same answer, so a client retrying a slow request does not add log entries.
struct RequestQueue {
    struct Item {
        var request: ClientRequest
        /// Ids of retries of the same session request, answered with it.
        var riders: [UInt64] = []
        var ids: [UInt64] { [request.id] + riders }
    }

    /// What `enqueue` did with a request.
    enum Enqueued: Equatable {
        case queued
        /// Joined the queued request of the same session and number.
        case joined
        /// Refused: the queue is at one of its bounds.
        case full
    }

    private var items: [Item] = []
    /// Index of the first item still queued; popped items are compacted away lazily.
    private var head = 0
    /// Queued session requests: client id → (request number, index in `items`).
    private var bySession: [String: (requestNumber: UInt64, index: Int)] = [:]
    /// Payload bytes queued.
    private(set) var bytes = 0

    var count: Int { items.count - head }
    var isEmpty: Bool { head == items.count }
    var first: Item? { isEmpty ? nil : items[head] }

    /// Queues `request` unless an identical session request is queued
    /// (`.joined`) or the queue is at `maxRequests` / `maxBytes` (`.full`;
    /// one request is always let into an empty queue, whatever its size).
    mutating func enqueue(_ request: ClientRequest, maxRequests: Int, maxBytes: Int) -> Enqueued {
        if let session = request.session, let queued = bySession[session.clientID],
           queued.requestNumber == session.requestNumber {
            items[queued.index].riders.append(request.id)
            return .joined
        }
        guard isEmpty || (count < maxRequests && bytes + request.payload.count <= maxBytes) else { return .full }
        if let session = request.session {
            // A newer number of the same session replaces the lookup; the
            // older one is still queued and is checked when prepared.
            bySession[session.clientID] = (session.requestNumber, items.count)
        }
        items.append(Item(request: request))
        bytes += request.payload.count
        return .queued
    }

    /// Removes and returns the first item.
    mutating func popFirst() -> Item? {
        guard !isEmpty else { return nil }
        let item = items[head]
        if let session = item.request.session, bySession[session.clientID]?.index == head {
            bySession[session.clientID] = nil
        }
        head += 1
        bytes -= item.request.payload.count
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 1024 && head * 2 >= items.count {
            // Compact: O(remaining) once per `head` pops keeps popping O(1) amortised.
            items.removeFirst(head)
            bySession = bySession.mapValues { ($0.requestNumber, $0.index - head) }
            head = 0
        }
        return item
    }

    /// Empties the queue and returns what it held, in order.
    mutating func removeAll() -> [Item] {
        let all = Array(items[head...])
        items.removeAll()
        head = 0
        bySession.removeAll()
        bytes = 0
        return all
    }
}
