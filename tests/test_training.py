"""Training logs a complete run to a real tracking server, and fails cleanly."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from iris_mlflow.data import FEATURES, SPECIES, split
from iris_mlflow.train import TrainingConfig, predict_species, train
from tests.conftest import assert_complete_run, only_run


@pytest.mark.slow
def test_training_logs_everything_and_model_loads_back(mlflow_server, client, experiment_name):
    result = train(
        TrainingConfig(epochs=4), tracking_uri=mlflow_server, experiment_name=experiment_name
    )

    assert_complete_run(client, result.run_id, epochs=4)
    assert result.run_id == only_run(client, experiment_name).info.run_id
    assert result.run_url
    assert result.run_url.endswith(f"/runs/{result.run_id}")

    loaded = mlflow.pyfunc.load_model(result.model_uri)
    answer = loaded.predict(result.data.x_test)
    in_memory = predict_species(result.model, result.data.x_test.to_numpy())
    assert list(answer["species"]) == [SPECIES[i] for i in in_memory.argmax(axis=1)]
    np.testing.assert_allclose(
        answer[[f"probability_{s}" for s in SPECIES]].to_numpy(), in_memory, rtol=1e-5, atol=1e-6
    )
    schema = loaded.metadata.get_input_schema()
    assert schema.input_names() == list(FEATURES)


@pytest.mark.slow
def test_default_training_is_accurate_and_reproducible(mlflow_server, experiment_name):
    first = train(tracking_uri=mlflow_server, experiment_name=experiment_name)
    assert first.test_accuracy >= 0.93
    assert len(first.history["loss"]) == 100

    again = train(
        TrainingConfig(epochs=5), tracking_uri=mlflow_server, experiment_name=experiment_name
    )
    np.testing.assert_allclose(again.history["loss"], first.history["loss"][:5], rtol=1e-4)


def test_split_is_stratified_and_disjoint():
    data = split()
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (96, 24, 30)
    for labels in (data.y_train, data.y_val, data.y_test):
        counts = np.bincount(labels, minlength=3)
        assert counts.max() - counts.min() <= 1
    rows = [tuple(r) for frame in (data.x_train, data.x_val, data.x_test) for r in frame.to_numpy()]
    assert len(rows) == 150


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", -3),
        ("epochs", 2.5),
        ("batch_size", 0),
        ("hidden_units", True),
        ("learning_rate", 0),
        ("learning_rate", -0.1),
        ("learning_rate", float("nan")),
        ("learning_rate", "0.01"),
        ("test_size", 1.0),
        ("seed", -1),
    ],
)
def test_bad_config_is_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        TrainingConfig(**{field: value})


@pytest.mark.slow
def test_failure_inside_a_run_marks_it_failed(mlflow_server, client, experiment_name):
    def broken_progress(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        train(
            TrainingConfig(epochs=5),
            tracking_uri=mlflow_server,
            experiment_name=experiment_name,
            progress=broken_progress,
        )
    run = only_run(client, experiment_name)
    assert run.info.status == "FAILED"
    assert mlflow.active_run() is None


def test_losing_the_race_to_create_the_experiment_still_runs_in_it(
    mlflow_server, client, experiment_name, monkeypatch
):
    """Trainings started at once into a new experiment: the one whose create loses the race
    (another process created the experiment between its lookup and its create) must still log
    its run into that experiment, not into Default. The other process is a second client of
    the real server, creating the experiment just after this one's lookup found nothing."""
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    from iris_mlflow import tracking

    lookup = TrackingServiceClient.get_experiment_by_name

    def lookup_then_lose_the_race(self, name):
        found = lookup(self, name)
        if found is None and name == experiment_name:
            client.create_experiment(name)
        return found

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", lookup_then_lose_the_race)
    experiment_id = tracking.configure(mlflow_server, experiment_name)
    monkeypatch.undo()
    with mlflow.start_run() as run:
        pass

    assert experiment_id == client.get_experiment_by_name(experiment_name).experiment_id
    assert run.info.experiment_id == experiment_id
