"""The model server against the one before it (today's, for issue 14), side by side in one run.

"before": the model server of commit ``BEFORE``: a gateway in front of ``mlflow models serve``
of a TensorFlow pyfunc, in the 1.7 GB notebook image; its compose project is built from that
commit's own files. "ours": the TensorFlow-free model-server image of this checkout. Each stack
gets two registered versions by two trainings; then, for each server, measured from inside
its own container with bench/loadgen.py (so client and server share the same 2 cores in both
cases): single-row latency, throughput at concurrency 8, memory at rest with the champion
loaded (`docker stats`), and the time from moving ``@champion`` to the other version until
the server answers with it.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Measure
from harness.processes import http_ok, wait_until
from harness.stack import Stack, docker, remove_leftover_projects

#: The last commit whose model server ran TensorFlow (gateway + `mlflow models serve`).
BEFORE = "d60474c"
OURS = "ours: TensorFlow-free image, one process"
THEIRS = f"before ({BEFORE}): gateway + mlflow models serve, notebook image"
ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
BODY = json.dumps({"dataframe_records": [ROW]})
ROWS = json.dumps(
    {
        "dataframe_records": [
            {"sepal_length": 6.0, "sepal_width": 2.7, "petal_length": 5.0, "petal_width": 1.6},
            {"sepal_length": 6.3, "sepal_width": 2.8, "petal_length": 4.9, "petal_width": 1.6},
        ]
    }
)
INVOCATIONS = "http://127.0.0.1:5001/invocations"


def loadgen(container: str, *args: str) -> dict:
    script = (ROOT / "bench" / "loadgen.py").read_text()
    done = docker("exec", container, "python3", "-c", script, *args, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def answer(stack: Stack) -> str:
    """What the served champion says about two borderline flowers (differs between versions)."""
    import requests

    done = requests.post(
        f"{stack.model_server_url}/invocations",
        data=ROWS,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    done.raise_for_status()
    return done.text


def two_versions(stack: Stack) -> None:
    """Two trainings that give different answers: a weak model, then the default one."""
    stack.train("bench-serving", "--epochs", "3")
    stack.train("bench-serving", "--epochs", "100", "--hidden-units", "32", "--seed", "7")


def swap_seconds(stack: Stack, client, version: str) -> float:
    """Move @champion to ``version``; seconds until the model server answers with it."""
    before = answer(stack)
    start = time.perf_counter()
    client.set_registered_model_alias("iris-classifier", "champion", version)
    wait_until(lambda: answer(stack) != before, 180, f"version {version} served", interval=0.05)
    return time.perf_counter() - start


def start(stack: Stack, build_services: tuple[str, ...]) -> None:
    """Build (all services when none are named) and start; the model server before this
    change was unhealthy until a champion existed, so `up --wait` cannot be used for it."""
    stack.compose("build", *build_services, timeout=3000)
    stack.compose("up", "-d", timeout=600)
    stack.wait_healthy(("mlflow", "jupyter"))


def measure(runs: int) -> list[Measure]:
    from mlflow import MlflowClient

    p50 = Measure(
        name="serving_latency_p50",
        title="Model server: single-row latency, p50 (300 sequential requests per run)",
        unit="ms",
        target="p50 at most 3 ms",
        baseline=THEIRS,
    )
    p99 = Measure(
        name="serving_latency_p99",
        title="Model server: single-row latency, p99",
        unit="ms",
        target="reported",
        baseline=THEIRS,
    )
    rps = Measure(
        name="serving_throughput",
        title="Model server: throughput at concurrency 8, single-row requests",
        unit="req/s",
        target="at least 2x the model server before",
        baseline=THEIRS,
    )
    memory = Measure(
        name="serving_memory",
        title="Model server: memory at rest with a champion loaded",
        unit="MB",
        target="at most 200 MB",
        baseline=THEIRS,
    )
    swap = Measure(
        name="serving_swap",
        title="Model server: time from moving @champion to the new version answering",
        unit="s",
        target="at most 5 s",
        baseline=THEIRS,
    )
    seconds = 3 if runs == 1 else 10
    remove_leftover_projects()
    with tempfile.TemporaryDirectory() as tmp:
        checkout = Path(tmp)
        archive = subprocess.run(
            ["git", "archive", "--format=tar", BEFORE], cwd=ROOT, capture_output=True, check=False
        )
        ours = Stack()
        stacks = {OURS: ours}
        if archive.returncode == 0:
            subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive.stdout, check=True)
            stacks[THEIRS] = Stack(directory=checkout, extra_env={"IMAGE_TAG": "bench-before"})
        else:  # a shallow clone: no baseline to run, ours is still measured
            for m in (p50, p99, rps, memory, swap):
                m.notes.append(f"Commit {BEFORE} is not in this clone: no baseline measured.")
        try:
            for stack in stacks.values():
                start(stack, ("mlflow", "jupyter", "model-server") if stack is ours else ())
            for stack in stacks.values():
                two_versions(stack)
                wait_until(
                    lambda stack=stack: http_ok(f"{stack.model_server_url}/ping"),
                    300,
                    "the model server serving its champion",
                )
            time.sleep(20)  # at rest
            for variant, stack in stacks.items():
                memory.add(variant, stack.memory_mb("model-server"))
            for _ in range(runs):
                for variant, stack in stacks.items():
                    container = stack.container("model-server")
                    lat = loadgen(container, "latency", INVOCATIONS, BODY, "300")
                    p50.add(variant, lat["p50_ms"])
                    p99.add(variant, lat["p99_ms"])
                    tp = loadgen(container, "throughput", INVOCATIONS, BODY, str(seconds), "8")
                    rps.add(variant, tp["rps"])
                    client = MlflowClient(tracking_uri=stack.mlflow_url)
                    # Back and forth between the two versions, one move per run.
                    current = client.get_model_version_by_alias("iris-classifier", "champion")
                    other = "1" if current.version == "2" else "2"
                    swap.add(variant, swap_seconds(stack, client, other))
        finally:
            for stack in stacks.values():
                stack.down(volumes=True)
            subprocess.run(
                ["docker", "image", "rm", "-f", "iris-mlflow-stack/jupyter:bench-before",
                 "iris-mlflow-stack/mlflow:bench-before"],
                capture_output=True, check=False,
            )  # fmt: skip
    p50.target_met = p50.median(OURS) <= 3
    rps.target_met = rps.median(OURS) >= 2 * rps.median(THEIRS) if THEIRS in stacks else None
    memory.target_met = memory.median(OURS) <= 200
    swap.target_met = swap.median(OURS) <= 5
    rps.notes.append(
        f"Each run: 300 sequential requests for latency, then {seconds} s with 8 threads on "
        "keep-alive connections; the load generator (bench/loadgen.py) runs inside each "
        "model-server container, so every server shares the same 2 cores with it."
    )
    swap.notes.append(
        "Each run moves @champion between the two registered versions with the MLflow client "
        "and polls the server every 50 ms until its answer changes."
    )
    memory.notes.append("One `docker stats` reading per run, 20 s after the last request.")
    return [p50, p99, rps, memory, swap]
