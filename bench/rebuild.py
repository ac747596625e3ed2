"""Rebuild after `poetry add` of a small pure-Python package: time from the lock change to
rebuilt images with a warm build cache, against a cold build.

Works on a copy of the repository with its own image tag, so the real lock, requirements and
images are never touched, and the engine's build cache is left as it was (other projects'
included). Cold is `build --no-cache`: no layer is reused, and BuildKit gives the wheel
store's cache mount an empty throwaway copy (moby/buildkit#4250), so everything is
downloaded. A plain build then fills the real wheel store (unmeasured: on a machine that
built the stack before it is quick), and each warm run adds another package, so no run can
reuse the layers of the one before.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Measure, run
from harness.stack import COMPOSE

#: Small pure-Python packages that nothing in the lock depends on; one per warm run.
PACKAGES = ("humanize", "tabulate", "toolz", "inflection", "pytimeparse")
TAG = "bench-rebuild"
IMAGES = (f"iris-mlflow-stack/jupyter:{TAG}", f"iris-mlflow-stack/mlflow:{TAG}")
WARM = "warm: poetry add, export, build"
COLD = "cold build: --no-cache, empty wheel store"
STORE_REPORT = re.compile(r"install-requirements: (\d+ requirements; \d+ file\(s\) downloaded)")


def image_ids() -> set[str]:
    ids = set()
    for image in IMAGES:
        done = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Id}}", image],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            ids.add(done.stdout.strip())
    return ids


def copy_repository(target: Path) -> None:
    for name in run(["git", "ls-files", "-z"], cwd=ROOT).stdout.split("\0"):
        if name and (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)


def timed_run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = run(cmd, cwd=cwd, env=env, timeout=3600)
    return time.perf_counter() - start, done.stdout + done.stderr


def measure(runs: int) -> list[Measure]:
    rebuild = Measure(
        name="rebuild_after_poetry_add",
        title="Rebuild after `poetry add` of a small pure-Python package",
        unit="s",
        target="warm rebuild at most 60 s, with no re-download of TensorFlow",
        baseline=COLD,
    )
    poetry = os.environ.get("POETRY", "poetry")
    env = {
        **os.environ, "IMAGE_TAG": TAG, "COMPOSE_PROJECT_NAME": "irisbenchrebuild",
        "DOCKER_BUILDKIT": "1", "COMPOSE_DOCKER_CLI_BUILD": "1", "POETRY": poetry,
    }  # fmt: skip
    compose = list(COMPOSE)
    redownloads = []
    from_store = ""
    built: set[str] = set()  # every image the runs make: each warm run leaves one untagged
    try:
        with tempfile.TemporaryDirectory() as tmp:
            repo = Path(tmp)
            copy_repository(repo)
            # One cold build: each downloads about 1 GB, and the warm runs are what is judged.
            rebuild.add(COLD, timed_run([*compose, "build", "--no-cache"], repo, env)[0])
            built |= image_ids()
            timed_run([*compose, "build"], repo, env)  # the state a user's rebuild starts from
            built |= image_ids()
            for package in PACKAGES[: max(1, runs)]:
                add_seconds, _ = timed_run([poetry, "add", package], repo, env)
                export_seconds, _ = timed_run(["make", "requirements"], repo, env)
                build_seconds, log = timed_run([*compose, "build"], repo, env)
                built |= image_ids()
                rebuild.add("(of which poetry add: resolve and lock)", add_seconds)
                rebuild.add(WARM, add_seconds + export_seconds + build_seconds)
                redownloads.append("Downloading tensorflow" in log)
                # scripts/install-requirements.py says how much it found in the wheel store.
                from_store = ", ".join(STORE_REPORT.findall(log))
    finally:
        subprocess.run(
            ["docker", "image", "rm", "-f", *IMAGES, *built], capture_output=True, check=False
        )
    rebuild.extra["warm rebuilds that downloaded TensorFlow again"] = (
        f"{sum(redownloads)} of {len(redownloads)}"
    )
    rebuild.extra["wheel store, last warm rebuild (per rebuilt layer)"] = (
        from_store or "no layer reinstalled"
    )
    rebuild.notes.append(
        "One cold build (it downloads about 1 GB); each warm run adds another package "
        f"({', '.join(PACKAGES)}), so none can reuse the layers of the one before."
    )
    rebuild.target_met = rebuild.median(WARM) <= 60 and not any(redownloads)
    return [rebuild]
