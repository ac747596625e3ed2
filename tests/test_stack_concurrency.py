"""Trainings at once, and a tracking server that goes away mid-training, in the compose stack.

A team trains concurrently all the time: every run must arrive whole, and the registry's
champion must be the rightful one whatever order the registrations finish in. And a
restarted or killed tracking server must cost a training nothing (MLflow's client retries).
"""

from __future__ import annotations

import uuid

import pytest

from harness.processes import wait_until
from harness.stack import docker, engine_available
from tests.conftest import (
    assert_complete_run,
    assert_trainings_at_once_all_arrive,
)

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not engine_available(), reason="no Docker engine is running"),
]

TRAININGS = 8
EPOCHS = 20


def test_eight_trainings_at_once_all_arrive_and_the_rightful_champion_wins(stack):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_url)
    assert_trainings_at_once_all_arrive(stack, client, TRAININGS, EPOCHS)


@pytest.mark.parametrize("fault", ["restart", "kill"])
def test_a_training_survives_the_tracking_server_going_away(stack, fault):
    """`docker compose restart mlflow`, or `docker kill` and start again, while a long
    training logs: the training exits 0 and its run has every epoch."""
    from mlflow import MlflowClient

    experiment = f"fault-{fault}-{uuid.uuid4().hex[:8]}"
    epochs = 2000  # about 40 s of training: the server is away for part of it
    training = stack.start_training(experiment, "--epochs", str(epochs), "--no-register")
    client = MlflowClient(tracking_uri=stack.mlflow_url)

    def logging_epochs():
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if runs and client.get_metric_history(runs[0].info.run_id, "loss"):
            return runs[0]
        assert training.poll() is None, training.communicate()[1][-2000:]
        return None

    run = wait_until(logging_epochs, 180, "the training logging its first epochs", interval=0.5)
    if fault == "restart":
        stack.compose("restart", "mlflow", timeout=180)
    else:
        docker("kill", stack.container("mlflow"))
    assert training.poll() is None, "the training ended before the server went away"
    stack.up("mlflow")
    _out, err = training.communicate(timeout=900)
    assert training.returncode == 0, err[-2000:]
    assert_complete_run(client, run.info.run_id, epochs)
