"""Registry aliases and the served model, with real processes: a tracking server, the
iris-serve supervisor and MLflow's scoring server (`mlflow models serve`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pandas as pd
import pytest
import requests

from iris_mlflow import endpoint
from iris_mlflow.classifier import MAX_ROWS, PROBABILITY_COLUMNS
from iris_mlflow.data import FEATURES, SPECIES
from iris_mlflow.registry import CHALLENGER, CHAMPION, champion_version, register
from iris_mlflow.train import TrainingConfig, predict_species, train
from tests.servers import free_port

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
    # What iris-serve resolves, for either alias (`--alias challenger` serves the challenger).
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


@pytest.fixture(scope="module")
def model_server(tracked, tmp_path_factory):
    """iris-serve on a free port, serving the champion of a fresh registered model."""
    name = f"served-{uuid.uuid4().hex[:6]}"
    port = free_port()
    log = (tmp_path_factory.mktemp("iris-serve") / "iris-serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "iris_mlflow.serve", "--model-name", name, "--port", str(port),
         "--host", "127.0.0.1", "--poll-seconds", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracked},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        yield name, url, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.mark.slow
def test_server_waits_for_a_champion_then_serves_it(model_server, weak_model):
    name, url, proc = model_server
    deadline = time.monotonic() + 60
    while True:  # until the gateway listens (importing MLflow takes a few seconds)
        assert proc.poll() is None, "iris-serve must wait, not exit, while there is no champion"
        try:
            requests.get(f"{url}/ping", timeout=5)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "iris-serve did not listen within 60 s"
            time.sleep(0.5)
    time.sleep(2)  # a few polls of the registry, with no champion to find
    assert proc.poll() is None
    for answer in (requests.get(f"{url}/ping", timeout=5), post(url, records(GOOD_ROW))):
        assert answer.status_code == 503
        assert f"no version of {name} has the alias @champion yet" in answer.json()["message"]

    register(weak_model.model_uri, weak_model.test_accuracy, name)
    endpoint.wait_until_serving(url, timeout=120)
    rows = weak_model.data.x_test
    answer = endpoint.predict(url, rows)
    expected = predict_species(weak_model.model, rows.to_numpy())
    assert list(answer.columns) == ["species", *PROBABILITY_COLUMNS]
    assert list(answer["species"]) == [SPECIES[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(
        answer[list(PROBABILITY_COLUMNS)].to_numpy(), expected, rtol=1e-5, atol=1e-6
    )


@pytest.fixture
def served_url(model_server) -> str:
    """The model server's URL once it serves (the first test registers the champion)."""
    _name, url, _proc = model_server
    endpoint.wait_until_serving(url, timeout=120)
    return url


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
    from iris_mlflow.gateway import MAX_BODY_BYTES

    answer = post(served_url, b" " * (MAX_BODY_BYTES + 1))
    assert answer.status_code == 413
    assert "MiB" in answer.json()["message"]
    assert post(served_url, records(GOOD_ROW)).status_code == 200


@pytest.mark.slow
def test_a_better_model_is_served_without_a_manual_step(model_server, weak_model):
    name, url, _proc = model_server
    endpoint.wait_until_serving(url, timeout=120)
    better = train(TrainingConfig(epochs=60), experiment_name="serving-tests", register_as=name)
    assert better.registration.alias == CHAMPION
    rows = better.data.x_test
    expected = predict_species(better.model, rows.to_numpy())
    # Ask continuously through the swap: every request must be answered, by the old champion
    # until the new one is loaded, then by the new one.
    deadline = time.monotonic() + 90
    answered = 0
    while True:
        served = endpoint.predict(url, rows)[list(PROBABILITY_COLUMNS)].to_numpy()
        answered += 1
        if np.allclose(served, expected, rtol=1e-5, atol=1e-6):
            break
        assert time.monotonic() < deadline, "the new champion was not served within 90 s"
        time.sleep(0.05)
    assert answered > 1, "the swap should take a moment, served by the old champion"
    assert not np.allclose(expected, predict_species(weak_model.model, rows.to_numpy()), atol=1e-3)


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
def test_gateway_reads_the_column_names_a_request_carries(body, content_type, columns):
    from iris_mlflow.gateway import request_columns

    assert request_columns(body.encode(), content_type) == columns


def test_measurements_are_validated_in_process():
    """The same checks without a server: what predict() does before the network runs."""
    from iris_mlflow.classifier import InvalidMeasurementsError, validate_measurements

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
