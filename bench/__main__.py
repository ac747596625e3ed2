"""Run the benchmarks, save each as bench/results/<name>.json, render docs/benchmarks.md.

python -m bench                 # every benchmark, 5 runs each (several minutes each)
python -m bench --smoke         # one run each: CI's check that none has rotted
python -m bench --only tracking serving
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import time

from bench.common import REPORT, RESULTS, context, render_report

#: module name -> what it measures; each module has measure(runs) -> list[Measure]
BENCHMARKS = {
    "tracking": "tracking overhead and training speed",
    "stack": "cold start, memory at rest, notebook end to end",
    "serving": "model server: latency, throughput, memory, swap, against the one before it",
    "images": "image sizes against a plain pip install",
    "rebuild": "rebuild after poetry add, warm cache against cold",
    "runtimes": "runtimes for the logged model without TensorFlow: size, latency, parity",
    "team": "team profile against the laptop stack: logging throughput, cold start, memory",
}
#: Not in --smoke runs: it installs four throwaway venvs (about 1.3 GB of downloads).
NOT_SMOKED = {"runtimes"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one run of each, for CI")
    parser.add_argument("--runs", type=int, default=5, help="repetitions (default: %(default)s)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run just these")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    runs = 1 if args.smoke else args.runs
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    context()  # the commit and date of the code about to run
    selected = args.only or [b for b in BENCHMARKS if not (args.smoke and b in NOT_SMOKED)]
    if not args.only and RESULTS.exists():
        shutil.rmtree(RESULTS)  # a full run replaces every figure; --only keeps the others
    for name in selected:
        print(f"== {name}: {BENCHMARKS[name]} ({runs} run{'s' * (runs > 1)})", flush=True)
        start = time.monotonic()
        module = importlib.import_module(f"bench.{name}")
        for measure in module.measure(runs):
            path = measure.save()
            print(
                f"   {measure.title}: target met: {measure.target_met} -> {path.name}", flush=True
            )
        print(f"   ({time.monotonic() - start:.0f} s)", flush=True)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    # A partial run (--only) keeps the earlier report's other sections.
    REPORT.write_text(render_report(smoke=args.smoke, keep=REPORT if args.only else None))
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
