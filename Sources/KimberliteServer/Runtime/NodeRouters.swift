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
        let membership = self.membership
        router.post("/members/remove") { request, _ -> Response in
            guard let body = try? await request.body.collect(upTo: 1 << 16) else {
                return Self.json(APIError(.tooLarge, "request body exceeds 64 KiB").response)
            }
            return Self.json(await membership.remove(body: Array(buffer: body)))
        }
        let backups = self.backups
        router.post("/backup") { _, _ -> Response in
            do { return Self.json(200, ClientAPI.encode(try await backups.start())) } catch let error as APIError {
                return Self.json(error.response)
            }
        }
        router.get("/backup/:id/checkpoint") { _, context -> Response in
            do {
                let file = try backups.file(backupID: context.parameters.get("id") ?? "", log: nil)
                return BackupService.stream(path: file.path, bytes: file.bytes)
            } catch let error as APIError { return Self.json(error.response) }
        }
        router.get("/backup/:id/log/:name") { _, context -> Response in
            do {
                let file = try backups.file(backupID: context.parameters.get("id") ?? "", log: context.parameters.get("name") ?? "")
                return BackupService.stream(path: file.path, bytes: file.bytes)
            } catch let error as APIError { return Self.json(error.response) }
        }
        router.delete("/backup/:id") { _, context -> Response in
            let id = context.parameters.get("id") ?? ""
            return backups.finish(backupID: id)
                ? Self.json(200, Array(#"{"released":true}"#.utf8))
                : Self.json(APIError(.notFound, "no backup \(id) in progress on this node").response)
        }
        return router
    }

    static func json(_ response: APIResponse) -> Response { json(response.status, response.body) }

    static func json(_ status: Int, _ body: [UInt8]) -> Response {
        Response(status: .init(code: status), headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }
}
