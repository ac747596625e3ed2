"""The team profile (docker-compose.team.yml over docker-compose.yml) on a real Docker engine:
sign-in, PostgreSQL, the S3 object store, two tracking servers behind the load balancer, and
what happens when a server dies, the database restarts or the settings are wrong."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import uuid

import pytest
import requests

from harness.processes import wait_until
from harness.stack import (
    TEAM_PREFIX,
    Stack,
    docker,
    engine_available,
    new_team_stack,
    remove_leftover_projects,
)
from tests.conftest import (
    PER_EPOCH_METRICS,
    assert_complete_run,
    assert_trainings_at_once_all_arrive,
    only_run,
)

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not engine_available(), reason="no Docker engine is running"),
]

EDITOR, READER, ADMIN = "notebook", "model-server", "admin"
MODEL = "iris-classifier"
#: Long enough to be mid-training when a fault is injected (about 2 minutes here).
LONG_EPOCHS = 2000
FLOWERS = [
    {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    {"sepal_length": 6.9, "sepal_width": 3.1, "petal_length": 5.4, "petal_width": 2.1},
]


@contextlib.contextmanager
def signed_in(user: str | None, password: str | None = None):
    """MLflow's client (in this process) signs in as this user; None: anonymous."""
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {name: os.environ.get(name) for name in names}
    for name, value in zip(names, (user, password), strict=True):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def password(stack: Stack, user: str) -> str:
    variable = {
        EDITOR: "TEAM_EDITOR_PASSWORD",
        READER: "TEAM_READER_PASSWORD",
        ADMIN: "MLFLOW_AUTH_ADMIN_PASSWORD",
    }
    return stack.extra_env[variable[user]]


def client_of(stack: Stack):
    """An MLflow client of the stack; it signs in as `signed_in` says."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_url)


def state(container: str) -> dict:
    return json.loads(docker("inspect", "-f", "{{json .State}}", container).stdout)


@pytest.fixture(scope="module")
def team_stack(request):
    request.getfixturevalue("src_owner")  # ./src gets its owner before the container starts
    remove_leftover_projects(TEAM_PREFIX)
    stack = new_team_stack()
    try:
        started = time.monotonic()
        # The README's command: docker compose -f docker-compose.yml -f docker-compose.team.yml
        # up --build --wait (the images are built once here; the other stacks reuse them).
        stack.up(build=True, timeout=3000)
        stack.cold_start_seconds = time.monotonic() - started
        yield stack
    finally:
        stack.down(volumes=True)


@pytest.fixture(scope="module")
def notebook_run(team_stack):
    """The notebook executed in the jupyter container, signed in as the editor."""
    experiment = "team-notebook"
    done = team_stack.exec(
        "jupyter", "papermill", "iris_training.ipynb", "/tmp/executed.ipynb",  # noqa: S108 (in the container)
        "-p", "EPOCHS", "3", "-p", "EXPERIMENT_NAME", experiment, "--no-progress-bar",
        user="jovyan",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with signed_in(EDITOR, password(team_stack, EDITOR)):
        client = client_of(team_stack)
        return only_run(client, experiment)


def model_of(client, run):
    (model,) = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    return model


#: Run in the `bucket` job's container (the MLflow image, on the compose network, with the
#: object store's address and keys): sha256 of every object under a prefix, as JSON.
BUCKET_LISTING = """
import hashlib, json, os, sys
import boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"],
                  config=Config(s3={"addressing_style": "path"}))
bucket, sums = os.environ["OBJECT_STORE_BUCKET"], {}
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=sys.argv[1]):
    for item in page.get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        sums[item["Key"]] = hashlib.sha256(body).hexdigest()
print(json.dumps(sums))
"""


def bucket_checksums(stack: Stack, prefix: str) -> dict[str, str]:
    done = stack.compose(
        "run", "--rm", "--no-deps", "--entrypoint", "python", "bucket", "-c", BUCKET_LISTING, prefix
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def snapshot(stack: Stack, run) -> dict:
    """Everything of a run, read back signed in as the editor."""
    with signed_in(EDITOR, password(stack, EDITOR)):
        client = client_of(stack)
        fresh = client.get_run(run.info.run_id)
        model = model_of(client, run)
        histories = {
            m: [(h.step, h.value) for h in client.get_metric_history(run.info.run_id, m)]
            for m in PER_EPOCH_METRICS
        }
    roots = [
        f"{run.info.experiment_id}/{run.info.run_id}/artifacts",
        f"{run.info.experiment_id}/models/{model.model_id}/artifacts",
    ]
    return {
        "status": fresh.info.status,
        "params": fresh.data.params,
        "metrics": fresh.data.metrics,
        "histories": histories,
        "artifacts": stack.artifact_checksums(roots, (EDITOR, password(stack, EDITOR))),
    }


# --- the stack --------------------------------------------------------------------------------


def test_team_stack_starts_with_one_command_and_publishes_only_what_people_open(team_stack):
    print(f"cold start to all healthy: {team_stack.cold_start_seconds:.0f} s")
    for service in ("postgres", "object-store", "mlflow", "jupyter", "model-server"):
        assert team_stack.health(service) == "healthy", service
    trackers = team_stack.containers("tracking")
    assert len(trackers) == 2
    assert all(state(c)["Health"]["Status"] == "healthy" for c in trackers)
    for job in ("db-backup", "db-migrate", "bucket", "users"):
        (container,) = team_stack.containers(job)
        assert (state(container)["Status"], state(container)["ExitCode"]) == ("exited", 0), job

    published = {}
    for service in ("postgres", "object-store", "tracking", "mlflow", "jupyter", "model-server"):
        for container in team_stack.containers(service):
            ports = json.loads(
                docker("inspect", "-f", "{{json .NetworkSettings.Ports}}", container).stdout
            )
            published[service] = [b for bindings in ports.values() if bindings for b in bindings]
    assert published["postgres"] == published["object-store"] == published["tracking"] == []
    for service in ("mlflow", "jupyter", "model-server"):
        assert {b["HostIp"] for b in published[service]} == {"127.0.0.1"}, service
    # No service process runs as root.
    for service in ("postgres", "object-store", "mlflow"):
        assert team_stack.exec(service, "id", "-u").stdout.strip() != "0", service
    assert docker("exec", trackers[0], "id", "-u").stdout.strip() != "0"


def test_sign_in_is_required(team_stack):
    url = team_stack.mlflow_url
    api = f"{url}/api/2.0/mlflow/experiments/search"
    ui = requests.get(f"{url}/", timeout=10)
    assert ui.status_code == 401
    assert ui.headers.get("WWW-Authenticate", "").startswith("Basic")
    assert requests.get(api, params={"max_results": 1}, timeout=10).status_code == 401
    wrong = requests.get(
        api, params={"max_results": 1}, auth=(EDITOR, "wrong-password-1234"), timeout=10
    )
    assert wrong.status_code == 401
    right = requests.get(
        api, params={"max_results": 1}, auth=(EDITOR, password(team_stack, EDITOR)), timeout=10
    )
    assert right.status_code == 200
    # The health endpoint the load balancer checks needs no sign-in.
    assert requests.get(f"{url}/health", timeout=10).status_code == 200


def test_load_balancer_answers_server_info_as_the_servers_do_but_without_presigned_transfers(
    team_stack,
):
    """haproxy.cfg's fixed /server-info answer must follow MLflow's (after an upgrade too)."""
    fetch = (
        "import urllib.request; print(urllib.request.urlopen("
        "'http://127.0.0.1:5000/api/3.0/mlflow/server-info').read().decode())"
    )
    server = json.loads(
        docker("exec", team_stack.containers("tracking")[0], "python", "-c", fetch).stdout
    )
    auth = (EDITOR, password(team_stack, EDITOR))
    answer = requests.get(
        f"{team_stack.mlflow_url}/api/3.0/mlflow/server-info", auth=auth, timeout=10
    )
    assert answer.json() == {
        **server,
        "multipart_uploads_enabled": False,
        "multipart_downloads_enabled": False,
    }


# --- the notebook, signed in as the editor ----------------------------------------------------


def test_notebook_signed_in_as_the_editor_logs_a_complete_run(team_stack, notebook_run):
    with signed_in(EDITOR, password(team_stack, EDITOR)):
        client = client_of(team_stack)
        assert_complete_run(client, notebook_run.info.run_id, epochs=3)
        version = client.get_model_version_by_alias(MODEL, "champion")
        assert version.run_id == notebook_run.info.run_id
    # The shared model was made by the admin (the users job); the editor added a version.
    with signed_in(ADMIN, password(team_stack, ADMIN)):
        assert client_of(team_stack).get_registered_model(MODEL).name == MODEL


def test_model_files_are_objects_in_the_bucket(team_stack, notebook_run):
    """What the server's artifact proxy serves is byte for byte what the object store holds."""
    with signed_in(EDITOR, password(team_stack, EDITOR)):
        model = model_of(client_of(team_stack), notebook_run)
    root = f"{notebook_run.info.experiment_id}/models/{model.model_id}/artifacts"
    served = team_stack.artifact_checksums([root], (EDITOR, password(team_stack, EDITOR)))
    stored = bucket_checksums(team_stack, f"artifacts/{root}/")
    assert served, "the model has no files"
    assert any(path.endswith("MLmodel") for path in served)
    assert {f"artifacts/{path}": digest for path, digest in served.items()} == stored


# --- the read-only user -----------------------------------------------------------------------


def test_read_only_user_can_load_the_champion_and_change_nothing(team_stack, notebook_run):
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    run_id = notebook_run.info.run_id
    with signed_in(READER, password(team_stack, READER)):
        client = client_of(team_stack)
        assert client.get_run(run_id).info.status == "FINISHED"  # reading is allowed
        with pytest.raises(MlflowException, match="403"):
            client.log_metric(run_id, "sneaky", 1.0)
        with pytest.raises((MlflowException, requests.HTTPError), match="403"):
            client.log_text(run_id, "sneaky", "sneaky.txt")
        with pytest.raises(MlflowException, match="403"):
            client.set_registered_model_alias(MODEL, "champion", "1")
        mlflow.set_tracking_uri(team_stack.mlflow_url)
        try:
            model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
        finally:
            mlflow.set_tracking_uri(None)
    answer = model.predict(pd.DataFrame(FLOWERS))
    assert list(answer["species"]) == ["setosa", "virginica"]
    with signed_in(EDITOR, password(team_stack, EDITOR)):
        assert client_of(team_stack).get_run(run_id).data.metrics.get("sneaky") is None


@pytest.mark.usefixtures("notebook_run")  # which registered the champion
def test_model_server_signed_in_as_the_reader_serves_the_champion(team_stack):
    url = f"{team_stack.model_server_url}/invocations"
    body = {"dataframe_records": FLOWERS}

    def serving() -> bool:
        try:
            return requests.post(url, json=body, timeout=10).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(serving, 180, "the model server answers with the champion", interval=2)
    predictions = requests.post(url, json=body, timeout=10).json()["predictions"]
    assert [row["species"] for row in predictions] == ["setosa", "virginica"]
    assert f"{READER}" in team_stack.compose("exec", "-T", "model-server", "env").stdout


def test_make_user_adds_a_reader_then_an_editor_of_the_shared_experiment_and_model(
    team_stack, notebook_run
):
    """`make user NAME=... PERMISSION=...` (scripts/team-jobs.py user) as the README shows it:
    READ reads everything and changes nothing; EDIT trains into the shared experiment (made
    by the admin) and adds versions to the shared model (made by the admin); the password
    is never printed."""
    from mlflow.exceptions import MlflowException

    name, secret = "alice", f"alice-{uuid.uuid4().hex}"

    def make_user(permission: str) -> None:
        done = team_stack.compose(
            "run", "--rm", "--no-deps", "-e", f"TEAM_USER_PASSWORD={secret}",
            "users", "user", name, permission,
        )  # fmt: skip
        assert f"user {name}: {permission}" in done.stderr, done.stderr[-2000:]
        assert secret not in done.stdout + done.stderr

    make_user("READ")
    with signed_in(name, secret):
        client = client_of(team_stack)
        shared = client.get_experiment_by_name("iris-classifier")
        assert client.get_run(notebook_run.info.run_id).info.status == "FINISHED"
        with pytest.raises(MlflowException, match="403"):
            client.create_run(shared.experiment_id)
    make_user("EDIT")
    with signed_in(name, secret):
        run = client.create_run(shared.experiment_id)
        client.log_metric(run.info.run_id, "loss", 0.5, step=0)
        client.set_terminated(run.info.run_id)
        champion = client.get_model_version_by_alias(MODEL, "champion")
        version = client.create_model_version(
            MODEL,
            champion.source,
            run_id=champion.run_id,
            model_id=champion.source.removeprefix("models:/"),
        )
        client.set_registered_model_alias(MODEL, name, version.version)
        assert client.get_model_version_by_alias(MODEL, name).version == version.version
        with pytest.raises(MlflowException, match="403"):  # deleting needs MANAGE
            client.delete_model_version(MODEL, version.version)
    with signed_in(ADMIN, password(team_stack, ADMIN)):
        client.delete_registered_model_alias(MODEL, name)


def test_an_admin_demoted_loses_admin_rights_at_once_on_every_server(team_stack):
    """The tracking servers keep users who are not admins for a few seconds
    (mlflow-docker/sign_in_cache.py), never admins: an admin demoted through one server is
    refused admin calls on the next request, whichever server answers it."""
    api = f"{team_stack.mlflow_url}/api/2.0/mlflow/users"
    admin = (ADMIN, password(team_stack, ADMIN))
    name, secret = f"carol-{uuid.uuid4().hex[:6]}", f"carol-{uuid.uuid4().hex}"

    def make_admin(who: tuple[str, str], value: bool) -> int:
        body = {"username": name, "is_admin": value}
        return requests.patch(f"{api}/update-admin", json=body, auth=who, timeout=30).status_code

    created = requests.post(f"{api}/create", json={"username": name, "password": secret},
                            auth=admin, timeout=30)  # fmt: skip
    assert created.status_code == 200, created.text
    assert make_admin(admin, True) == 200
    # Carol signs in as an admin, often enough for both servers (round robin) to read her.
    search = f"{team_stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    for _ in range(4):
        assert requests.get(search, auth=(name, secret), timeout=30).status_code == 200
    assert make_admin(admin, False) == 200
    assert [make_admin((name, secret), True) for _ in range(4)] == [403] * 4


# --- a team training at once -----------------------------------------------------------------


def test_eight_trainings_at_once_all_arrive_and_the_rightful_champion_wins(team_stack):
    """What the laptop stack's test asks, through the load balancer, two servers and the
    database pools (a first run of the benchmark lost trainings to an exhausted pool)."""
    with signed_in(EDITOR, password(team_stack, EDITOR)):
        assert_trainings_at_once_all_arrive(team_stack, client_of(team_stack), 8, 20)


# --- faults during a training -----------------------------------------------------------------


def train_through(stack: Stack, experiment: str, faults) -> None:
    """A long training in the jupyter container; once it has logged `epochs` epochs, each
    `fault()` in turn; the training must end well, with every epoch."""
    training = stack.start_training(experiment, "--epochs", str(LONG_EPOCHS), "--no-register")
    try:
        with signed_in(EDITOR, password(stack, EDITOR)):
            client = client_of(stack)

            def logged(epochs: int) -> bool:
                assert training.poll() is None, training.communicate()[1][-2000:]
                found = client.get_experiment_by_name(experiment)
                runs = client.search_runs([found.experiment_id]) if found else []
                history = client.get_metric_history(runs[0].info.run_id, "loss") if runs else []
                return len(history) >= epochs

            for epochs, fault in faults:
                wait_until(
                    functools.partial(logged, epochs), 300, f"{epochs} epochs logged", interval=1
                )
                fault()
            _out, err = training.communicate(timeout=900)
            assert training.returncode == 0, err[-3000:]
            run = only_run(client, experiment)
            assert run.info.status == "FINISHED"
            for metric in PER_EPOCH_METRICS:
                steps = [h.step for h in client.get_metric_history(run.info.run_id, metric)]
                assert sorted(set(steps)) == list(range(LONG_EPOCHS)), metric
    finally:
        if training.poll() is None:
            training.kill()


def test_a_training_survives_a_killed_tracking_server_then_a_postgres_restart(team_stack):
    """Both faults in one training (one 2000-epoch training is about two minutes here)."""
    victim = team_stack.containers("tracking")[0]
    train_through(
        team_stack,
        "team-faults",
        [
            (50, lambda: docker("kill", victim)),
            (600, lambda: team_stack.compose("restart", "postgres")),
        ],
    )
    assert state(victim)["Status"] == "exited"  # `docker kill` is not restarted by Docker
    team_stack.compose("up", "-d", "--wait", "--no-deps", "tracking")  # back to two
    trackers = team_stack.containers("tracking")
    assert all(state(c)["Health"]["Status"] == "healthy" for c in trackers)
    # Stopped and started again (a daemon restart does this), a server comes back: Docker
    # remounts its tmpfs, which must still be the server's to write the sign-in ini into.
    for service in ("tracking", "object-store"):
        container = team_stack.containers(service)[0]
        docker("restart", container, timeout=120)
        wait_until(
            lambda container=container: (
                state(container).get("Health", {}).get("Status") == "healthy"
            ),
            120,
            f"{service} healthy after a restart",
            interval=1,
        )


# --- persistence ------------------------------------------------------------------------------


def test_down_and_up_keep_runs_histories_and_artifact_bytes_and_back_up_first(
    team_stack, notebook_run
):
    before = snapshot(team_stack, notebook_run)
    team_stack.down()
    team_stack.up(timeout=900)
    assert snapshot(team_stack, notebook_run) == before
    # The second `up` found both databases full: db-backup dumped them before db-migrate ran.
    listing = team_stack.compose(
        "run", "--rm", "--no-deps", "--entrypoint", "ls", "db-backup", "/backups"
    ).stdout.split()
    assert any(name.startswith("mlflow-") and name.endswith(".dump") for name in listing), listing
    assert any(name.startswith("mlflow_auth-") for name in listing), listing


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variable", ["MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"]
)
def test_compose_refuses_to_start_without_a_required_secret(variable):
    stack = new_team_stack(**{variable: ""})
    for command in (("config", "-q"), ("up", "--no-build", "-d")):
        done = stack.compose(*command, check=False, timeout=60)
        assert done.returncode != 0, command
        assert f"required variable {variable} is missing a value" in done.stderr, done.stderr
    assert not docker(
        "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={stack.project}"
    ).stdout.strip()


@pytest.fixture(scope="module")
def bad_stack(request):
    """A second team stack (images built by team_stack) with only its backing services up."""
    request.getfixturevalue("team_stack")
    stack = new_team_stack()
    try:
        stack.up("postgres", "object-store", timeout=300)
        yield stack
    finally:
        stack.down(volumes=True)


def one_line_error(done) -> str:
    assert done.returncode != 0, done.stdout[-1000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr.strip().splitlines()[-1]


def test_a_wrong_s3_secret_and_an_unreachable_object_store_are_said_in_one_line(bad_stack):
    wrong = bad_stack.compose(
        "run", "--rm", "--no-deps", "-e", "AWS_SECRET_ACCESS_KEY=not-the-secret", "bucket",
        check=False, timeout=120,
    )  # fmt: skip
    line = one_line_error(wrong)
    assert "object store at http://object-store:8080 refused: 403" in line, line
    assert "(wrong OBJECT_STORE_SECRET_KEY?)" in line, line
    bad_stack.compose("stop", "object-store")
    try:
        away = bad_stack.compose("run", "--rm", "--no-deps", "bucket", check=False, timeout=180)
        assert "cannot reach the object store at http://object-store:8080" in one_line_error(away)
    finally:
        bad_stack.up("object-store", timeout=300)


def test_a_wrong_database_password_stops_up_with_one_line_and_no_crash_loop(bad_stack):
    # The volume was created with one password; .env now says another.
    bad_stack.extra_env["POSTGRES_PASSWORD"] = "not the password the volume has"
    done = bad_stack.compose(
        "up", "--no-build", "--wait", "--wait-timeout", "120", check=False, timeout=300
    )
    assert done.returncode != 0
    assert 'service "db-backup" didn\'t complete successfully: exit 1' in done.stderr, done.stderr[
        -2000:
    ]
    (backup,) = bad_stack.containers("db-backup")
    log = docker("logs", backup).stderr
    assert 'password authentication failed for user "mlflow"' in log, log
    assert "POSTGRES_PASSWORD differs from the one the database volume was created with" in log
    time.sleep(5)
    assert state(backup)["Status"] == "exited"
    assert state(backup)["Restarting"] is False
    assert docker("inspect", "-f", "{{.RestartCount}}", backup).stdout.strip() == "0"
    # Nothing after it started: no migration, no tracking server.
    assert not bad_stack.containers("tracking") or all(
        state(c)["Status"] == "created" for c in bad_stack.containers("tracking")
    )
    # The migration job and a tracking server, started by hand, say the same in one line.
    for service, says in (
        (
            "db-migrate",
            "migrate: cannot connect to postgresql+psycopg://mlflow@postgres:5432/mlflow",
        ),
        (
            "tracking",
            "start-server: cannot connect to the tracking store postgresql+psycopg://mlflow@postgres:5432/mlflow",
        ),
    ):
        ran = bad_stack.compose("run", "--rm", "--no-deps", service, check=False, timeout=180)
        line = one_line_error(ran)
        assert says in line, line
        assert 'password authentication failed for user "mlflow"' in line, line
