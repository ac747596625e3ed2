#!/usr/bin/env bash
# The healthcheck of every image of the stack: healthy when $HEALTHCHECK_URL
# (http://host:port/path) answers 200. Each image sets HEALTHCHECK_URL and runs this as its
# HEALTHCHECK; the compose files keep the timing. Bash and its /dev/tcp only: Docker runs
# this every few seconds in every container, and starting Python for it cost about 0.1 s of
# CPU a check (timed by hand here). Redirects are not followed: no health URL of ours has one.
set -uo pipefail

url="${HEALTHCHECK_URL:-}"
if [[ ! "$url" =~ ^http://([^/:]+):([0-9]+)(/.*)?$ ]]; then
    echo "healthcheck: HEALTHCHECK_URL is not http://host:port/path: '$url'" >&2
    exit 1
fi
host="${BASH_REMATCH[1]}" port="${BASH_REMATCH[2]}" path="${BASH_REMATCH[3]:-/}"
if ! { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
    echo "healthcheck: $url: no connection" >&2
    exit 1
fi
printf 'GET %s HTTP/1.0\r\nHost: %s:%s\r\n\r\n' "$path" "$host" "$port" >&3
if ! read -r -t 4 _ status _ <&3; then
    echo "healthcheck: $url: no answer within 4 s" >&2
    exit 1
fi
status="${status%$'\r'}"  # a status line with no reason phrase ends right after the code
if [ "$status" != 200 ]; then
    echo "healthcheck: $url: HTTP $status" >&2
    exit 1
fi
