"""The model server's fast path against MLflow's scoring code, in process: the same bodies
through both must get the same status and the same JSON (byte for byte when 200), and each
body must take the route the table says (fast path, MLflow's code, or refused before either).

No tracking server and no Keras: the model is an IrisClassifier around a small random
network, saved with MLflow and loaded back as the model server loads a version.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from iris_mlflow.data import FEATURES, load_frame
from iris_mlflow.serving.model import MAX_ROWS, SIGNATURE
from iris_mlflow.serving.network import SPEC_FILE, SPEC_FORMAT, WEIGHTS_FILE

ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
OTHER = {"sepal_length": 6.3, "sepal_width": 2.8, "petal_length": 4.9, "petal_width": 1.6}
JSON = "application/json"


def saved_classifier(directory: Path) -> Path:
    """An IrisClassifier over a random Normalization -> Dense(relu) -> Dense(softmax)."""
    import mlflow
    import pandas as pd

    from iris_mlflow.serving import model as model_module
    from iris_mlflow.serving.model import SPEC_ARTIFACT, WEIGHTS_ARTIFACT

    rng = np.random.default_rng(3)
    layers = [
        {"type": "Normalization", "name": "standardize", "epsilon": 1e-7},
        {"type": "Dense", "name": "hidden", "activation": "relu", "use_bias": True},
        {"type": "Dense", "name": "out", "activation": "softmax", "use_bias": True},
    ]
    flowers = load_frame()[list(FEATURES)].to_numpy(dtype="float32")
    weights = {
        "standardize/mean": flowers.mean(axis=0),
        "standardize/variance": flowers.var(axis=0),
        "hidden/kernel": rng.normal(size=(4, 8)).astype("float32"),
        "hidden/bias": rng.normal(size=8).astype("float32"),
        "out/kernel": rng.normal(size=(8, 3)).astype("float32"),
        "out/bias": rng.normal(size=3).astype("float32"),
    }
    network = directory / "network"
    network.mkdir()
    (network / SPEC_FILE).write_text(json.dumps({"format": SPEC_FORMAT, "layers": layers}))
    np.savez(network / WEIGHTS_FILE, **weights)
    path = directory / "model"
    mlflow.pyfunc.save_model(
        path,
        python_model=str(Path(model_module.__file__).with_name("model_code.py")),
        artifacts={
            SPEC_ARTIFACT: str(network / SPEC_FILE),
            WEIGHTS_ARTIFACT: str(network / WEIGHTS_FILE),
        },
        signature=SIGNATURE,
        input_example=pd.DataFrame([ROW]),
        pip_requirements=["numpy"],
    )
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(model server, champion with the fast path, the same champion without it)."""
    import mlflow

    from iris_mlflow.serving.server import Champion, ModelServer, fast_path_network

    path = saved_classifier(tmp_path_factory.mktemp("fast-path"))
    model = mlflow.pyfunc.load_model(str(path))
    fast = Champion("iris", "1", model, model.metadata.get_input_schema(), path)
    fast = replace(fast, network=fast_path_network(model))
    assert fast.network is not None, "the fast path should accept this model"
    return ModelServer("iris", "champion"), fast, replace(fast, network=None)


def records(*rows, key: str = "dataframe_records") -> str:
    return json.dumps({key: list(rows)})


def split(columns, *rows, **extra) -> str:
    return json.dumps({"dataframe_split": {"columns": list(columns), "data": list(rows), **extra}})


def columns(key: str = "inputs", **values) -> str:
    return json.dumps({key: values or {k: [v, OTHER[k]] for k, v in ROW.items()}})


FLOWERS = load_frame()[list(FEATURES)].astype("float64").to_dict(orient="records")
REVERSED = dict(reversed(ROW.items()))
NO_WIDTH = {k: v for k, v in ROW.items() if k != "petal_width"}
ONE_EACH = {k: [v] for k, v in ROW.items()}
NAN = json.dumps({"dataframe_records": [ROW]}).replace("5.1", "NaN")

#: name -> (body, content type, route): "fast" the fast path answers, "mlflow" MLflow's
#: scoring code answers, "server" the server refuses it before either (columns, type).
CASES: dict[str, tuple[str, str, str]] = {
    # Answered by the fast path.
    "records, one row": (records(ROW), JSON, "fast"),
    "records, keys in another order": (records(REVERSED, OTHER), JSON, "fast"),
    "records, integers": (records({**ROW, "sepal_length": 5, "petal_width": 1}), JSON, "fast"),
    "records, all 150 flowers": (records(*FLOWERS), JSON, "fast"),
    "records, at the limits": (
        records({**ROW, "sepal_length": 30, "petal_width": 1e-300}),
        JSON,
        "fast",
    ),
    "split": (split(FEATURES, list(ROW.values()), list(OTHER.values())), JSON, "fast"),
    "split, columns in another order": (
        split(reversed(FEATURES), list(REVERSED.values())),
        JSON,
        "fast",
    ),
    "inputs as records": (records(ROW, OTHER, key="inputs"), JSON, "fast"),
    "instances as records": (records(ROW, OTHER, key="instances"), JSON, "fast"),
    "inputs as columns": (columns("inputs"), JSON, "fast"),
    "instances as columns": (columns("instances"), JSON, "fast"),
    "charset utf-8": (records(ROW), "application/json; charset=utf-8", "fast"),
    "charset UTF-8, no space": (records(ROW), "application/json;charset=UTF-8", "fast"),
    # Well-formed but unusual: MLflow's code answers (a 200 or its own error).
    "params": (json.dumps({"dataframe_records": [ROW], "params": {}}), JSON, "mlflow"),
    "another top-level key": (json.dumps({"dataframe_records": [ROW], "x": 1}), JSON, "mlflow"),
    "split with an index": (split(FEATURES, list(ROW.values()), index=[7]), JSON, "mlflow"),
    "split without columns": (json.dumps({"dataframe_split": {"data": [[1] * 4]}}), JSON, "mlflow"),
    "inputs as a list of lists": (json.dumps({"inputs": [list(ROW.values())]}), JSON, "mlflow"),
    "inputs as columns of scalars": (json.dumps({"inputs": ROW}), JSON, "mlflow"),
    "inputs as columns of unequal length": (
        columns(**ONE_EACH | {"petal_width": [0.2, 0.3]}),
        JSON,
        "mlflow",
    ),
    "number as a string": (records({**ROW, "sepal_width": "3.5"}), JSON, "mlflow"),
    "boolean": (records({**ROW, "sepal_width": True}), JSON, "mlflow"),
    "a record without a column": (records(ROW, NO_WIDTH), JSON, "mlflow"),
    "charset latin-1": (records(ROW), "application/json; charset=latin-1", "mlflow"),
    "capitalised type": (records(ROW), "Application/JSON", "mlflow"),
    "unknown type parameter": (records(ROW), "application/json; version=2", "mlflow"),
    "CSV": (f"{','.join(FEATURES)}\n5.1,3.5,1.4,0.2\n", "text/csv", "mlflow"),
    # Bad measurements: MLflow's code refuses them, with the model's message in its error.
    "string": (records({**ROW, "sepal_width": "wide"}), JSON, "mlflow"),
    "null": (records({**ROW, "petal_length": None}), JSON, "mlflow"),
    "NaN": (NAN, JSON, "mlflow"),
    "Infinity": (split(FEATURES, [float("inf"), 3.5, 1.4, 0.2]), JSON, "mlflow"),
    "negative": (records({**ROW, "sepal_length": -5.1}), JSON, "mlflow"),
    "negative zero": (records({**ROW, "sepal_length": -0.0}), JSON, "mlflow"),
    "zero": (records({**ROW, "petal_width": 0}), JSON, "mlflow"),
    "mm, not cm": (records({**ROW, "sepal_length": 51}), JSON, "mlflow"),
    "just above the limit": (records({**ROW, "sepal_length": 30.000001}), JSON, "mlflow"),
    "huge float": (records({**ROW, "sepal_length": 1e308}), JSON, "mlflow"),
    "huge integer": (records({**ROW, "sepal_length": 10**400}), JSON, "mlflow"),
    "bad second row (split)": (
        split(FEATURES, list(ROW.values()), [5.1, 3.5, 1.4, 99.0]),
        JSON,
        "mlflow",
    ),
    "no rows": (records(), JSON, "mlflow"),
    "no rows (split)": (split(FEATURES), JSON, "mlflow"),
    "no rows (columns)": (columns(**{k: [] for k in ROW}), JSON, "mlflow"),
    "too many rows": (records(*[ROW] * (MAX_ROWS + 1)), JSON, "mlflow"),
    "empty body": ("", JSON, "mlflow"),
    "not JSON": ("sepal_length=5.1", JSON, "mlflow"),
    "a JSON list": (json.dumps([ROW]), JSON, "mlflow"),
    "JSON null": ("null", JSON, "mlflow"),
    # Refused by the model server before any scoring, on either route.
    "unknown column": (records({**ROW, "colour": 3.0}), JSON, "server"),
    "missing column": (records(NO_WIDTH), JSON, "server"),
    "repeated column": (split([*FEATURES, "sepal_length"], [*ROW.values(), 5.1]), JSON, "server"),
    "unknown column (columns)": (columns(**ONE_EACH, colour=[1]), JSON, "server"),
    "plain text": (records(ROW), "text/plain", "server"),
}


def answer(server, champion, body: str, content_type: str, monkeypatch) -> tuple:
    """(status, body bytes, x-model-version header, calls of MLflow's invocations)."""
    from mlflow.pyfunc import scoring_server

    calls = []
    original = scoring_server.invocations

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=server.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://model-server") as http:
            return await http.post(
                "/invocations", content=body.encode(), headers={"Content-Type": content_type}
            )

    server.champion = champion
    with monkeypatch.context() as patch:
        patch.setattr(scoring_server, "invocations", counted)
        response = asyncio.run(post())
    return response.status_code, response.content, response.headers, len(calls)


@pytest.mark.parametrize("case", CASES)
def test_the_fast_path_answers_as_mlflows_scoring_does(server, case, monkeypatch):
    body, content_type, route = CASES[case]
    model_server, fast, mlflow_only = server
    status, content, headers, calls = answer(model_server, fast, body, content_type, monkeypatch)
    expected = answer(model_server, mlflow_only, body, content_type, monkeypatch)
    expected_status, expected_content, expected_headers, mlflow_calls = expected

    assert status == expected_status
    assert headers.get("content-type") == expected_headers.get("content-type")
    assert headers.get("x-model-version") == expected_headers.get("x-model-version")
    if expected_headers.get("content-type") == JSON:
        assert json.loads(content) == json.loads(expected_content)
    if status == 200:
        assert content == expected_content
    else:
        assert content == expected_content, "an error must be MLflow's, word for word"
    taken = {(0, 1): "fast", (1, 1): "mlflow", (0, 0): "server"}.get((calls, mlflow_calls))
    assert taken == route, f"answered by {taken}, expected {route}"


def test_the_fast_path_answers_what_the_model_predicts(server):
    """Beyond parity with MLflow's route: the numbers are the model's own predict()."""
    import pandas as pd

    from iris_mlflow.serving.server import fast_answer

    _model_server, fast, _mlflow_only = server
    payload = {"dataframe_records": FLOWERS}
    served = json.loads(fast_answer(fast, payload, JSON).body)["predictions"]
    expected = fast.model.predict(pd.DataFrame(FLOWERS))
    assert served == expected.to_dict(orient="records")


def test_the_fast_path_is_off_for_a_model_it_does_not_know():
    from iris_mlflow.serving.server import fast_path_network

    class NotAPythonModel:
        def unwrap_python_model(self):
            raise ValueError("no python model")

    assert fast_path_network(NotAPythonModel()) is None
