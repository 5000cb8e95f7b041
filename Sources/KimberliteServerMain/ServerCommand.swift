import ArgumentParser
import Foundation
import KimberliteServer
import KimberliteStorage
import Logging

/// `kimberlite-server`: runs one node. Exit codes (DESIGN.md §2): 0 clean
/// stop, 64 malformed command line, 75 data directory locked, 78 bad
/// configuration value, 1 any other start-up failure.
@main
struct KimberliteServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kimberlite-server",
        abstract: "Run a Kimberlite node: replicated, audit-first SQL.",
        discussion: "Configuration precedence: flags > KMB_* environment > config file > defaults.")

    @Option(help: "Configuration file (default: /etc/kimberlite/config.toml when present).")
    var config: String?
    @Option(name: .customLong("node-id"), help: "This node's id, 1-255.")
    var nodeID: String?
    @Option(help: "Client API address host:port (bind_address).")
    var bind: String?
    @Option(name: .customLong("data-dir"), help: "Data directory.")
    var dataDir: String?
    @Option(name: .customLong("cluster-peers"), help: "Every initial member as id=host:port, comma separated; or host:port of running members to join a cluster.")
    var clusterPeers: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, warn, error, or a filter like kimberlite=debug.")
    var logLevel: String?
    @Flag(name: .customLong("show-config"), help: "Print the effective configuration as TOML (secrets redacted) and exit.")
    var showConfig = false
    @Flag(help: "Validate the configuration and exit.")
    var validate = false
    @Flag(help: "Print the version and exit.")
    var version = false

    func run() async throws {
        if version {
            print("kimberlite-server \(KimberliteNode.version)")
            return
        }
        let flags = ConfigFlags(nodeID: nodeID, bind: bind, dataDir: dataDir, clusterPeers: clusterPeers, logLevel: logLevel)
        let environment = ProcessInfo.processInfo.environment
        let serverConfig: ServerConfig
        do {
            serverConfig = try ConfigLoader.load(configPath: config, environment: environment, flags: flags)
        } catch {
            Self.fail("config error: \(error.description)", code: error.exitCode)
        }
        if showConfig {
            print(serverConfig.renderTOML(redactSecrets: true), terminator: "")
            return
        }
        if validate {
            print("configuration is valid")
            return
        }
        do {
            try KimberliteLogging.bootstrap(config: serverConfig)
        } catch {
            Self.fail("config error: \(error.description)", code: error.exitCode)
        }
        let logger = Logger(label: "kimberlite")
        for variable in ConfigLoader.unknownEnvironmentVariables(environment) {
            logger.warning("unknown environment variable ignored", metadata: ["variable": "\(variable)"])
        }
        let node: KimberliteNode
        do {
            // A new data directory with host:port peers (no ids) joins a running cluster first.
            guard case .start(let opened) = try await JoinPhase.joinIfNeeded(config: serverConfig, logger: logger) else { return }
            node = try KimberliteNode(config: serverConfig, logger: logger, dataDirectory: opened)
        } catch let error as StorageError {
            if case .locked = error { Self.fail(error.description, code: 75) }
            Self.fail("cannot open the data directory: \(error.description)", code: 1)
        } catch {
            Self.fail("cannot start: \(error)", code: 1)
        }
        do {
            try await node.run()
        } catch {
            logger.critical("stopped on error: \(error)")
            Self.fail("\(error)", code: 1)
        }
    }

    static func fail(_ message: String, code: Int32) -> Never {
        FileHandle.standardError.write(Data("kimberlite-server: \(message)\n".utf8))
        Foundation.exit(code)
    }
}

