#!/usr/bin/env bash
# Builds the release archive the Ansible role `kimberlite` installs on hosts:
#
#   scripts/release-archive.sh            # -> dist/kimberlite-<version>-linux-<arch>.tar.gz
#
# The binaries are the static release build that the Docker images use
# (build_static_release in scripts/common.sh: release, --static-swift-stdlib,
# stripped, staged in docker/stage/); a second build with nothing changed is
# a no-op, so CI compiles them once for both. KMB_RELEASE_PREBUILT=1 packs the
# binaries already staged in docker/stage/ without building.
#
# Layout: kimberlite-<version>-linux-<arch>/{bin/kimberlite-server,
# bin/kimberlite-admin, systemd/kimberlite.service, systemd/kimberlite.catalog,
# systemd/environment.example}. Hosts need glibc, libsqlite3-0 and libsystemd0.
# Prints the archive's path on stdout.
source "$(dirname "$0")/common.sh"

for argument in "$@"; do
    case "$argument" in
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) die "unknown option $argument (see --help)" ;;
    esac
done

stage="$ROOT/docker/stage"
if [ "${KMB_RELEASE_PREBUILT:-0}" = 1 ]; then
    [ -x "$stage/kimberlite-server" ] && [ -x "$stage/kimberlite-admin" ] \
        || die "KMB_RELEASE_PREBUILT=1 but docker/stage/kimberlite-{server,admin} are missing"
else
    build_static_release
fi
version="$("$stage/kimberlite-server" --version | awk '{print $NF}')"
[ -n "$version" ] || die "$stage/kimberlite-server --version printed no version"
name="kimberlite-$version-linux-$(uname -m)"
dist="$ROOT/dist"
work="$(mktemp -d /tmp/kimberlite-release.XXXXXX)"
trap 'rm -rf "$work"' EXIT
install -d "$work/$name/bin" "$work/$name/systemd" "$dist"
install -m 0755 "$stage/kimberlite-server" "$stage/kimberlite-admin" "$work/$name/bin/"
install -m 0644 "$ROOT/systemd/kimberlite.service" "$ROOT/systemd/kimberlite.catalog" \
    "$ROOT/systemd/environment.example" "$work/$name/systemd/"
# Reproducible metadata: fixed owner and the binaries' own times.
tar -C "$work" --owner=0 --group=0 --numeric-owner --sort=name -czf "$dist/$name.tar.gz.tmp" "$name"
mv "$dist/$name.tar.gz.tmp" "$dist/$name.tar.gz"
log "wrote $dist/$name.tar.gz ($(du -h "$dist/$name.tar.gz" | cut -f1))"
echo "$dist/$name.tar.gz"
