#!/usr/bin/env bash
# Make sure a Docker engine, Compose and debootstrap (for scripts/build-base-image.sh) are
# available: install what is missing from Debian's packages, start dockerd when it is not
# running, wait until it answers. For CI and fresh build machines; on a desktop with Docker
# running and nothing missing it does nothing.
set -euo pipefail

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing from Debian's packages: ${missing[*]} ..."
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
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
echo "docker engine $(docker version -f '{{.Server.Version}}')"
