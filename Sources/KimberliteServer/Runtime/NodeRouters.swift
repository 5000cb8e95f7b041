import Hummingbird
import NIOCore

/// The node's two HTTP listeners: the client API (port 7000) and the
/// operations endpoints (port 9090).
extension KimberliteNode {
    func clientRouter() -> Router<BasicRequestContext> {
        let router = Router()
        let api = self.api
        let limit = config.limits.maxBatchSize
        router.post("/v1/execute") { request, _ -> Response in
            guard let body = try? await request.body.collect(upTo: limit + 1) else {
                return Self.json(APIError(.tooLarge, "request body exceeds max_batch_size (\(limit) bytes)").response)
            }
            return Self.json(await api.execute(body: Array(buffer: body), forwarded: false))
        }
        router.post("/v1/query") { request, _ -> Response in
            guard let body = try? await request.body.collect(upTo: limit + 1) else {
                return Self.json(APIError(.tooLarge, "request body exceeds max_batch_size (\(limit) bytes)").response)
            }
            return Self.json(await api.query(body: Array(buffer: body), forwarded: false))
        }
        return router
    }

    func operationsRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/status") { [self] _, _ -> Response in
            Self.json(200, ClientAPI.encode(status()))
        }
        router.get("/metrics") { [self] _, _ -> Response in
            updateGauges()
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(bytes: metrics.exposition())))
        }
        router.get("/health/live") { _, _ -> Response in
            Self.json(200, Array(#"{"status":"live"}"#.utf8))
        }
        router.get("/health/ready") { [self] _, _ -> Response in
            let snapshot = driver.snapshot
            let ready = snapshot.status == .normal && snapshot.leader != nil && snapshot.statusReason == nil
            let body = #"{"ready":\#(ready),"status":"\#(snapshot.status.rawValue)","leader_id":\#(snapshot.leader ?? 0)}"#
            return Self.json(ready ? 200 : 503, Array(body.utf8))
        }
        return router
    }

    static func json(_ response: APIResponse) -> Response { json(response.status, response.body) }

    static func json(_ status: Int, _ body: [UInt8]) -> Response {
        Response(status: .init(code: status), headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }
}
