"""The iris data: scikit-learn's bundled copy (no download), split with stratification."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

from iris_mlflow.names import FEATURES, SPECIES

__all__ = ["FEATURES", "SPECIES", "IrisSplit", "load_frame", "split"]


@dataclass(frozen=True)
class IrisSplit:
    """Train, validation and test sets: features as float32 frames, labels as class indices."""

    x_train: pd.DataFrame
    y_train: np.ndarray
    x_val: pd.DataFrame
    y_val: np.ndarray
    x_test: pd.DataFrame
    y_test: np.ndarray


def load_frame() -> pd.DataFrame:
    """All 150 flowers: the four measurements and the species name."""
    bunch = load_iris()
    frame = pd.DataFrame(bunch.data.astype("float32"), columns=list(FEATURES))
    frame["species"] = pd.Categorical.from_codes(bunch.target, categories=list(SPECIES))
    return frame


def split(test_size: float = 0.2, val_size: float = 0.2, seed: int = 42) -> IrisSplit:
    """Stratified train/validation/test split.

    ``test_size`` is a fraction of all rows, ``val_size`` a fraction of what remains,
    so the defaults give 120 rows to fit on (96 train + 24 validation) and 30 to test.
    """
    if not (0 < test_size < 1 and 0 < val_size < 1):
        raise ValueError("test_size and val_size must be fractions between 0 and 1")
    frame = load_frame()
    x = frame[list(FEATURES)]
    y = frame["species"].cat.codes.to_numpy(dtype="int64")
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_size, stratify=y_rest, random_state=seed
    )
    return IrisSplit(
        x_train.reset_index(drop=True),
        y_train,
        x_val.reset_index(drop=True),
        y_val,
        x_test.reset_index(drop=True),
        y_test,
    )
