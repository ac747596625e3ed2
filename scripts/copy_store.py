#!/usr/bin/env python3
"""Copy a single-user MLflow store (an SQLite `mlflow.db` and its artifacts folder) into a
tracking server, through MLflow's client API: experiments, runs (params, tags, status, every
metric's full history with steps and timestamps, artifacts), logged models (their files,
params, tags and metrics), registered models with every version, their tags and aliases.

usage: copy_store.py STORE_DB ARTIFACTS_DIR

The target is MLFLOW_TRACKING_URI, signed in as MLFLOW_TRACKING_USERNAME with
MLFLOW_TRACKING_PASSWORD (default: the admin of MLFLOW_AUTH_ADMIN_USERNAME /
MLFLOW_AUTH_ADMIN_PASSWORD, as the team profile's jobs have them).

Run again, it adds nothing: every copied run, logged model and model version carries the tag
`iris.copied_from` (the source's id), and a run or logged model gets `iris.copy_complete`
only after its last step, so a copy that was interrupted is completed by the next one (each
step is idempotent: MLflow ignores a metric point it already has, files are overwritten with
the same bytes). The source is never written: it is read from a snapshot (SQLite's online
backup), which is migrated to this MLflow's schema if it is older.

An error is one line on stderr and exit 1 (2 for usage). Every check of the source and of
the target (reachable, credentials accepted) happens before anything is written.
"""

# ruff: noqa: T201 (the job's report and its one-line errors)
# ruff: noqa: PLC0415 (MLflow is imported once the settings below are in the environment)

from __future__ import annotations

import contextlib
import io
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

warnings.filterwarnings("ignore")  # MLflow's import-time deprecation notes: noise in a job's log
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

#: Tags the copy adds to what it makes in the target.
COPIED_FROM = "iris.copied_from"
COPY_COMPLETE = "iris.copy_complete"
#: MLflow's limits per log_batch call.
METRICS_PER_BATCH = 1000
PARAMS_PER_BATCH = 100


class CopyError(Exception):
    """What went wrong, in one line."""


def say(message: str) -> None:
    print(f"copy-to-team: {message}", file=sys.stderr, flush=True)


def name_of(store_db: Path) -> str:
    """The store as the user named it (the copy may see it mounted elsewhere)."""
    return os.environ.get("COPY_FROM") or str(store_db)


# --- the source -------------------------------------------------------------------------------


def snapshot_store(store_db: Path, folder: Path) -> tuple[Path, str]:
    """A consistent copy of the SQLite store (the server may be writing to it), checked to be
    an MLflow store, and its schema revision; the source itself is only read."""
    if not store_db.is_file():
        raise CopyError(f"{name_of(store_db)}: no such file (expected an MLflow store, mlflow.db)")
    if not os.access(store_db, os.R_OK):
        raise CopyError(f"{name_of(store_db)}: cannot read it (the copy runs as UID {os.getuid()})")
    copy = folder / "mlflow.db"
    try:
        source = sqlite3.connect(f"file:{store_db}?mode=ro", uri=True)
        with sqlite3.connect(copy) as target:
            source.backup(target)
        source.close()
        with sqlite3.connect(copy) as db:
            tables = {row[0] for row in db.execute("select name from sqlite_master")}
            revision = (
                db.execute("select version_num from alembic_version").fetchone()
                if "alembic_version" in tables
                else None
            )
    except sqlite3.DatabaseError as error:
        raise CopyError(f"{name_of(store_db)} is not an MLflow store: {error}") from None
    if not revision or not {"experiments", "runs", "metrics"} <= tables:
        raise CopyError(f"{name_of(store_db)} is not an MLflow store: no MLflow tables in it")
    return copy, revision[0]


def migrate_snapshot(store_db: Path, copy: Path, revision: str) -> None:
    """A store made by an older MLflow: its snapshot is migrated, as the server would."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    if revision == _get_latest_schema_revision():
        return
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", f"sqlite:///{copy}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CopyError(
            f"{name_of(store_db)}: its schema {revision} cannot be migrated to this MLflow's: "
            f"{last}"
        )


def local_artifacts(uri: str, experiment_location: str, root: Path) -> Path:
    """Where the files behind an artifact URI of the source are, under its artifacts folder.

    A store behind a server (the laptop stack) says ``mlflow-artifacts:/<experiment>/...``:
    relative to the folder the server serves. A store written without a server holds absolute
    paths of the machine it was on: the part below the experiment's own folder is kept."""
    parsed = urlparse(uri)
    if parsed.scheme == "mlflow-artifacts":
        return root / parsed.path.lstrip("/")
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path))
        experiment_path = Path(unquote(urlparse(experiment_location).path))
        try:
            return root / experiment_path.name / path.relative_to(experiment_path)
        except ValueError:
            return path
    raise CopyError(f"artifacts at {uri}: only a local artifacts folder can be read")


# --- the target -------------------------------------------------------------------------------


def check_target(uri: str, user: str, password: str) -> None:
    """The server answers and takes the credentials: one quick request each, no retries."""
    import requests

    try:
        requests.get(f"{uri}/health", timeout=10).raise_for_status()
    except requests.RequestException as error:
        reason = type(error).__name__ if isinstance(error, requests.ConnectionError) else error
        raise CopyError(
            f"cannot reach the tracking server at {uri} ({reason}): is the team stack up?"
        ) from None
    answer = requests.get(
        f"{uri}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        auth=(user, password),
        timeout=30,
    )
    if answer.status_code in (401, 403):
        raise CopyError(
            f"the tracking server at {uri} refused the credentials of user {user} "
            f"({answer.status_code})"
        )
    if answer.status_code != 200:
        raise CopyError(f"the tracking server at {uri} answered {answer.status_code}")


# --- the copy ---------------------------------------------------------------------------------


@dataclass
class Counts:
    copied: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, *, new: bool) -> None:
        bucket = self.copied if new else self.present
        bucket[kind] = bucket.get(kind, 0) + 1

    def summary(self) -> str:
        kinds = ("experiments", "runs", "logged models", "registered models", "model versions")
        kinds += ("aliases",)
        return ", ".join(
            f"{kind}: {self.copied.get(kind, 0)} copied, {self.present.get(kind, 0)} already there"
            for kind in kinds
        )


def all_pages(search, **kwargs) -> list:
    items, token = [], None
    while True:
        page = search(**kwargs, page_token=token)
        items.extend(page)
        token = page.token
        if not token:
            return items


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Copier:
    def __init__(self, source, target, artifacts: Path) -> None:
        self.source, self.target, self.artifacts = source, target, artifacts
        self.counts = Counts()
        self.runs: dict[str, object] = {}  # source run id -> target run
        self.models: dict[str, str] = {}  # source logged model id -> target model id

    # experiments

    def copy_all(self) -> None:
        from mlflow.entities import ViewType

        experiments = all_pages(
            self.source.search_experiments, view_type=ViewType.ACTIVE_ONLY, max_results=1000
        )
        for experiment in sorted(experiments, key=lambda e: int(e.experiment_id)):
            self.copy_experiment(experiment)
        for model in all_pages(self.source.search_registered_models, max_results=1000):
            self.copy_registered_model(model)

    def copy_experiment(self, experiment) -> None:
        runs = all_pages(
            self.source.search_runs,
            experiment_ids=[experiment.experiment_id],
            max_results=1000,
            order_by=["attributes.start_time ASC"],
        )
        models = all_pages(
            self.source.search_logged_models,
            experiment_ids=[experiment.experiment_id],
            max_results=100,
        )
        if not runs and not models and experiment.name == "Default":
            return  # every store has an empty Default; the target has its own
        found = self.target.get_experiment_by_name(experiment.name)
        target_id = found.experiment_id if found else self.target.create_experiment(experiment.name)
        self.counts.add("experiments", new=found is None)
        have = found.tags if found else {}
        for key, value in experiment.tags.items():
            if have.get(key) != value:
                self.target.set_experiment_tag(target_id, key, value)
        # What an earlier copy made here: its source ids, and whether it got to its last step.
        copied_runs = {
            run.data.tags[COPIED_FROM]: run
            for run in all_pages(
                self.target.search_runs, experiment_ids=[target_id], max_results=1000
            )
            if COPIED_FROM in run.data.tags
        }
        copied_models = {
            model.tags[COPIED_FROM]: model
            for model in all_pages(
                self.target.search_logged_models, experiment_ids=[target_id], max_results=100
            )
            if COPIED_FROM in model.tags
        }
        for run in runs:
            run_models = [m for m in models if m.source_run_id == run.info.run_id]
            self.copy_run(experiment, target_id, run, run_models, copied_runs, copied_models)
        for model in models:
            if model.source_run_id not in self.runs:  # a model no copied run made
                self.copy_logged_model(experiment, target_id, model, None, copied_models)

    # runs

    def copy_run(self, experiment, target_id, run, run_models, copied_runs, copied_models) -> None:  # noqa: PLR0917
        from mlflow.entities import LoggedModelOutput, Metric, Param, RunStatus

        source_id = run.info.run_id
        existing = copied_runs.get(source_id)
        complete = (
            existing is not None
            and existing.data.tags.get(COPY_COMPLETE) == "true"
            and all(model.model_id in copied_models for model in run_models)
        )
        if complete:
            self.runs[source_id] = existing
            for model in run_models:
                self.models[model.model_id] = copied_models[model.model_id].model_id
                self.counts.add("logged models", new=False)
            self.counts.add("runs", new=False)
            return
        target_run = existing or self.target.create_run(
            target_id,
            start_time=run.info.start_time,
            tags={**run.data.tags, COPIED_FROM: source_id},
            run_name=run.info.run_name,
        )
        target_run_id = target_run.info.run_id
        self.runs[source_id] = target_run
        # Logged models first: the run's metrics that belong to a model name it.
        model_metrics: dict[tuple, Metric] = {}
        for model in run_models:
            copied = self.copy_logged_model(experiment, target_id, model, target_run, copied_models)
            for metric in model.metrics or []:
                model_metrics[metric.key, metric.step, metric.timestamp, metric.value] = (
                    copied,
                    metric,
                )
        params = [Param(key, value) for key, value in run.data.params.items()]
        for chunk in batches(params, PARAMS_PER_BATCH):
            self.target.log_batch(target_run_id, params=chunk)
        points = []
        for key in run.data.metrics:
            for point in self.source.get_metric_history(source_id, key):
                model_id, dataset_name, dataset_digest = None, None, None
                linked = model_metrics.get((key, point.step, point.timestamp, point.value))
                if linked:
                    model_id = linked[0]
                    dataset_name, dataset_digest = linked[1].dataset_name, linked[1].dataset_digest
                points.append(
                    Metric(
                        key,
                        point.value,
                        point.timestamp,
                        point.step,
                        model_id=model_id,
                        dataset_name=dataset_name,
                        dataset_digest=dataset_digest,
                    )
                )
        for chunk in batches(points, METRICS_PER_BATCH):
            self.target.log_batch(target_run_id, metrics=chunk)
        folder = local_artifacts(
            run.info.artifact_uri, experiment.artifact_location, self.artifacts
        )
        if folder.is_dir() and any(folder.iterdir()):
            self.target.log_artifacts(target_run_id, str(folder))
        outputs = run.outputs.model_outputs if run.outputs else []
        target_outputs = self.target.get_run(target_run_id).outputs
        linked = {o.model_id for o in (target_outputs.model_outputs if target_outputs else [])}
        new_outputs = [
            LoggedModelOutput(self.models[o.model_id], o.step)
            for o in outputs
            if o.model_id in self.models and self.models[o.model_id] not in linked
        ]
        if new_outputs:
            self.target.log_outputs(target_run_id, new_outputs)
        if run.info.status != RunStatus.to_string(RunStatus.RUNNING):
            # MLflow prints two links per run here: the summary says what was copied.
            with contextlib.redirect_stdout(io.StringIO()):
                self.target.set_terminated(
                    target_run_id, run.info.status, end_time=run.info.end_time
                )
        self.target.set_tag(target_run_id, COPY_COMPLETE, "true")
        self.counts.add("runs", new=True)

    # logged models

    def copy_logged_model(self, experiment, target_id, model, target_run, copied_models) -> str:
        existing = copied_models.get(model.model_id)
        if existing is not None and existing.tags.get(COPY_COMPLETE) == "true":
            self.models[model.model_id] = existing.model_id
            self.counts.add("logged models", new=False)
            return existing.model_id
        target_model = existing or self.target.create_logged_model(
            target_id,
            name=model.name,
            source_run_id=target_run.info.run_id if target_run else None,
            tags={**model.tags, COPIED_FROM: model.model_id},
            params=model.params or None,
            model_type=model.model_type,
        )
        target_model_id = target_model.model_id
        self.models[model.model_id] = target_model_id
        folder = local_artifacts(
            model.artifact_location, experiment.artifact_location, self.artifacts
        )
        if folder.is_dir() and any(folder.iterdir()):
            self.target.log_model_artifacts(target_model_id, str(folder))
        status = str(model.status)
        if status in ("READY", "FAILED") and str(target_model.status) != status:
            self.target.finalize_logged_model(target_model_id, status)
        self.target.set_logged_model_tags(target_model_id, {COPY_COMPLETE: "true"})
        self.counts.add("logged models", new=True)
        return target_model_id

    # the registry

    def target_source(self, version) -> tuple[str, str | None]:
        """The version's source and logged model, as they are called in the target."""
        source, model_id = version.source, getattr(version, "model_id", None)
        if source.startswith("models:/") and not model_id:
            candidate = source.removeprefix("models:/").split("/")[0]
            model_id = candidate if candidate in self.models else None
        if model_id:
            if model_id not in self.models:
                raise CopyError(
                    f"model version {version.name}/{version.version}: its logged "
                    f"model {model_id} is not in the store"
                )
            target_model = self.models[model_id]
            return source.replace(model_id, target_model), target_model
        run = self.runs.get(version.run_id)
        if run is not None:
            old = self.source.get_run(version.run_id).info.artifact_uri
            if source.startswith(old):
                return run.info.artifact_uri + source[len(old) :], None
            return source.replace(version.run_id, run.info.run_id), None
        return source, None

    def copy_registered_model(self, model) -> None:
        from mlflow.exceptions import MlflowException

        try:
            existing = self.target.get_registered_model(model.name)
            self.counts.add("registered models", new=False)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            existing = self.target.create_registered_model(model.name)
            self.counts.add("registered models", new=True)
        for key, value in model.tags.items():
            if existing.tags.get(key) != value:
                self.target.set_registered_model_tag(model.name, key, value)
        if model.description and existing.description != model.description:
            self.target.update_registered_model(model.name, description=model.description)
        filter_string = f"name = '{model.name}'"
        copied = {
            version.tags[COPIED_FROM]: version
            for version in all_pages(self.target.search_model_versions, filter_string=filter_string)
            if COPIED_FROM in version.tags
        }
        versions = {}  # source version -> target version
        for version in sorted(
            all_pages(self.source.search_model_versions, filter_string=filter_string),
            key=lambda v: int(v.version),
        ):
            mark = f"{version.source}#{version.version}"
            if mark in copied:
                versions[version.version] = copied[mark].version
                self.counts.add("model versions", new=False)
                continue
            source, model_id = self.target_source(version)
            run = self.runs.get(version.run_id)
            made = self.target.create_model_version(
                model.name,
                source,
                run_id=run.info.run_id if run is not None else None,
                tags={**version.tags, COPIED_FROM: mark},
                description=version.description or None,
                model_id=model_id,
            )
            versions[version.version] = made.version
            self.counts.add("model versions", new=True)
        target_aliases = self.target.get_registered_model(model.name).aliases
        ours = set(versions.values())
        for alias, version in model.aliases.items():
            wanted = versions.get(version)
            current = target_aliases.get(alias)
            if current == wanted:
                self.counts.add("aliases", new=False)
            elif current is not None and current not in ours:
                say(
                    f"{model.name}@{alias} stays on version {current} of the target (not a copy); "
                    f"the copy of version {version} is version {wanted}"
                )
            else:
                self.target.set_registered_model_alias(model.name, alias, wanted)
                self.counts.add("aliases", new=True)


def copy_store(store_db: Path, artifacts: Path, target_uri: str) -> Counts:
    if not artifacts.is_dir():
        raise CopyError(f"{artifacts}: no such folder (the store's artifacts)")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or os.environ.get(
        "MLFLOW_AUTH_ADMIN_USERNAME", "admin"
    )
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or os.environ.get(
        "MLFLOW_AUTH_ADMIN_PASSWORD", ""
    )
    with tempfile.TemporaryDirectory(prefix="copy-store-") as folder:
        # The quick checks first, before MLflow (seconds to import) is loaded.
        snapshot, revision = snapshot_store(store_db, Path(folder))
        check_target(target_uri, user, password)
        from mlflow import MlflowClient

        # MLflow sets its logger up on import: a link per run, a line per version.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        migrate_snapshot(store_db, snapshot, revision)
        source = MlflowClient(tracking_uri=f"sqlite:///{snapshot}")
        source.search_experiments(max_results=1)  # the schema is readable before any write
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = (
            user,
            password,
        )
        copier = Copier(source, MlflowClient(tracking_uri=target_uri), artifacts)
        copier.copy_all()
        return copier.counts


def one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    target = os.environ.get("MLFLOW_TRACKING_URI", "")
    try:
        if not target.startswith(("http://", "https://")):
            raise CopyError("MLFLOW_TRACKING_URI must be the team's tracking server (http://...)")
        counts = copy_store(Path(argv[0]), Path(argv[1]), target.rstrip("/"))
    except CopyError as error:
        say(str(error))
        return 1
    except Exception as error:  # MLflow's and the network's errors: one line, no traceback
        say(f"{type(error).__name__}: {one_line(error)}")
        return 1
    print(f"copied {name_of(Path(argv[0]))} to {target}: {counts.summary()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
