#!/usr/bin/env bash
# Make sure a Docker engine, Compose v2 (`docker compose`, what users type), Compose 1.29
# (`docker-compose`, still supported: CI validates the file with it) and debootstrap (for
# scripts/build-base-image.sh) are available: install what is missing from Debian's
# packages, start dockerd when it is not running, wait until it answers. For CI and fresh
# build machines; on a desktop with Docker running and nothing missing it does nothing.
set -euo pipefail

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing from Debian's packages: ${missing[*]} ..."
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

# Compose v2 as a CLI plugin. Debian bookworm packages only 1.29; trixie's docker-compose
# package is Compose v2, a static binary that runs on bookworm. It is unpacked from the
# package alone, with a private apt list: the machine's apt sources are not touched.
plugin_dir=/usr/local/lib/docker/cli-plugins
if ! docker compose version >/dev/null 2>&1; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || { echo "error: no Debian mirror found for Compose v2" >&2; exit 1; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/lists/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
        > "$work/trixie.list"
    apt_private=(-o "Dir::Etc::sourcelist=$work/trixie.list" -o Dir::Etc::sourceparts=-
                 -o "Dir::State::Lists=$work/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
    echo "installing Compose v2 (Debian trixie's docker-compose package) into $plugin_dir ..."
    apt-get "${apt_private[@]}" update -q >/dev/null
    (cd "$work" && apt-get "${apt_private[@]}" download docker-compose >/dev/null)
    dpkg -x "$work"/docker-compose_2*.deb "$work/x"
    install -D -m 755 "$work/x/usr/libexec/docker/cli-plugins/docker-compose" "$plugin_dir/docker-compose"
fi

if ! docker info >/dev/null 2>&1; then
    echo "starting dockerd ..."
    nohup dockerd >/var/log/dockerd.log 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { echo "error: dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi
echo "docker engine $(docker version -f '{{.Server.Version}}'), $(docker compose version)"
