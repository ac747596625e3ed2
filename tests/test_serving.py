"""Registry aliases and the served model, with real processes: a tracking server and the model
server (`python -m iris_mlflow.serving`, one process holding the champion in memory)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from harness.processes import free_port, stop_process, wait_until
from iris_mlflow.data import FEATURES, SPECIES, load_frame
from iris_mlflow.names import CHALLENGER, CHAMPION
from iris_mlflow.registry import champion_version, register
from iris_mlflow.serving import client as model_server_client
from iris_mlflow.serving.model import MAX_ROWS, MODEL_CODE, PROBABILITY_COLUMNS
from iris_mlflow.train import TrainingConfig, predict_species, train

GOOD_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture(scope="module")
def tracked(mlflow_server):
    """Tracking points at the real server for this module, as a user's environment would."""
    import mlflow

    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    del os.environ["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def weak_model(request):
    """Two epochs: a model a longer training beats."""
    request.getfixturevalue("tracked")
    return train(TrainingConfig(epochs=2), experiment_name="serving-tests", register_as=None)


@pytest.mark.slow
def test_alias_moves_only_on_equal_or_better_accuracy(weak_model, client):
    name = f"alias-rules-{uuid.uuid4().hex[:6]}"
    uri = weak_model.model_uri
    first = register(uri, 0.90, name)
    assert (first.alias, first.previous_champion) == (CHAMPION, None)

    worse = register(uri, 0.80, name)
    assert worse.alias == CHALLENGER
    assert client.get_model_version_by_alias(name, CHAMPION).version == first.version
    assert client.get_model_version_by_alias(name, CHALLENGER).version == worse.version
    # What the model server resolves, for either alias (`--alias challenger` serves the challenger).
    assert champion_version(client, name, CHALLENGER).version == worse.version
    assert champion_version(client, name).version == first.version
    tags = client.get_model_version(name, worse.version).tags
    assert tags["compared_with_version"] == first.version
    assert tags["decision"] == "challenger: 0.8000 < 0.9000"

    tie = register(uri, 0.90, name)
    assert client.get_model_version(name, tie.version).tags["test_accuracy"] == "0.9"
    assert tie.alias == CHAMPION
    assert client.get_model_version_by_alias(name, CHAMPION).version == tie.version

    # A float32 accuracy (29 of 30) ties with itself: no rounding in the stored tag.
    exact = register(uri, 0.9666666388511658, name)
    assert exact.alias == CHAMPION
    again = register(uri, 0.9666666388511658, name)
    assert (again.alias, again.previous_accuracy) == (CHAMPION, 0.9666666388511658)

    better = register(uri, 0.99, name)
    assert (better.alias, better.previous_champion) == (CHAMPION, again.version)


def start_model_server(name: str, tracking_uri: str, log_path) -> tuple[str, subprocess.Popen]:
    """The model server as a real process on a free port; its output goes to ``log_path``."""
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iris_mlflow.serving", "--model-name", name,
             "--port", str(port), "--host", "127.0.0.1", "--poll-seconds", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        )  # fmt: skip
    return f"http://127.0.0.1:{port}", proc


@pytest.fixture(scope="module")
def model_server(tracked, tmp_path_factory):
    """The model server on a free port, serving the champion of a fresh registered model.
    Yields (registered model name, URL, process, log file)."""
    name = f"served-{uuid.uuid4().hex[:6]}"
    log_path = tmp_path_factory.mktemp("model-server") / "model-server.log"
    url, proc = start_model_server(name, tracked, log_path)
    try:
        yield name, url, proc, log_path
    finally:
        stop_process(proc, timeout=40)
        print(log_path.read_text()[-4000:])


@pytest.mark.slow
def test_server_waits_for_a_champion_then_serves_it(model_server, weak_model):
    name, url, proc, _log = model_server
    # Until the server listens (importing MLflow takes a few seconds); it must not exit.
    wait_until(lambda: listening(url, proc), 60, "the model server listening")
    time.sleep(2)  # a few polls of the registry, with no champion to find
    assert proc.poll() is None
    message = (
        f"no version of {name} has the alias @champion yet; train a model "
        "(the notebook or iris-train) and this server picks it up"
    )
    # Alive (Docker's healthcheck), but not ready to predict.
    assert requests.get(f"{url}/health", timeout=5).json() == {
        "status": "waiting",
        "message": message,
    }
    waiting = (requests.get(f"{url}/ping", timeout=5), post(url, records(GOOD_ROW)))
    for answer in waiting:
        assert answer.status_code == 503
        assert answer.json()["message"] == (
            f"no version of {name} has the alias @champion yet; train a model "
            "(the notebook or iris-train) and this server picks it up"
        )
    # It is there, and the notebook waits for it rather than saying no server answers.
    assert model_server_client.no_server_message(url) is None

    register(weak_model.model_uri, weak_model.test_accuracy, name)
    model_server_client.wait_until_serving(url, timeout=120)
    rows = weak_model.data.x_test
    answer = model_server_client.predict(url, rows)
    expected = predict_species(weak_model.model, rows.to_numpy())
    assert list(answer.columns) == ["species", *PROBABILITY_COLUMNS]
    assert list(answer["species"]) == [SPECIES[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(
        answer[list(PROBABILITY_COLUMNS)].to_numpy(), expected, rtol=1e-5, atol=1e-6
    )
    health = requests.get(f"{url}/health", timeout=5).json()
    assert health["status"] == "serving"
    assert health["model"].startswith(f"{name}/")
    assert requests.get(f"{url}/version", timeout=5).text == mlflow_version()
    # One process, and no TensorFlow in it.
    assert "tensorflow" not in Path(f"/proc/{proc.pid}/maps").read_text()


def mlflow_version() -> str:
    import mlflow

    return mlflow.__version__


@pytest.fixture
def served_url(model_server, weak_model, client) -> str:
    """The model server's URL once it serves; the weak model is the champion unless a
    test before registered one (the first test does, after checking the 503s)."""
    name, url, _proc, _log = model_server
    if champion_version(client, name) is None:
        register(weak_model.model_uri, weak_model.test_accuracy, name)
    model_server_client.wait_until_serving(url, timeout=120)
    return url


@pytest.mark.slow
def test_all_150_flowers_get_the_keras_models_answers(served_url, weak_model):
    """The NumPy runtime behind the server against the Keras model in memory."""
    flowers = load_frame()[list(FEATURES)]
    served = model_server_client.predict(served_url, flowers)
    expected = np.asarray(weak_model.model(flowers.to_numpy(dtype="float32"), training=False))
    assert len(served) == 150
    assert list(served["species"]) == [SPECIES[i] for i in expected.argmax(axis=1)]
    difference = np.abs(served[list(PROBABILITY_COLUMNS)].to_numpy() - expected).max()
    assert difference <= 1e-5, f"probabilities differ from Keras by {difference:.2g}"


@pytest.mark.slow
def test_loading_the_logged_model_imports_no_tensorflow(weak_model, tracked):
    """What the model server and the notebook load needs mlflow-skinny, NumPy and pandas, and
    the package files logged with the model (MODEL_CODE): the installed package is hidden."""
    import mlflow

    probe = (
        "import json, os, sys\n"
        "sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p, 'iris_mlflow'))]\n"
        "import mlflow, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model({weak_model.model_uri!r})\n"
        f"rows = pd.DataFrame([{list(GOOD_ROW.values())!r}], columns={list(FEATURES)!r})\n"
        "species = model.predict(rows)['species'].tolist()\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tensorflow', 'keras', 'jax', 'torch', 'sklearn'})\n"
        "code = os.path.dirname(sys.modules['iris_mlflow'].__file__)\n"
        "logged = sorted(os.path.relpath(os.path.join(d, f), code)\n"
        "                for d, _, files in os.walk(code) for f in files)\n"
        "print(json.dumps({'species': species, 'heavy': heavy, 'code': logged}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracked, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"species": ["setosa"], "heavy": [], "code": sorted(MODEL_CODE)}
    requirements = Path(mlflow.pyfunc.get_model_dependencies(weak_model.model_uri))
    pinned = sorted(line.split("==")[0] for line in requirements.read_text().split())
    assert pinned == ["mlflow-skinny", "numpy", "pandas"]


@pytest.mark.slow
def test_a_logged_classifier_is_answered_by_the_fast_path(weak_model):
    """What training logs is a model the server's fast path answers for (its parity with
    MLflow's scoring is tests/test_serving_fast_path.py)."""
    import mlflow

    from iris_mlflow.serving.server import fast_path_network

    assert fast_path_network(mlflow.pyfunc.load_model(weak_model.model_uri)) is not None


def post(url: str, body: bytes | str, content_type: str = "application/json") -> requests.Response:
    return requests.post(
        f"{url}/invocations", data=body, headers={"Content-Type": content_type}, timeout=60
    )


def records(*rows: dict) -> str:
    return json.dumps({"dataframe_records": list(rows)})


def split(columns: list[str], *rows: list) -> str:
    return json.dumps({"dataframe_split": {"columns": columns, "data": list(rows)}})


BAD_REQUESTS = {
    "missing column": (
        records({k: v for k, v in GOOD_ROW.items() if k != "petal_width"}),
        "missing column(s): petal_width",
    ),
    # MLflow's schema enforcement alone would drop these and answer 200 without them.
    "extra column (records)": (
        records({**GOOD_ROW, "colour": 3.0}),
        "unknown column(s): colour",
    ),
    "extra column in one record": (
        records(GOOD_ROW, {**GOOD_ROW, "stem_length": 9.0}),
        "unknown column(s): stem_length",
    ),
    "extra column (split)": (
        split([*FEATURES, "colour"], [*GOOD_ROW.values(), 3.0]),
        "unknown column(s): colour",
    ),
    "extra column (inputs as columns)": (
        json.dumps({"inputs": {**{k: [v] for k, v in GOOD_ROW.items()}, "colour": [3.0]}}),
        "unknown column(s): colour",
    ),
    "repeated column": (
        split([*FEATURES, "sepal_length"], [*GOOD_ROW.values(), 5.1]),
        "repeated column(s): sepal_length",
    ),
    "string for a number": (records({**GOOD_ROW, "sepal_width": "wide"}), "sepal_width"),
    "null (NaN)": (records({**GOOD_ROW, "petal_length": None}), "petal_length is missing/NaN"),
    "negative": (records({**GOOD_ROW, "sepal_length": -5.1}), "sepal_length is -5.1"),
    "zero": (records({**GOOD_ROW, "petal_width": 0}), "petal_width is 0.0"),
    "absurd (mm, not cm)": (records({**GOOD_ROW, "sepal_length": 51}), "sepal_length is 51.0"),
    "empty body": ("", "valid JSON"),
    "not JSON": ("sepal_length=5.1", "valid JSON"),
    "no rows": (records(), "sepal_length"),
    "too many rows": (records(*[GOOD_ROW] * (MAX_ROWS + 1)), f"more than {MAX_ROWS} per request"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_gets_a_400_naming_the_problem_and_serving_goes_on(served_url, case):
    body, named = BAD_REQUESTS[case]
    answer = post(served_url, body)
    assert answer.status_code == 400
    assert named in answer.json()["message"]
    good = post(served_url, records(GOOD_ROW))
    assert good.status_code == 200
    assert good.json()["predictions"][0]["species"] == "setosa"


@pytest.mark.slow
def test_unsupported_content_type_is_refused(served_url):
    for content_type in ("text/plain", "application/x-parquet", ""):
        answer = post(served_url, "a,b", content_type=content_type)
        assert answer.status_code == 415
        assert "send application/json or text/csv" in answer.json()["message"]


@pytest.mark.slow
def test_other_paths_and_methods_get_mlflow_style_json_errors(served_url):
    missing = requests.get(f"{served_url}/predict", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["message"] == "GET /predict: Not Found"
    wrong_method = requests.get(f"{served_url}/invocations", timeout=10)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error_code"] == "BAD_REQUEST"


@pytest.mark.slow
def test_csv_is_answered_and_its_columns_checked(served_url):
    header = ",".join(FEATURES)
    values = ",".join(str(v) for v in GOOD_ROW.values())
    good = post(served_url, f"{header}\n{values}\n", content_type="text/csv")
    assert good.status_code == 200
    assert good.json()["predictions"][0]["species"] == "setosa"
    extra = post(served_url, f"{header},colour\n{values},3.0\n", content_type="text/csv")
    assert extra.status_code == 400
    assert "unknown column(s): colour" in extra.json()["message"]


@pytest.mark.slow
def test_an_oversized_body_gets_a_413_and_serving_goes_on(served_url):
    from iris_mlflow.serving.server import MAX_BODY_BYTES

    answer = post(served_url, b" " * (MAX_BODY_BYTES + 1))
    assert answer.status_code == 413
    assert "MiB" in answer.json()["message"]
    assert post(served_url, records(GOOD_ROW)).status_code == 200


@pytest.mark.slow
def test_a_version_that_fails_to_load_leaves_the_champion_serving(
    served_url, model_server, weak_model, client
):
    name, _url, _proc, log_path = model_server
    serving = served_version(post(served_url, records(GOOD_ROW)))
    # A version whose files are not a model: the plots of the weak model's run.
    broken = client.create_model_version(
        name, f"runs:/{weak_model.run_id}/plots", run_id=weak_model.run_id
    ).version
    client.set_registered_model_alias(name, CHAMPION, broken)
    try:

        def failed_load_logged() -> bool:
            answer = post(served_url, records(GOOD_ROW))
            assert answer.status_code == 200, answer.text
            assert served_version(answer) == serving
            return f"cannot load {name} version {broken}" in log_path.read_text()

        wait_until(failed_load_logged, 30, "a failed load logged", interval=0.1)
        for _ in range(20):  # still the old champion, answering every request
            answer = post(served_url, records(GOOD_ROW))
            assert (answer.status_code, served_version(answer)) == (200, serving)
            time.sleep(0.05)
        failures = [line for line in log_path.read_text().splitlines() if "cannot load" in line]
        assert failures[0].endswith(f"version {serving} serves meanwhile"), failures[0]
        assert "Traceback" not in log_path.read_text()
    finally:
        client.set_registered_model_alias(name, CHAMPION, serving)


def served_version(answer: requests.Response) -> str:
    """The registered version that answered (the model server says so in a header)."""
    return answer.headers["x-model-version"].rsplit("/", 1)[1]


@pytest.mark.slow
def test_a_better_model_is_served_without_a_manual_step(served_url, model_server, weak_model):
    name, url = model_server[0], served_url
    rows = weak_model.data.x_test
    before = served_version(post(url, records(GOOD_ROW)))
    old_expected = predict_species(weak_model.model, rows.to_numpy())
    better = train(TrainingConfig(epochs=60), experiment_name="serving-tests", register_as=name)
    moved = time.monotonic()  # train() returns once the alias has moved
    assert better.registration.alias == CHAMPION
    expected = predict_species(better.model, rows.to_numpy())
    assert not np.allclose(expected, old_expected, atol=1e-3)
    body = split(list(FEATURES), *rows.to_numpy().tolist())
    # Ask continuously through the swap: every request must be answered, by the old champion
    # until the new one is loaded, then by the new one.
    answered = {}
    while True:
        answer = post(url, body)
        assert answer.status_code == 200, answer.text
        version = served_version(answer)
        answered[version] = answered.get(version, 0) + 1
        served = pd.DataFrame(answer.json()["predictions"])[list(PROBABILITY_COLUMNS)]
        if version == better.registration.version:
            np.testing.assert_allclose(served.to_numpy(), expected, rtol=1e-5, atol=1e-6)
            break
        assert version == before
        np.testing.assert_allclose(served.to_numpy(), old_expected, rtol=1e-5, atol=1e-6)
        assert time.monotonic() - moved < 30, "the new champion was not served within 30 s"
    swap_seconds = time.monotonic() - moved
    print(f"new champion answered {swap_seconds:.1f} s after the alias moved; {answered}")
    assert answered.get(before, 0) >= 1, "the old champion should answer until the swap"
    # How fast is bench/serving.py's to measure, not a timed assertion here.


@pytest.mark.slow
def test_sigterm_stops_the_server_cleanly(tracked, tmp_path):
    log_path = tmp_path / "model-server.log"
    url, proc = start_model_server(f"unused-{uuid.uuid4().hex[:6]}", tracked, log_path)
    try:
        wait_until(lambda: listening(url, proc), 60, "the model server listening")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        stop_process(proc)
    assert "stopping" in log_path.read_text()


def listening(url: str, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, "the model server exited"
    try:
        requests.get(f"{url}/ping", timeout=5)
    except requests.ConnectionError:
        return False
    return True


@pytest.mark.parametrize(
    ("body", "content_type", "columns"),
    [
        (records(GOOD_ROW), "application/json", list(FEATURES)),
        (
            records(GOOD_ROW, {"colour": 1}),
            "application/json; charset=utf-8",
            [*FEATURES, "colour"],
        ),
        (split(["a", "b"], [1, 2]), "application/json", ["a", "b"]),
        (json.dumps({"instances": [GOOD_ROW]}), "application/json", list(FEATURES)),
        (json.dumps({"inputs": {"x": [1]}}), "application/json", ["x"]),
        # Nothing named: the scoring server judges these and answers for itself.
        (json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}), "application/json", None),
        (json.dumps({"dataframe_records": []}), "application/json", None),
        (json.dumps([GOOD_ROW]), "application/json", None),
        ("{not json", "application/json", None),
        ("a, b ,c\n1,2,3", "text/csv", ["a", "b", "c"]),
        ("a,b", "text/plain", None),
    ],
)
def test_the_server_reads_the_column_names_a_request_carries(body, content_type, columns):
    from iris_mlflow.serving.server import read_request

    assert read_request(body.encode(), content_type)[1] == columns


def test_measurements_are_validated_in_process():
    """The same checks without a server: what predict() does before the network runs."""
    from iris_mlflow.serving.model import InvalidMeasurementsError, validate_measurements

    good = pd.DataFrame([GOOD_ROW])
    assert validate_measurements(good).dtype == np.float32
    assert (
        validate_measurements(good[list(reversed(FEATURES))]).tolist()
        == validate_measurements(good).tolist()
    )
    with pytest.raises(InvalidMeasurementsError, match=r"unknown column\(s\): colour"):
        validate_measurements(good.assign(colour=1.0))
    with pytest.raises(InvalidMeasurementsError, match=r"missing column\(s\): petal_width"):
        validate_measurements(good.drop(columns="petal_width"))
    with pytest.raises(InvalidMeasurementsError, match="must hold numbers"):
        validate_measurements(good.assign(sepal_length=True))
    with pytest.raises(InvalidMeasurementsError, match="shape"):
        validate_measurements(np.ones((2, 3)))
    with pytest.raises(InvalidMeasurementsError, match="inf"):
        validate_measurements(good.assign(petal_width=float("inf")))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (None, "MODEL_SERVER_URL is not set"),
        ("", "MODEL_SERVER_URL is not set"),
        ("closed port", "no model server answers at http://127.0.0.1:"),
        ("http://model-server.invalid:5001", "no model server answers at http://model-server.inv"),
    ],
)
def test_the_notebook_says_in_one_line_when_no_model_server_answers(url, reason):
    if url == "closed port":
        url = f"http://127.0.0.1:{free_port()}"
    message = model_server_client.no_server_message(url, timeout=5)
    assert reason in message
    assert message.endswith("start one with `docker compose up -d model-server`")
    assert "\n" not in message


def test_log_time_refuses_what_the_numpy_runtime_does_not_implement(tmp_path):
    import keras

    from iris_mlflow.serving.network import UnsupportedNetworkError, export_network

    def network(*layers):
        return keras.Sequential([keras.Input(shape=(len(FEATURES),)), *layers])

    with pytest.raises(UnsupportedNetworkError, match=r"activation 'gelu' is not implemented"):
        export_network(network(keras.layers.Dense(3, activation="gelu", name="h")), tmp_path)
    with pytest.raises(UnsupportedNetworkError, match=r"'norm' is a LayerNormalization; .*"):
        export_network(network(keras.layers.LayerNormalization(name="norm")), tmp_path)


def test_the_numpy_runtime_computes_what_keras_computes(tmp_path):
    """Layer by layer, on the project's network with random weights: no training needed."""
    from iris_mlflow.model import build_model
    from iris_mlflow.serving.network import NumpyNetwork, check_export, export_network

    flowers = load_frame()[list(FEATURES)].to_numpy(dtype="float32")
    keras_model = build_model(flowers, hidden_units=8)
    network = NumpyNetwork.load(*export_network(keras_model, tmp_path))
    assert check_export(keras_model, network, flowers) <= 1e-6
