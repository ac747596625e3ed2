"""``iris-train`` as a person runs it: a subprocess, its output and its exit code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.processes import free_port
from tests.conftest import ROOT, assert_complete_run, only_run

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
        (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
        (["--epochs", "-5"], "argument --epochs: must be at least 1, got -5"),
        (["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
        (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["--learning-rate", "fast"], "argument --learning-rate: invalid float value: 'fast'"),
        (["--learning-rate", "nan"], "argument --learning-rate: must be a finite number, got nan"),
        (["--learning-rate", "20"], "argument --learning-rate: must be in (0, 10], got 20.0"),
        (["--learning-rate", "0"], "argument --learning-rate: must be in (0, 10], got 0.0"),
        (["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
        (
            ["--test-size", "1.5"],
            "argument --test-size: must be a fraction between 0 and 1, got 1.5",
        ),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(args, message):
    """Every bad argument is a usage error: exactly one line on stderr, exit 2."""
    done = run_cli(*args, timeout=60)
    assert (done.returncode, done.stderr) == (2, f"iris-train: error: {message} (see --help)\n")
    assert done.stdout == ""


def test_argument_and_server_errors_come_before_tensorflow_loads():
    """The checks run before anything heavy is imported: a typo is answered at once."""
    dead = f"http://127.0.0.1:{free_port()}"
    probe = (
        "import sys; from iris_mlflow.cli import main\n"
        f"assert main(['--tracking-uri', '{dead}']) == 1\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_unreachable_server_is_one_line_and_leaves_no_run(client, experiment_name):
    dead = f"http://127.0.0.1:{free_port()}"
    done = run_cli(
        "--epochs", "2", "--tracking-uri", dead, "--experiment", experiment_name, timeout=120
    )
    assert (done.returncode, done.stderr) == (
        1,
        f"iris-train: error: cannot reach the tracking server at {dead}: {REFUSED}\n",
    )
    # Nothing was started anywhere: the live server never saw this experiment.
    assert client.get_experiment_by_name(experiment_name) is None


def test_not_a_tracking_server_is_one_line():
    """A URL that answers, but not as MLflow does, is named as such: one line, exit 1."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        done = run_cli("--tracking-uri", uri, timeout=60)
    finally:
        server.shutdown()
    assert (done.returncode, done.stderr) == (
        1,
        f"iris-train: error: tracking server at {uri} answered 404 File not found to /health\n",
    )
