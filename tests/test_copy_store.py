"""scripts/copy_store.py between two real `mlflow server` processes on loopback (no Docker): a
store written through one server's API is copied from its SQLite file and artifacts folder
into the other, killed midway and run again, then run again; bad sources and an unreachable
target. The Docker tests (test_team_migration.py) do the same into the team stack."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import ROOT
from harness.mlflow_server import mlflow_server
from harness.processes import free_port, wait_until
from harness.stores import store_snapshot

pytestmark = pytest.mark.slow

EXPERIMENT = MODEL = "iris-classifier"
COPY = ROOT / "scripts" / "copy_store.py"

FILL = """
import sys, time
import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

mlflow.set_tracking_uri(sys.argv[1])
client = MlflowClient(sys.argv[1])


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


mlflow.set_experiment("iris-classifier")
versions = []
for i, status in enumerate(["FINISHED", "FINISHED", "FAILED"]):
    with mlflow.start_run(run_name=f"run-{i}") as run:
        mlflow.log_params({"epochs": "120", "learning_rate": str(0.01 * (i + 1))})
        mlflow.set_tag("purpose", f"try {i}")
        start = int(time.time() * 1000)
        client.log_batch(run.info.run_id, metrics=[
            Metric(key, 1.0 / (step + 1 + i), start + 41 * step, step)
            for key in ("loss", "accuracy") for step in range(120)])
        mlflow.log_text("curves %d" % i, "plots/training_curves.txt")
        if status == "FINISHED":
            info = mlflow.pyfunc.log_model(name="model", python_model=Echo())
            mlflow.log_metric("test_accuracy", 0.9 + i / 100, model_id=info.model_id)
            version = mlflow.register_model(
                f"models:/{info.model_id}", "iris-classifier",
                tags={"test_accuracy": str(0.9 + i / 100)})
            versions.append(version.version)
    if status == "FAILED":
        client.set_terminated(run.info.run_id, "FAILED")
client.set_registered_model_tag("iris-classifier", "team", "iris")
client.set_registered_model_alias("iris-classifier", "champion", versions[1])
client.set_registered_model_alias("iris-classifier", "challenger", versions[0])
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A store as a laptop leaves it: mlflow.db and the artifacts folder its server served."""
    home = tmp_path_factory.mktemp("source")
    with mlflow_server(home) as uri:
        subprocess.run([sys.executable, "-c", FILL, uri], check=True, capture_output=True)
        snapshot = store_snapshot(uri, None, EXPERIMENT, MODEL)
    return home, snapshot


def copy_command(store: Path, artifacts: Path) -> list[str]:
    return [sys.executable, str(COPY), str(store), str(artifacts)]


def copy(store: Path, artifacts: Path, target: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        copy_command(store, artifacts),
        capture_output=True,
        text=True,
        env={**_env(), "MLFLOW_TRACKING_URI": target},
        timeout=600,
    )


def _env() -> dict[str, str]:
    """This process's environment without a tracking server or credentials of its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}


def one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stdout[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def copied_runs(target: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=target)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    return [
        r
        for r in client.search_runs([experiment.experiment_id])
        if "iris.copied_from" in r.data.tags
    ]


def test_a_store_copied_interrupted_then_again_arrives_equal_and_a_third_copy_adds_nothing(
    source, tmp_path
):
    home, before = source
    store, artifacts = home / "mlflow.db", home / "artifacts"
    with mlflow_server(tmp_path) as target:
        started = subprocess.Popen(
            copy_command(store, artifacts),
            env={**_env(), "MLFLOW_TRACKING_URI": target},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            wait_until(lambda: copied_runs(target), 120, "the copy has made a run", interval=0.1)
        finally:
            started.kill()
            started.communicate()
        complete = [r for r in copied_runs(target) if "iris.copy_complete" in r.data.tags]
        assert len(complete) < 3, "the copy finished before it was killed"

        done = copy(store, artifacts, target)
        assert done.returncode == 0, done.stderr[-3000:]
        after = store_snapshot(target, None, EXPERIMENT, MODEL)
        assert after == before
        assert sorted(r["status"] for r in after["runs"].values()) == [
            "FAILED",
            "FINISHED",
            "FINISHED",
        ]
        assert after["aliases"] == {"champion": "2", "challenger": "1"}

        again = copy(store, artifacts, target)
        assert again.returncode == 0, again.stderr[-3000:]
        for kind, count in (("runs", 3), ("logged models", 2), ("model versions", 2)):
            assert f"{kind}: 0 copied, {count} already there" in again.stdout, again.stdout
        assert store_snapshot(target, None, EXPERIMENT, MODEL) == before
        assert len(copied_runs(target)) == 3


def test_bad_sources_and_an_unreachable_target_are_one_line_and_change_nothing(source, tmp_path):
    home, _before = source
    junk = tmp_path / "junk.db"
    junk.write_text("not a database\n" * 100)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("create table notes (text)")
    artifacts = home / "artifacts"
    with mlflow_server(tmp_path) as target:
        for store, folder, line in (
            (
                junk,
                artifacts,
                f"copy-to-team: {junk} is not an MLflow store: file is not a database",
            ),
            (
                other,
                artifacts,
                f"copy-to-team: {other} is not an MLflow store: no MLflow tables in it",
            ),
            (
                tmp_path / "none.db",
                artifacts,
                f"copy-to-team: {tmp_path / 'none.db'}: no such file (expected an MLflow store, "
                "mlflow.db)",
            ),
            (
                home / "mlflow.db",
                tmp_path / "none",
                f"copy-to-team: {tmp_path / 'none'}: no such folder (the store's artifacts)",
            ),
        ):
            assert one_line(copy(store, folder, target)) == line
        assert copied_runs(target) == []
    port = free_port()
    started = time.monotonic()
    away = copy(home / "mlflow.db", artifacts, f"http://127.0.0.1:{port}")
    assert one_line(away) == (
        f"copy-to-team: cannot reach the tracking server at http://127.0.0.1:{port} "
        "(ConnectionError): is the team stack up?"
    )
    assert time.monotonic() - started < 60  # no retrying for minutes
