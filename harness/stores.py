"""What a tracking server holds, read back through its API, in a form two servers can be
compared by: the copy of a store (scripts/copy_store.py) must arrive equal."""

from __future__ import annotations

import hashlib

import requests

#: What a copy adds to what it makes, and a tag the server itself keeps on a logged model (the
#: versions registered from it: in a copy, the copies).
NOT_COMPARED = ("iris.copied_from", "iris.copy_complete", "mlflow.modelVersions")


def compared(tags: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in tags.items() if key not in NOT_COMPARED}


def artifact_checksums(url: str, auth, roots: list[str]) -> dict[str, str]:
    """sha256 of every file under these artifact paths, through the server's artifact proxy."""
    api = f"{url}/api/2.0/mlflow-artifacts/artifacts"
    sums, pending = {}, list(roots)
    while pending:
        path = pending.pop()
        listing = requests.get(api, params={"path": path}, auth=auth, timeout=30)
        listing.raise_for_status()
        for entry in listing.json().get("files", []):
            child = f"{path}/{entry['path']}"
            if entry["is_dir"]:
                pending.append(child)
            else:
                body = requests.get(f"{api}/{child}", auth=auth, timeout=30)
                body.raise_for_status()
                sums[child] = hashlib.sha256(body.content).hexdigest()
    return sums


def relative_checksums(url: str, auth, root: str) -> dict[str, str]:
    sums = artifact_checksums(url, auth, [root])
    return {path.removeprefix(f"{root}/"): digest for path, digest in sums.items()}


def store_snapshot(url: str, auth, experiment_name: str, model_name: str) -> dict:
    """Everything of an experiment and a registered model, without the ids a copy changes:
    runs by name, files by path below their run or logged model, versions by number. The
    client signs in as the environment says (MLFLOW_TRACKING_USERNAME/PASSWORD); ``auth`` is
    for the artifact proxy."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name(experiment_name)
    runs, names = {}, {}
    for run in client.search_runs([experiment.experiment_id]):
        run_id = run.info.run_id
        names[run_id] = run.info.run_name
        models = client.search_logged_models(
            experiment_ids=[experiment.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        runs[run.info.run_name] = {
            "status": run.info.status,
            "times": (run.info.start_time, run.info.end_time),
            "params": run.data.params,
            "tags": compared(run.data.tags),
            "histories": {
                key: sorted(
                    (m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)
                )
                for key in run.data.metrics
            },
            "artifacts": relative_checksums(
                url, auth, f"{experiment.experiment_id}/{run_id}/artifacts"
            ),
            "models": {
                model.name: {
                    "status": str(model.status),
                    "params": model.params,
                    "tags": compared(model.tags),
                    "metrics": sorted(
                        (m.key, m.step, m.timestamp, m.value) for m in model.metrics or []
                    ),
                    "artifacts": relative_checksums(
                        url, auth, f"{experiment.experiment_id}/models/{model.model_id}/artifacts"
                    ),
                }
                for model in models
            },
        }
    if len(runs) != len(names):
        raise ValueError("run names are not unique: runs cannot be matched by name")
    registered = client.get_registered_model(model_name)
    versions = {
        version.version: {
            "run": names.get(version.run_id),
            "tags": compared(version.tags),
            "status": version.status,
        }
        for version in client.search_model_versions(f"name = '{model_name}'")
    }
    return {
        "runs": runs,
        "versions": versions,
        "aliases": dict(registered.aliases),
        "model tags": compared(registered.tags),
    }
