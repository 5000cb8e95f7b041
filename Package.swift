// swift-tools-version:6.1
import PackageDescription

// One module per layer; arrows point one way:
// KimberliteCore <- KimberliteStorage <- KimberliteProjection <- KimberliteServer <- executables.
let package = Package(
    name: "Kimberlite",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "kimberlite-server", targets: ["KimberliteServerMain"]),
        .executable(name: "kimberlite-admin", targets: ["KimberliteAdminMain"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
    ],
    targets: [
        // Pure: types, messages, codecs and the VSR replica. No I/O, no clocks.
        .target(
            name: "KimberliteCore",
            dependencies: [.product(name: "Crypto", package: "swift-crypto")]
        ),
        .systemLibrary(
            name: "CSQLite",
            pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"])]
        ),
        // libsystemd (sd_notify, sd_journal_sendv) for the runtime's platform layer; Linux only.
        .systemLibrary(
            name: "CSystemd",
            pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]
        ),
        // Segments, superblock, checksums, the data-directory lock, offline verify.
        .target(
            name: "KimberliteStorage",
            dependencies: [
                "KimberliteCore",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // SQLite apply of committed entries, queries, the client table.
        .target(
            name: "KimberliteProjection",
            dependencies: [
                "KimberliteCore",
                "CSQLite",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // NIO transport, HTTP APIs, metrics, configuration, logging, lifecycle.
        .target(
            name: "KimberliteServer",
            dependencies: [
                "KimberliteCore",
                "KimberliteStorage",
                "KimberliteProjection",
                .target(name: "CSystemd", condition: .when(platforms: [.linux])),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ]
        ),
        .executableTarget(
            name: "KimberliteServerMain",
            dependencies: [
                "KimberliteServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "KimberliteAdminMain",
            dependencies: [
                "KimberliteServer",
                "KimberliteStorage",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "KimberliteCoreTests", dependencies: ["KimberliteCore"]),
        .testTarget(name: "KimberliteStorageTests", dependencies: ["KimberliteStorage", "KimberliteCore"]),
        .testTarget(name: "KimberliteProjectionTests", dependencies: ["KimberliteProjection", "KimberliteCore"]),
        .testTarget(name: "KimberliteServerTests", dependencies: ["KimberliteServer"]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "KimberliteServer",
                "KimberliteProjection",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
    ]
)
