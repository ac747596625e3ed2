"""The compose stack: cold start and memory at rest, and the notebook end to end inside it."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import Measure, timed
from harness.processes import wait_for_http
from harness.stack import Stack, remove_leftover_projects

#: MLflow's own defaults for `mlflow server`: four workers and the job runner.
MLFLOW_DEFAULTS = """
services:
  mlflow:
    environment:
      MLFLOW_WORKERS: "4"
      MLFLOW_SERVER_ENABLE_JOB_EXECUTION: "true"
"""
OURS = "project (1 worker, no job runner)"
DEFAULTS = "MLflow defaults (4 workers, job runner)"
CORE = ("mlflow", "jupyter")


def cold_start_seconds(stack: Stack) -> float:
    """From `up` (images built, containers new) until both services answer."""
    stack.compose("rm", "-f", "-s", *CORE)
    start = time.perf_counter()
    stack.compose("up", "-d", *CORE)
    wait_for_http(f"{stack.mlflow_url}/health", timeout=240)
    wait_for_http(f"{stack.jupyter_url}/api", timeout=240)
    return time.perf_counter() - start


def measure(runs: int) -> list[Measure]:
    cold = Measure(
        name="cold_start",
        title="Cold start: `up` with images built until MLflow and JupyterLab both answer",
        unit="s",
        target="median at most 15 s",
        baseline=DEFAULTS,
    )
    memory = Measure(
        name="memory_at_rest",
        title="Memory at rest, 20 s after start, no notebook running",
        unit="MB",
        target="reported",
        baseline=None,
    )
    notebook = Measure(
        name="notebook_end_to_end",
        title="Notebook end to end: papermill in the jupyter container, mlflow container",
        unit="s",
        target="at most 20 s with default parameters",
        baseline="iris-train, same parameters, same container",
    )
    remove_leftover_projects()
    with tempfile.TemporaryDirectory() as tmp:
        defaults = Path(tmp) / "mlflow-defaults.yml"
        defaults.write_text(MLFLOW_DEFAULTS)
        ours, theirs = Stack(), Stack(overrides=(str(defaults),))
        try:
            ours.compose("build", timeout=3000)
            for _ in range(runs):
                cold.add(OURS, cold_start_seconds(ours))
                cold.add(DEFAULTS, cold_start_seconds(theirs))
                theirs.compose("rm", "-f", "-s", *CORE)
            time.sleep(20)
            for service in CORE:
                memory.add(service, ours.memory_mb(service))
            cold.target_met = cold.median(OURS) <= 15

            ours.up()
            ours.compose("up", "-d", "model-server")

            def run_notebook():
                done = ours.exec(
                    "jupyter", "papermill", "iris_training.ipynb", "/tmp/bench.ipynb",  # noqa: S108
                    "--no-progress-bar", "-p", "EXPERIMENT_NAME", "bench-notebook", user="jovyan",
                )  # fmt: skip
                if done.returncode != 0:
                    raise RuntimeError(done.stderr[-3000:])

            def run_cli():
                ours.train("bench-cli")

            run_notebook()  # warm-up: the first champion, the model server's first load
            for _ in range(runs):
                notebook.add("notebook (papermill)", timed(run_notebook))
                notebook.add(notebook.baseline, timed(run_cli))
            notebook.target_met = notebook.median("notebook (papermill)") <= 20
            memory.add("model-server (serving)", ours.memory_mb("model-server"))
        finally:
            ours.down(volumes=True)
            theirs.down(volumes=True)
    memory.notes.append("One reading per service, from `docker stats`, after the runs above.")
    cold.notes.append(
        "Both variants start fresh containers on existing volumes; readiness is the first 200 "
        "from MLflow's `/health` and Jupyter's `/api` (Docker's health status follows within "
        "one 5 s healthcheck interval)."
    )
    return [cold, memory, notebook]
