#!/usr/bin/env bash
# Build a stand-in for python:3.11-slim-bookworm from Debian itself, for machines that
# reach a Debian mirror and a package index but no container registry (air-gapped
# networks, and this project's CI). Both Dockerfiles take it through the BASE_IMAGE
# build arg:  BASE_IMAGE=iris-mlflow-stack/python-base:3.11-bookworm docker compose build
#
# Usage: scripts/build-base-image.sh [TAG]
#   MIRROR     Debian mirror (default: the one this machine's apt uses)
#   CA_BUNDLE  CA bundle copied into the image, so pip trusts an intercepting HTTPS
#              proxy (default: this machine's bundle)
# Rebuilds only when the tag is missing, or FORCE=1.
set -euo pipefail

tag="${1:-iris-mlflow-stack/python-base:3.11-bookworm}"
ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag exists (FORCE=1 rebuilds it)"
    exit 0
fi

mirror="${MIRROR:-}"
if [ -z "$mirror" ]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
fi
if [ -z "$mirror" ]; then
    mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "error: no Debian mirror found; set MIRROR" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed" >&2; exit 2; }
[ -r "$ca_bundle" ] || { echo "error: CA bundle $ca_bundle is not readable; set CA_BUNDLE" >&2; exit 2; }

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap bookworm from $mirror ..."
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" "$mirror" >/dev/null

# Same entry points as the official image: `python` on PATH.
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
cp "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
# Keep the image slim, as the official one is.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

ca=/etc/ssl/certs/ca-certificates.crt
tar -C "$rootfs" -c . | docker import \
    --change "ENV LANG=C.UTF-8 PIP_CERT=$ca SSL_CERT_FILE=$ca REQUESTS_CA_BUNDLE=$ca" \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
echo "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
