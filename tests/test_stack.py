"""The compose stack on a real Docker engine: build, run the notebook inside it, read the run
back from the host, check what is exposed, and find everything again after restarts."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from harness.processes import wait_until
from harness.stack import Stack, docker, engine_available
from tests.conftest import ROOT, SRC, assert_complete_run, only_run

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not engine_available(), reason="no Docker engine is running"),
]


@pytest.fixture(scope="module")
def notebook_run(stack):
    """The notebook executed inside the jupyter container, as the notebook user."""
    experiment = "stack-notebook"
    executed = "/tmp/executed.ipynb"  # noqa: S108 (inside the container)
    done = stack.exec(
        "jupyter",
        "papermill",
        "iris_training.ipynb",
        executed,
        "-p",
        "EPOCHS",
        "3",
        "-p",
        "EXPERIMENT_NAME",
        experiment,
        "--no-progress-bar",
        user="jovyan",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_url)
    notebook = json.loads(stack.exec("jupyter", "cat", executed).stdout)
    outputs = json.dumps([cell.get("outputs", []) for cell in notebook["cells"]])
    return client, only_run(client, experiment), outputs


def artifact_checksums(stack: Stack, client, run) -> dict[str, str]:
    """sha256 of every file of the run and its model, fetched through the server's proxy."""
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    roots = [
        f"{run.info.experiment_id}/{run.info.run_id}/artifacts",
        *(f"{run.info.experiment_id}/models/{m.model_id}/artifacts" for m in models),
    ]
    return stack.artifact_checksums(roots)


def snapshot(stack: Stack, client, run) -> dict:
    from tests.conftest import PER_EPOCH_METRICS

    fresh = client.get_run(run.info.run_id)
    return {
        "status": fresh.info.status,
        "params": fresh.data.params,
        "metrics": fresh.data.metrics,
        "histories": {
            m: [(h.step, h.value) for h in client.get_metric_history(run.info.run_id, m)]
            for m in PER_EPOCH_METRICS
        },
        "artifacts": artifact_checksums(stack, client, run),
    }


def test_both_services_are_healthy(stack):
    assert stack.health("mlflow") == "healthy"
    assert stack.health("jupyter") == "healthy"


def test_notebook_in_the_container_logs_a_complete_run(notebook_run):
    client, run, _executed = notebook_run
    assert_complete_run(client, run.info.run_id, epochs=3)


def test_model_downloads_through_the_proxy_and_predicts(stack, notebook_run):
    import mlflow

    client, run, _executed = notebook_run
    (model,) = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    mlflow.set_tracking_uri(stack.mlflow_url)
    try:
        loaded = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    finally:
        mlflow.set_tracking_uri(None)
    flowers = {
        "sepal_length": [5.1, 6.9],
        "sepal_width": [3.5, 3.1],
        "petal_length": [1.4, 5.4],
        "petal_width": [0.2, 2.1],
    }
    import pandas as pd

    answer = loaded.predict(pd.DataFrame(flowers))
    assert answer["species"].iloc[0] == "setosa"
    probabilities = answer.filter(like="probability_").to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_notebook_asked_the_model_server(notebook_run):
    """The notebook's last section got species back from the stack's model server."""
    _client, _run, outputs = notebook_run
    assert "probability_setosa" in outputs
    assert "no model server" not in outputs
    assert '"ename"' not in outputs


@pytest.mark.usefixtures("notebook_run")  # which registered the first champion
def test_model_server_serves_the_champion_then_a_better_one(stack):
    """The model-server container answers as the Keras model does, on all 150 flowers, and
    swaps to a better champion within seconds, answering every request meanwhile."""
    import mlflow
    import pandas as pd

    from iris_mlflow.data import load_frame
    from iris_mlflow.names import FEATURES, SPECIES
    from iris_mlflow.serving import client as endpoint
    from iris_mlflow.serving.model import PROBABILITY_COLUMNS
    from iris_mlflow.train import TrainingConfig, predict_species, train

    endpoint.wait_until_serving(stack.model_server_url, timeout=180)
    assert stack.health("model-server") == "healthy"
    flowers = load_frame()[list(FEATURES)]
    mlflow.set_tracking_uri(stack.mlflow_url)
    try:
        first = mlflow.pyfunc.load_model("models:/iris-classifier@champion").predict(flowers)
        served = endpoint.predict(stack.model_server_url, flowers)
        pd.testing.assert_frame_equal(served, first, rtol=1e-5)
        # Deterministic, and 30 of 30 held-out flowers: better than any champion before it
        # (the browser test's default run may already be champion at 29 of 30). Trained here,
        # so the Keras model is in memory to compare the served answers with.
        better = train(
            TrainingConfig(epochs=100, hidden_units=32, seed=7),
            tracking_uri=stack.mlflow_url,
            experiment_name="better",
        )
    finally:
        mlflow.set_tracking_uri(None)
    assert better.registration.alias == "champion"
    keras_probabilities = predict_species(better.model, flowers.to_numpy())
    version = f"iris-classifier/{better.registration.version}"

    # Every request through the swap is answered, by the old champion, then the new one.
    def answer_of_the_new_champion():
        answer = requests.post(
            f"{stack.model_server_url}/invocations",
            json={"dataframe_split": flowers.to_dict(orient="split", index=False)},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        return answer if answer.headers["x-model-version"] == version else None

    answer = wait_until(answer_of_the_new_champion, 60, "the better model served", interval=0.1)
    served = pd.DataFrame(answer.json()["predictions"])
    assert list(served["species"]) == [SPECIES[i] for i in keras_probabilities.argmax(axis=1)]
    np.testing.assert_allclose(
        served[list(PROBABILITY_COLUMNS)].to_numpy(), keras_probabilities, atol=1e-5
    )
    assert "moved from version" in stack.compose("logs", "model-server").stdout
    # A column the model does not take is refused, not silently dropped.
    extra = flowers.head(1).assign(colour=3.0)
    with pytest.raises(endpoint.ModelServerError, match=r"400: unknown column\(s\): colour"):
        endpoint.predict(stack.model_server_url, extra)


def test_the_model_server_image_has_no_tensorflow(stack):
    """What a user would deploy: no TensorFlow, Keras, JupyterLab or compiler in it."""
    probe = (
        "import importlib.util as u, shutil; "
        "print([m for m in ('tensorflow', 'keras', 'jupyterlab', 'jax') if u.find_spec(m)]"
        " + [c for c in ('gcc', 'cc') if shutil.which(c)])"
    )
    done = stack.exec("model-server", "python", "-c", probe)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


def test_jupyter_requires_its_token(stack):
    url = f"{stack.jupyter_url}/api/contents"
    assert requests.get(url, timeout=10).status_code == 403
    assert requests.get(url, params={"token": "wrong"}, timeout=10).status_code == 403
    ok = requests.get(url, headers={"Authorization": f"token {stack.token}"}, timeout=10)
    assert ok.status_code == 200
    assert "iris_training.ipynb" in {item["name"] for item in ok.json()["content"]}


def test_mlflow_refuses_a_foreign_host_header(stack):
    search = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, timeout=10).status_code == 200
    foreign = requests.get(search, headers={"Host": "attacker.example:5000"}, timeout=10)
    assert foreign.status_code == 403


def test_published_ports_are_loopback_only(stack):
    for service in ("mlflow", "jupyter", "model-server"):
        ports = docker("port", stack.container(service)).stdout.split("\n")
        bound = [line.split(" -> ")[1] for line in ports if " -> " in line]
        assert bound, f"{service} publishes no port"
        for address in bound:
            assert address.startswith("127.0.0.1:"), f"{service} is published on {address}"


def test_services_run_as_non_root(stack):
    for service in ("mlflow", "jupyter", "model-server"):
        rows = docker("top", stack.container(service), "-o", "pid,uid,args").stdout.splitlines()[1:]
        # Skip the init process (docker-init) that only reaps and forwards signals.
        serving = [row.split(None, 2) for row in rows if "docker-init" not in row]
        assert serving, f"no process in {service}"
        for _pid, uid, args in serving:
            assert uid != "0", f"{service} runs {args!r} as root"


def test_nothing_phones_home(stack):
    for service in ("mlflow", "jupyter", "model-server"):
        env = docker("inspect", "-f", "{{json .Config.Env}}", stack.container(service)).stdout
        assert "MLFLOW_DISABLE_TELEMETRY=true" in env, service
    news = stack.exec("jupyter", "cat", "/opt/venv/share/jupyter/lab/settings/overrides.json")
    assert (
        json.loads(news.stdout)["@jupyterlab/apputils-extension:notification"]["fetchNews"]
        == "false"
    )


def test_files_written_in_the_container_belong_to_the_src_owner(stack, src_owner):
    uid, gid = src_owner
    name = f"written-by-container-{os.getpid()}.txt"
    target = SRC / name
    try:
        done = stack.exec(
            "jupyter", "python", "-c", f"open('{name}', 'w').write('hello\\n')", user="jovyan"
        )
        assert done.returncode == 0, done.stderr
        stat = target.stat()
        assert (stat.st_uid, stat.st_gid) == (uid, gid)
        # The host user who owns src/ can edit it.
        as_owner = (
            []
            if os.getuid() == uid
            else ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        )
        subprocess.run([*as_owner, "sh", "-c", f"echo edited >> '{target}'"], check=True)
        assert target.read_text() == "hello\nedited\n"
    finally:
        target.unlink(missing_ok=True)


def test_runs_survive_down_up_and_a_killed_server(stack, notebook_run):
    client, run, _executed = notebook_run
    before = snapshot(stack, client, run)
    assert len(before["artifacts"]) >= 5

    stack.down(volumes=False)
    stack.up()
    assert snapshot(stack, client, run) == before

    docker("kill", stack.container("mlflow"))
    stack.up()
    assert snapshot(stack, client, run) == before
    # And the restarted server still takes new runs.
    stack.train("after-kill", "--epochs", "2")
    assert only_run(client, "after-kill").info.status == "FINISHED"


def test_unauthenticated_jupyter_serves_no_files(stack):
    """Without the token, a file URL leads to the login page, never to the file."""
    answer = requests.get(
        f"{stack.jupyter_url}/files/iris_training.ipynb", allow_redirects=False, timeout=10
    )
    assert answer.status_code in (302, 403)
    assert "/login" in answer.headers.get("Location", "/login")
    assert "parameters" not in answer.text


def backup_script(stack: Stack, *args: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "scripts" / "backup-volumes.sh"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**stack.env, "BACKUP_ROOT": str(root)},
        timeout=600,
    )


def test_backup_restores_everything_into_empty_volumes(stack, notebook_run, tmp_path):
    client, run, _executed = notebook_run
    before = snapshot(stack, client, run)
    saved = tmp_path / "backup"
    done = backup_script(stack, "backup", str(saved), root=tmp_path)
    assert done.returncode == 0, done.stderr

    # A broken archive is refused before anything is touched.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "store.tgz").write_bytes((saved / "store.tgz").read_bytes()[:100])
    (broken / "artifacts.tgz").write_bytes((saved / "artifacts.tgz").read_bytes())
    refused = backup_script(stack, "restore", str(broken), root=tmp_path)
    assert refused.returncode == 2
    assert "store.tgz is not a valid archive" in refused.stderr
    assert snapshot(stack, client, run) == before

    stack.down(volumes=True)  # every run gone
    stack.up()
    assert client.get_experiment_by_name("stack-notebook") is None
    done = backup_script(stack, "restore", str(saved), root=tmp_path)
    assert done.returncode == 0, done.stderr
    stack.wait_healthy()
    assert snapshot(stack, client, run) == before
    assert any(p.name.startswith("before-restore-") for p in tmp_path.iterdir())


OLD_MLFLOW = "2.22.5"
MAKE_OLD_STORE = """
from mlflow import MlflowClient
client = MlflowClient("sqlite:////mlflow/store/mlflow.db")
run = client.create_run(client.create_experiment("made-by-old-mlflow"))
client.log_param(run.info.run_id, "epochs", "3")
for step in range(3):
    client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
client.set_terminated(run.info.run_id)
"""


@pytest.mark.usefixtures("stack")  # built the images
def test_a_store_made_by_an_older_mlflow_is_migrated_on_start():
    """The tracking server starts on a store from MLflow 2.x: no manual `mlflow db upgrade`."""
    old = Stack()
    volume = f"{old.project}_mlflow-store"
    labels = [f"com.docker.compose.project={old.project}", "com.docker.compose.volume=mlflow-store"]
    docker("volume", "create", *(f"--label={label}" for label in labels), volume)
    try:
        docker(
            "run",
            "--rm",
            "-v",
            f"{volume}:/mlflow/store",
            "--entrypoint",
            "bash",
            f"iris-mlflow-stack/mlflow:{os.environ.get('IMAGE_TAG', 'latest')}",
            "-c",
            f"python -m venv /tmp/old && /tmp/old/bin/pip install -q mlflow-skinny=={OLD_MLFLOW} "
            f"'sqlalchemy<2.1' alembic && /tmp/old/bin/python -c '{MAKE_OLD_STORE}'",
            timeout=600,
        )
        old.up("mlflow")
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=old.mlflow_url)
        run = only_run(client, "made-by-old-mlflow")
        assert run.data.params == {"epochs": "3"}
        assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [
            1.0,
            0.5,
            1 / 3,
        ]
        logs = old.compose("logs", "mlflow").stdout
        assert "migrating the tracking store from schema" in logs
        listing = old.exec("mlflow", "ls", "/mlflow/store").stdout.split()
        assert any(name.endswith(".bak") for name in listing), listing
    finally:
        old.down(volumes=True)


#: Read inside a container: the uvicorn worker's command line and environment.
READ_UVICORN_WORKER = """
import json, pathlib
for proc in pathlib.Path("/proc").glob("[0-9]*"):
    command = [part.decode() for part in (proc / "cmdline").read_bytes().split(b"\\0")[:-1]]
    if command[1:3] == ["-m", "uvicorn"]:
        items = (proc / "environ").read_bytes().decode().split("\\0")
        env = dict(item.split("=", 1) for item in items if "=" in item)
        print(json.dumps({"command": command, "env": env}))
    elif command[1:3] == ["/opt/venv/bin/mlflow", "server"]:
        print(json.dumps({"parent": command}))
"""


def started_server(args: tuple[str, ...], env: dict[str, str]) -> list[dict]:
    """The MLflow image started with ``args``, healthy; what its processes are."""
    image = f"iris-mlflow-stack/mlflow:{os.environ.get('IMAGE_TAG', 'latest')}"
    settings = [f"--env={name}" for name in env]
    container = docker("run", "-d", *settings, image, *args, env=env).stdout.strip()
    try:
        wait_until(
            lambda: docker("exec", container, "healthcheck", check=False).returncode == 0,
            timeout=120,
            what=f"the MLflow image started with {args}",
        )
        found = docker("exec", container, "python", "-c", READ_UVICORN_WORKER).stdout
        return [json.loads(line) for line in found.splitlines()]
    finally:
        docker("rm", "-f", "-v", container, check=False)


@pytest.mark.usefixtures("stack")  # built the images
@pytest.mark.parametrize(
    "args", [(), ("--app-name", "basic-auth")], ids=["tracking-app", "sign-in-app"]
)
def test_the_server_starts_as_mlflow_server_would(args):
    """start-server.sh runs MLflow's app in uvicorn itself, one process instead of two. The
    worker gets the command and environment that `mlflow server` gives it (any other arguments,
    here `--workers 1`, which the image sets anyway, go to `mlflow server`): an MLflow upgrade
    that changes either fails here."""
    env = {}
    if args:
        env = {
            "MLFLOW_AUTH_DATABASE_URI": "sqlite:////tmp/auth.db",
            "MLFLOW_AUTH_CONFIG_PATH": "/tmp/auth/basic_auth.ini",  # noqa: S108 (in the container)
            "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
            "MLFLOW_AUTH_ADMIN_PASSWORD": f"Aa1-{uuid.uuid4().hex}",
        }
    ours = started_server(args, env)
    mlflows = started_server((*args, "--workers", "1"), env)

    assert [p for p in ours if "parent" in p] == []
    assert len([p for p in mlflows if "parent" in p]) == 1, "`mlflow server` did not run"
    (our_worker,) = [p for p in ours if "command" in p]
    (mlflow_worker,) = [p for p in mlflows if "command" in p]
    our_command = our_worker["command"][1:]
    if args:
        # The one difference: MLflow's sign-in app with lookups kept (sign_in_cache.py).
        at = our_command.index("--app-dir")
        assert our_command[at : at + 4] == [
            "--app-dir", "/opt/mlflow-server", "--factory", "sign_in_cache:create_app"
        ]  # fmt: skip
        our_command[at : at + 4] = ["--factory", "mlflow.server.auth:create_app"]
    assert our_command == mlflow_worker["command"][1:]
    # Different on every start; and `mlflow server` says it made the admin user already, which
    # our worker does itself (MLflow's create_app, as in every worker).
    ours_env, mlflows_env = our_worker["env"], mlflow_worker["env"]
    for env_of in (ours_env, mlflows_env):
        assert len(env_of.pop("_MLFLOW_SERVER_BOOT_ID")) == 32
        del env_of["HOSTNAME"]
    if args:
        assert mlflows_env.pop("_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED") == "true"
    for secret in ("MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        # Compared apart, so that a failure never prints them.
        assert ours_env.pop(secret, None) == mlflows_env.pop(secret, None), f"{secret} differs"
    assert ours_env == mlflows_env
