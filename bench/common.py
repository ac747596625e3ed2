"""What every benchmark shares: repetitions, statistics, results as JSON, the Markdown report."""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REPORT = ROOT / "docs" / "benchmarks.md"


@dataclass
class Measure:
    """One benchmark: samples per variant, against a baseline variant measured in the same run."""

    name: str
    title: str
    unit: str
    target: str
    baseline: str | None
    samples: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    target_met: bool | None = None

    def add(self, variant: str, value: float) -> None:
        self.samples.setdefault(variant, []).append(value)

    def median(self, variant: str) -> float:
        return statistics.median(self.samples[variant])

    def ratio(self, variant: str) -> float | None:
        if self.baseline is None or variant == self.baseline or self.baseline not in self.samples:
            return None
        return self.median(variant) / self.median(self.baseline)

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        return {
            v: {
                "median": statistics.median(s),
                "min": min(s),
                "max": max(s),
                "runs": len(s),
                "ratio": self.ratio(v),
            }
            for v, s in self.samples.items()
        }

    def save(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        path.write_text(
            json.dumps({**asdict(self), "summary": self.summary(), **context()}, indent=2)
        )
        return path


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(cmd: list[str], timeout: float = 1800, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done


@functools.cache
def context() -> dict[str, object]:
    """When, where and on what code a result was measured: read once, when the benchmarks
    start (python -m bench calls it first), so a file edited during a long run does not mark
    the figures of the code that ran as dirty."""
    try:
        commit = run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT).stdout.strip()
        dirty = bool(
            run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT).stdout.strip()
        )
    except (RuntimeError, FileNotFoundError):
        commit, dirty = "unknown", False
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        engine = run(["docker", "version", "-f", "{{.Server.Version}}"], timeout=20).stdout.strip()
    except (RuntimeError, OSError, subprocess.TimeoutExpired):
        engine = ""  # no engine: the benchmarks that need one say so themselves
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + ("+dirty" if dirty else ""),
        "machine": f"{os.cpu_count()} cores ({cpu}), {memory_gib:.0f} GiB, "
        f"{platform.system()} {platform.machine()}",
        "docker_engine": engine,
    }


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "MB":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.2f}"
    if unit == "req/s":
        return f"{value:,.0f}"
    return f"{value:.2f}"


def kept_sections(report: Path, replaced: set[str]) -> list[str]:
    """The sections of an existing report whose titles no new result replaces: a run of some
    benchmarks (`--only`) keeps the others' figures, each with its own date and commit."""
    if not report.exists():
        return []
    parts = report.read_text().split("\n## ")[1:]
    return [f"## {part.rstrip()}\n" for part in parts if part.split("\n", 1)[0] not in replaced]


def render_report(smoke: bool, keep: Path | None = None) -> str:
    """The Markdown report of the results in bench/results; with ``keep``, also the sections
    of that earlier report that no result here replaces."""
    results = sorted(RESULTS.glob("*.json"))
    loaded = [json.loads(p.read_text()) for p in results]
    kept = kept_sections(keep, {r["title"] for r in loaded}) if keep else []
    lines = ["# Benchmarks", ""]
    if loaded:
        head = loaded[0]
        lines += [
            f"Measured on {head['machine']}; each section gives its date and commit"
            + (" — **smoke run: one iteration each, figures not meaningful**." if smoke else "."),
            "",
            "Each figure is the median of the runs shown, with min and max; a ratio compares a "
            "variant's median with its baseline's, measured side by side in the same run. "
            "Regenerate with `make bench` (a few minutes per benchmark; see `bench/`). "
            "Benchmarks never fail CI on a number: CI runs each once, as a smoke run.",
            "",
        ]
    for r in loaded:
        met = {True: "**met**", False: "**missed**", None: "n/a"}[r["target_met"]]
        lines += [f"## {r['title']}", "", f"Target: {r['target']}: {met}.", ""]
        engine = f", Docker Engine {r['docker_engine']}" if r.get("docker_engine") else ""
        lines += [f"Measured {r['date']} at commit `{r['commit']}`{engine}.", ""]
        against = f"ratio vs {r['baseline']}" if r["baseline"] else "ratio"
        lines += [
            f"| variant | median ({r['unit']}) | min | max | runs | {against} |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for variant, s in r["summary"].items():
            ratio = f"{s['ratio']:.2f}x" if s["ratio"] and not variant.startswith("(") else ""
            ratio = "baseline" if variant == r["baseline"] else ratio
            lines.append(
                f"| {variant} | {fmt(s['median'], r['unit'])} | {fmt(s['min'], r['unit'])} | "
                f"{fmt(s['max'], r['unit'])} | {s['runs']} | {ratio} |"
            )
        for key, value in r["extra"].items():
            lines.append(f"\n- {key}: {value}")
        for note in r["notes"]:
            lines.append(f"\n{note}")
        lines.append("")
    lines += kept
    return "\n".join(lines).rstrip() + "\n"
