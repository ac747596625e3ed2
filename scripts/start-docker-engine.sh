#!/usr/bin/env bash
# Make sure a Docker engine and Compose are available: install them from Debian's
# packages when missing, start dockerd when it is not running, wait until it answers.
# For CI and fresh build machines; on a desktop with Docker already running it does nothing.
set -euo pipefail

if ! docker info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null; then
        echo "installing the Docker engine and Compose from Debian's packages ..."
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose debootstrap >/dev/null
    fi
    echo "starting dockerd ..."
    nohup dockerd >/var/log/dockerd.log 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { echo "error: dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi
if ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null
fi
echo "docker engine $(docker version -f '{{.Server.Version}}')"
