#!/usr/bin/env bash
# Checkpoint cost (issue 8): p99 write latency while a projection checkpoint
# of a >= 500 MB projection is taken, against the p99 without one (target: at
# most 2x). Builds the static release binaries (build_static_release, under
# the build lock), starts a three-node cluster on loopback (ports 17000+,
# operations 19091-19093, data in a temporary directory) with
# checkpoint_interval so high that no periodic checkpoint runs, fills the
# projection with ~1 KB rows (deterministic: hex(zeroblob(500)), 25,000 rows
# per write) until the leader's projection.sqlite passes --size-mb, then has
# --clients clients write single-row inserts to the leader (pausing
# --pause-ms after each reply) and, --rounds times, compares a quiet window
# with the window in which a checkpoint is forced (POST /backup on the
# operations port, released again with DELETE /backup/<id>): first on the
# leader alone (what an online backup costs), then on all three nodes at once
# (what the periodic checkpoint costs: every replica reaches the interval at
# the same op). Prints p50/p99 for both windows, the p99 ratio, and each
# checkpoint's size and duration (scripts/checkpoint_clients.py measures).
#
#   scripts/checkpoint-bench.sh [--size-mb 500] [--clients 8] [--pause-ms 5] [--rounds 4] [--keep]
source "$(dirname "$0")/common.sh"
size_mb=500
clients=8
pause_ms=5
rounds=4
keep=0
while (($#)); do
    case "$1" in
        --size-mb) size_mb=$2; shift ;;
        --clients) clients=$2; shift ;;
        --pause-ms) pause_ms=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --keep) keep=1 ;;
        *) die "unknown option $1" ;;
    esac
    shift
done
build_static_release
cd "$ROOT"
loopback_workdir kmb-checkpoint "$keep"

# checkpoint_interval has no environment variable: a config file sets it
# (loopback_node_start sets the rest through the environment).
cat >"$WORK/config.toml" <<'EOF'
[projections]
checkpoint_interval = 1000000000
EOF
LOOPBACK_BIN="$ROOT/docker/stage/kimberlite-server" LOOPBACK_WORK=$WORK LOOPBACK_BASE=17000 LOOPBACK_METRICS_BASE=19090
LOOPBACK_CONFIG="$WORK/config.toml"
for n in 1 2 3; do loopback_node_start "$n" KMB_LOG_LEVEL=info; pids[$n]=$LOOPBACK_PID; done
wait_for "a leader" 60 loopback_leader
leader=$(loopback_leader)
port=$(loopback_client_port "$leader")
execute() { # json body; fails on anything but 200
    curl -fsS -m 60 -XPOST "127.0.0.1:$port/v1/execute" -H 'Content-Type: application/json' -d "$1" >/dev/null
}
create() { execute '{"statements":[
    {"sql":"CREATE TABLE IF NOT EXISTS fill(id INTEGER PRIMARY KEY, k TEXT, body TEXT)"},
    {"sql":"CREATE INDEX IF NOT EXISTS fill_k ON fill(k)"},
    {"sql":"CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, k TEXT UNIQUE, v TEXT)"}]}'; }
wait_for "the tables" 30 create

# --- Fill: ~25 MB of rows per write, each one log entry of a few hundred bytes.
projection_mb() { # node
    local bytes=0 file
    for file in "$WORK/node$1/projections/projection.sqlite" "$WORK/node$1/projections/projection.sqlite-wal"; do
        [ -f "$file" ] && bytes=$(( bytes + $(stat -c %s "$file") ))
    done
    echo $(( bytes / 1000000 ))
}
fill_started=$(date +%s)
batch=0
# The main file alone must pass the target: the copy is of the database, not its WAL.
until (( $(stat -c %s "$WORK/node$leader/projections/projection.sqlite") / 1000000 >= size_mb )); do
    (( $(date +%s) - fill_started < 600 )) || die "the projection did not reach $size_mb MB within 600 s ($(projection_mb "$leader") MB)"
    batch=$((batch + 1))
    execute "{\"statements\":[{\"sql\":\"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 25000) INSERT INTO fill(k, body) SELECT printf('b$batch-%d', i), hex(zeroblob(500)) FROM n\"}]}" \
        || die "fill write $batch failed"
done
settled() { # every node has applied what the leader committed
    local commit applied n
    commit=$(curl -fsS -m 1 "127.0.0.1:$((LOOPBACK_METRICS_BASE + leader))/status" | jq .commit_number) || return 1
    for n in 1 2 3; do
        applied=$(curl -fsS -m 1 "127.0.0.1:$((LOOPBACK_METRICS_BASE + n))/status" | jq .projection.applied_op) || return 1
        [ "$applied" -ge "$commit" ] || return 1
    done
}
wait_for "every node to apply the fill" 120 settled
log "filled: $((batch * 25000)) rows in $batch writes, $(( $(date +%s) - fill_started )) s; projection (with WAL) per node: $(projection_mb 1) / $(projection_mb 2) / $(projection_mb 3) MB"
rows=$(curl -fsS -XPOST "127.0.0.1:$port/v1/query" -d '{"sql":"SELECT count(*) FROM fill"}' | jq '.rows[0][0]')
[ "$rows" = $((batch * 25000)) ] || die "the fill table holds $rows rows, expected $((batch * 25000))"

# --- Measure ----------------------------------------------------------------
view() { curl -fsS -m 1 "127.0.0.1:$((LOOPBACK_METRICS_BASE + 1))/status" | jq -e .view; }
measure() { # name, "leader" or "all" -> JSON in $WORK/<name>.json, views in $WORK/<name>.views
    local backup_ports before
    wait_for "a leader" 30 loopback_leader
    leader=$(loopback_leader)   # a view change in an earlier run may have moved it
    port=$(loopback_client_port "$leader")
    backup_ports=$((LOOPBACK_METRICS_BASE + leader))
    [ "$2" = all ] && backup_ports="$((LOOPBACK_METRICS_BASE + 1)),$((LOOPBACK_METRICS_BASE + 2)),$((LOOPBACK_METRICS_BASE + 3))"
    before=$(view) || die "no /status from node 1"
    log "measuring $1: leader node $leader, $clients clients, $rounds rounds, checkpoints on operations ports $backup_ports"
    timeout $(( rounds * 400 + 60 )) python3 "$ROOT/scripts/checkpoint_clients.py" --port "$port" --backup-ports "$backup_ports" \
        --clients "$clients" --pause-ms "$pause_ms" --rounds "$rounds" --run "$1-$$" --table bench >"$WORK/$1.json" \
        || die "the $1 run failed: $(cat "$WORK/$1.json")"
    echo "$before $(view)" >"$WORK/$1.views"
    jq -e --argjson floor "$((size_mb * 1000000))" '[.checkpoints[][].bytes] | length > 0 and min >= $floor' "$WORK/$1.json" >/dev/null \
        || die "a checkpoint of the $1 run is smaller than $size_mb MB: $(cat "$WORK/$1.json")"
    log "$1: $(cat "$WORK/$1.json")"
    loads+=("$(cut -d' ' -f1-3 /proc/loadavg)")
}
loads=("$(cut -d' ' -f1-3 /proc/loadavg)")
measure leader leader
measure all all

report() { # name, title
    jq -r --arg title "$2" --arg views "$(cat "$WORK/$1.views")" '
        def r: if . == null then "-" else . end;
        def w: "\(.writes) writes, p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, max \(.max_ms) ms, \(.retried) retried (503/504)";
        ($views | split(" ") | map(tonumber)) as $v
        | "\($title):\n"
        + "  no checkpoint:  \(.quiet_seconds) s, \(.quiet | w)\n"
        + "  checkpointing:  \(.checkpoint_seconds) s, \(.checkpoint | w)\n"
        + "  p99 ratio:      \(.checkpoint.p99_ms / .quiet.p99_ms * 100 | round / 100)x (target: at most 2x); p50 ratio \(.checkpoint.p50_ms / .quiet.p50_ms * 100 | round / 100)x\n"
        + "  view number:    \($v[0]) -> \($v[1]) (it rises with every view change: the followers lost the leader and elected one)\n"
        + "  checkpoints:    " + ([.checkpoints[] | map("\(.bytes / 1000000 | round) MB at op \(.op) in \(.server_seconds | r) s") | join(", ")] | join("; "))' \
        "$WORK/$1.json"
}
echo
echo "checkpoint cost: $clients clients writing single-row inserts to the leader (pause $pause_ms ms after each reply),"
echo "sync_mode fsync, release build, $(nproc) cores; quiet and checkpoint windows alternate, $rounds rounds each;"
echo "load average (1/5/15 min) before: ${loads[0]}, after the leader run: ${loads[1]}, after the all-nodes run: ${loads[2]}"
echo "(three nodes and the clients share this machine and its disk: other load skews every figure)"
report leader "checkpoint on the leader only (an online backup, POST /backup)"
report all "checkpoint on all three nodes at once (the periodic checkpoint: every replica reaches the interval at the same op)"
echo
echo "reproduce: scripts/checkpoint-bench.sh --size-mb $size_mb --clients $clients --pause-ms $pause_ms --rounds $rounds"
