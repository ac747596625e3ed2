#!/usr/bin/env bash
# Chromium for the browser tests, from Debian's packages (Playwright drives it; a browser
# download by Playwright itself is not needed).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: run as root, or install Debian's chromium package yourself" >&2
    exit 2
fi
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
echo "installed $(/usr/bin/chromium --version)"
