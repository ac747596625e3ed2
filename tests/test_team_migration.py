"""Issue 11 on a real Docker engine: a laptop stack's store copied into the team stack
(scripts/copy-to-team.sh), interrupted and run again; the team stack's backup and restore
(scripts/backup-volumes.sh --team); and the bad inputs of both."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from harness import ROOT, stores
from harness.processes import wait_until
from harness.stack import (
    Stack,
    docker,
    engine_available,
    new_team_stack,
    remove_leftover_projects,
)
from tests.conftest import PER_EPOCH_METRICS
from tests.test_team import (
    ADMIN,
    EDITOR,
    FLOWERS,
    MODEL,
    bucket_checksums,
    client_of,
    one_line_error,
    password,
    signed_in,
)

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not engine_available(), reason="no Docker engine is running"),
]

#: This module's compose projects: its own prefix, so cleaning up touches no other stack.
PREFIX = "irismigrate"
EXPERIMENT = "iris-classifier"
EPOCHS = 120


def store_snapshot(stack: Stack, auth) -> dict:
    return stores.store_snapshot(stack.mlflow_url, auth, EXPERIMENT, MODEL)


def team_snapshot(team: Stack) -> dict:
    auth = (EDITOR, password(team, EDITOR))
    with signed_in(*auth):
        return store_snapshot(team, auth)


def copy_command(source: str) -> list[str]:
    return [str(ROOT / "scripts" / "copy-to-team.sh"), source]


def copy_to_team(team: Stack, source: str, **env: str) -> subprocess.CompletedProcess:
    """The README's command (`make copy-to-team FROM=...` runs this script)."""
    return subprocess.run(
        copy_command(source),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**team.env, **env},
        timeout=900,
        stdin=subprocess.DEVNULL,
    )


# --- the stacks -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def leftovers_removed():
    remove_leftover_projects(PREFIX)


@pytest.fixture(scope="module")
def laptop(request, leftovers_removed):
    """A laptop stack whose store holds what a user's would: two trainings of EPOCHS epochs
    (two versions of the model, `champion` and `challenger`), and a run that FAILED."""
    del leftovers_removed
    request.getfixturevalue("src_owner")  # ./src gets its owner before the container starts
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    stack = Stack(project=f"{PREFIX}{uuid.uuid4().hex[:8]}")
    try:
        stack.up(build=True, timeout=3000)
        stack.train(EXPERIMENT, "--epochs", str(EPOCHS), "--run-name", "sixteen-units")
        # Worse: it becomes the challenger.
        stack.train(
            EXPERIMENT, "--epochs", str(EPOCHS), "--run-name", "two-units",
            "--hidden-units", "2", "--learning-rate", "0.001",
        )  # fmt: skip
        client = MlflowClient(tracking_uri=stack.mlflow_url)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        failed = client.create_run(experiment.experiment_id, run_name="diverged").info.run_id
        client.log_param(failed, "learning_rate", "20")
        start = int(time.time() * 1000)
        client.log_batch(
            failed,
            metrics=[Metric("loss", 1.5**step, start + 37 * step, step) for step in range(150)],
        )
        client.log_text(failed, "the loss grew without bound", "notes/why.txt")
        client.set_terminated(failed, "FAILED")
        assert set(client.get_registered_model(MODEL).aliases) == {"champion", "challenger"}
        stack.snapshot = store_snapshot(stack, None)
        # The copy reads the volumes; the laptop's servers need not run (2 cores).
        stack.compose("stop")
        yield stack
    finally:
        stack.down(volumes=True)


@pytest.fixture(scope="module")
def team(request, leftovers_removed):
    del leftovers_removed
    request.getfixturevalue("src_owner")
    stack = new_team_stack(prefix=PREFIX)
    try:
        stack.up(build=True, timeout=3000)
        yield stack
    finally:
        stack.down(volumes=True)


def copied_runs(team: Stack) -> list:
    with signed_in(ADMIN, password(team, ADMIN)):
        client = client_of(team)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        return [
            run
            for run in client.search_runs([experiment.experiment_id])
            if "iris.copied_from" in run.data.tags
        ]


@pytest.fixture(scope="module")
def copies(laptop, team):
    """The copy killed once it has started writing, then run again (completing it), then a
    third time; what each said and what the team stack held after each."""
    started = subprocess.Popen(
        copy_command(laptop.project),
        cwd=ROOT,
        env=team.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def writing() -> bool:
        assert started.poll() is None, started.communicate()
        return bool(copied_runs(team))

    wait_until(writing, 300, "the copy has made a run", interval=0.2)
    job = docker(
        "ps", "-q",
        "--filter", f"label=com.docker.compose.project={team.project}",
        "--filter", "label=com.docker.compose.oneoff=True",
    ).stdout.split()  # fmt: skip
    docker("kill", *job)
    started.communicate(timeout=120)
    interrupted = {
        "returncode": started.returncode,
        "complete runs": sum(
            run.data.tags.get("iris.copy_complete") == "true" for run in copied_runs(team)
        ),
    }
    first = copy_to_team(team, laptop.project)
    assert first.returncode == 0, first.stderr[-3000:]
    after_first = team_snapshot(team), bucket_checksums(team, "artifacts/")
    second = copy_to_team(team, laptop.project)
    assert second.returncode == 0, second.stderr[-3000:]
    after_second = team_snapshot(team), bucket_checksums(team, "artifacts/")
    return {
        "interrupted": interrupted,
        "first": first,
        "second": second,
        "after first": after_first,
        "after second": after_second,
    }


# --- the copy ---------------------------------------------------------------------------------


def test_an_interrupted_copy_completes_when_run_again_and_everything_arrives_equal(laptop, copies):
    interrupted = copies["interrupted"]
    print(f"interrupted copy: {interrupted}")
    assert interrupted["returncode"] != 0  # killed mid-copy
    assert interrupted["complete runs"] < len(laptop.snapshot["runs"])
    source = laptop.snapshot
    target, _objects = copies["after first"]
    # What the source holds is what the issue lists.
    statuses = sorted(run["status"] for run in source["runs"].values())
    assert statuses == ["FAILED", "FINISHED", "FINISHED"]
    for name, run in source["runs"].items():
        if run["status"] == "FINISHED":  # a training: a point per epoch, the test scores once
            assert all(len(run["histories"][key]) == EPOCHS for key in PER_EPOCH_METRICS), name
        else:
            assert len(run["histories"]["loss"]) == 150, name
    assert all(
        any(path.startswith("plots/") for path in run["artifacts"])
        for run in source["runs"].values()
        if run["status"] == "FINISHED"
    )
    assert len(source["versions"]) == 2
    assert set(source["aliases"]) == {"champion", "challenger"}
    # ... and it arrived, item by item (the equality of the whole follows).
    assert target["runs"].keys() == source["runs"].keys()
    for name, run in source["runs"].items():
        for part in ("status", "times", "params", "tags", "histories", "artifacts", "models"):
            assert target["runs"][name][part] == run[part], (name, part)
    assert target["versions"] == source["versions"]
    assert target["aliases"] == source["aliases"]
    assert target == source
    assert "copied" in copies["first"].stdout


def test_copying_again_adds_nothing(copies):
    assert copies["after second"] == copies["after first"]
    said = copies["second"].stdout.strip().splitlines()[-1]
    for kind, count in (("runs", 3), ("logged models", 2), ("model versions", 2), ("aliases", 2)):
        assert f"{kind}: 0 copied, {count} already there" in said, said


def test_the_team_model_server_serves_the_copied_champion(team, copies):
    target, _objects = copies["after first"]
    champion = target["aliases"]["champion"]
    url = f"{team.model_server_url}/invocations"
    body = {"dataframe_records": FLOWERS}

    def serving() -> bool:
        try:
            answer = requests.post(url, json=body, timeout=10)
        except requests.ConnectionError:
            return False
        version = answer.headers.get("x-model-version")
        return answer.status_code == 200 and version == f"{MODEL}/{champion}"

    wait_until(serving, 180, "the model server answers with the copied champion", interval=2)
    predictions = requests.post(url, json=body, timeout=10).json()["predictions"]
    assert [row["species"] for row in predictions] == ["setosa", "virginica"]


# --- bad input to the copy --------------------------------------------------------------------


def readable_folder(path: Path) -> Path:
    """The copy runs as the MLflow image's user: the folder must be readable by others."""
    for item in [path, *path.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)
    path.parent.chmod(0o755)
    return path


def test_a_source_that_is_not_an_mlflow_store_is_refused_in_one_line(team, copies, tmp_path):
    before = copies["after second"]
    junk = tmp_path / "junk"
    (junk / "mlruns").mkdir(parents=True)
    (junk / "mlflow.db").write_text("not a database, just words\n" * 100)
    other = tmp_path / "other"
    (other / "mlruns").mkdir(parents=True)
    import sqlite3

    with sqlite3.connect(other / "mlflow.db") as db:
        db.execute("create table notes (text)")
    for source, line in (
        (junk, f"copy-to-team: {junk} is not an MLflow store: file is not a database"),
        (other, f"copy-to-team: {other} is not an MLflow store: no MLflow tables in it"),
        (
            "no-such-stack",
            "copy-to-team: no-such-stack: not a file or folder, nor a laptop stack "
            "(no volume no-such-stack_mlflow-store)",
        ),
        (tmp_path / "nowhere", f"copy-to-team: {tmp_path / 'nowhere'}: no such file or folder"),
    ):
        if isinstance(source, Path) and source.exists():
            readable_folder(source)
        done = copy_to_team(team, str(source))
        assert done.returncode == 1
        assert one_line_error(done) == line
    assert (team_snapshot(team), bucket_checksums(team, "artifacts/")) == before


def test_a_team_stack_that_refuses_the_credentials_or_is_down_is_said_in_one_line(
    team, laptop, copies
):
    before = copies["after second"]
    refused = copy_to_team(
        team, laptop.project, MLFLOW_AUTH_ADMIN_PASSWORD="not-the-admin-password"
    )
    assert refused.returncode == 1
    assert one_line_error(refused) == (
        "copy-to-team: the tracking server at http://mlflow:5000 refused the credentials of "
        "user admin (401)"
    )
    team.compose("stop", "mlflow")
    try:
        down = copy_to_team(team, laptop.project)
    finally:
        team.up("mlflow", timeout=300)
    assert down.returncode == 1
    assert one_line_error(down) == (
        "copy-to-team: cannot reach the tracking server at http://mlflow:5000 "
        "(ConnectionError): is the team stack up?"
    )
    assert (team_snapshot(team), bucket_checksums(team, "artifacts/")) == before


# --- backup and restore of the team stack -----------------------------------------------------


def backup_script(team: Stack, *args: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "scripts" / "backup-volumes.sh"), "--team", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**team.env, "BACKUP_ROOT": str(root)},
        timeout=900,
        stdin=subprocess.DEVNULL,
    )


def test_team_backup_then_down_v_then_restore_brings_everything_back(team, copies, tmp_path):
    # A user of their own, made as the README says (`make user`), with MANAGE.
    alice = f"alice-{uuid.uuid4().hex}"
    team.compose(
        "run", "--rm", "--no-deps", "-e", f"TEAM_USER_PASSWORD={alice}",
        "users", "user", "alice", "MANAGE",
    )  # fmt: skip
    before = team_snapshot(team), bucket_checksums(team, "artifacts/")
    assert before == copies["after second"]

    saved = tmp_path / "backup"
    started = time.monotonic()
    done = backup_script(team, "backup", str(saved), root=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"team backup: {time.monotonic() - started:.1f} s, {done.stdout.strip()}")
    assert sorted(p.name for p in saved.iterdir()) == [
        "SHA256SUMS",
        "bucket.tgz",
        "mlflow.dump",
        "mlflow_auth.dump",
    ]

    # A truncated dump, and a truncated archive whose checksum was taken after: refused before
    # anything is touched (no safety backup either: nothing was about to change).
    truncated = tmp_path / "truncated"
    shutil.copytree(saved, truncated)
    dump = (truncated / "mlflow.dump").read_bytes()
    (truncated / "mlflow.dump").write_bytes(dump[: len(dump) // 2])
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    archive = (broken / "bucket.tgz").read_bytes()
    (broken / "bucket.tgz").write_bytes(archive[: len(archive) // 2])
    # The checksums taken after the damage: only the archive's own check can tell.
    (broken / "SHA256SUMS").write_text(
        "".join(
            f"{hashlib.sha256((broken / name).read_bytes()).hexdigest()}  {name}\n"
            for name in ("mlflow.dump", "mlflow_auth.dump", "bucket.tgz")
        )
    )
    for folder, line in (
        (
            truncated,
            f"error: {truncated}/mlflow.dump is damaged or truncated: its checksum differs "
            "from SHA256SUMS",
        ),
        (broken, f"error: {broken}/bucket.tgz is not a valid archive"),
    ):
        refused = backup_script(team, "restore", str(folder), root=tmp_path)
        assert refused.returncode == 2
        assert one_line_error(refused) == line
    assert not any(p.name.startswith("before-restore-") for p in tmp_path.iterdir())
    assert (team_snapshot(team), bucket_checksums(team, "artifacts/")) == before

    # Everything gone, then back.
    team.down(volumes=True)
    team.up(timeout=900)
    with signed_in(EDITOR, password(team, EDITOR)):
        experiment = client_of(team).get_experiment_by_name(EXPERIMENT)
        assert client_of(team).search_runs([experiment.experiment_id]) == []
    started = time.monotonic()
    done = backup_script(team, "restore", str(saved), root=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"team restore: {time.monotonic() - started:.1f} s")
    assert (team_snapshot(team), bucket_checksums(team, "artifacts/")) == before
    safety = [p for p in tmp_path.iterdir() if p.name.startswith("before-restore-")]
    assert len(safety) == 1
    assert (safety[0] / "SHA256SUMS").is_file()
    # The users and their permissions came back with the sign-in database.
    with signed_in("alice", alice):
        experiment = client_of(team).get_experiment_by_name(EXPERIMENT)
    # Over plain REST (what MLflow's AuthServiceClient sends): importing that client loads the
    # sign-in app, which the host's test environment need not have.
    admin = (ADMIN, password(team, ADMIN))
    for user, granted in (("alice", "MANAGE"), (EDITOR, "EDIT")):
        answer = requests.get(
            f"{team.mlflow_url}/api/3.0/mlflow/users/permissions/get",
            params={
                "username": user,
                "resource_type": "experiment",
                "resource_id": experiment.experiment_id,
            },
            auth=admin,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["permission"] == granted, user
