"""Image sizes: ours against a plain `pip install` of the same packages on the same base,
built side by side. Sizes are deterministic, so one build of each is the measure."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from bench.common import ROOT, Measure, run
from harness.stack import Stack

BASE = os.environ.get("BASE_IMAGE", "python:3.11-slim-bookworm")
PLAIN = """FROM {base}
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir {packages}
"""


def image_mb(tag: str) -> float:
    return int(run(["docker", "image", "inspect", "-f", "{{.Size}}", tag]).stdout) / 1e6


def locked_version(requirements: Path, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}==([^ ;\\]+)", requirements.read_text(), re.MULTILINE)
    if not match:
        raise RuntimeError(f"{name} is not in {requirements}")
    return match.group(1)


def build_plain(tag: str, packages: list[str]) -> float:
    with tempfile.TemporaryDirectory() as context:
        (Path(context) / "Dockerfile").write_text(
            PLAIN.format(base=BASE, packages=" ".join(packages))
        )
        run(["docker", "build", "-q", "-t", tag, context], timeout=3000)
    size = image_mb(tag)
    run(["docker", "image", "rm", tag])  # only its size is needed; a few GB of disk back
    return size


def measure(runs: int) -> list[Measure]:  # noqa: ARG001 (sizes need one build)
    Stack().compose("build", timeout=3000)
    base = image_mb(BASE)
    notebook_reqs = ROOT / "jupyter-notebook-docker" / "requirements.txt"
    server_reqs = ROOT / "mlflow-docker" / "requirements.txt"
    pins = {
        name: f"{name}=={locked_version(notebook_reqs, name)}"
        for name in ("tensorflow-cpu", "keras", "mlflow-skinny", "jupyterlab", "papermill",
                     "pandas", "scikit-learn", "matplotlib")
    }  # fmt: skip

    jupyter = Measure(
        name="image_size_jupyter",
        title="Jupyter image size",
        unit="MB",
        target="at most 1,600 MB (jupyter/tensorflow-notebook: 7,730 MB)",
        baseline="plain pip install, same packages and base",
    )
    jupyter.add("ours", image_mb("iris-mlflow-stack/jupyter:latest"))
    jupyter.add(jupyter.baseline, build_plain("iris-bench/plain-jupyter", list(pins.values())))
    mlflow = Measure(
        name="image_size_mlflow",
        title="MLflow server image size",
        unit="MB",
        target="at most 0.8x a plain pip install of mlflow on the same base",
        baseline="plain pip install mlflow, same base",
    )
    mlflow.add("ours", image_mb("iris-mlflow-stack/mlflow:latest"))
    version = locked_version(server_reqs, "mlflow")
    mlflow.add(mlflow.baseline, build_plain("iris-bench/plain-mlflow", [f"mlflow=={version}"]))

    serving = Measure(
        name="image_size_model_server",
        title="Model server image size",
        unit="MB",
        target="at most 450 MB (the model server ran the 1.7 GB jupyter image before)",
        baseline="jupyter image (what the model server ran before)",
    )
    serving.add("ours", image_mb("iris-mlflow-stack/model-server:latest"))
    serving.add(serving.baseline, image_mb("iris-mlflow-stack/jupyter:latest"))
    serving.target_met = serving.samples["ours"][0] <= 450

    for m in (jupyter, mlflow, serving):
        m.notes.append("Sizes are deterministic: one build of each is the measure.")
        m.extra["base image"] = f"`{BASE}`, {base:,.0f} MB"
        m.extra["above the base"] = ", ".join(
            f"{variant}: {values[0] - base:,.0f} MB" for variant, values in m.samples.items()
        )
    # The target is for the official python:3.11-slim base; where a stand-in base is used
    # (no registry), judge by what the image adds above its base plus the official base size.
    official_slim_mb = 130
    jupyter_above = jupyter.samples["ours"][0] - base
    jupyter.target_met = jupyter_above + official_slim_mb <= 1600
    jupyter.extra["on python:3.11-slim (about 130 MB, not pullable here)"] = (
        f"{jupyter_above + official_slim_mb:,.0f} MB"
    )
    mlflow.target_met = (mlflow.ratio("ours") or 1) <= 0.8
    return [jupyter, mlflow, serving]
