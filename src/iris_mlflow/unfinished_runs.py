"""Runs a training could not close because the tracking server went away.

MLflow marks a run FAILED when the training fails, but that is itself a request to the
server: with the server gone it cannot be sent, and the run would stay RUNNING for good.
Such a run is remembered on this machine (a small JSON file, per tracking URI) and the next
training against that server marks it FAILED before it starts its own run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: Where the runs are remembered; IRIS_UNFINISHED_RUNS moves it.
DEFAULT_PATH = Path.home() / ".cache" / "iris-mlflow" / "unfinished-runs.json"


def _path() -> Path:
    return Path(os.environ.get("IRIS_UNFINISHED_RUNS", DEFAULT_PATH))


def _load() -> dict[str, list[str]]:
    try:
        return json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}


def _save(runs: dict[str, list[str]]) -> None:
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({uri: ids for uri, ids in runs.items() if ids}))
    temporary.replace(path)  # atomic: a crash never leaves half a file


def remember(tracking_uri: str, run_id: str) -> None:
    runs = _load()
    runs.setdefault(tracking_uri, [])
    if run_id not in runs[tracking_uri]:
        runs[tracking_uri].append(run_id)
    _save(runs)


def close_remembered(client, tracking_uri: str) -> list[str]:
    """Mark this server's remembered runs FAILED if they are still RUNNING; the ids closed.

    A run the server no longer knows, or that ended meanwhile, is just forgotten; one that
    cannot be closed now (the server went away again) stays remembered.
    """
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    runs = _load()
    closed, kept = [], []
    for run_id in runs.get(tracking_uri, []):
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status="FAILED")
                closed.append(run_id)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                kept.append(run_id)
    if tracking_uri in runs:
        runs[tracking_uri] = kept
        _save(runs)
    return closed
