"""Tracking overhead and training speed: 100 epochs of the default model, alternating
no tracking, the project's tracking, and the naive one-call-per-metric loop, against a real
tracking server on loopback."""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import mlflow

from bench.common import Measure, timed
from harness.mlflow_server import mlflow_server
from iris_mlflow.data import split
from iris_mlflow.model import build_model
from iris_mlflow.tracking import EpochMetricsLogger, configure
from iris_mlflow.train import TrainingConfig, fit

NO_TRACKING = "no tracking"
PROJECT = "project: buffered, async log_batch"
NAIVE = "naive: sync log_metric per metric"


class NaiveLogger(keras.callbacks.Callback):
    """What tutorials write: one blocking request per metric per epoch."""

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            mlflow.log_metric(key, float(value), step=epoch)


def one_training(config: TrainingConfig, callbacks: list, tracked: bool) -> tuple[float, float]:
    """Seconds for fit (and, tracked, the flush the run waits for); held-out accuracy."""
    data = split(config.test_size, config.val_size, config.seed)
    model = build_model(
        data.x_train.to_numpy(), config.hidden_units, config.learning_rate, config.seed
    )

    def work():
        fit(model, data, config, callbacks)
        if tracked:
            mlflow.flush_async_logging()

    if tracked:
        with mlflow.start_run():
            seconds = timed(work)
    else:
        seconds = timed(work)
    _, accuracy = model.evaluate(data.x_test.to_numpy(), data.y_test, verbose=0)
    return seconds, float(accuracy)


def measure(runs: int) -> list[Measure]:
    config = TrainingConfig()
    overhead = Measure(
        name="tracking_overhead",
        title="Tracking overhead: 100 epochs, default model, real tracking server on loopback",
        unit="s",
        target="project / no tracking at most 1.05",
        baseline=NO_TRACKING,
    )
    speed = Measure(
        name="training_speed",
        title="Training speed: 100 epochs of the default model (no tracking)",
        unit="s",
        target="at most 2 s, held-out accuracy at least 0.93",
        baseline="plain model.fit (Keras defaults)",
    )
    with tempfile.TemporaryDirectory() as home, mlflow_server(Path(home)) as uri:
        configure(uri, "bench-tracking")  # as train() does
        one_training(config, [], tracked=False)  # warm-up: TensorFlow's first graph builds
        accuracies = []
        for _ in range(runs):
            seconds, accuracy = one_training(config, [], tracked=False)
            overhead.add(NO_TRACKING, seconds)
            speed.add("project fit", seconds)
            accuracies.append(accuracy)
            overhead.add(PROJECT, one_training(config, [EpochMetricsLogger()], tracked=True)[0])
            overhead.add(NAIVE, one_training(config, [NaiveLogger()], tracked=True)[0])
            speed.add(speed.baseline, plain_fit_seconds(config))
    ratio = overhead.ratio(PROJECT)
    overhead.target_met = ratio is not None and ratio <= 1.05
    speed.extra["held-out accuracy (project fit)"] = (
        f"{min(accuracies):.3f} to {max(accuracies):.3f}"
    )
    speed.target_met = speed.median("project fit") <= 2.0 and min(accuracies) >= 0.93
    return [overhead, speed]


def plain_fit_seconds(config: TrainingConfig) -> float:
    """The same model and data through Keras' defaults: what a user writes first."""
    data = split(config.test_size, config.val_size, config.seed)
    model = build_model(
        data.x_train.to_numpy(), config.hidden_units, config.learning_rate, config.seed
    )
    return timed(
        lambda: model.fit(
            data.x_train.to_numpy(), data.y_train,
            validation_data=(data.x_val.to_numpy(), data.y_val),
            epochs=config.epochs, batch_size=config.batch_size, verbose=0,
        )
    )  # fmt: skip
