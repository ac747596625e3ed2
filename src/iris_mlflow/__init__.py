"""Iris species from four measurements: a Keras model trained, tracked and served with MLflow.

The notebook narrates; this package does the work and is what the tests call.
Importing it is cheap: TensorFlow loads only with the submodules that need it.
"""

from iris_mlflow.names import FEATURES, SPECIES

__all__ = ["FEATURES", "SPECIES"]
__version__ = "0.1.0"
