"""The logged and served model: one MLflow pyfunc that answers in the user's terms.

Input: rows with the four measurements in cm, as named columns. Output: the species name and
the three class probabilities. Rows are checked before they reach the network, so a bad
request gets a 400 that names the problem rather than a silent wrong answer.

The network runs on NumPy (:mod:`iris_mlflow.serving.network`): loading and predicting need
mlflow-skinny, NumPy and pandas, not TensorFlow or Keras. The ``.keras`` file is logged beside
the exported weights, for whoever wants the Keras model itself.
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

from iris_mlflow.names import FEATURES, SPECIES
from iris_mlflow.serving.network import NumpyNetwork

#: Valid measurements, in cm. The largest iris on record is well under 15 cm; 30 leaves
#: room while refusing values in mm (51 for 5.1 cm) or inches-gone-wrong.
MIN_CM, MAX_CM = 0.0, 30.0
#: Rows per request: ample for batch scoring, small enough to answer in well under a second.
MAX_ROWS = 10_000
PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"probability_{name}" for name in SPECIES)
#: The logged model's artifacts: the exported network (what predict uses), and the Keras file.
SPEC_ARTIFACT, WEIGHTS_ARTIFACT, KERAS_ARTIFACT = "network_spec", "network_weights", "keras_model"
#: The files of this package that loading the model runs (model_code imports serving.model,
#: which imports these), logged with it so that whoever loads it needs no install of the
#: package. Only these: each logged file is one more upload on every training and one more
#: download on every load (the whole package is 19 files).
MODEL_CODE: tuple[str, ...] = (
    "__init__.py",
    "names.py",
    "serving/__init__.py",
    "serving/model.py",
    "serving/network.py",
)

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("double", name) for name in FEATURES]),
    outputs=Schema(
        [ColSpec("string", "species"), *(ColSpec("double", c) for c in PROBABILITY_COLUMNS)]
    ),
)


class InvalidMeasurementsError(MlflowException):
    """A request the model must not answer; the model server turns it into a 400."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def check_columns(columns: Iterable) -> None:
    """Refuse a table whose column names are not exactly the four measurements.

    The model server calls this on the names a request carries before parsing it, because
    MLflow's schema enforcement would drop an unknown column silently before ``predict`` runs.
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
    _check_row_count(len(rows))
    dtypes = rows.dtypes  # per column; looked up once (pandas indexing is slow per call)
    for column in FEATURES:
        dtype = dtypes[column]
        if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            raise InvalidMeasurementsError(f"column {column} must hold numbers (cm)")
    in_order = rows if tuple(rows.columns) == FEATURES else rows[list(FEATURES)]
    return _checked_values(in_order.to_numpy(dtype="float64"))


def validate_matrix(matrix: np.ndarray) -> np.ndarray:
    """The checks of :func:`validate_measurements` that remain for a float64 matrix whose
    columns are already FEATURES, in order (the model server's fast path builds one)."""
    _check_row_count(len(matrix))
    return _checked_values(matrix)


def _check_row_count(count: int) -> None:
    if count == 0:
        raise InvalidMeasurementsError("no rows to predict")
    if count > MAX_ROWS:
        raise InvalidMeasurementsError(f"{count} rows is more than {MAX_ROWS} per request")


def _checked_values(matrix: np.ndarray) -> np.ndarray:
    """Refuse a missing, infinite or implausible measurement; the rows as float32."""
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


def species_and_probabilities(probabilities: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The network's output as the answer: the likeliest species per row, and the class
    probabilities as float64 (what MLflow's JSON carries)."""
    probabilities = probabilities.astype("float64")
    return [SPECIES[i] for i in probabilities.argmax(axis=1).tolist()], probabilities


def probabilities_frame(probabilities: np.ndarray) -> pd.DataFrame:
    """Species name and class probabilities, one row per input row."""
    species, probabilities = species_and_probabilities(probabilities)
    columns = {"species": np.asarray(species, dtype=object)}
    columns.update(zip(PROBABILITY_COLUMNS, probabilities.T, strict=True))
    return pd.DataFrame(columns)


class IrisClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc flavour around the exported network (artifacts ``network_spec`` and
    ``network_weights``), evaluated with NumPy."""

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        if SPEC_ARTIFACT not in artifacts or WEIGHTS_ARTIFACT not in artifacts:
            raise MlflowException(
                "this model has no exported network (artifacts "
                f"{SPEC_ARTIFACT!r}, {WEIGHTS_ARTIFACT!r}); it was logged by an older version "
                "that served it with TensorFlow: train a new model"
            )
        self.network = NumpyNetwork.load(artifacts[SPEC_ARTIFACT], artifacts[WEIGHTS_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # noqa: ARG002 (pyfunc interface)
        return probabilities_frame(self.network(validate_measurements(model_input)))


def log_classifier(keras_model, input_example: pd.DataFrame, name: str = "model"):
    """Log the Keras model as an :class:`IrisClassifier`; return MLflow's ModelInfo.

    Runs in the training process: it exports the network for the NumPy runtime (refusing a
    layer or activation that runtime does not implement), checks that the export answers
    like Keras (on the example rows and a spread of plausible measurements), then logs one
    pyfunc model with the export, the ``.keras`` file, and the package files it runs
    (:data:`MODEL_CODE`).
    """
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from iris_mlflow.serving.network import check_export, export_network  # noqa: PLC0415

    package_dir = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        code_dir = Path(tmp) / "code" / package_dir.name
        for relative in MODEL_CODE:
            (code_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(package_dir / relative, code_dir / relative)
        spec_path, weights_path = export_network(keras_model, tmp)
        check_export(
            keras_model, NumpyNetwork.load(spec_path, weights_path), _check_rows(input_example)
        )
        keras_path = Path(tmp) / "iris.keras"
        keras_model.save(keras_path)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("model_code.py")),
            artifacts={
                SPEC_ARTIFACT: str(spec_path),
                WEIGHTS_ARTIFACT: str(weights_path),
                KERAS_ARTIFACT: str(keras_path),
            },
            code_paths=[str(code_dir)],
            signature=SIGNATURE,
            input_example=input_example,
            pip_requirements=pip_requirements(),
        )


def _check_rows(input_example: pd.DataFrame) -> np.ndarray:
    """The example rows plus a grid over plausible measurements (0.1 to 8 cm)."""
    example = input_example[list(FEATURES)].to_numpy(dtype="float32")
    grid = np.random.default_rng(0).uniform(0.1, 8.0, size=(256, len(FEATURES)))
    return np.vstack([example, grid.astype("float32")])


def pip_requirements() -> list[str]:
    """What loading and predicting need, pinned to the versions the model was logged with."""
    from importlib.metadata import version  # noqa: PLC0415

    return [f"{dist}=={version(dist)}" for dist in ("mlflow-skinny", "numpy", "pandas")]
