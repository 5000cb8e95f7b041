#!/usr/bin/env bash
# Stops the local cluster started by run-cluster.sh (SIGTERM, then waits up
# to 15 s per node). --quiet: say nothing when no cluster runs.
source "$(dirname "$0")/common.sh"
quiet=false; [ "${1:-}" = "--quiet" ] && quiet=true
for pidfile in "$ROOT"/run/node*/pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then log "node pid $pid did not stop in 15 s; killing"; kill -KILL "$pid"; fi
        $quiet || log "stopped $(basename "$(dirname "$pidfile")") (pid $pid)"
    fi
    rm -f "$pidfile"
done
