#!/usr/bin/env bash
# State transfer throughput (issue 8; target >= 200 MB/s over loopback for a
# projection of >= 500 MB). Builds the static release binaries
# (build_static_release, under the build lock), starts a three-node cluster on
# loopback (ports 17000+, operations 19091-19093, data in a temporary
# directory) with compaction on, fills the projection with ~1 KB rows
# (deterministic: hex(zeroblob(500)), 25,000 rows per write) until the
# leader's projection.sqlite passes --size-mb, writes until every node has
# checkpointed the filled state twice and the leader has compacted its log,
# then kills a follower with SIGKILL, wipes its data directory (rm -rf
# data_dir/*) and starts it again. Prints the transfer's size, time and
# MB/s (from the receiver's log) and the time from the restart to the
# follower being back in normal status with everything applied. Then a
# fourth node with a new data directory joins through the leader
# (--cluster-peers "127.0.0.1:PORT", no ids): prints the time from its start
# to the leader's cluster_size 4, and to the joiner in normal status with
# everything applied (the join time of issue 8).
#
#   scripts/state-transfer-bench.sh [--size-mb 500] [--keep]
source "$(dirname "$0")/common.sh"
size_mb=500
keep=0
while (($#)); do
    case "$1" in
        --size-mb) size_mb=$2; shift ;;
        --keep) keep=1 ;;
        *) die "unknown option $1" ;;
    esac
    shift
done
build_static_release
cd "$ROOT"
loopback_workdir kmb-transfer "$keep"

# The fill runs without periodic checkpoints (a 500 MB copy every few
# writes would measure the disk, not the transfer); the nodes then restart
# with checkpoints every 10 ops and compaction on.
cat >"$WORK/config.toml" <<'EOF'
[projections]
checkpoint_interval = 1000000000
[storage]
segment_size = "4KB"
EOF
LOOPBACK_BIN="$ROOT/docker/stage/kimberlite-server" LOOPBACK_WORK=$WORK LOOPBACK_BASE=17000 LOOPBACK_METRICS_BASE=19090
LOOPBACK_CONFIG="$WORK/config.toml"
for n in 1 2 3; do loopback_node_start "$n" KMB_LOG_LEVEL=info; pids[$n]=$LOOPBACK_PID; done
wait_for "a leader" 60 loopback_leader
leader=$(loopback_leader)
port=$(loopback_client_port "$leader")
follower=$(( leader % 3 + 1 ))
ops() { echo $((LOOPBACK_METRICS_BASE + $1)); }
execute() { curl -fsS -m 120 -XPOST "127.0.0.1:$port/v1/execute" -H 'Content-Type: application/json' -d "$1" >/dev/null; }
create() { execute '{"statements":[{"sql":"CREATE TABLE IF NOT EXISTS fill(id INTEGER PRIMARY KEY, k TEXT, body TEXT)"}]}'; }
wait_for "the table" 30 create

fill_started=$(date +%s)
batch=0
until (( $(stat -c %s "$WORK/node$leader/projections/projection.sqlite") / 1000000 >= size_mb )); do
    (( $(date +%s) - fill_started < 900 )) || die "the projection did not reach $size_mb MB within 900 s"
    batch=$((batch + 1))
    # 25 MB writes meet the periodic checkpoints of a growing projection: a slow one is retried.
    for attempt in 1 2 3; do
        execute "{\"statements\":[{\"sql\":\"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 25000) INSERT INTO fill(k, body) SELECT printf('b$batch-%d', i), hex(zeroblob(500)) FROM n\"}]}" && break
        (( attempt < 3 )) || die "fill write $batch failed 3 times"
        log "fill write $batch failed (attempt $attempt); retrying"
    done
done
filled_op=$(curl -fsS "127.0.0.1:$(ops "$leader")/status" | jq .commit_number)
log "filled $((batch * 25000)) rows in $batch writes (op $filled_op) in $(( $(date +%s) - fill_started )) s"
settled() {
    local n applied
    for n in 1 2 3; do
        applied=$(curl -fsS -m 1 "127.0.0.1:$(ops "$n")/status" | jq .projection.applied_op) || return 1
        (( applied >= filled_op )) || return 1
    done
}
wait_for "every node to apply the fill" 300 settled
for n in 1 2 3; do kill "${pids[$n]}"; done
for n in 1 2 3; do wait_for "node $n to stop" 60 bash -c "! kill -0 ${pids[$n]} 2>/dev/null"; done
cat >"$WORK/config.toml" <<'EOF'
[projections]
checkpoint_interval = 10
[storage]
compaction = true
segment_size = "4KB"
EOF
for n in 1 2 3; do loopback_node_start "$n" KMB_LOG_LEVEL=info; pids[$n]=$LOOPBACK_PID; done
wait_for "a leader after the restart" 120 loopback_leader
leader=$(loopback_leader)
port=$(loopback_client_port "$leader")
follower=$(( leader % 3 + 1 ))
# Small writes until two checkpoints past the fill exist on the leader and it compacted.
compacted() {
    local first
    first=$(ls "$WORK/node$leader/log" | grep -m1 '\.kmb$') || return 1
    (( 10#${first%%.kmb} > 1 )) || return 1
    local newest; newest=$(curl -fsS -m 1 "127.0.0.1:$(ops "$leader")/metrics" | awk '/^kmb_checkpoint_op /{print int($2)}')
    (( newest > filled_op ))
}
n=0
until compacted; do
    (( n < 200 )) || die "the leader did not compact after 200 writes"
    n=$((n + 1))
    execute "{\"statements\":[{\"sql\":\"INSERT INTO fill(k, body) VALUES ('small-$n', 'x')\"}]}" || log "small write $n failed; going on"
    sleep 1
done
commit=$(curl -fsS "127.0.0.1:$(ops "$leader")/status" | jq .commit_number)
log "leader $leader compacted its log (first segment $(ls "$WORK/node$leader/log" | grep -m1 '\.kmb$')); commit $commit"

kill -9 "${pids[$follower]}"
rm -rf "${WORK:?}/node$follower"/*
restarted=$(date +%s.%N)
loopback_node_start "$follower" KMB_LOG_LEVEL=info; pids[$follower]=$LOOPBACK_PID
caught_up() {
    local status; status=$(curl -fsS -m 1 "127.0.0.1:$(ops "$follower")/status") || return 1
    [ "$(jq -r .status <<<"$status")" = normal ] && (( $(jq .projection.applied_op <<<"$status") >= commit ))
}
wait_for "the wiped follower to catch up" 900 caught_up
done_at=$(date +%s.%N)
line=$(grep -m1 'State transfer from node' "$WORK/node$follower.log") || die "no state transfer in $WORK/node$follower.log"
received=$(grep -m1 'state transfer received the checkpoint' "$WORK/node$follower.log") || die "the transfer did not finish"
field() { grep -o "$1[=\":]*[0-9.]*" <<<"$received" | grep -o '[0-9.]*$'; }
echo
echo "state transfer: three nodes on loopback, release build, sync_mode fsync, $(nproc) cores, projection ${size_mb}+ MB"
echo "  $line"
echo "  checkpoint: $(field bytes) bytes in $(field seconds) s = $(field mb_per_second) MB/s (target: at least 200 MB/s)"
echo "  wiped follower back in normal status with everything applied: $(awk -v a="$restarted" -v b="$done_at" 'BEGIN{printf "%.1f", b-a}') s after its restart"

# Join: node 4, new data directory, host:port of the leader only.
leader=$(loopback_leader)
commit=$(curl -fsS "127.0.0.1:$(ops "$leader")/status" | jq .commit_number)
join_started=$(date +%s.%N)
loopback_node_start 4 KMB_LOG_LEVEL=info KMB_CLUSTER_PEERS="127.0.0.1:$(( $(loopback_client_port "$leader") + 1 ))"; pids[4]=$LOOPBACK_PID
size_four() { [ "$(curl -fsS -m 1 "127.0.0.1:$(ops "$leader")/status" | jq .cluster_size)" = 4 ]; }
wait_for "the leader to report cluster_size 4" 300 size_four
member_at=$(date +%s.%N)
joined() {
    local status; status=$(curl -fsS -m 1 "127.0.0.1:$(ops 4)/status") || return 1
    [ "$(jq -r .status <<<"$status")" = normal ] && (( $(jq .projection.applied_op <<<"$status") >= commit ))
}
wait_for "the joiner to catch up" 900 joined
joined_at=$(date +%s.%N)
grep -m1 'Joined cluster' "$WORK/node4.log" >/dev/null || die "no 'Joined cluster' line in $WORK/node4.log"
echo "  join (node 4 through the leader, projection ${size_mb}+ MB): cluster_size 4 $(awk -v a="$join_started" -v b="$member_at" 'BEGIN{printf "%.1f", b-a}') s after its start;"
echo "    in normal status with everything applied $(awk -v a="$join_started" -v b="$joined_at" 'BEGIN{printf "%.1f", b-a}') s after its start"
