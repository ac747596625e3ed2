"""MLflow's sign-in app (``--app-name basic-auth``) with two lookups it repeats on every
request kept in memory.

For every request of a signed-in user, MLflow's sign-in app reads the user from its database
twice (is the user an admin; the user's id, for the grants query), and for every run-level
call (each ``log-batch``, ``runs/get``, ``runs/update``...) it loads the whole run from the
tracking store (parameters, tags, latest metrics) only to learn the run's experiment. In the
team bench that was most of the sign-in app's cost, and sign-in was a third of the tracking
servers' Python time.

- **A run's experiment** never changes (MLflow has no call that moves a run): it is kept for
  the life of the process (the last 100 000 runs seen). A run that does not exist is not kept.
- **A user** (id, admin flag) is kept as long as MLflow keeps a verified password
  (``MLFLOW_AUTH_CACHE_TTL_SECONDS``; 0 keeps nothing). A user changed or deleted through a
  server applies on that server at once, and on the others within that time, as a changed
  password already does.

Grants are read on every request, as before: a permission granted or revoked applies at once.

``start-server.sh`` runs this app instead of MLflow's own (``--factory
sign_in_cache:create_app``). One function of MLflow's is replaced, not wrapped
(``_run_requirement``): the server refuses to start if it is not the one this was written
against, so an MLflow upgrade makes someone read this file again.
"""

from __future__ import annotations

import hashlib
import inspect
import threading

import mlflow
from cachetools import LRUCache, TTLCache
from mlflow.server import auth

#: sha256 of the source of ``mlflow.server.auth._run_requirement`` in MLflow 3.17.2, which
#: :func:`_run_requirement` replaces.
MLFLOW_RUN_REQUIREMENT_SHA256 = "dd0c00e3e8452138dae2eda36094af07e9006c2223cffff5926806cce4641cfe"
RUNS_KEPT = 100_000


class OutdatedError(RuntimeError):
    """MLflow's function changed: this module must be checked against it."""


def check_mlflow() -> None:
    source = inspect.getsource(auth._run_requirement)
    if hashlib.sha256(source.encode()).hexdigest() != MLFLOW_RUN_REQUIREMENT_SHA256:
        raise OutdatedError(
            f"sign_in_cache: mlflow.server.auth._run_requirement of MLflow {mlflow.__version__} "
            "is not the one this cache replaces (3.17.2): compare them and update "
            "mlflow-docker/sign_in_cache.py"
        )


_run_experiments: LRUCache[str, str] = LRUCache(maxsize=RUNS_KEPT)
_run_experiments_lock = threading.Lock()


def _run_requirement(run_id: str, action: str):
    """MLflow's ``_run_requirement`` (what a run-level call requires: read on the run's
    experiment and the action on the run), with the run's experiment kept."""
    with _run_experiments_lock:
        experiment_id = _run_experiments.get(run_id)
    if experiment_id is None:
        run = auth._fetch_or_none(auth._get_tracking_store().get_run, run_id)
        if run is None:
            return None
        experiment_id = run.info.experiment_id
        with _run_experiments_lock:
            _run_experiments[run_id] = experiment_id
    experiment = (auth.RESOURCE_TYPE_EXPERIMENT, experiment_id)
    return experiment, [
        auth.Requirement(auth.RESOURCE_TYPE_EXPERIMENT, experiment_id, "read"),
        auth.Requirement(auth.RESOURCE_TYPE_RUN, "*", action, fallback_if_no_grant=(experiment,)),
    ]


def _keep_users(store, seconds: float, most: int) -> None:
    """``store.get_user`` answered from memory for ``seconds``; forgotten when the user is
    changed or deleted through this store."""
    users: TTLCache = TTLCache(maxsize=most, ttl=seconds)
    lock = threading.Lock()
    read_user, update_user, delete_user = store.get_user, store.update_user, store.delete_user

    def forget(username: str) -> None:
        with lock:
            users.pop(username, None)

    def get_user(username: str):
        with lock:
            user = users.get(username)
        if user is None:
            user = read_user(username)  # raises for an unknown user: nothing kept
            with lock:
                users[username] = user
        return user

    def updated_user(username: str, *args, **kwargs):
        forget(username)
        try:
            return update_user(username, *args, **kwargs)
        finally:
            forget(username)

    def deleted_user(username: str):
        forget(username)
        try:
            return delete_user(username)
        finally:
            forget(username)

    store.get_user, store.update_user, store.delete_user = get_user, updated_user, deleted_user


def create_app():
    """MLflow's sign-in app (``mlflow.server.auth:create_app``) with the lookups kept."""
    check_mlflow()
    auth._run_requirement = _run_requirement
    seconds = auth.auth_config.auth_cache_ttl_seconds
    if seconds > 0:
        _keep_users(auth.store, seconds, auth.auth_config.auth_cache_max_size)
    return auth.create_app()
