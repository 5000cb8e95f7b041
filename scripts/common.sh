# Shared helpers for the scripts in this folder (sourced, not run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Installs the Debian packages the build, the tests and the scripts need.
install_dependencies() {
    local wanted=(libsqlite3-dev libsystemd-dev pkg-config jq curl python3 ca-certificates rsync "$@")
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

# A scratch directory for a loopback benchmark: sets WORK (under /tmp, named
# after the prefix) and an empty associative array pids; at exit every pid
# in pids gets SIGKILL and WORK is removed, or kept (and named) when the
# second argument is 1.
loopback_workdir() { # prefix [keep]
    WORK=$(mktemp -d "/tmp/$1.XXXXXX")
    LOOPBACK_KEEP=${2:-0}
    declare -gA pids=()
    trap loopback_cleanup EXIT
}
loopback_cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    if [ "$LOOPBACK_KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}

# A throwaway three-node cluster on loopback (bench and failover scripts).
# Node N serves clients on LOOPBACK_BASE+(N-1)*100, peers on that port + 1
# and operations on LOOPBACK_METRICS_BASE+N, with data in LOOPBACK_WORK/nodeN
# and its log appended to LOOPBACK_WORK/nodeN.log. Set LOOPBACK_BIN,
# LOOPBACK_WORK, LOOPBACK_BASE and LOOPBACK_METRICS_BASE first; set
# LOOPBACK_CONFIG to a config file for keys with no environment variable.
loopback_client_port() { echo $(( LOOPBACK_BASE + ($1 - 1) * 100 )); }

# Starts node N with extra KEY=VALUE environment settings; leaves its pid in
# LOOPBACK_PID (disowned: the caller kills it).
loopback_node_start() {
    local n=$1; shift
    local port; port=$(loopback_client_port "$n")
    local peers="1=127.0.0.1:$((LOOPBACK_BASE + 1)),2=127.0.0.1:$((LOOPBACK_BASE + 101)),3=127.0.0.1:$((LOOPBACK_BASE + 201))"
    env KMB_CLUSTER_PEERS="$peers" KMB_BIND_ADDRESS="127.0.0.1:$port" KMB_CLUSTER_ADDRESS="127.0.0.1:$((port + 1))" \
        KMB_METRICS_ADDRESS="127.0.0.1:$((LOOPBACK_METRICS_BASE + n))" KMB_DATA_DIR="$LOOPBACK_WORK/node$n" "$@" \
        "$LOOPBACK_BIN" --node-id "$n" ${LOOPBACK_CONFIG:+--config "$LOOPBACK_CONFIG"} >>"$LOOPBACK_WORK/node$n.log" 2>&1 &
    LOOPBACK_PID=$!
    disown "$LOOPBACK_PID"
}

# Prints the leader id node N (default 1) reports; fails while there is none.
loopback_leader() {
    local id; id=$(curl -fsS -m 1 "127.0.0.1:$((LOOPBACK_METRICS_BASE + ${1:-1}))/status" | jq -r .leader_id) || return 1
    [[ "$id" =~ ^[1-9][0-9]*$ ]] && echo "$id"
}

# Builds kimberlite-server and kimberlite-admin in release mode with the Swift
# runtime linked in (--static-swift-stdlib), in their own scratch path so the
# debug .build/ is left alone, under the machine's build lock, then strips them
# into docker/stage/ (the one staging folder both the Docker images and the
# host release archive take them from). A second call with nothing changed is
# an incremental no-op build, so CI compiles them once for both.
# Environment: KMB_DOCKER_SCRATCH (default .build-docker), KMB_BUILD_LOCK
# (default /tmp/kmb-build.lock). Sets STAGED_VERSION.
build_static_release() {
    local scratch="${KMB_DOCKER_SCRATCH:-$ROOT/.build-docker}" lock="${KMB_BUILD_LOCK:-/tmp/kmb-build.lock}"
    local stage="$ROOT/docker/stage" strip_bin binary
    install_dependencies
    log "building release binaries with a static Swift runtime in $scratch (under flock $lock)"
    (cd "$ROOT" && flock "$lock" swift build -c release --static-swift-stdlib --scratch-path "$scratch") \
        || die "release build failed (swift build -c release --static-swift-stdlib --scratch-path $scratch)"
    strip_bin="$(command -v strip || command -v llvm-strip)" || die "no strip tool (binutils or llvm-strip)"
    mkdir -p "$stage"
    for binary in kimberlite-server kimberlite-admin; do
        if [ -x "$stage/$binary" ] && [ "$stage/$binary" -nt "$scratch/release/$binary" ]; then
            continue   # staged from this very build already
        fi
        install -m 0755 "$scratch/release/$binary" "$stage/$binary.tmp"
        "$strip_bin" "$stage/$binary.tmp"
        mv "$stage/$binary.tmp" "$stage/$binary"
    done
    STAGED_VERSION="$("$stage/kimberlite-server" --version | awk '{print $NF}')"
    log "staged kimberlite-server and kimberlite-admin $STAGED_VERSION in $stage ($(du -ch "$stage"/kimberlite-* | tail -1 | cut -f1) stripped)"
}

# Stops the Docker engine again when the calling script started it ($1 is
# "false" when no engine was running before), unless KMB_DOCKER_KEEP_ENGINE=1.
# Waits (bounded, 30 s) for it to exit.
stop_engine_if_started() {
    [ "$1" = false ] && [ "${KMB_DOCKER_KEEP_ENGINE:-0}" != 1 ] && [ -s /var/run/docker.pid ] || return 0
    local pid
    pid=$(cat /var/run/docker.pid)
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
}
