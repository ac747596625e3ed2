#!/usr/bin/env python3
"""Print the entries of a requirements file that some packages need: the packages themselves
and everything they depend on, as poetry.lock records it.

usage: requirements-closure.py LOCK REQUIREMENTS PACKAGE...

The jupyter image installs TensorFlow's share of its requirements in a layer of its own.
BuildKit reuses the layers after a COPY whose content has not changed, so after `poetry add`
of a small package that share is the same file and TensorFlow is not installed again.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(lock: dict, roots: list[str]) -> set[str]:
    depends_on: dict[str, set[str]] = {}
    for package in lock["package"]:  # a name may appear once per version/marker
        names = {normalize(d) for d in package.get("dependencies", {})}
        depends_on.setdefault(normalize(package["name"]), set()).update(names)
    needed, todo = set(), [normalize(r) for r in roots]
    while todo:
        name = todo.pop()
        if name not in needed and name in depends_on:
            needed.add(name)
            todo.extend(depends_on[name])
    return needed


def entries(text: str) -> list[str]:
    """Requirement entries, each with its continuation lines (the hashes)."""
    blocks: list[str] = []
    for line in text.splitlines(keepends=True):
        if line[:1].isspace() and blocks:
            blocks[-1] += line
        elif line.strip() and not line.startswith("#"):
            blocks.append(line)
    return blocks


def main(lock_path: str, requirements_path: str, *roots: str) -> None:
    needed = closure(tomllib.loads(Path(lock_path).read_text()), list(roots))
    if not needed:
        sys.exit(f"requirements-closure: none of {', '.join(roots)} is in {lock_path}")
    for entry in entries(Path(requirements_path).read_text()):
        name = re.match(r"[A-Za-z0-9._-]+", entry)
        if name and normalize(name.group()) in needed:
            sys.stdout.write(entry)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__.strip().splitlines()[2])
    main(*sys.argv[1:])
