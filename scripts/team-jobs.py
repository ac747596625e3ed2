#!/usr/bin/env python3
"""The team profile's one-shot jobs, run in the MLflow image (docker-compose.team.yml).

usage: team-jobs.py bucket                 create the artifact bucket (idempotent)
       team-jobs.py migrate                upgrade the tracking and sign-in schemas; the admin
                                           user gets the password from .env
       team-jobs.py users                  the editor and read-only users of .env, with their
                                           permissions (idempotent)
       team-jobs.py user NAME PERMISSION   add a user, or change one's password and permission;
                                           PERMISSION is READ, EDIT or MANAGE; the password is
                                           asked twice, or read from TEAM_USER_PASSWORD

Permissions: every signed-in user reads everything (the sign-in app's default_permission is
READ); EDIT and MANAGE are granted on the shared experiment ($MLFLOW_EXPERIMENT_NAME) and the
shared registered model ($TEAM_REGISTERED_MODEL). Whoever creates an experiment or a model
gets MANAGE on it. Settings come from the environment the compose file gives each job. An
error is one line on stderr and a non-zero exit; no secret is ever printed.
"""

# Each job imports only what it uses (the image's MLflow, boto3, SQLAlchemy), at its start.
# ruff: noqa: PLC0415

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import time
import warnings

# MLflow's server warns, on import, that a module of its web framework is deprecated: noise in
# a job's log (this process and the MLflow commands it runs).
QUIET = "ignore:starlette.middleware.wsgi is deprecated"
warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")
os.environ["PYTHONWARNINGS"] = QUIET

PERMISSIONS = ("READ", "EDIT", "MANAGE")


class JobError(Exception):
    """What went wrong, in one line for the log."""


def say(message: str) -> None:
    print(f"{JOB}: {message}", file=sys.stderr, flush=True)  # noqa: T201 (the job's log)


def setting(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise JobError(f"{name} is not set")
    return value


def one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    fatal = next((line.split("FATAL:", 1)[1].strip() for line in lines if "FATAL:" in line), None)
    return fatal or (lines[-1] if lines else type(error).__name__)


# --- bucket -----------------------------------------------------------------------------------


def bucket() -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    endpoint = setting("MLFLOW_S3_ENDPOINT_URL")
    name = setting("OBJECT_STORE_BUCKET")
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    )
    try:
        try:
            s3.head_bucket(Bucket=name)
            say(f"bucket {name} exists at {endpoint}")
            return
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
        s3.create_bucket(Bucket=name)
        say(f"created bucket {name} at {endpoint}")
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "?")
        code = {"403": "403 Forbidden"}.get(code, code)  # HEAD answers carry no error code
        hint = (
            " (wrong OBJECT_STORE_SECRET_KEY?)"
            if code
            in ("403 Forbidden", "SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied")
            else ""
        )
        raise JobError(f"the object store at {endpoint} refused: {code}{hint}") from None
    except BotoCoreError as error:
        raise JobError(f"cannot reach the object store at {endpoint}: {error}") from None


# --- migrate ----------------------------------------------------------------------------------


def check_database(uri: str) -> None:
    """Connect once, or fail with the database's own reason in one line."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(uri)
    where = url.render_as_string(hide_password=True)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    deadline = time.monotonic() + 30
    while True:
        try:
            with engine.connect():
                return
        except sqlalchemy.exc.OperationalError as error:
            reason = one_line(error.orig)
            if "password authentication failed" in reason:
                raise JobError(
                    f"cannot connect to {where}: {reason} (POSTGRES_PASSWORD differs from the "
                    "one the database volume was created with; the volume keeps that one)"
                ) from None
            if "does not exist" in reason or time.monotonic() > deadline:
                raise JobError(f"cannot connect to {where}: {reason}") from None
            time.sleep(1)


def run(*command: str) -> None:
    done = subprocess.run(
        command, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sys.stderr.write(done.stdout)
    if done.returncode != 0:
        last = done.stdout.strip().splitlines()[-1:] or ["no output"]
        raise JobError(f"{' '.join(command[:3])} ... failed (exit {done.returncode}): {last[0]}")


def migrate() -> None:
    tracking = setting("MLFLOW_BACKEND_STORE_URI")
    auth = setting("MLFLOW_AUTH_DATABASE_URI")
    admin = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin"
    password = setting("MLFLOW_AUTH_ADMIN_PASSWORD")
    for uri in (tracking, auth):
        check_database(uri)
    run("mlflow", "db", "upgrade", tracking)
    run(sys.executable, "-m", "mlflow.server.auth", "db", "upgrade", "--url", auth)
    # .env holds the admin's password: created with it, or set to it if it was changed.
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(auth)
    try:
        if not store.has_user(admin, use_primary=True):
            store.create_user(admin, password, is_admin=True)
            say(f"created the admin user {admin}")
        elif not store.authenticate_user(admin, password, use_primary=True):
            store.update_user(admin, password=password, is_admin=True)
            say(f"the admin user {admin} now has the password MLFLOW_AUTH_ADMIN_PASSWORD")
    except Exception as error:  # MLflow's validation errors: one line
        raise JobError(f"admin user {admin}: {one_line(error)}") from None
    say("the tracking and sign-in schemas are up to date")


# --- users ------------------------------------------------------------------------------------


def admin_clients():
    """An MLflow client and the sign-in app's client, signed in as the admin."""
    os.environ["MLFLOW_TRACKING_USERNAME"] = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin"
    os.environ["MLFLOW_TRACKING_PASSWORD"] = setting("MLFLOW_AUTH_ADMIN_PASSWORD")
    from mlflow import MlflowClient
    from mlflow.server.auth.client import AuthServiceClient

    uri = setting("MLFLOW_TRACKING_URI")
    return MlflowClient(tracking_uri=uri), AuthServiceClient(uri)


def shared_resources(client) -> list[tuple[str, str]]:
    """The shared experiment and registered model, made by the admin if they do not exist."""
    from mlflow.exceptions import MlflowException

    experiment_name = setting("MLFLOW_EXPERIMENT_NAME")
    model_name = setting("TEAM_REGISTERED_MODEL")
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment(experiment_name)
    )
    try:
        client.create_registered_model(model_name)
        say(f"created the registered model {model_name}")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return [("experiment", experiment_id), ("registered_model", model_name)]


def ensure_user(auth, resources, name: str, password: str, permission: str) -> None:
    """Create the user, or give it this password; then exactly this permission on the shared
    resources (READ: no grant, the default applies)."""
    from mlflow.exceptions import MlflowException, RestException

    if permission not in PERMISSIONS:
        raise JobError(f"permission {permission!r}: must be one of {', '.join(PERMISSIONS)}")
    try:
        auth.get_user(name)
        auth.update_user_password(name, password)
        action = "updated"
    except RestException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        auth.create_user(name, password)
        action = "created"
    for kind, resource in resources:
        try:
            auth.revoke_user_permission(name, kind, resource)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        if permission != "READ":
            auth.grant_user_permission(name, kind, resource, permission)
    say(f"{action} user {name}: {permission}")


def users() -> None:
    client, auth = admin_clients()
    resources = shared_resources(client)
    ensure_user(
        auth,
        resources,
        setting("TEAM_EDITOR_USERNAME"),
        setting("TEAM_EDITOR_PASSWORD"),
        "EDIT",
    )
    ensure_user(
        auth,
        resources,
        setting("TEAM_READER_USERNAME"),
        setting("TEAM_READER_PASSWORD"),
        "READ",
    )


def user(name: str, permission: str) -> None:
    permission = permission.upper()
    if permission not in PERMISSIONS:
        raise JobError(f"PERMISSION={permission}: must be one of {', '.join(PERMISSIONS)}")
    password = os.environ.get("TEAM_USER_PASSWORD", "")
    if not password:
        if not sys.stdin.isatty():
            raise JobError("no password: run it in a terminal, or set TEAM_USER_PASSWORD")
        password = getpass.getpass(f"password for {name} (12 characters or more): ")
        if getpass.getpass("again: ") != password:
            raise JobError("the two passwords differ")
    client, auth = admin_clients()
    ensure_user(auth, shared_resources(client), name, password, permission)


JOBS = {"bucket": bucket, "migrate": migrate, "users": users, "user": user}
JOB = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in JOBS else "team-jobs"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in JOBS or (argv[0] == "user") != (len(argv) == 3):
        print(__doc__.strip().split("\n\n")[0], file=sys.stderr)  # noqa: T201 (usage)
        return 2
    try:
        JOBS[argv[0]](*argv[1:])
    except JobError as error:
        say(str(error))
        return 1
    except Exception as error:  # MLflow's errors: one line, not a traceback
        say(f"{type(error).__name__}: {one_line(error)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
