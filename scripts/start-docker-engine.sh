#!/usr/bin/env bash
# Make sure a Docker engine 25 or later, Compose v2 (`docker compose`, what users type),
# Compose 1.29 (`docker-compose`, still supported: CI validates the file with it) and
# debootstrap (for scripts/build-base-image.sh) are available: install what is missing from
# Debian's packages, start dockerd when it is not running, wait until it answers. For CI and
# fresh build machines; on a desktop with Docker running and nothing missing it does nothing.
set -euo pipefail

# Engine 25 is the first whose healthchecks have a start interval: the team profile checks
# every second while a service starts and every 30 s after (see docker-compose.team.yml).
min_engine=25

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing from Debian's packages: ${missing[*]} ..."
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

# Debian bookworm packages engine 20.10 and Compose 1.29. Trixie's docker-compose package is
# Compose v2, a static binary, and its docker.io package's dockerd (26.1) runs on bookworm
# beside bookworm's containerd, runc and docker-init. Each is unpacked from its package alone,
# with a private apt list: the machine's apt sources are not touched.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trixie_ready=
unpack_from_trixie() {  # unpack_from_trixie PACKAGE: the package's files under $work/PACKAGE
    local apt_private=(-o "Dir::Etc::sourcelist=$work/trixie.list" -o Dir::Etc::sourceparts=-
                       -o APT::Sandbox::User=root  # the work folder is root's alone
                       -o "Dir::State::Lists=$work/lists" -o Dir::Cache::pkgcache=
                       -o Dir::Cache::srcpkgcache=)
    if [ -z "$trixie_ready" ]; then
        local mirror
        mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
        [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
        [ -n "$mirror" ] || { echo "error: no Debian mirror found to fetch $1 from" >&2; exit 1; }
        mkdir -p "$work/lists/partial"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
            > "$work/trixie.list"
        apt-get "${apt_private[@]}" update -q >/dev/null
        trixie_ready=1
    fi
    (cd "$work" && apt-get "${apt_private[@]}" download "$1" >/dev/null)
    dpkg -x "$work/$1"_*.deb "$work/$1"
}

plugin_dir=/usr/local/lib/docker/cli-plugins
if ! docker compose version >/dev/null 2>&1; then
    echo "installing Compose v2 (Debian trixie's docker-compose package) into $plugin_dir ..."
    unpack_from_trixie docker-compose
    install -D -m 755 "$work/docker-compose/usr/libexec/docker/cli-plugins/docker-compose" \
        "$plugin_dir/docker-compose"
fi

major() { sed -nE 's/^[^0-9]*([0-9]+)\..*/\1/p'; }
at_least_min() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge "$min_engine" ]; }
# dockerd finds docker-proxy on PATH, where /usr/local/sbin comes before /usr/sbin.
engine_dir=/usr/local/sbin
dockerd=$(PATH="$engine_dir:$PATH:/usr/sbin" command -v dockerd || true)
if ! at_least_min "$({ [ -n "$dockerd" ] && "$dockerd" --version; } | major)"; then
    echo "installing Docker engine 26 (Debian trixie's dockerd) into $engine_dir ..."
    unpack_from_trixie docker.io
    install -D -m 755 "$work/docker.io/usr/sbin/dockerd" "$work/docker.io/usr/sbin/docker-proxy" \
        "$engine_dir/"
    dockerd=$engine_dir/dockerd
fi

running_engine() { docker version -f '{{.Server.Version}}' 2>/dev/null || true; }
if docker info >/dev/null 2>&1 && ! at_least_min "$(running_engine | major)"; then
    if [[ " ${missing[*]} " != *" docker.io "* ]]; then
        echo "error: Docker engine $(running_engine) is running; this project needs $min_engine or later: stop it and run this again" >&2
        exit 1
    fi
    # Started by the package just installed: its post-install may start services (and under
    # systemd, its socket would start it again).
    echo "stopping Docker engine $(running_engine), started by its package ..."
    if [ -d /run/systemd/system ]; then
        systemctl disable --now docker.socket docker.service >/dev/null 2>&1 || true
    fi
    pkill -x dockerd || true
    for _ in $(seq 30); do pgrep -x dockerd >/dev/null || break; sleep 1; done
fi
if ! docker info >/dev/null 2>&1; then
    echo "starting dockerd ..."
    nohup "$dockerd" >/var/log/dockerd.log 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { echo "error: dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi
at_least_min "$(running_engine | major)" || {
    echo "error: Docker engine $(running_engine) answers; this project needs $min_engine or later" >&2
    exit 1
}
echo "docker engine $(running_engine), $(docker compose version)"
