# Shared helpers for the scripts in this folder (sourced, not run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Installs the Debian packages the build, the tests and the scripts need.
install_dependencies() {
    local wanted=(libsqlite3-dev jq curl python3 ca-certificates "$@")
    local missing=()
    for package in "${wanted[@]}"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    command -v swift >/dev/null || die "swift is not on PATH (Swift 6.3 is expected at /opt/swift)"
}

# Polls a command until it succeeds or the deadline (seconds) passes.
wait_for() {
    local what=$1 deadline=$(( $(date +%s) + $2 )); shift 2
    until "$@" >/dev/null 2>&1; do
        (( $(date +%s) < deadline )) || die "timed out waiting for $what"
        sleep 0.2
    done
}
