"""Train the iris classifier and track the run in MLflow: what the notebook narrates."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import keras
import mlflow
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix, f1_score

from iris_mlflow import tracking, unfinished_runs
from iris_mlflow.config import TrainingConfig
from iris_mlflow.data import FEATURES, SPECIES, IrisSplit, split
from iris_mlflow.model import build_model
from iris_mlflow.names import REGISTERED_MODEL_NAME
from iris_mlflow.registry import Registration, register
from iris_mlflow.serving.model import log_classifier

MODEL_NAME = "model"
log = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """What a run produced: its ids, its scores, and the live objects for the notebook."""

    run_id: str
    experiment_id: str
    model_uri: str
    test_accuracy: float
    test_loss: float
    test_macro_f1: float
    history: dict[str, list[float]]
    model: keras.Model = field(repr=False)
    data: IrisSplit = field(repr=False)
    figures: dict[str, Figure] = field(repr=False)
    run_url: str | None = None
    registration: Registration | None = None


def training_curves(history: dict[str, Sequence[float]]) -> Figure:
    """Loss and accuracy per epoch, training against validation."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        epochs = range(1, len(history[metric]) + 1)
        ax.plot(epochs, history[metric], label="train")
        ax.plot(epochs, history[f"val_{metric}"], label="validation")
        ax.set(title=metric, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray) -> Figure:
    """Held-out confusion matrix with species names."""
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.subplots()
    matrix = confusion_matrix(y_true, y_pred, labels=range(len(SPECIES)))
    ConfusionMatrixDisplay(matrix, display_labels=SPECIES).plot(ax=ax, colorbar=False)
    ax.set_title("test set")
    return fig


def predict_species(model: keras.Model, measurements: np.ndarray) -> np.ndarray:
    """Class probabilities for rows of measurements in cm.

    A direct call of the model, not ``model.predict``: on a handful of rows ``predict``
    spends tens of milliseconds setting up a data pipeline.
    """
    return keras.ops.convert_to_numpy(model(np.asarray(measurements, dtype="float32")))


def batches_per_epoch(config: TrainingConfig, data: IrisSplit) -> int:
    return math.ceil(len(data.y_train) / config.batch_size)


def fit(
    model: keras.Model,
    data: IrisSplit,
    config: TrainingConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, list[float]]:
    """Fit on the training rows, validating after every epoch; the per-epoch history.

    The rows go in as a prefetched tf.data pipeline, reshuffled every epoch. With NumPy
    arrays Keras rebuilds its input pipeline each epoch, which on 96 rows makes 100 epochs
    about 4x slower (bench/tracking.py measures both).
    """
    train_rows = (
        tf.data.Dataset.from_tensor_slices((data.x_train.to_numpy(), data.y_train))
        .shuffle(len(data.y_train), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_rows = tf.data.Dataset.from_tensor_slices((data.x_val.to_numpy(), data.y_val)).batch(
        len(data.y_val)
    )
    fitted = model.fit(
        train_rows,
        validation_data=val_rows,
        epochs=config.epochs,
        shuffle=False,  # the pipeline reshuffles every epoch itself
        callbacks=list(callbacks),
        verbose=0,
    )
    return {k: [float(v) for v in values] for k, values in fitted.history.items()}


def train(
    config: TrainingConfig | None = None,
    *,
    tracking_uri: str | None = None,
    experiment_name: str | None = None,
    run_name: str | None = None,
    progress: Callable[[str], None] | None = None,
    register_as: str | None = REGISTERED_MODEL_NAME,
) -> TrainingResult:
    """Train on a stratified split, evaluate on held-out flowers, and log it all to MLflow.

    A failure anywhere inside the run ends the run as FAILED (MLflow's context manager).
    If the tracking server went away and stayed away longer than MLflow's client retries,
    this raises :class:`~iris_mlflow.tracking.TrackingServerError` with one line naming the
    server; the run, which could not be closed, is marked FAILED by the next training.
    With ``register_as`` (the default name unless None), the model then becomes a version of
    that registered model, champion or challenger by its test accuracy.
    """
    config = config or TrainingConfig()
    experiment_id = tracking.configure(tracking_uri, experiment_name)
    uri = mlflow.get_tracking_uri()
    for run_id in unfinished_runs.close_remembered(mlflow.MlflowClient(), uri):
        log.warning(
            "marked run %s FAILED: it was cut off when the tracking server went away", run_id
        )

    run = None
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            result = _train_in_run(config, progress)
    except Exception as error:
        # With the server gone, MLflow cannot mark the run FAILED either: remember it, so the
        # next training marks it, and say so in one line.
        if run is None or not _server_gone(uri):
            raise
        unfinished_runs.remember(uri, run.info.run_id)
        raise tracking.TrackingServerError(
            f"lost the tracking server at {uri} (no answer after MLflow's client retries); "
            f"run {run.info.run_id} stays RUNNING until the next training against that server "
            "marks it FAILED"
        ) from error

    result.run_id = run.info.run_id
    result.experiment_id = experiment_id
    result.run_url = tracking.run_url(experiment_id, run.info.run_id)
    if register_as:
        result.registration = register(result.model_uri, result.test_accuracy, register_as)
    return result


def _train_in_run(config: TrainingConfig, progress: Callable[[str], None] | None) -> TrainingResult:
    """Everything logged inside the active run."""
    data = split(config.test_size, config.val_size, config.seed)
    x_train = data.x_train.to_numpy()
    x_test = data.x_test.to_numpy()
    epoch_logger = tracking.EpochMetricsLogger()
    callbacks: list[keras.callbacks.Callback] = [epoch_logger]
    if progress is not None:
        callbacks.append(tracking.ProgressPrinter(config.epochs, progress))

    mlflow.log_params(asdict(config))
    mlflow.log_params({"n_train": len(x_train), "n_val": len(data.y_val), "n_test": len(x_test)})
    mlflow.set_tags({"dataset": "iris (scikit-learn)", "framework": f"keras {keras.__version__}"})

    model = build_model(
        x_train,
        config.hidden_units,
        config.learning_rate,
        config.seed,
        steps_per_execution=batches_per_epoch(config, data),
    )
    history = fit(model, data, config, callbacks)

    test_loss, test_accuracy = model.evaluate(x_test, data.y_test, verbose=0)
    probabilities = predict_species(model, x_test)
    y_pred = probabilities.argmax(axis=1)
    test_macro_f1 = float(f1_score(data.y_test, y_pred, average="macro"))
    mlflow.log_metrics(
        {"test_loss": test_loss, "test_accuracy": test_accuracy, "test_macro_f1": test_macro_f1}
    )

    figures = {
        "training_curves": training_curves(history),
        "confusion_matrix": confusion_figure(data.y_test, y_pred),
    }
    for name, fig in figures.items():
        mlflow.log_figure(fig, f"plots/{name}.png")

    logged = log_classifier(model, data.x_test.head(3), name=MODEL_NAME)
    # Everything queued asynchronously must reach the server before the run ends; a batch
    # that did not fails the run rather than leaving it FINISHED with epochs missing.
    mlflow.flush_async_logging()
    epoch_logger.wait_until_logged()
    return TrainingResult(
        run_id="",
        experiment_id="",
        model_uri=logged.model_uri,
        test_accuracy=float(test_accuracy),
        test_loss=float(test_loss),
        test_macro_f1=test_macro_f1,
        history=history,
        model=model,
        data=data,
        figures=figures,
    )


def _server_gone(uri: str) -> bool:
    try:
        tracking.check_server(uri)
    except tracking.TrackingServerError:
        return True
    return False


__all__ = [
    "FEATURES",
    "SPECIES",
    "TrainingConfig",
    "TrainingResult",
    "predict_species",
    "train",
]
