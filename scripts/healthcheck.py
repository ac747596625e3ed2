#!/usr/bin/env python3
"""The healthcheck of every image of the stack: healthy when $HEALTHCHECK_URL answers 200.

Each image sets HEALTHCHECK_URL and runs this as its HEALTHCHECK; docker-compose.yml keeps
the timing (x-healthcheck). Standard library only: it runs in every image as it is.
"""

import os
import sys
import urllib.request

url = os.environ.get("HEALTHCHECK_URL", "")
if not url:
    sys.exit("healthcheck: HEALTHCHECK_URL is not set")
try:
    with urllib.request.urlopen(url, timeout=4) as answer:  # noqa: S310 (the image's own URL)
        sys.exit(0 if answer.status == 200 else 1)
except OSError as error:
    sys.exit(f"healthcheck: {url}: {error}")
