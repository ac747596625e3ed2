"""The logged and served model: a pyfunc around the Keras model that answers in the user's terms.

Input: rows with the four measurements in cm, as named columns. Output: the species name and
the three class probabilities. Rows are checked before they reach the network, so a bad
request gets a 400 that names the problem rather than a silent wrong answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema

from iris_mlflow.data import FEATURES, SPECIES

#: Valid measurements, in cm. The largest iris on record is well under 15 cm; 30 leaves
#: room while refusing values in mm (51 for 5.1 cm) or inches-gone-wrong.
MIN_CM, MAX_CM = 0.0, 30.0
#: Rows per request: ample for batch scoring, small enough to answer in well under a second.
MAX_ROWS = 10_000
PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"probability_{name}" for name in SPECIES)

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("double", name) for name in FEATURES]),
    outputs=Schema(
        [ColSpec("string", "species"), *(ColSpec("double", c) for c in PROBABILITY_COLUMNS)]
    ),
)


class InvalidMeasurementsError(MlflowException):
    """A request the model must not answer; the scoring server turns it into a 400."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def check_columns(columns: Iterable) -> None:
    """Refuse a table whose column names are not exactly the four measurements.

    The model server's gateway calls this on the names a request carries, because MLflow's
    schema enforcement would drop an unknown column silently before ``predict`` runs.
    """
    names = [str(c) for c in columns]
    missing = [c for c in FEATURES if c not in names]
    extra = [c for c in names if c not in FEATURES]
    repeated = sorted({c for c in names if names.count(c) > 1})
    if missing or extra or repeated:
        parts = [f"repeated column(s): {', '.join(repeated)}"] if repeated else []
        if missing:
            parts.append(f"missing column(s): {', '.join(missing)}")
        if extra:
            parts.append(f"unknown column(s): {', '.join(extra)}")
        raise InvalidMeasurementsError(f"{'; '.join(parts)}; expected {', '.join(FEATURES)}")


def validate_measurements(rows: pd.DataFrame | np.ndarray) -> np.ndarray:
    """Check rows of measurements and return them as a float32 matrix in FEATURES order."""
    if isinstance(rows, np.ndarray):
        if rows.ndim != 2 or rows.shape[1] != len(FEATURES):
            raise InvalidMeasurementsError(
                f"expected rows of {len(FEATURES)} measurements ({', '.join(FEATURES)}), "
                f"got an array of shape {rows.shape}"
            )
        rows = pd.DataFrame(rows, columns=list(FEATURES))
    if not isinstance(rows, pd.DataFrame):
        raise InvalidMeasurementsError(
            f"expected a table of measurements, got {type(rows).__name__}"
        )
    check_columns(rows.columns)
    if len(rows) == 0:
        raise InvalidMeasurementsError("no rows to predict")
    if len(rows) > MAX_ROWS:
        raise InvalidMeasurementsError(f"{len(rows)} rows is more than {MAX_ROWS} per request")
    values = rows[list(FEATURES)]
    for column in FEATURES:
        if not pd.api.types.is_numeric_dtype(values[column]) or pd.api.types.is_bool_dtype(
            values[column]
        ):
            raise InvalidMeasurementsError(f"column {column} must hold numbers (cm)")
    matrix = values.to_numpy(dtype="float64")
    bad = ~np.isfinite(matrix) | (matrix <= MIN_CM) | (matrix > MAX_CM)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        value = matrix[row, col]
        shown = "missing/NaN" if math.isnan(value) else repr(float(value))
        raise InvalidMeasurementsError(
            f"row {row}: {FEATURES[col]} is {shown}; measurements must be in "
            f"({MIN_CM:g}, {MAX_CM:g}] cm ({bad.any(axis=1).sum()} bad row(s) in all)"
        )
    return matrix.astype("float32")


def probabilities_frame(probabilities: np.ndarray) -> pd.DataFrame:
    """Species name and class probabilities, one row per input row."""
    frame = pd.DataFrame(probabilities.astype("float64"), columns=list(PROBABILITY_COLUMNS))
    frame.insert(0, "species", np.asarray(SPECIES, dtype=object)[probabilities.argmax(axis=1)])
    return frame


class IrisClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc flavour around the saved ``.keras`` file (artifact ``keras_model``)."""

    def load_context(self, context) -> None:
        import keras  # noqa: PLC0415 (heavy; only the process that serves needs it)

        self.model = keras.saving.load_model(context.artifacts["keras_model"], compile=False)
        # Trace once now, so the first request does not pay for it.
        self.model(np.ones((1, len(FEATURES)), dtype="float32"))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # noqa: ARG002 (pyfunc interface)
        matrix = validate_measurements(model_input)
        # A direct call, not model.predict: predict sets up a data pipeline per call,
        # which costs tens of milliseconds on a few rows (tensorflow issue 40261).
        probabilities = np.asarray(self.model(matrix, training=False))
        return probabilities_frame(probabilities)


def log_classifier(keras_model, input_example: pd.DataFrame, name: str = "model"):
    """Log the Keras model as an :class:`IrisClassifier`; return MLflow's ModelInfo."""
    import tempfile  # noqa: PLC0415

    package_dir = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        keras_path = Path(tmp) / "iris.keras"
        keras_model.save(keras_path)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(package_dir / "served_model.py"),
            artifacts={"keras_model": str(keras_path)},
            # The served container needs only this package's code, not an install of it.
            code_paths=[str(package_dir)],
            signature=SIGNATURE,
            input_example=input_example,
            pip_requirements=_pip_requirements(),
        )


def _pip_requirements() -> list[str]:
    """Pin what the model needs to the versions it was trained with."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    pins = []
    for dist in ("mlflow-skinny", "keras", "tensorflow-cpu", "tensorflow", "numpy", "pandas"):
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return pins
