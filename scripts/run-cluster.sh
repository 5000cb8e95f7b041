#!/usr/bin/env bash
# The main job: build, start a three-node Kimberlite cluster on loopback,
# load the Debian package index (about 63,000 real records) through the
# client API, and print cluster status and example queries.
#
#   scripts/run-cluster.sh            # release build (static Swift runtime, in docker/stage/); leaves the cluster running
#   scripts/run-cluster.sh --stop     # ... and stops it after printing (CI)
#   scripts/run-cluster.sh --debug    # use the debug build (faster to build)
#
# Node N listens on client 7N00-ish ports: node1 7000/7001/9090,
# node2 7100/7101/9091, node3 7200/7201/9092. Data and logs: run/nodeN/.
# Stop with scripts/stop-cluster.sh.
source "$(dirname "$0")/common.sh"

configuration=release
stop_after=false
for argument in "$@"; do
    case "$argument" in
        --stop) stop_after=true ;;
        --debug) configuration=debug ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) die "unknown option $argument (see --help)" ;;
    esac
done

install_dependencies
cd "$ROOT"
log "building ($configuration)"
if [ "$configuration" = release ]; then
    # The same static release build the Docker images and the host archive
    # use (docker/stage/), so CI builds the release binaries once.
    build_static_release
    BIN="$ROOT/docker/stage"
else
    swift build -c "$configuration" --product kimberlite-server
    swift build -c "$configuration" --product kimberlite-admin
    BIN="$ROOT/.build/$configuration"
fi

"$ROOT/scripts/stop-cluster.sh" --quiet || true
RUN="$ROOT/run"
rm -rf "$RUN"
mkdir -p "$RUN"
PEERS="1=127.0.0.1:7001,2=127.0.0.1:7101,3=127.0.0.1:7201"
for n in 1 2 3; do
    offset=$(( (n - 1) * 100 ))
    mkdir -p "$RUN/node$n"
    cat > "$RUN/node$n/config.toml" <<TOML
[server]
node_id = $n
cluster_name = "local"
bind_address = "127.0.0.1:$(( 7000 + offset ))"
cluster_address = "127.0.0.1:$(( 7001 + offset ))"
cluster_peers = ["1=127.0.0.1:7001", "2=127.0.0.1:7101", "3=127.0.0.1:7201"]

[storage]
data_dir = "$RUN/node$n/data"
sync_mode = "fsync"

[telemetry]
metrics_address = "127.0.0.1:$(( 9090 + n - 1 ))"

[logging]
file = "$RUN/node$n/server.log"
TOML
    nohup "$BIN/kimberlite-server" --config "$RUN/node$n/config.toml" >"$RUN/node$n/stderr.log" 2>&1 &
    echo $! > "$RUN/node$n/pid"
done
log "started nodes 1-3 (peers $PEERS); waiting for a leader"
leader_known() {
    for port in 9090 9091 9092; do
        [ "$(curl -fsS -m 2 "127.0.0.1:$port/status" | jq -r '.leader_id')" != "0" ] || return 1
    done
}
wait_for "a leader on every node" 60 leader_known

DUMP="$RUN/dumpavail.txt"
apt-cache dumpavail > "$DUMP" 2>/dev/null || true
if [ "$(grep -c '^Package:' "$DUMP" || true)" -lt 1000 ]; then
    log "the package index is empty: running apt-get update"
    apt-get update -qq
    apt-cache dumpavail > "$DUMP"
fi
log "loading $(grep -c '^Package:' "$DUMP") Debian package records"
python3 "$ROOT/examples/load_debian_packages.py" --input "$DUMP" --quiet | tee "$RUN/load-summary.json"

echo
"$BIN/kimberlite-admin" status --server 127.0.0.1:9090
python3 "$ROOT/examples/load_debian_packages.py" --queries

if $stop_after; then
    "$ROOT/scripts/stop-cluster.sh"
else
    cat <<TEXT

The cluster is running:
  curl -s http://localhost:9090/status | jq
  curl -s http://localhost:9090/metrics | grep -E "(consensus_view|consensus_leader|projection_lag)"
  curl -s -XPOST localhost:7000/v1/query -d '{"sql":"SELECT count(*) FROM packages"}'
  $BIN/kimberlite-admin status --server 127.0.0.1:9090
Logs: run/node{1,2,3}/server.log    Stop: scripts/stop-cluster.sh
TEXT
fi
