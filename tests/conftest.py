"""Shared fixtures: a real ``mlflow server`` on loopback, and helpers that read runs back."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from harness import ROOT
from harness.mlflow_server import mlflow_server as start_mlflow_server

PER_EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
TEST_METRICS = ("test_loss", "test_accuracy", "test_macro_f1")
PLOTS = ("plots/confusion_matrix.png", "plots/training_curves.png")

# Quiet TensorFlow in subprocesses the tests start; it keeps failure output readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real tracking server: SQLite store and served artifacts in a temp folder."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


SRC = ROOT / "src"
#: The UID a host user other than the image's default 1000 would have.
HOST_UID = 4242


@pytest.fixture(scope="session")
def src_owner():
    """The UID/GID that own ./src during the tests, as on a user's machine.

    A user's checkout belongs to that user; CI's belongs to root. Run as root, the fixture
    lends ./src to HOST_UID for the duration (and gives it back), so the test sees what a
    non-root host user whose UID is not the image's 1000 would see.
    """
    stat = SRC.stat()
    if stat.st_uid != 0:
        yield stat.st_uid, stat.st_gid
        return
    subprocess.run(["chown", "-R", f"{HOST_UID}:{HOST_UID}", str(SRC)], check=True)
    try:
        yield HOST_UID, HOST_UID
    finally:
        subprocess.run(["chown", "-R", f"{stat.st_uid}:{stat.st_gid}", str(SRC)], check=True)


@pytest.fixture(scope="session")
def stack(request):
    request.getfixturevalue("src_owner")  # ./src gets its owner before the container starts
    from harness.stack import Stack, remove_leftover_projects

    remove_leftover_projects()
    stack = Stack()
    try:
        stack.up(build=True, timeout=3000)  # the README's `docker compose up --build`, detached
        yield stack
    finally:
        stack.down(volumes=True)


@pytest.fixture
def experiment_name(request: pytest.FixtureRequest) -> str:
    """A fresh experiment per test, so runs of different tests never mix."""
    return f"test-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(mlflow_server: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server)


def only_run(client, experiment_name: str):
    """The single run of an experiment, checked to be the only one."""
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"experiment {experiment_name} was not created"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    return runs[0]


def assert_complete_run(client, run_id: str, epochs: int) -> None:
    """Everything a training run promises to log, read back through the tracking API."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["epochs"] == str(epochs)
    for name in ("batch_size", "hidden_units", "learning_rate", "seed", "n_train", "n_test"):
        assert name in params, f"param {name} not logged"
    for metric in PER_EPOCH_METRICS:
        history = client.get_metric_history(run_id, metric)
        assert sorted(m.step for m in history) == list(range(epochs)), metric
    for metric in TEST_METRICS:
        assert 0 <= run.data.metrics[metric] <= (1 if metric != "test_loss" else 100), metric
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert set(PLOTS) <= plots
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    assert len(models) == 1, "expected one logged model"
    assert models[0].name == "model"


def assert_trainings_at_once_all_arrive(stack, client, trainings: int, epochs: int) -> None:
    """`iris-train` this many times at once in the stack's jupyter container, into one new
    experiment and registered model: every run arrives whole, one version each, and the
    champion is the rightful one whatever order the registrations finished in."""
    import uuid

    from iris_mlflow.names import CHAMPION

    name = f"concurrent-{uuid.uuid4().hex[:8]}"
    started = [
        stack.start_training(name, "--epochs", str(epochs), "--registered-model", name)
        for _ in range(trainings)
    ]
    outcomes = [training.communicate(timeout=900) for training in started]
    for training, (_out, err) in zip(started, outcomes, strict=True):
        assert training.returncode == 0, err[-2000:]

    experiment = client.get_experiment_by_name(name)
    runs = {run.info.run_id: run for run in client.search_runs([experiment.experiment_id])}
    assert len(runs) == trainings
    for run in runs.values():
        assert run.info.status == "FINISHED"
        for metric in PER_EPOCH_METRICS:
            history = client.get_metric_history(run.info.run_id, metric)
            assert sorted(point.step for point in history) == list(range(epochs)), metric

    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == trainings
    # The accuracy each version was registered with, read from its run, not from the tags.
    accuracy = {v.version: runs[v.run_id].data.metrics["test_accuracy"] for v in versions}
    rightful = max(accuracy, key=lambda version: (accuracy[version], int(version)))
    assert client.get_model_version_by_alias(name, CHAMPION).version == rightful
    decisions = [v.tags["decision"] for v in versions]
    assert decisions.count("first champion") == 1, decisions


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With IRIS_FAIL_ON_SKIP=1 (CI sets it), a skipped test fails the run.

    A docker or browser test that skips for want of an engine proves nothing; CI must
    install what they need, not quietly pass without them.
    """
    if os.environ.get("IRIS_FAIL_ON_SKIP") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and exitstatus == pytest.ExitCode.OK:
        reporter.write_line(
            f"IRIS_FAIL_ON_SKIP=1: {len(skipped)} test(s) skipped; failing the run", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
