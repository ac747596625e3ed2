"""The trained network as plain arrays, evaluated with NumPy: serving needs no TensorFlow.

At log time, in the training process, :func:`export_network` writes the Keras model's layers
to a small JSON spec (layer types, names, activations) and their weights to an ``.npz``; a
layer type or activation this module does not implement is refused there, with a message
saying which. Wherever the logged model is loaded, :class:`NumpyNetwork` reads the two files
and computes the same function as Keras' forward pass, in float32 as Keras does.

The network is ``Normalization -> Dense(relu) -> Dense(softmax)`` (:mod:`iris_mlflow.model`);
the functions below implement exactly what Keras 3 computes for those layers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: Bumped when the spec changes in a way an older reader would misread.
SPEC_FORMAT = 1
SPEC_FILE, WEIGHTS_FILE = "network.json", "network.npz"


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "softmax": _softmax,
}
#: Keras layer classes this runtime evaluates (an InputLayer carries no computation).
LAYERS = ("Normalization", "Dense")


class UnsupportedNetworkError(ValueError):
    """The Keras model has a part the NumPy runtime does not implement."""


class NumpyNetwork:
    """A chain of layers as NumPy functions: float32 rows in, the last layer's output out."""

    def __init__(self, spec: dict, weights: dict[str, np.ndarray]) -> None:
        if spec.get("format") != SPEC_FORMAT:
            raise UnsupportedNetworkError(
                f"network spec format {spec.get('format')!r}; this runtime reads {SPEC_FORMAT}"
            )
        self.spec = spec
        self.steps: list[Callable[[np.ndarray], np.ndarray]] = [
            self._step(layer, weights) for layer in spec["layers"]
        ]

    @classmethod
    def load(cls, spec_path: str | Path, weights_path: str | Path) -> NumpyNetwork:
        spec = json.loads(Path(spec_path).read_text())
        with np.load(weights_path, allow_pickle=False) as stored:
            weights = {key: stored[key] for key in stored.files}
        return cls(spec, weights)

    @staticmethod
    def _step(layer: dict, weights: dict[str, np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        name, kind = layer["name"], layer["type"]
        if kind == "Normalization":
            # What Keras computes: the difference from the mean over the standard deviation,
            # which is kept from going below epsilon.
            mean = weights[f"{name}/mean"].astype("float32")
            scale = np.maximum(
                np.sqrt(weights[f"{name}/variance"].astype("float32")),
                np.float32(layer["epsilon"]),
            )
            return lambda x: (x - mean) / scale
        if kind == "Dense":
            kernel = weights[f"{name}/kernel"].astype("float32")
            bias = weights[f"{name}/bias"].astype("float32") if layer["use_bias"] else None
            activation = ACTIVATIONS[layer["activation"]]
            if bias is None:
                return lambda x: activation(x @ kernel)
            return lambda x: activation(x @ kernel + bias)
        raise UnsupportedNetworkError(f"layer {name!r}: unknown type {kind!r}")

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        out = np.asarray(rows, dtype="float32")
        for step in self.steps:
            out = step(out)
        return out


def export_network(keras_model, directory: str | Path) -> tuple[Path, Path]:
    """Write the model's layers to ``network.json`` and ``network.npz`` in ``directory``.

    Runs at log time, in the training process (it reads Keras weights). Refuses, with
    :class:`UnsupportedNetworkError`, any layer or activation :class:`NumpyNetwork` does not
    implement, rather than logging a model that would answer differently once served.
    """
    import keras  # noqa: PLC0415 (only the training process exports)

    layers, weights = [], {}
    for layer in keras_model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        config = layer.get_config()
        if kind == "Normalization":
            if config.get("invert"):
                raise UnsupportedNetworkError(
                    f"layer {layer.name!r}: Normalization(invert=True) is not implemented by "
                    "the NumPy runtime (iris_mlflow/serving/network.py)"
                )
            layers.append({"type": kind, "name": layer.name, "epsilon": keras.backend.epsilon()})
            weights[f"{layer.name}/mean"] = keras.ops.convert_to_numpy(layer.mean)
            weights[f"{layer.name}/variance"] = keras.ops.convert_to_numpy(layer.variance)
        elif kind == "Dense":
            activation = config.get("activation")
            if not isinstance(activation, str) or activation not in ACTIVATIONS:
                raise UnsupportedNetworkError(
                    f"layer {layer.name!r}: activation {activation!r} is not implemented by the "
                    f"NumPy runtime (iris_mlflow/serving/network.py); it implements "
                    f"{', '.join(ACTIVATIONS)}"
                )
            if getattr(layer, "quantization_mode", None):
                raise UnsupportedNetworkError(
                    f"layer {layer.name!r}: quantized Dense ({layer.quantization_mode}) is not "
                    "implemented by the NumPy runtime"
                )
            use_bias = bool(config.get("use_bias", True))
            layers.append(
                {"type": kind, "name": layer.name, "activation": activation, "use_bias": use_bias}
            )
            # The kernel property includes LoRA weights when LoRA is enabled.
            kernel = layer.kernel
            weights[f"{layer.name}/kernel"] = np.asarray(
                kernel.numpy() if hasattr(kernel, "numpy") else keras.ops.convert_to_numpy(kernel)
            )
            if use_bias:
                weights[f"{layer.name}/bias"] = layer.bias.numpy()
        else:
            raise UnsupportedNetworkError(
                f"layer {layer.name!r} is a {kind}; the NumPy runtime that serves the model "
                f"(iris_mlflow/serving/network.py) implements {', '.join(LAYERS)} only: "
                "implement the layer there, or build the network from those"
            )
    directory = Path(directory)
    spec_path, weights_path = directory / SPEC_FILE, directory / WEIGHTS_FILE
    spec = {"format": SPEC_FORMAT, "keras_version": keras.__version__, "layers": layers}
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    np.savez(weights_path, **weights)
    return spec_path, weights_path


#: At log time the exported network must reproduce Keras to within this (probabilities).
EXPORT_TOLERANCE = 1e-5


def check_export(keras_model, network: NumpyNetwork, rows: np.ndarray) -> float:
    """The largest difference between Keras' and the NumPy runtime's outputs on ``rows``;
    raises :class:`UnsupportedNetworkError` above :data:`EXPORT_TOLERANCE` (for instance a
    model that is not a simple chain of its layers)."""
    rows = np.asarray(rows, dtype="float32")
    expected = np.asarray(keras_model(rows, training=False))
    difference = float(np.max(np.abs(network(rows) - expected)))
    if not difference <= EXPORT_TOLERANCE:
        raise UnsupportedNetworkError(
            f"the NumPy runtime differs from the Keras model by {difference:.3g} "
            f"(allowed {EXPORT_TOLERANCE:g}); is the model a plain chain of its layers?"
        )
    return difference
