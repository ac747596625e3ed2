"""``iris-train`` as a person runs it: a subprocess, its output and its exit code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, assert_complete_run, only_run
from tests.servers import free_port

REFUSED = "[Errno 111] Connection refused"


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "iris_mlflow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_cli_trains_reports_and_logs(mlflow_server, client, experiment_name):
    done = run_cli(
        "--epochs",
        "3",
        "--hidden-units",
        "8",
        "--learning-rate",
        "0.02",
        env={"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": experiment_name},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run = only_run(client, experiment_name)
    assert_complete_run(client, run.info.run_id, epochs=3)
    assert run.data.params["hidden_units"] == "8"
    assert run.data.params["learning_rate"] == "0.02"

    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines if line.startswith("epoch")] == [
        ["epoch", f"{n}/3"] for n in (1, 2, 3)
    ]
    assert f"run id:        {run.info.run_id}" in lines
    accuracy = run.data.metrics["test_accuracy"]
    assert f"test accuracy: {accuracy:.4f}" in lines
    assert any(line.endswith(f"/runs/{run.info.run_id}") for line in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--epochs", "0"], "--epochs: must be at least 1"),
        (["--epochs", "-5"], "--epochs: must be at least 1"),
        (["--epochs", "ten"], "--epochs: 'ten' is not a whole number"),
        (["--learning-rate", "fast"], "--learning-rate: 'fast' is not a number"),
        (["--learning-rate", "nan"], "--learning-rate: must be a positive finite number"),
        (["--test-size", "1.5"], "--test-size: must be between 0 and 1"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(args, message):
    done = run_cli(*args, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        next(line for line in done.stderr.splitlines() if line.startswith("iris-train: error:"))
    ]
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_unreachable_server_is_one_line_and_leaves_no_run(client, experiment_name):
    dead = f"http://127.0.0.1:{free_port()}"
    done = run_cli(
        "--epochs", "2", "--tracking-uri", dead, "--experiment", experiment_name, timeout=120
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("iris-train: error:")]
    assert errors == [f"iris-train: error: cannot reach the tracking server at {dead}: {REFUSED}"]
    assert "Traceback" not in done.stderr
    # Nothing was started anywhere: the live server never saw this experiment.
    assert client.get_experiment_by_name(experiment_name) is None


def test_not_a_tracking_server_is_refused():
    """A URL that answers, but not as MLflow does, is named as such."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from iris_mlflow.tracking import TrackingServerError, check_server

        uri = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(TrackingServerError, match="answered 404"):
            check_server(uri)
    finally:
        server.shutdown()
