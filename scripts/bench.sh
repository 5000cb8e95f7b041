#!/usr/bin/env bash
# Write benchmark: single-row inserts at 1, 16 and 64 concurrent clients
# (wrk, 10 s each) against a three-node Kimberlite cluster with
# sync_mode = "fsync", and the same load against a three-node etcd 3.4 on
# loopback in the same run; prints writes/s, p50/p99 latency, the ratio,
# and each Kimberlite node's resident memory at idle and under load.
#
#   scripts/bench.sh [--seconds 10] [--debug]
source "$(dirname "$0")/common.sh"
seconds=10
configuration=release
while (($#)); do
    case "$1" in
        --seconds) seconds=$2; shift ;;
        --debug) configuration=debug ;;
        *) die "unknown option $1" ;;
    esac
    shift
done
install_dependencies wrk etcd-server etcd-client
cd "$ROOT"
swift build -c "$configuration" --product kimberlite-server >/dev/null
WORK=$(mktemp -d /tmp/kmb-bench.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# --- Kimberlite -------------------------------------------------------------
LOOPBACK_BIN="$ROOT/.build/$configuration/kimberlite-server" LOOPBACK_WORK=$WORK LOOPBACK_BASE=27000 LOOPBACK_METRICS_BASE=29090
for n in 1 2 3; do
    loopback_node_start "$n" KMB_SYNC_MODE=fsync KMB_LOG_LEVEL=warn
    pids+=("$LOOPBACK_PID")
    kmb_pids[$n]=$LOOPBACK_PID
done
wait_for "a Kimberlite leader" 60 loopback_leader
LEADER=$(loopback_client_port "$(loopback_leader)")
create_table() {
    curl -fsS -XPOST "127.0.0.1:$LEADER/v1/execute" \
        -d '{"statements":[{"sql":"CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, k TEXT UNIQUE, v TEXT)"}]}' >/dev/null
}
wait_for "the bench table" 30 create_table
rss() { awk '/VmRSS/ {printf "%d", $2/1024}' "/proc/$1/status"; }
idle_rss="$(rss "${kmb_pids[1]}") / $(rss "${kmb_pids[2]}") / $(rss "${kmb_pids[3]}") MB"

# --- etcd 3.4 -------------------------------------------------------------------
CLUSTER="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
for n in 1 2 3; do
    etcd --name e$n --data-dir "$WORK/etcd$n" --listen-peer-urls http://127.0.0.1:2380$n \
        --initial-advertise-peer-urls http://127.0.0.1:2380$n --listen-client-urls http://127.0.0.1:2379$n \
        --advertise-client-urls http://127.0.0.1:2379$n --initial-cluster "$CLUSTER" \
        --initial-cluster-state new --initial-cluster-token bench >"$WORK/etcd$n.log" 2>&1 &
    pids+=($!); disown $!
done
etcd_leader() {
    for n in 1 2 3; do
        ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379$n endpoint status -w json 2>/dev/null \
            | jq -e '.[0].Status.leader == .[0].Status.header.member_id' >/dev/null && { echo 2379$n; return 0; }
    done
    return 1
}
wait_for "an etcd leader" 60 etcd_leader
ETCD=$(etcd_leader)

# --- Load -------------------------------------------------------------------------
run_wrk() { # url script connections -> "writes/s p50_ms p99_ms"
    wrk -t "$(( $3 < 2 ? 1 : 2 ))" -c "$3" -d "${seconds}s" --latency -s "$2" "$1" -- "c$3" 2>/dev/null | awk '
        /Requests\/sec/ {rps=$2}
        /Non-2xx/ {errors=$5}
        /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
        END {if (errors > 0) rps = "ERR" errors; printf "%s %.2f %.2f", rps, ms(p50), ms(p99)}'
}
printf '\n%-8s  %-26s  %-26s  %s\n' clients "kimberlite w/s p50 p99 ms" "etcd 3.4 w/s p50 p99 ms" "ratio"
load_rss=""
for c in 1 16 64; do
    if [ "$c" = 64 ]; then
        ( sleep $(( seconds / 2 )); echo "$(rss "${kmb_pids[1]}") / $(rss "${kmb_pids[2]}") / $(rss "${kmb_pids[3]}") MB" > "$WORK/load-rss" ) &
        rss_pid=$!
    fi
    read -r k_rps k_p50 k_p99 <<<"$(run_wrk "http://127.0.0.1:$LEADER" "$ROOT/Benchmarks/insert.lua" "$c")"
    read -r e_rps e_p50 e_p99 <<<"$(run_wrk "http://127.0.0.1:$ETCD" "$ROOT/Benchmarks/etcd-put.lua" "$c")"
    ratio=$(awk -v a="$k_rps" -v b="$e_rps" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }')
    printf '%-8s  %-26s  %-26s  %s\n' "$c" "$k_rps $k_p50 $k_p99" "$e_rps $e_p50 $e_p99" "$ratio"
done
wait "$rss_pid"  # only the sampler: the servers are children too

# Latency at a moderate fixed rate: 8 connections, each pausing 5 ms after
# every reply (about 1,000 writes/s; the measured rate is printed).
paced=$(wrk -t 2 -c 8 -d "${seconds}s" --latency -s "$ROOT/Benchmarks/insert.lua" "http://127.0.0.1:$LEADER" -- paced 5 2>/dev/null | awk '
    /Requests\/sec/ {rps=$2} /Non-2xx/ {errors=$5} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
    END {printf "%s w/s, p50 %s, p99 %s%s", rps, p50, p99, (errors > 0 ? ", " errors " errors" : "")}')
echo
echo "kimberlite paced (8 connections, 5 ms pause): $paced (target: p99 <= 10 ms at 1,000 w/s)"
rows=$(curl -fsS -XPOST "127.0.0.1:$LEADER/v1/query" -d '{"sql":"SELECT count(*) FROM bench"}' | jq '.rows[0][0]')
echo
echo "kimberlite RSS per node: idle $idle_rss; under 64-client load $(cat "$WORK/load-rss" 2>/dev/null || echo '?')"
echo "rows inserted: $rows (build: $configuration, sync_mode fsync, $seconds s per run, $(nproc) cores)"
