"""MLflow configuration and the per-epoch metrics callback.

Configured the MLflow way: ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME`` from the
environment, overridable by arguments. With no URI at all, runs go to an embedded SQLite
store in the working folder, so the code runs with no server.
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlsplit

import keras
import mlflow
from mlflow.entities import Metric

from iris_mlflow.tracking_server import (
    TrackingServerError,
    check_server,
    resolve_experiment,
    resolve_tracking_uri,
)

__all__ = [
    "EpochMetricsLogger",
    "ProgressPrinter",
    "TrackingServerError",
    "check_server",
    "configure",
    "resolve_experiment",
    "resolve_tracking_uri",
    "run_url",
]

#: Where a person opens the UI, when it differs from the URI the code talks to
#: (in the stack the notebook talks to http://mlflow:5000, the browser to localhost).
UI_URL_ENV = "MLFLOW_UI_URL"
#: MLflow's background logger, buffering: it merges what was queued in that time into one
#: request, and a flush at the end of a run returns at once. Unbuffered, its thread polls the
#: queue with a 1 s timeout, and every flush waits for that (+1 s on a 2 s training).
ASYNC_BUFFER_SECONDS = "1"


def configure(tracking_uri: str | None = None, experiment_name: str | None = None) -> str:
    """Point MLflow at the store and experiment; return the experiment id."""
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", ASYNC_BUFFER_SECONDS)
    uri = resolve_tracking_uri(tracking_uri)
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(resolve_experiment(experiment_name))
    # When another process creates the experiment between set_experiment's lookup and its
    # create, MLflow returns the experiment without making it active, and the run would land
    # in Default (seen with eight trainings at once into a new experiment). By id, it is.
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment.experiment_id


def run_url(experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, when there is a UI to open."""
    base = os.environ.get(UI_URL_ENV) or mlflow.get_tracking_uri()
    if urlsplit(base).scheme not in ("http", "https"):
        return None
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


class EpochMetricsLogger(keras.callbacks.Callback):
    """Log every epoch's metrics to the active run without holding training up.

    Epochs are buffered and handed to MLflow's asynchronous logger as one ``log_batch`` at
    most every ``interval`` seconds and when training ends: the UI's curves still grow during
    a long training, and a short one pays for two or three calls instead of one per epoch
    (each ``mlflow.log_metrics`` call costs milliseconds of bookkeeping on this thread even
    when asynchronous), let alone the naive one blocking request per metric per epoch (3x
    slower, docs/benchmarks.md). :func:`iris_mlflow.train.train` flushes before the run ends.
    (``mlflow.keras.MlflowCallback`` logs every epoch too, but also a step-0 ``validation_*``
    point after each validation pass, which only adds noise here.)
    """

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__()
        self.interval = interval
        self._pending: list[Metric] = []
        self._last_sent = 0.0
        self._operations: list = []  # one per batch handed to MLflow's background logger

    def on_train_begin(self, logs: dict | None = None) -> None:  # noqa: ARG002 (Keras API)
        self._run_id = mlflow.active_run().info.run_id
        self._client = mlflow.MlflowClient()
        self._last_sent = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now_ms = int(time.time() * 1000)
        self._pending.extend(
            Metric(key, float(value), now_ms, epoch) for key, value in (logs or {}).items()
        )
        if time.monotonic() - self._last_sent >= self.interval:
            self._send()

    def on_train_end(self, logs: dict | None = None) -> None:  # noqa: ARG002 (Keras API)
        self._send()

    def _send(self) -> None:
        for start in range(0, len(self._pending), 1000):  # MLflow's limit per batch
            batch = self._pending[start : start + 1000]
            self._operations.append(
                self._client.log_batch(self._run_id, metrics=batch, synchronous=False)
            )
        self._pending = []
        self._last_sent = time.monotonic()

    def wait_until_logged(self) -> None:
        """Wait for every batch; raise if one was not stored. MLflow's background logger only
        logs such a failure and moves on: without this, a run whose server went away could
        end FINISHED with epochs missing."""
        operations, self._operations = self._operations, []
        for operation in operations:
            operation.wait()


class ProgressPrinter(keras.callbacks.Callback):
    """One compact line per epoch, for terminals."""

    def __init__(self, epochs: int, write=print) -> None:
        super().__init__()
        self.epochs = epochs
        self.write = write

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        shown = "  ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items())
        self.write(f"epoch {epoch + 1:>{len(str(self.epochs))}}/{self.epochs}  {shown}")
