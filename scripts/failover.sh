#!/usr/bin/env bash
# Failover time with the default consensus timeouts: starts a three-node
# cluster on loopback (release build, ports 37000+), then N times kills the
# leader with SIGKILL and measures until a write through a surviving node
# succeeds; the killed node is restarted and caught up before the next trial.
# With --clients N, N clients (scripts/stall_clients.py) write through the two
# followers during each kill instead, and each trial reports the election
# time (kill until a survivor names a new leader) and the longest stall any
# client saw (first attempt of a write until its success, retrying 503/504
# with the same request number).
#
#   scripts/failover.sh [--trials 5] [--clients 32] [--debug]
source "$(dirname "$0")/common.sh"
trials=5
clients=0
configuration=release
while (($#)); do
    case "$1" in
        --trials) trials=$2; shift ;;
        --clients) clients=$2; shift ;;
        --debug) configuration=debug ;;
        *) die "unknown option $1" ;;
    esac
    shift
done
install_dependencies
cd "$ROOT"
swift build -c "$configuration" --product kimberlite-server >/dev/null
loopback_workdir kmb-failover

LOOPBACK_BIN="$ROOT/.build/$configuration/kimberlite-server" LOOPBACK_WORK=$WORK LOOPBACK_BASE=37000 LOOPBACK_METRICS_BASE=39090
start_node() { loopback_node_start "$1" KMB_LOG_LEVEL=info; pids[$1]=$LOOPBACK_PID; }
write_via() { # node, n
    curl -fsS -m 2 -XPOST "127.0.0.1:$(loopback_client_port "$1")/v1/execute" \
        -d "{\"statements\":[{\"sql\":\"INSERT INTO failover(trial) VALUES ($2)\"}]}" >/dev/null
}
for n in 1 2 3; do start_node "$n"; done
create() { curl -fsS -m 2 -XPOST "127.0.0.1:$(loopback_client_port 1)/v1/execute" \
    -d '{"statements":[{"sql":"CREATE TABLE IF NOT EXISTS failover(id INTEGER PRIMARY KEY, trial INTEGER)"},{"sql":"CREATE TABLE IF NOT EXISTS stall(id INTEGER PRIMARY KEY, client INTEGER, n INTEGER)"}]}'; }
wait_for "the cluster to form and take a write" 60 create

caught_up() { # node $1, back in normal status, has committed what node $2 has
    local a b
    a=$(curl -fsS -m 1 "127.0.0.1:$((LOOPBACK_METRICS_BASE + $1))/status" | jq -e 'select(.status == "normal") | .commit_number') || return 1
    b=$(curl -fsS -m 1 "127.0.0.1:$((LOOPBACK_METRICS_BASE + $2))/status" | jq .commit_number) || return 1
    [ "$a" -ge "$b" ]
}
results=()
for trial in $(seq 1 "$trials"); do
    wait_for "a leader" 30 loopback_leader 1
    leader=$(loopback_leader 1)
    survivor=$(( leader % 3 + 1 ))
    if (( clients > 0 )); then
        other=$(( survivor % 3 + 1 ))
        python3 "$ROOT/scripts/stall_clients.py" --clients "$clients" --seconds 6 --run "$trial-$$" \
            --ports "$(loopback_client_port "$survivor"),$(loopback_client_port "$other")" >"$WORK/stall.json" &
        load=$!
        sleep 2
        kill -9 "${pids[$leader]}"
        killed_at=$(date +%s%N)
        new_leader() { local id; id=$(loopback_leader "$survivor") && [ "$id" != "$leader" ]; }
        wait_for "a new leader" 30 new_leader
        election=$(( ($(date +%s%N) - killed_at) / 1000000 ))
        wait "$load" || die "the stall clients failed: $(cat "$WORK/stall.json")"
        stall=$(jq -r .max_stall_ms "$WORK/stall.json")
        results+=("$election/$stall")
        log "trial $trial: killed leader $leader; new leader after $election ms; $(cat "$WORK/stall.json")"
        start_node "$leader"
        wait_for "node $leader to rejoin" 60 caught_up "$leader" "$survivor"
        continue
    fi
    kill -9 "${pids[$leader]}"
    killed_at=$(date +%s%N)
    deadline=$(( $(date +%s) + 30 ))
    until write_via "$survivor" "$trial" 2>/dev/null; do
        (( $(date +%s) < deadline )) || die "no write succeeded within 30 s of killing node $leader"
        sleep 0.01
    done
    ms=$(( ($(date +%s%N) - killed_at) / 1000000 ))
    results+=("$ms")
    log "trial $trial: killed leader $leader; next write through node $survivor succeeded after $ms ms"
    start_node "$leader"
    wait_for "node $leader to rejoin" 60 caught_up "$leader" "$survivor"
done
if (( clients > 0 )); then
    echo "failover under load ($clients clients writing through followers), $trials trials, election ms / longest client stall ms: ${results[*]} (build: $configuration, default timeouts)"
    exit 0
fi
sorted=$(printf '%s\n' "${results[@]}" | sort -n | tr '\n' ' ')
median=$(printf '%s\n' "${results[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "failover (kill -9 of the leader until the next successful write), $trials trials, ms: $sorted(median $median; build: $configuration, default timeouts)"
