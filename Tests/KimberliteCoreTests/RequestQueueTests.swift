@testable import KimberliteCore
import Testing

@Suite struct RequestQueueTests {
    func request(_ id: UInt64, client: String?, number: UInt64 = 1, size: Int = 10) -> ClientRequest {
        ClientRequest(id: id, session: client.map { ClientSession(clientID: $0, requestNumber: number) },
                      payload: [UInt8](repeating: 0, count: size))
    }

    @Test func boundsCountAndBytesButAlwaysTakesOneRequest() {
        var queue = RequestQueue()
        #expect(queue.enqueue(request(1, client: nil, size: 500), maxRequests: 2, maxBytes: 100) == .queued,
                "an empty queue takes one request whatever its size")
        #expect(queue.enqueue(request(2, client: nil), maxRequests: 2, maxBytes: 100) == .full)
        _ = queue.popFirst()
        #expect(queue.enqueue(request(3, client: nil, size: 60), maxRequests: 2, maxBytes: 100) == .queued)
        #expect(queue.enqueue(request(4, client: nil, size: 60), maxRequests: 2, maxBytes: 100) == .full, "bytes")
        #expect(queue.enqueue(request(5, client: nil, size: 40), maxRequests: 2, maxBytes: 100) == .queued)
        #expect(queue.enqueue(request(6, client: nil, size: 0), maxRequests: 2, maxBytes: 100) == .full, "count")
        #expect(queue.count == 2 && queue.bytes == 100)
    }

    @Test func retriesJoinTheQueuedRequestAcrossCompaction() {
        var queue = RequestQueue()
        for id in 1...3000 { #expect(queue.enqueue(request(UInt64(id), client: "c\(id)"), maxRequests: 5000, maxBytes: 1 << 30) == .queued) }
        for id in 1...2000 { #expect(queue.popFirst()?.request.id == UInt64(id)) }   // compacts on the way
        #expect(queue.count == 1000 && queue.bytes == 10_000)
        // A retry of a popped request is queued anew; a retry of a queued one joins it.
        #expect(queue.enqueue(request(9001, client: "c1500"), maxRequests: 5000, maxBytes: 1 << 30) == .queued)
        #expect(queue.enqueue(request(9002, client: "c2500"), maxRequests: 5000, maxBytes: 1 << 30) == .joined)
        #expect(queue.enqueue(request(9003, client: "c2500", number: 2), maxRequests: 5000, maxBytes: 1 << 30) == .queued,
                "a newer number of the session is its own request")
        for id in 2001...2499 { #expect(queue.popFirst()?.request.id == UInt64(id)) }
        let item = queue.popFirst()
        #expect(item?.request.id == 2500 && item?.ids == [2500, 9002])
        let rest = queue.removeAll()
        #expect(rest.count == 502 && rest.last?.request.id == 9003 && queue.isEmpty && queue.bytes == 0)
    }
}
