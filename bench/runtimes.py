"""Runtimes for the logged model without TensorFlow, side by side with today's Keras +
TensorFlow: what each adds to an install of mlflow-skinny, NumPy and pandas, the single-row
forward pass (median of many calls), and the largest difference from the Keras model's
probabilities on all 150 iris flowers.

Candidates, each in a throwaway venv (mlflow-skinny, NumPy, pandas pinned as in this
environment, plus what the candidate needs):

- the NumPy forward pass of :mod:`iris_mlflow.serving.network` (what the model server runs);
- ONNX Runtime on Keras' own ONNX export (``model.export(format="onnx")``, tf2onnx). That
  export turns the Normalization layer's mean and variance into graph inputs a caller would
  have to feed; here they are made constant initializers of the graph again;
- Keras 3 with ``KERAS_BACKEND=numpy``, which loads the ``.keras`` file but imports JAX.

Run ``python -m bench.runtimes [runs]`` (or ``python -m bench --only runtimes`` once it is
listed there). The venvs go to a temporary folder, or to $BENCH_RUNTIME_VENVS to reuse them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import venv
from importlib import metadata
from pathlib import Path

from bench.common import ROOT, Measure, run

SRC = ROOT / "src"
NUMPY = "NumPy forward pass (iris_mlflow.serving.network)"
ONNX = "ONNX Runtime (Keras ONNX export, normalization made constant)"
KERAS_NUMPY = "Keras 3, numpy backend (imports JAX)"
TODAY = "Keras 3 + TensorFlow (today: direct model call)"
PYFUNC = "(the logged pyfunc's predict: checks + NumPy, one row as a DataFrame)"
BASE = ("mlflow-skinny", "numpy", "pandas")
CALLS = 3000

#: Runs in a candidate's venv: argv = kind, folder with the exported files, runs.
#: Prints JSON: per run the median microseconds of one single-row call; the 150 rows' output.
RUNNER = r"""
import json, os, statistics, sys, time
import numpy as np

kind, folder, runs, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = np.load(os.path.join(folder, "iris.npy"))
if kind == "numpy":
    from iris_mlflow.serving.network import NumpyNetwork
    forward = NumpyNetwork.load(
        os.path.join(folder, "network.json"), os.path.join(folder, "network.npz"))
elif kind == "pyfunc":
    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model(os.path.join(folder, "pyfunc"))
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    def forward(x):
        out = model.predict(pd.DataFrame(x.astype("float64"), columns=names))
        return out.iloc[:, 1:].to_numpy()
elif kind == "onnxruntime":
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(os.path.join(folder, "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    def forward(x):
        return session.run(None, {name: x})[0]
elif kind in ("keras-numpy", "keras-tensorflow"):
    import keras
    model = keras.saving.load_model(os.path.join(folder, "iris.keras"), compile=False)
    def forward(x):
        return np.asarray(model(x, training=False))
heavy = {"tensorflow", "keras", "jax", "onnxruntime"}
loaded = sorted({m.split(".")[0] for m in sys.modules} & heavy)
one = rows[:1]
for _ in range(300):
    forward(one)
medians = []
for _ in range(runs):
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        forward(one)
        samples.append(time.perf_counter_ns() - start)
    medians.append(statistics.median(samples) / 1000)
print(json.dumps({"medians_us": medians, "output": np.asarray(forward(rows)).tolist(),
                  "imports": loaded}))
"""

#: Runs in the export venv (this environment's packages plus tf2onnx and onnx).
ONNX_EXPORT = r"""
import sys
import keras, numpy as np, onnx
from onnx import numpy_helper

keras_path, onnx_path = sys.argv[1], sys.argv[2]
model = keras.saving.load_model(keras_path, compile=False)
model(np.ones((1, model.input_shape[-1]), dtype="float32"))  # export wants a called model
model.export(onnx_path, format="onnx", verbose=False)
proto = onnx.load(onnx_path)
# tf2onnx makes the Normalization layer's constants graph inputs (its mean feeds a Sub, its
# variance a Sqrt); put them back into the graph.
norm = next(layer for layer in model.layers if type(layer).__name__ == "Normalization")
constants = {"Sub/y:0": norm.mean, "Sqrt/x:0": norm.variance}
for graph_input in list(proto.graph.input):
    for suffix, value in constants.items():
        if graph_input.name.endswith(suffix):
            proto.graph.input.remove(graph_input)
            array = np.asarray(keras.ops.convert_to_numpy(value), dtype="float32")
            proto.graph.initializer.append(numpy_helper.from_array(array, graph_input.name))
assert len(proto.graph.input) == 1, [i.name for i in proto.graph.input]
onnx.checker.check_model(proto)
onnx.save(proto, onnx_path)
"""

#: Installed size per distribution (MB), from each one's file list.
SIZES = r"""
import json
from importlib import metadata
sizes = {}
for dist in metadata.distributions():
    total = 0
    for f in dist.files or ():
        try:
            total += f.locate().stat().st_size
        except OSError:
            pass
    sizes[dist.metadata["Name"].lower().replace("_", "-")] = total / 1e6
print(json.dumps(sizes))
"""


def pins(*names: str) -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in names]


def make_venv(home: Path, name: str, packages: list[str], *, project_packages=False) -> Path:
    """A venv with ``packages`` (made once per home); with ``project_packages`` it also sees
    this environment's site-packages (for the ONNX export, which needs TensorFlow)."""
    folder = home / name
    python = folder / "bin" / "python"
    if (folder / "ready").exists():
        return python
    venv.create(folder, with_pip=True, clear=True)
    if project_packages:
        site = next(p for p in sys.path if p.endswith("site-packages"))
        purelib = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        Path(purelib, "project.pth").write_text(site + "\n")
    extra = ["--no-deps"] if project_packages else []
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *extra, *packages],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    (folder / "ready").write_text("")
    return python


def installed_mb(python: Path | str) -> dict[str, float]:
    out = subprocess.run([python, "-c", SIZES], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def closure(names: list[str]) -> set[str]:
    """The distributions ``names`` need in this environment, transitively."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def run_candidate(python: Path | str, kind: str, folder: Path, runs: int, env: dict) -> dict:
    done = subprocess.run(
        [python, "-c", RUNNER, kind, str(folder), str(runs), str(CALLS)],
        check=False, capture_output=True, text=True, env=env, cwd=folder, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{kind}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare(folder: Path):
    """Train the default model (no tracking), save it every way the candidates read it, and
    return the Keras model with the 150 flowers."""
    import mlflow
    import numpy as np

    from iris_mlflow.data import FEATURES, load_frame, split
    from iris_mlflow.model import build_model
    from iris_mlflow.serving import model as served
    from iris_mlflow.serving.network import export_network
    from iris_mlflow.train import TrainingConfig, fit

    config = TrainingConfig()
    data = split(config.test_size, config.val_size, config.seed)
    keras_model = build_model(data.x_train.to_numpy(), config.hidden_units, config.learning_rate)
    fit(keras_model, data, config)
    flowers = load_frame()[list(FEATURES)].to_numpy(dtype="float32")
    np.save(folder / "iris.npy", flowers)
    keras_model.save(folder / "iris.keras")
    spec, weights = export_network(keras_model, folder)
    # The logged pyfunc, saved rather than logged (no tracking server needed).
    mlflow.pyfunc.save_model(
        folder / "pyfunc",
        python_model=str(Path(served.__file__).with_name("model_code.py")),
        artifacts={
            served.SPEC_ARTIFACT: str(spec),
            served.WEIGHTS_ARTIFACT: str(weights),
        },
        signature=served.SIGNATURE,
    )
    return keras_model, flowers


def measure(runs: int) -> list[Measure]:
    import numpy as np

    latency = Measure(
        name="runtime_latency",
        title="Model runtimes without TensorFlow: single-row forward pass, median of "
        f"{CALLS} calls per run",
        unit="µs",
        target="a runtime without TensorFlow within 1e-5 of Keras on all 150 flowers",
        baseline=TODAY,
    )
    size = Measure(
        name="runtime_size",
        title="Model runtimes: installed size beyond mlflow-skinny, NumPy and pandas",
        unit="MB",
        target="reported",
        baseline=TODAY,
    )
    home_env = os.environ.get("BENCH_RUNTIME_VENVS")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(home_env) if home_env else Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        folder = Path(tmp) / "model"
        folder.mkdir()
        keras_model, flowers = prepare(folder)
        expected = np.asarray(keras_model(flowers, training=False))

        base = make_venv(home, "base", pins(*BASE))
        onnx_venv = make_venv(home, "onnxruntime", [*pins(*BASE), "onnxruntime"])
        keras_numpy = make_venv(home, "keras-numpy", [*pins(*BASE), *pins("keras"), "jax"])
        exporter = make_venv(home, "onnx-export", ["tf2onnx", "onnx"], project_packages=True)
        keras_file, onnx_file = str(folder / "iris.keras"), str(folder / "model.onnx")
        run(
            [str(exporter), "-c", ONNX_EXPORT, keras_file, onnx_file],
            cwd=folder,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )

        env = {**os.environ, "PYTHONPATH": str(SRC), "TF_CPP_MIN_LOG_LEVEL": "3"}
        candidates = {
            NUMPY: (base, "numpy", env),
            PYFUNC: (base, "pyfunc", env),
            ONNX: (onnx_venv, "onnxruntime", env),
            KERAS_NUMPY: (keras_numpy, "keras-numpy", {**env, "KERAS_BACKEND": "numpy"}),
            TODAY: (sys.executable, "keras-tensorflow", env),
        }
        differences, imports = {}, {}
        for variant, (python, kind, variant_env) in candidates.items():
            result = run_candidate(python, kind, folder, runs, variant_env)
            for value in result["medians_us"]:
                latency.add(variant, value)
            output = np.asarray(result["output"])
            same = bool((output.argmax(axis=1) == expected.argmax(axis=1)).all())
            differences[variant] = (float(np.max(np.abs(output - expected))), same)
            imports[variant] = (
                ", ".join(result["imports"]) or "none of TF, Keras, JAX, ONNX Runtime"
            )

        base_sizes = installed_mb(base)
        for variant, python in ((ONNX, onnx_venv), (KERAS_NUMPY, keras_numpy)):
            extra = {k: v for k, v in installed_mb(python).items() if k not in base_sizes}
            size.add(variant, sum(extra.values()))
            size.extra[f"{variant}: adds"] = ", ".join(
                f"{k} {v:.0f}" for k, v in sorted(extra.items(), key=lambda kv: -kv[1]) if v >= 1
            )
        size.add(NUMPY, 0.0)
        today = {k: v for k, v in installed_mb(sys.executable).items() if k not in base_sizes}
        needed = closure(["tensorflow-cpu", "tensorflow", "keras"])
        today = {k: v for k, v in today.items() if k in needed}
        size.add(TODAY, sum(today.values()))
        size.extra[f"{TODAY}: adds"] = ", ".join(
            f"{k} {v:.0f}" for k, v in sorted(today.items(), key=lambda kv: -kv[1]) if v >= 5
        )
        size.extra["mlflow-skinny + NumPy + pandas with their dependencies (the base)"] = (
            f"{sum(base_sizes.values()):.0f} MB"
        )
        exporter_only = {
            k: v for k, v in installed_mb(exporter).items() if k in ("onnx", "tf2onnx")
        }
        size.extra["ONNX export at log time also needs"] = ", ".join(
            f"{k} {v:.0f} MB" for k, v in exporter_only.items()
        )

    for variant, (difference, same) in differences.items():
        latency.extra[f"{variant}: max |difference| from Keras on 150 flowers"] = (
            f"{difference:.2g}, same species: {'yes' if same else 'NO'}; imports: "
            f"{imports[variant]}"
        )
    latency.target_met = differences[NUMPY][0] <= 1e-5 and differences[NUMPY][1]
    latency.notes.append(
        "Each call is one row as a float32 array, except the pyfunc line: a one-row DataFrame "
        "through the logged model's predict (column and range checks, MLflow's schema "
        "enforcement, the answer as a DataFrame), which is what a request pays besides HTTP."
    )
    size.notes.append(
        "Sizes are the files each distribution installed (its RECORD), in a venv that already "
        "has mlflow-skinny, NumPy and pandas; today's figure is what tensorflow-cpu and keras "
        "pull into this project's environment beyond that."
    )
    return [latency, size]


if __name__ == "__main__":
    for result in measure(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        print(json.dumps({"title": result.title, "summary": result.summary(), **result.extra},
                         indent=2, ensure_ascii=False))  # fmt: skip
