#!/usr/bin/env bash
# Builds the Kimberlite Docker images from binaries compiled on this machine
# and starts the three-node compose cluster (compose/compose.yaml).
#
#   scripts/docker-up.sh             # engine, base image, build, images, compose up -d, wait healthy
#   scripts/docker-up.sh --no-up     # ... everything but compose up (the CI test starts its own)
#   scripts/docker-up.sh --engine    # only install/start the engine and make the base image
#
# On a fresh Debian 12 machine it installs the engine and the compose CLI
# (docker.io, docker-compose), starts dockerd when nothing answers, and, when
# no registry answers either, makes debian:bookworm-slim locally with
# debootstrap. The binaries are built in release mode with a static Swift
# runtime into .build-docker/ (its own scratch path, so the host's .build/
# is not rebuilt with other flags), stripped, staged in docker/stage/ and
# copied into the images by docker/Dockerfile (BINARIES=prebuilt). Users
# with a registry do not need this script: `docker compose -f
# compose/compose.yaml up -d --build` builds inside the Swift image instead.
#
# Environment: KMB_IMAGE_TAG (default latest), KMB_DOCKER_SCRATCH (default
# .build-docker), KMB_BUILD_LOCK (default /tmp/kmb-build.lock: swift build
# runs under flock so builds sharing the machine take turns),
# KMB_DOCKER_PREBUILT=1 (no Swift build: use the binaries already in
# docker/stage/, built the same way elsewhere).
source "$(dirname "$0")/common.sh"

mode=all
for argument in "$@"; do
    case "$argument" in
        --no-up) mode=images ;;
        --engine) mode=engine ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) die "unknown option $argument (see --help)" ;;
    esac
done

TAG="${KMB_IMAGE_TAG:-latest}"
BASE_IMAGE=debian:bookworm-slim

# The docker.io client matches the engine and builds with its built-in
# BuildKit; a newer client elsewhere on PATH may need the buildx plugin.
docker_cli() {
    if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi
}

# Prints the compose command: docker-compose (v1) when present, else `docker compose` (v2).
compose_cli() {
    if command -v docker-compose >/dev/null; then echo docker-compose; else echo "$(docker_cli) compose"; fi
}

ensure_engine() {
    local missing=()
    command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
    if ! command -v docker-compose >/dev/null && ! "$(docker_cli)" compose version >/dev/null 2>&1; then
        missing+=(docker-compose)
    fi
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    DOCKER="$(docker_cli)"
    if ! "$DOCKER" info >/dev/null 2>&1; then
        local dockerd_bin
        dockerd_bin="$(command -v dockerd || echo /usr/sbin/dockerd)"
        log "starting $dockerd_bin (log: /var/log/kimberlite-dockerd.log)"
        nohup "$dockerd_bin" >/var/log/kimberlite-dockerd.log 2>&1 &
        wait_for "the Docker engine" 60 "$DOCKER" info
    fi
}

# Uses a local debian:bookworm-slim, else pulls it, else makes it with
# debootstrap (minbase, trimmed like the published slim image) and imports it.
ensure_base_image() {
    "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return 0
    if timeout 120 "$DOCKER" pull "$BASE_IMAGE" >/dev/null 2>&1; then
        log "pulled $BASE_IMAGE"
        return 0
    fi
    log "no registry answers: making $BASE_IMAGE with debootstrap"
    command -v debootstrap >/dev/null || {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
    }
    rootfs="$(mktemp -d /tmp/kimberlite-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" >"$rootfs.log" 2>&1 \
        || { tail -20 "$rootfs.log" >&2; die "debootstrap failed (log above)"; }
    rm -f "$rootfs.log"
    # What the published slim image leaves out, and keeps out of later installs.
    cat > "$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
CFG
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/{man,groff,info,locale,lintian,linda}/* \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log "$rootfs"/tmp/*
    tar -C "$rootfs" --numeric-owner -c . \
        | "$DOCKER" import --change 'CMD ["bash"]' --message "debootstrap --variant=minbase bookworm" - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    log "made $BASE_IMAGE ($("$DOCKER" image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

# Release build with the Swift runtime linked in, stripped, staged for the
# Dockerfile (build_static_release in common.sh, shared with the host release archive).
build_binaries() {
    local stage="$ROOT/docker/stage"
    if [ "${KMB_DOCKER_PREBUILT:-0}" = 1 ]; then
        [ -x "$stage/kimberlite-server" ] && [ -x "$stage/kimberlite-admin" ] \
            || die "KMB_DOCKER_PREBUILT=1 but docker/stage/kimberlite-{server,admin} are missing"
        VERSION="$("$stage/kimberlite-server" --version | awk '{print $NF}')"
        log "using the staged binaries ($VERSION) without building"
        return 0
    fi
    build_static_release
    VERSION="$STAGED_VERSION"
}

build_images() {
    local revision source
    revision="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
    source="$(git -C "$ROOT" config --get remote.origin.url 2>/dev/null || echo unknown)"
    for target in server admin; do
        log "building image kimberlite/$target:$TAG"
        DOCKER_BUILDKIT=1 "$DOCKER" build --quiet -f "$ROOT/docker/Dockerfile" --target "$target" \
            --build-arg BINARIES=prebuilt --build-arg VERSION="$VERSION" \
            --build-arg REVISION="$revision" --build-arg SOURCE="$source" \
            -t "kimberlite/$target:$TAG" -t "kimberlite/$target:$VERSION" "$ROOT" >/dev/null
    done
    "$DOCKER" image ls kimberlite/server >&2
    "$DOCKER" image ls kimberlite/admin | tail -n +2 >&2
}

compose_up() {
    local compose
    compose="$(compose_cli)"
    log "starting the cluster: $compose -f compose/compose.yaml up -d"
    # shellcheck disable=SC2086
    KMB_IMAGE_TAG="$TAG" $compose -f "$ROOT/compose/compose.yaml" up -d --no-build node1 node2 node3
    all_healthy() {
        local service id
        for service in node1 node2 node3; do
            # shellcheck disable=SC2086
            id="$($compose -f "$ROOT/compose/compose.yaml" ps -q "$service")"
            [ "$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] || return 1
        done
    }
    wait_for "three healthy nodes" 120 all_healthy
    cat <<TEXT

The cluster is up (client API / operations on 127.0.0.1):
  node1 17000 / 19090    node2 17100 / 19091    node3 17200 / 19092
  curl -s 127.0.0.1:19090/status | jq
  $compose -f compose/compose.yaml logs -f
  $compose -f compose/compose.yaml down        # stop (add -v to wipe the data volumes)
TEXT
}

ensure_engine
ensure_base_image
[ "$mode" = engine ] && exit 0
build_binaries
build_images
[ "$mode" = images ] && exit 0
compose_up
