"""Train the iris classifier and track the run in MLflow: what the notebook narrates."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import keras
import mlflow
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix, f1_score

from iris_mlflow import tracking
from iris_mlflow.classifier import log_classifier
from iris_mlflow.data import FEATURES, SPECIES, IrisSplit, split
from iris_mlflow.model import build_model
from iris_mlflow.registry import REGISTERED_MODEL, Registration, register

MODEL_NAME = "model"


@dataclass(frozen=True)
class TrainingConfig:
    """The knobs of one training run; each one is logged as a run parameter."""

    epochs: int = 100
    batch_size: int = 16
    hidden_units: int = 16
    learning_rate: float = 0.01
    seed: int = 42
    test_size: float = 0.2
    val_size: float = 0.2

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "hidden_units"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a whole number of at least 0, got {self.seed!r}")
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not (0 < lr <= 10):
            raise ValueError(f"learning_rate must be a number in (0, 10], got {lr!r}")
        if not math.isfinite(lr):
            raise ValueError(f"learning_rate must be finite, got {lr!r}")
        for name in ("test_size", "val_size"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not (0 < value < 1):
                raise ValueError(f"{name} must be a fraction between 0 and 1, got {value!r}")


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
    register_as: str | None = REGISTERED_MODEL,
) -> TrainingResult:
    """Train on a stratified split, evaluate on held-out flowers, and log it all to MLflow.

    A failure anywhere inside the run ends the run as FAILED (MLflow's context manager).
    With ``register_as`` (the default name unless None), the model then becomes a version of
    that registered model, champion or challenger by its test accuracy.
    """
    config = config or TrainingConfig()
    experiment_id = tracking.configure(tracking_uri, experiment_name)
    data = split(config.test_size, config.val_size, config.seed)
    x_train = data.x_train.to_numpy()
    x_test = data.x_test.to_numpy()

    callbacks: list[keras.callbacks.Callback] = [tracking.EpochMetricsLogger()]
    if progress is not None:
        callbacks.append(tracking.ProgressPrinter(config.epochs, progress))

    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(asdict(config))
        mlflow.log_params(
            {"n_train": len(x_train), "n_val": len(data.y_val), "n_test": len(x_test)}
        )
        mlflow.set_tags(
            {"dataset": "iris (scikit-learn)", "framework": f"keras {keras.__version__}"}
        )

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
        # Everything queued asynchronously must reach the server before the run ends.
        mlflow.flush_async_logging()

    registration = None
    if register_as:
        registration = register(logged.model_uri, float(test_accuracy), register_as)

    return TrainingResult(
        run_id=run.info.run_id,
        experiment_id=experiment_id,
        model_uri=logged.model_uri,
        test_accuracy=float(test_accuracy),
        test_loss=float(test_loss),
        test_macro_f1=test_macro_f1,
        history=history,
        model=model,
        data=data,
        figures=figures,
        run_url=tracking.run_url(experiment_id, run.info.run_id),
        registration=registration,
    )


__all__ = [
    "FEATURES",
    "SPECIES",
    "TrainingConfig",
    "TrainingResult",
    "predict_species",
    "train",
]
