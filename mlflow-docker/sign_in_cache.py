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
- **A user who is not an admin** (id, admin flag) is kept for 5 s, at most
  ``MLFLOW_AUTH_CACHE_TTL_SECONDS`` (0 keeps none). An admin is read on every request, as
  before, so an admin who is demoted or deleted loses admin rights at once. A user changed or
  deleted through a server is forgotten there at once; on the other servers a promotion, a
  deletion or a re-creation under the same name applies within the 5 s (a deleted user's
  grants are gone with the user: in those seconds a request gets at most the default
  permission).

Grants are read on every request, as before: a permission granted or revoked applies at once.

``start-server.sh`` runs this app instead of MLflow's own (``--factory
sign_in_cache:create_app``). One function of MLflow's is replaced, not wrapped
(``_run_requirement``), and the user store's methods are wrapped: the server refuses to start
with another MLflow than the one this was written against and read with, so an upgrade makes
someone read this file again against the new sign-in app.
"""

from __future__ import annotations

import threading

import mlflow
from cachetools import LRUCache, TTLCache
from mlflow.server import auth

#: The MLflow whose sign-in app this was written against (``_run_requirement``, and every
#: method of its user store that reads or changes a user).
MLFLOW_VERSION = "3.17.2"
RUNS_KEPT = 100_000
#: At most this long a user who is not an admin is kept.
USER_SECONDS = 5.0


class OutdatedError(RuntimeError):
    """Another MLflow: this module must be checked against its sign-in app."""


def check_mlflow() -> None:
    if mlflow.__version__ != MLFLOW_VERSION:
        raise OutdatedError(
            f"sign_in_cache: written against MLflow {MLFLOW_VERSION}'s sign-in app, this is "
            f"MLflow {mlflow.__version__}: check mlflow-docker/sign_in_cache.py against it"
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
    """``store.get_user`` answered from memory for ``seconds`` for users who are not admins;
    forgotten when the user is changed or deleted through this store."""
    users: TTLCache = TTLCache(maxsize=most, ttl=seconds)
    changes: dict[str, int] = {}  # per user, how many times it was forgotten
    lock = threading.Lock()
    read_user, update_user, delete_user = store.get_user, store.update_user, store.delete_user

    def forget(username: str) -> None:
        with lock:
            users.pop(username, None)
            changes[username] = changes.get(username, 0) + 1

    def get_user(username: str):
        with lock:
            user, seen = users.get(username), changes.get(username, 0)
        if user is None:
            user = read_user(username)  # raises for an unknown user: nothing kept
            with lock:
                # Not when the user changed while it was read: the read may be the old one.
                if not user.is_admin and changes.get(username, 0) == seen:
                    users[username] = user
        return user

    def updated_user(username: str, *args, **kwargs):
        try:
            return update_user(username, *args, **kwargs)
        finally:
            forget(username)

    def deleted_user(username: str):
        try:
            return delete_user(username)
        finally:
            forget(username)

    store.get_user, store.update_user, store.delete_user = get_user, updated_user, deleted_user


def create_app():
    """MLflow's sign-in app (``mlflow.server.auth:create_app``) with the lookups kept."""
    check_mlflow()
    auth._run_requirement = _run_requirement
    seconds = min(USER_SECONDS, auth.auth_config.auth_cache_ttl_seconds)
    if seconds > 0:
        _keep_users(auth.store, seconds, auth.auth_config.auth_cache_max_size)
    return auth.create_app()
