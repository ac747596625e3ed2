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

# Each job imports only what it uses (the image's MLflow, boto3, SQLAlchemy, requests), at its
# start: every `up` waits for these jobs.
# ruff: noqa: PLC0415

from __future__ import annotations

import getpass
import os
import sys
import time
import warnings

# MLflow's server warns, on import, that a module of its web framework is deprecated: noise in
# a job's log.
warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")

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


#: The schema heads of the image's MLflow, written when the image is built (mlflow-docker/).
SCHEMA_HEADS = {
    "tracking": ("/opt/mlflow-schema-head", "alembic_version"),
    "sign-in": ("/opt/mlflow-auth-schema-head", "alembic_version_auth"),
}


def up_to_date(tracking: str, auth: str, admin: str, password: str) -> bool:
    """Whether both schemas are at the image's heads and the admin's password is .env's: then
    there is nothing to do, and MLflow need not be imported (seconds on every `up`). Read-only;
    anything unexpected (a fresh database, no head file) answers False: the full path decides."""
    from pathlib import Path

    import sqlalchemy
    from werkzeug.security import check_password_hash

    def scalar(uri: str, query: str, **params: str):
        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as connection:
                return connection.execute(sqlalchemy.text(query), params).scalar()
        except sqlalchemy.exc.ProgrammingError:  # no such table: a database never migrated
            return None

    for uri, (head_file, table) in zip((tracking, auth), SCHEMA_HEADS.values(), strict=True):
        try:
            head = Path(head_file).read_text().strip()
        except OSError:
            return False
        if scalar(uri, f"select version_num from {table}") != head:  # noqa: S608 (a constant)
            return False
    stored = scalar(
        auth, "select password_hash from users where username = :name and is_admin", name=admin
    )
    return stored is not None and check_password_hash(stored, password)


def migrate() -> None:
    tracking = setting("MLFLOW_BACKEND_STORE_URI")
    auth = setting("MLFLOW_AUTH_DATABASE_URI")
    admin = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin"
    password = setting("MLFLOW_AUTH_ADMIN_PASSWORD")
    for uri in (tracking, auth):
        check_database(uri)
    if up_to_date(tracking, auth, admin, password):
        say("the tracking and sign-in schemas are up to date; the admin password is .env's")
        return
    # Both in this process: each `mlflow` command would import MLflow again (seconds each, on
    # the path of every `up`). `mlflow db upgrade` is this function; the sign-in store's
    # init_db upgrades its schema as `python -m mlflow.server.auth db upgrade` does.
    from mlflow.db import upgrade
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    upgrade.callback(tracking)
    store = SqlAlchemyStore()
    store.init_db(auth)
    # .env holds the admin's password: created with it, or set to it if it was changed.
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


class AdminApi:
    """The tracking server's REST API, signed in as the admin, over plain HTTP: importing
    MLflow's clients would cost this job seconds on the path of every `up`."""

    #: Answers worth asking again: a tracking server restarting behind the load balancer.
    TRANSIENT = (502, 503, 504)

    def __init__(self) -> None:
        import requests

        self.requests = requests
        self.uri = setting("MLFLOW_TRACKING_URI").rstrip("/")
        self.session = requests.Session()
        self.session.auth = (
            os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin",
            setting("MLFLOW_AUTH_ADMIN_PASSWORD"),
        )

    def call(self, method: str, path: str, *, accept: tuple[str, ...] = (), **kwargs) -> dict:
        """The answer's JSON; an MLflow error whose code is in ``accept`` is returned too,
        any other one is a JobError."""
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = self.session.request(method, self.uri + path, timeout=30, **kwargs)
            except self.requests.RequestException as error:
                if time.monotonic() > deadline:
                    raise JobError(
                        f"cannot reach the tracking server at {self.uri}: {error}"
                    ) from None
            else:
                if answer.status_code not in self.TRANSIENT or time.monotonic() > deadline:
                    break
            time.sleep(1)
        try:
            body = answer.json() if answer.content else {}
        except ValueError:
            body = {"message": answer.text[:200]}
        if answer.ok or body.get("error_code") in accept:
            return body
        what = body.get("message") or answer.reason
        if answer.status_code == 401:
            what += " (wrong MLFLOW_AUTH_ADMIN_PASSWORD?)"
        raise JobError(f"{method} {path}: {answer.status_code} {what}")


def shared_resources(api: AdminApi) -> list[tuple[str, str]]:
    """The shared experiment and registered model, made by the admin if they do not exist."""
    experiment_name = setting("MLFLOW_EXPERIMENT_NAME")
    model_name = setting("TEAM_REGISTERED_MODEL")

    def experiment_id(accept: tuple[str, ...] = ()) -> str | None:
        found = api.call(
            "GET",
            "/api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": experiment_name},
            accept=accept,
        )
        return found["experiment"]["experiment_id"] if "experiment" in found else None

    shared_id = experiment_id(("RESOURCE_DOES_NOT_EXIST",))
    if shared_id is None:
        made = api.call(
            "POST",
            "/api/2.0/mlflow/experiments/create",
            json={"name": experiment_name},
            accept=("RESOURCE_ALREADY_EXISTS",),  # made by a racing job in between
        )
        shared_id = made.get("experiment_id") or experiment_id()
    made = api.call(
        "POST",
        "/api/2.0/mlflow/registered-models/create",
        json={"name": model_name},
        accept=("RESOURCE_ALREADY_EXISTS",),
    )
    if "registered_model" in made:
        say(f"created the registered model {model_name}")
    return [("experiment", shared_id), ("registered_model", model_name)]


def ensure_user(api: AdminApi, resources, name: str, password: str, permission: str) -> None:
    """Create the user, or give it this password; then exactly this permission on the shared
    resources (READ: no grant, the default applies)."""
    if permission not in PERMISSIONS:
        raise JobError(f"permission {permission!r}: must be one of {', '.join(PERMISSIONS)}")
    found = api.call(
        "GET",
        "/api/2.0/mlflow/users/get",
        params={"username": name},
        accept=("RESOURCE_DOES_NOT_EXIST",),
    )
    if "user" in found:
        api.call(
            "PATCH",
            "/api/2.0/mlflow/users/update-password",
            json={"username": name, "password": password},
        )
        action = "updated"
    else:
        api.call(
            "POST", "/api/2.0/mlflow/users/create", json={"username": name, "password": password}
        )
        action = "created"
    for kind, resource in resources:
        grant = {"username": name, "resource_type": kind, "resource_id": resource}
        api.call(
            "POST",
            "/api/3.0/mlflow/users/permissions/revoke",
            json=grant,
            accept=("RESOURCE_DOES_NOT_EXIST",),
        )
        if permission != "READ":
            api.call(
                "POST",
                "/api/3.0/mlflow/users/permissions/grant",
                json={**grant, "permission": permission},
            )
    say(f"{action} user {name}: {permission}")


def users() -> None:
    api = AdminApi()
    resources = shared_resources(api)
    ensure_user(
        api,
        resources,
        setting("TEAM_EDITOR_USERNAME"),
        setting("TEAM_EDITOR_PASSWORD"),
        "EDIT",
    )
    ensure_user(
        api,
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
    api = AdminApi()
    ensure_user(api, shared_resources(api), name, password, permission)


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
