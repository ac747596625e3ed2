#!/usr/bin/env python3
"""Install hash-pinned requirements, downloading only the files a local wheel store lacks.

usage: install-requirements.py REQUIREMENTS STORE [--skip PACKAGE ...]

--skip leaves out packages that the lock lists but the image never imports (dependencies of
features it does not use); its own import check is what shows they are not needed.

The Dockerfiles run this with STORE on a BuildKit cache mount, so a rebuild after
`poetry add` downloads the new package and not TensorFlow again. pip's own HTTP cache does
not do that reliably: it keeps only responses that carry HTTP caching headers, and an
intercepting proxy may strip them (it did on our build machines: every rebuild downloaded
everything). Here a stored file is used when its sha256 is one the lock pins for that
requirement, so the store can never change what is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

DISTRIBUTIONS = (".whl", ".tar.gz", ".zip")
INDEX_NAME = "sha256-index.json"  # file name -> [size, sha256], so files are hashed once


def requirement_entries(path: Path) -> list[tuple[str, set[str]]]:
    """Each requirement line (continuations joined) with the sha256 digests it allows."""
    entries = []
    for raw_line in path.read_text().replace("\\\n", " ").splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        hashes = {w.split(":", 1)[1] for w in words if w.startswith("--hash=sha256:")}
        if not hashes:
            sys.exit(f"install-requirements: {path}: not hash-pinned: {line.split()[0]}")
        entries.append((line, hashes))
    return entries


def stored_digests(store: Path) -> set[str]:
    index_path = store / INDEX_NAME
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    fresh = {}
    for file in store.iterdir():
        if not file.name.endswith(DISTRIBUTIONS):
            continue
        size = file.stat().st_size
        known = index.get(file.name)
        if known and known[0] == size:
            fresh[file.name] = known
        else:
            fresh[file.name] = [size, hashlib.sha256(file.read_bytes()).hexdigest()]
    partial = index_path.with_suffix(".tmp")
    partial.write_text(json.dumps(fresh, indent=0, sort_keys=True))
    partial.replace(index_path)
    return {digest for _size, digest in fresh.values()}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "--no-cache-dir"], check=True)


def say(message: str) -> None:
    print(f"install-requirements: {message}", flush=True)  # noqa: T201 (the build log)


def main(requirements: str, store_dir: str, skip: list[str]) -> None:
    store = Path(store_dir)
    store.mkdir(parents=True, exist_ok=True)
    skipped = {normalize(name) for name in skip}
    entries = [
        (line, hashes)
        for line, hashes in requirement_entries(Path(requirements))
        if normalize(re.split(r"[=<>!~;\s\[]", line, maxsplit=1)[0]) not in skipped
    ]
    before = stored_digests(store)
    missing = [line for line, hashes in entries if not hashes & before]
    with tempfile.TemporaryDirectory() as tmp:
        if missing:
            # pip passes over the lines whose markers exclude this Python without downloading.
            subset = Path(tmp) / "missing.txt"
            subset.write_text("\n".join(missing) + "\n")
            pip("download", "--no-deps", "--require-hashes", "-d", str(store), "-r", str(subset))
        downloaded = len(stored_digests(store) - before)
        say(f"{len(entries)} requirements; {downloaded} file(s) downloaded, the rest stored")
        selected = Path(tmp) / "requirements.txt"
        selected.write_text("\n".join(line for line, _hashes in entries) + "\n")
        pip("install", "--no-index", "--find-links", str(store), "--no-deps", "--require-hashes",
            "-r", str(selected))  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("requirements")
    parser.add_argument("store")
    parser.add_argument("--skip", nargs="+", default=[], metavar="PACKAGE")
    args = parser.parse_args()
    main(args.requirements, args.store, args.skip)
