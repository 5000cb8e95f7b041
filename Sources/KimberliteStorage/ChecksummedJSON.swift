#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import Crypto
import Foundation

/// A small file that must never be read half-written or altered: the line
/// `<MAGIC> <SHA-256 hex of the JSON>` then the JSON (sorted keys).
/// Checkpoint and backup manifests use it.
enum ChecksummedJSON {
    /// Writes `value` to `path` durably: temporary file, fsync, rename, directory fsync.
    /// - Throws: `StorageError` naming the file.
    static func write<T: Encodable>(_ value: T, magic: String, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let body = Array(try! encoder.encode(value))
        let bytes = Array("\(magic) \(hex(SHA256.hash(data: body)))\n".utf8) + body
        try FileIO.writeReplacing(bytes, to: path)
    }

    /// Reads and checks a file written by `write`.
    /// - Returns: the value, or the reason it cannot be trusted (`.failure`).
    static func read<T: Decodable>(_ type: T.Type, magic: String, from path: String) -> Result<T, Failure> {
        let bytes: [UInt8]
        do { bytes = try FileIO.readWholeFile(path) } catch { return .failure(Failure("cannot read it: \(error)")) }
        guard let newline = bytes.firstIndex(of: 10) else { return .failure(Failure("no header line")) }
        let header = String(decoding: bytes[..<newline], as: UTF8.self).split(separator: " ")
        let body = Array(bytes[(newline + 1)...])
        guard header.count == 2, header[0] == magic else { return .failure(Failure("not a \(magic) file (no \(magic) header)")) }
        guard hex(SHA256.hash(data: body)) == header[1] else { return .failure(Failure("checksum mismatch in the manifest")) }
        do { return .success(try JSONDecoder().decode(T.self, from: Data(body))) } catch {
            return .failure(Failure("manifest does not decode: \(error)"))
        }
    }

    struct Failure: Error { let reason: String; init(_ reason: String) { self.reason = reason } }

    static func hex(_ digest: some Sequence<UInt8>) -> String {
        digest.map { byte in byte < 16 ? "0" + String(byte, radix: 16) : String(byte, radix: 16) }.joined()
    }
}
