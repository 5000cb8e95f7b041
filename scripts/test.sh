#!/usr/bin/env bash
# Runs every test: unit, simulation (1,000 seeds by default; KMB_SIM_SEEDS
# to change), journal, projection, configuration, and integration tests
# that start real server processes on loopback.
source "$(dirname "$0")/common.sh"
install_dependencies
# The real-data test reads the Debian package index.
if [ "$(apt-cache dumpavail 2>/dev/null | grep -c '^Package:' || true)" -lt 1000 ]; then
    log "the package index is empty: running apt-get update"
    apt-get update -qq
fi
cd "$ROOT"
swift build --build-tests
swift test --skip-build "$@"
