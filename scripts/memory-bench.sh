#!/usr/bin/env bash
# Memory as the log grows: starts a three-node cluster on loopback (release
# build, ports 47000+), writes entries of 4 KiB (--entry-kb; an INSERT and a DELETE of the
# same row in one entry, so the database stays small while the log grows),
# and prints each node's resident memory before and after each round of
# --entries entries (20,000 ≈ 80 MB of log), which should stay flat as the
# log grows. At the end it splits each node's RSS into anonymous memory (the
# heap: what the process allocated) and file-backed pages (mostly the
# binary's own code, which counts in RSS as it is first executed). Last, a
# follower's projection is deleted and rebuilt from its whole log, and its
# peak RSS is printed.
#
#   scripts/memory-bench.sh [--entries 20000] [--rounds 4] [--entry-kb 4] [--debug]
source "$(dirname "$0")/common.sh"
entries=20000
entry_kb=4
rounds=4
configuration=release
while (($#)); do
    case "$1" in
        --entries) entries=$2; shift ;;
        --entry-kb) entry_kb=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --debug) configuration=debug ;;
        *) die "unknown option $1" ;;
    esac
    shift
done
install_dependencies
cd "$ROOT"
if [ "$configuration" = release ]; then
    # The same static release binaries CI and the other benches use (one build for all).
    build_static_release
    binary="$ROOT/docker/stage/kimberlite-server"
else
    swift build -c debug --product kimberlite-server >/dev/null
    binary="$ROOT/.build/debug/kimberlite-server"
fi
WORK=$(mktemp -d /tmp/kmb-memory.XXXXXX)
declare -A pids
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

LOOPBACK_BIN="$binary" LOOPBACK_WORK=$WORK LOOPBACK_BASE=47000 LOOPBACK_METRICS_BASE=49090
for n in 1 2 3; do loopback_node_start "$n" KMB_LOG_LEVEL=warn; pids[$n]=$LOOPBACK_PID; done
wait_for "a leader" 60 loopback_leader
leader=$(loopback_leader)
port=$(loopback_client_port "$leader")
curl -fsS -XPOST "127.0.0.1:$port/v1/execute" \
    -d '{"statements":[{"sql":"CREATE TABLE IF NOT EXISTS blobs(id INTEGER PRIMARY KEY, body TEXT)"}]}' >/dev/null

rss() { for n in 1 2 3; do printf 'node%s%s=%s MB ' "$n" "$([ "$n" = "$leader" ] && echo '(leader)')" \
    "$(( $(awk '/VmRSS/ {print $2}' "/proc/${pids[$n]}/status") / 1024 ))"; done; }
log_mb() { du -sm "$WORK/node$leader/log" | cut -f1; }

write_entries() { # count, offset
    python3 - "$port" "$1" "$2" "$entry_kb" <<'EOF'
import http.client, json, sys, threading
port, count, offset = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
body = "x" * (int(sys.argv[4]) * 1000)
def worker(w):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(w, count, 16):
        n = offset + i
        c.request("POST", "/v1/execute", json.dumps({"statements": [
            {"sql": "INSERT INTO blobs(id, body) VALUES (?, ?)", "params": [n, body]},
            {"sql": "DELETE FROM blobs WHERE id = ?", "params": [n]}]}))
        r = c.getresponse(); r.read()
        if r.status != 200: raise SystemExit(f"write {n}: {r.status}")
threads = [threading.Thread(target=worker, args=(w,)) for w in range(16)]
[t.start() for t in threads]; [t.join() for t in threads]
EOF
}
settled() { # every node has applied what the leader committed
    local commit applied n
    commit=$(curl -fsS -m 1 "127.0.0.1:$((LOOPBACK_METRICS_BASE + leader))/status" | jq .commit_number) || return 1
    for n in 1 2 3; do
        applied=$(curl -fsS -m 1 "127.0.0.1:$((LOOPBACK_METRICS_BASE + n))/status" | jq .projection.applied_op) || return 1
        [ "$applied" -ge "$commit" ] || return 1
    done
}
split() { for n in 1 2 3; do awk -v n="$n" '/^Anonymous:/ {anon = $2} /^Rss:/ {rss = $2}
    END {printf "node%s=%d/%d ", n, anon / 1024, (rss - anon) / 1024}' "/proc/${pids[$n]}/smaps_rollup"; done; }
split_before=$(split)
echo "memory (RSS) with entries of $entry_kb KiB, three nodes, build $configuration:"
echo "  before:                              $(rss)"
for round in $(seq 1 "$rounds"); do
    write_entries "$entries" $(((round - 1) * entries))
    wait_for "every node to apply the writes" 120 settled
    printf '  after %7d entries (%5s MB of log): %s\n' $((round * entries)) "$(log_mb)" "$(rss)"
done
echo "anonymous (heap) / file-backed (mostly the binary's code) MB, from /proc/PID/smaps_rollup:"
echo "  before:         $split_before"
echo "  after round $rounds: $(split)"

# A projection rebuilt from the whole log: a follower stopped, its projection
# deleted, started again. It re-applies every entry from its journal; its peak
# memory (VmHWM) shows whether the backlog is held in memory or read in steps.
rebuilt=$(( leader % 3 + 1 ))
kill -TERM "${pids[$rebuilt]}"
wait_for "node $rebuilt to stop" 30 bash -c "! kill -0 ${pids[$rebuilt]} 2>/dev/null"
rm -f "$WORK/node$rebuilt/projections/projection.sqlite"*
rm -rf "$WORK/node$rebuilt/projections/checkpoints"
started=$(date +%s%N)
loopback_node_start "$rebuilt" KMB_LOG_LEVEL=warn; pids[$rebuilt]=$LOOPBACK_PID
wait_for "node $rebuilt to rebuild its projection" 600 settled
echo "node$rebuilt rebuilt its projection from $(du -sm "$WORK/node$rebuilt/log" | cut -f1) MB of log in" \
    "$(awk -v a="$started" -v b="$(date +%s%N)" 'BEGIN {printf "%.1f", (b - a) / 1e9}') s: peak RSS (VmHWM)" \
    "$(( $(awk '/VmHWM/ {print $2}' "/proc/${pids[$rebuilt]}/status") / 1024 )) MB," \
    "RSS now $(( $(awk '/VmRSS/ {print $2}' "/proc/${pids[$rebuilt]}/status") / 1024 )) MB"
