"""A training whose tracking server goes away for longer than MLflow's client waits: one line
naming the server, and the run is not left RUNNING once the server is back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.mlflow_server import mlflow_server
from harness.processes import free_port, wait_until
from tests.conftest import ROOT

#: MLflow's client, told to give up quickly (by default it retries for about 4 minutes).
IMPATIENT = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


@pytest.mark.slow
def test_a_run_whose_server_stays_away_fails_in_one_line_and_is_closed_later(tmp_path):
    from mlflow import MlflowClient

    home, port = tmp_path / "server", free_port()
    home.mkdir()
    env = {
        **os.environ,
        **IMPATIENT,
        "IRIS_UNFINISHED_RUNS": str(tmp_path / "unfinished-runs.json"),
        "MLFLOW_EXPERIMENT_NAME": "cut-off",
    }
    command = [sys.executable, "-m", "iris_mlflow", "--quiet", "--no-register"]
    with mlflow_server(home, port) as uri:
        client = MlflowClient(tracking_uri=uri)
        training = subprocess.Popen(
            [*command, "--epochs", "1000", "--tracking-uri", uri],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )  # fmt: skip

        def logging_epochs():
            found = client.get_experiment_by_name("cut-off")
            runs = client.search_runs([found.experiment_id]) if found else []
            if runs and client.get_metric_history(runs[0].info.run_id, "loss"):
                return runs[0]
            assert training.poll() is None, training.communicate()[1][-2000:]
            return None

        run = wait_until(logging_epochs, 120, "the training logging epochs", interval=0.3)
    # The server is gone (stopped above) and stays gone while the training ends.
    _out, err = training.communicate(timeout=300)
    assert training.returncode == 1
    errors = [line for line in err.splitlines() if line.startswith("iris-train: error:")]
    assert errors == [err.splitlines()[-1]], err[-3000:]
    assert errors[0] == (
        f"iris-train: error: lost the tracking server at {uri} (no answer after MLflow's client "
        f"retries); run {run.info.run_id} stays RUNNING until the next training against that "
        "server marks it FAILED"
    )
    assert "Traceback" not in err

    with mlflow_server(home, port) as uri:
        client = MlflowClient(tracking_uri=uri)
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
        # The next training against this server closes the run it could not close.
        done = subprocess.run(
            [*command, "--epochs", "1", "--tracking-uri", uri],
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert client.get_run(run.info.run_id).info.status == "FAILED"
        assert f"marked run {run.info.run_id} FAILED" in done.stderr
