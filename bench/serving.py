"""The model server against the plain ``mlflow.keras`` flavour of the same model, both served by
``mlflow models serve --env-manager local`` with one worker in the model-server container,
measured side by side from inside that container: single-row latency and throughput at
concurrency 8. A third variant sends the same requests straight to the scoring server behind
the model server's gateway, which shows what the gateway costs."""

from __future__ import annotations

import json
import re
import time

import mlflow
from mlflow.models import infer_signature

from bench.common import ROOT, Measure
from harness.stack import Stack, docker, remove_leftover_projects
from iris_mlflow import endpoint
from iris_mlflow.train import TrainingConfig, predict_species, train

OURS = "model-server (iris-classifier pyfunc)"
DIRECT = "the same scoring server, without the gateway"
PLAIN = "plain mlflow.keras flavour"
ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
BODIES = {
    OURS: json.dumps({"dataframe_records": [ROW]}),
    DIRECT: json.dumps({"dataframe_records": [ROW]}),
    PLAIN: json.dumps({"inputs": [list(ROW.values())]}),
}
URLS = {OURS: "http://127.0.0.1:5001/invocations", PLAIN: "http://127.0.0.1:5002/invocations"}


def loadgen(container: str, *args: str) -> dict:
    script = (ROOT / "bench" / "loadgen.py").read_text()
    done = docker("exec", container, "python", "-c", script, *args, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(runs: int) -> list[Measure]:
    p50 = Measure(
        name="serving_latency_p50",
        title="Model server: single-row latency, p50 (300 sequential requests per run)",
        unit="ms",
        target="p50 at most 10 ms",
        baseline=PLAIN,
    )
    p99 = Measure(
        name="serving_latency_p99",
        title="Model server: single-row latency, p99",
        unit="ms",
        target="reported",
        baseline=PLAIN,
    )
    rps = Measure(
        name="serving_throughput",
        title="Model server: throughput at concurrency 8, single-row requests",
        unit="req/s",
        target="at least 3x the plain flavour",
        baseline=PLAIN,
    )
    seconds = 3 if runs == 1 else 10
    remove_leftover_projects()
    stack = Stack()
    try:
        stack.compose("build", timeout=3000)
        stack.up()
        stack.compose("up", "-d", "model-server")
        result = train(
            TrainingConfig(), tracking_uri=stack.mlflow_url, experiment_name="bench-serving"
        )
        x = result.data.x_test.to_numpy()
        with mlflow.start_run(run_id=result.run_id):
            plain = mlflow.keras.log_model(
                result.model,
                name="plain-keras",
                signature=infer_signature(x, predict_species(result.model, x)),
            )
        mlflow.set_tracking_uri(None)
        endpoint.wait_until_serving(stack.model_server_url, timeout=180)
        container = stack.container("model-server")
        # The gateway's cost: the same requests straight to the scoring server behind it.
        logs = stack.compose("logs", "model-server").stdout
        scoring = re.findall(r"scoring server at (http://127\.0\.0\.1:\d+)", logs)[-1]
        urls = {**URLS, DIRECT: f"{scoring}/invocations"}
        docker(
            "exec", "-d", container, "python", "-m", "mlflow", "models", "serve",
            "--model-uri", plain.model_uri, "--env-manager", "local",
            "--host", "127.0.0.1", "--port", "5002", "--workers", "1",
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while docker("exec", container, "python", "-c", PING_5002, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the plain keras scoring server did not start")
            time.sleep(1)
        for _ in range(runs):
            for variant in (OURS, DIRECT, PLAIN):
                lat = loadgen(container, "latency", urls[variant], BODIES[variant], "300")
                p50.add(variant, lat["p50_ms"])
                p99.add(variant, lat["p99_ms"])
                tp = loadgen(
                    container, "throughput", urls[variant], BODIES[variant], str(seconds), "8"
                )
                rps.add(variant, tp["rps"])
    finally:
        stack.down(volumes=True)
    p50.target_met = p50.median(OURS) <= 10
    rps.target_met = rps.median(OURS) >= 3 * rps.median(PLAIN)
    rps.notes.append(
        f"Each run: 300 sequential requests for latency, then {seconds} s with 8 threads on "
        "keep-alive connections; the load generator (bench/loadgen.py) runs inside the "
        "model-server container, so every server shares the same 2 cores with it."
    )
    return [p50, p99, rps]


PING_5002 = "import urllib.request as u; u.urlopen('http://127.0.0.1:5002/ping', timeout=2)"
