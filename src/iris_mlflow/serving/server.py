"""The model server: the registry's champion in memory, answering MLflow's scoring protocol.

One process (``iris-serve``, ``python -m iris_mlflow.serving``; the model-server container
runs it):

- A Starlette app on uvicorn answers ``/ping`` (readiness, as MLflow's scoring server: 200
  once a model is loaded, 503 before), ``/health`` (liveness: 200 while the process serves
  HTTP, with what it serves or waits for; Docker's healthcheck, so `up --wait` passes on a
  stack with no model yet), ``/version`` (MLflow's) and ``POST /invocations``, which
  parses and predicts with MLflow's own scoring code
  (:func:`mlflow.pyfunc.scoring_server.invocations`), in this process: answers and error
  formats are MLflow's. A small JSON body of plain numbers in one of MLflow's formats takes
  a fast path that answers what MLflow's code would, byte for byte, without pandas (see
  :func:`fast_answer`); anything else, and every refusal, goes through MLflow's code. Before
  parsing, the server refuses a
  request whose column names are not exactly the four measurements (MLflow's schema
  enforcement would drop an unknown column silently), an oversized body (413) and a content
  type other than JSON or CSV (415).
- A watcher thread asks the registry every ``--poll-seconds`` which version holds the alias.
  When the alias moves it downloads and loads that version beside the one serving, has it
  answer its own input example, and then swaps one reference: requests in flight finish on
  the model they started with, the next ones get the new model, none is refused. A version
  that fails to load leaves the current one serving; the watcher retries with backoff.

No TensorFlow: the logged model runs on NumPy (:mod:`iris_mlflow.serving.network`).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from iris_mlflow.names import CHAMPION, FEATURES, REGISTERED_MODEL_NAME
from iris_mlflow.serving.model import (
    PROBABILITY_COLUMNS,
    SIGNATURE,
    InvalidMeasurementsError,
    IrisClassifier,
    check_columns,
    species_and_probabilities,
    validate_matrix,
)

log = logging.getLogger("iris-model-server")

#: Far above the largest valid request (10,000 rows of JSON records is about 1 MB).
MAX_BODY_BYTES = 16 * 1024 * 1024
JSON_TYPE, CSV_TYPE = "application/json", "text/csv"
#: Bodies up to this size are parsed and predicted on the event loop (a few milliseconds
#: through MLflow's code, tens of microseconds on the fast path); larger ones in a worker
#: thread, so a 10,000-row request does not hold up the others.
INLINE_BODY_BYTES = 64 * 1024
#: What a body that is not JSON parses to (None is JSON's null).
NOT_JSON = object()
FEATURE_SET = frozenset(FEATURES)
#: Backoff after a failed load: 2, 4, 8 ... seconds, at most this.
MAX_RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class Champion:
    """A loaded model version; replaced whole, never changed."""

    name: str
    version: str
    model: Any  # mlflow.pyfunc.PyFuncModel
    input_schema: Any  # mlflow.types.Schema | None
    directory: Path  # its downloaded files
    #: The NumPy network when the fast path may answer for this model, else None.
    network: Callable[[Any], Any] | None = None


class RequestError(Exception):
    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


def error_response(status: int, error_code: str, message: str) -> Response:
    """An answer in MLflow's error format, so clients parse ours and MLflow's alike."""
    body = json.dumps({"error_code": error_code, "message": message})
    return Response(body, status_code=status, media_type=JSON_TYPE)


def read_request(body: bytes, content_type: str) -> tuple[object, list[str] | None]:
    """A scoring request's JSON (:data:`NOT_JSON` for any other body) and the column names it
    carries, or None when it names none (a list of lists, a malformed body): MLflow's parsing
    then judges it and answers for itself. The body is parsed once, for both."""
    kind = mime_type(content_type)
    if kind == CSV_TYPE:
        return NOT_JSON, _csv_columns(body)
    if kind == JSON_TYPE:
        payload = decode_json(body)
        return payload, _json_columns(payload)
    return NOT_JSON, None


def decode_json(body: bytes) -> object:
    """The body as JSON, parsed as MLflow parses it (``json.loads`` of the bytes), or
    :data:`NOT_JSON`."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return NOT_JSON


def mime_type(content_type: str) -> str:
    return content_type.split(";", maxsplit=1)[0].strip().lower()


def _csv_columns(body: bytes) -> list[str] | None:
    try:
        header = body.decode("utf-8").split("\n", maxsplit=1)[0]
    except UnicodeDecodeError:
        return None
    names = next(csv.reader([header]), [])
    return [name.strip() for name in names] or None


def _json_columns(payload: object) -> list[str] | None:
    """Names in MLflow's JSON formats: dataframe_split's ``columns``; the keys of
    dataframe_records, or of ``inputs``/``instances`` given as records or as columns."""
    if not isinstance(payload, dict):
        return None
    if isinstance(split := payload.get("dataframe_split"), dict):
        columns = split.get("columns")
        return [str(c) for c in columns] if isinstance(columns, list) else None
    key = next((k for k in ("dataframe_records", "inputs", "instances") if k in payload), None)
    data = payload.get(key) if key else None
    if isinstance(data, dict):  # column name -> values
        return [str(c) for c in data]
    if isinstance(data, list) and data and all(isinstance(row, dict) for row in data):
        return [str(c) for c in dict.fromkeys(name for row in data for name in row)]
    return None


def fast_answer(champion: Champion, payload: object, content_type: str) -> Response | None:
    """The 200 MLflow's scoring would give, computed without it, or None: MLflow answers.

    Taken for a JSON body in one of MLflow's formats (``dataframe_records``,
    ``dataframe_split``, ``inputs``/``instances`` as records or columns) with no other key
    (no ``params``), whose rows hold the four measurements as plain numbers that pass
    :func:`~iris_mlflow.serving.model.validate_matrix`, for a model this code serves as an
    :class:`~iris_mlflow.serving.model.IrisClassifier`. The checks and the network are the
    model's own; what is skipped is MLflow's pandas round trip (parse to a DataFrame, schema
    enforcement, DataFrame to JSON), the milliseconds of a single-row request. Anything else, a
    refusal included, returns None so MLflow's code answers with its own message.
    """
    if champion.network is None or not is_plain_json(content_type):
        return None
    rows = measurement_rows(payload)
    if rows is None:
        return None
    try:
        matrix = validate_matrix(np.array(rows, dtype="float64"))
    except (InvalidMeasurementsError, OverflowError):
        return None
    species, probabilities = species_and_probabilities(champion.network(matrix))
    predictions = [
        {"species": name, **dict(zip(PROBABILITY_COLUMNS, row, strict=True))}
        for name, row in zip(species, probabilities.tolist(), strict=True)
    ]
    # json.dumps with its defaults writes what MLflow's predictions_to_json does for these
    # values (str and float only): the same separators and float repr.
    return Response(json.dumps({"predictions": predictions}), media_type=JSON_TYPE)


def is_plain_json(content_type: str) -> bool:
    """JSON as MLflow's ``invocations`` takes it: exactly ``application/json``, optionally
    with ``charset=utf-8``; MLflow answers any other spelling itself."""
    mime, *parameters = (part.strip() for part in content_type.split(";"))
    return mime == JSON_TYPE and all(
        key == "charset" and value.lower() == "utf-8"
        for key, _, value in (p.partition("=") for p in parameters)
    )


def measurement_rows(payload: object) -> list[list] | None:
    """The rows of a payload in MLflow's JSON formats as lists of the four measurements in
    FEATURES order, when every row names all four and every value is an int or a float;
    else None. The column names were checked (:func:`check_columns`) before this runs."""
    if not isinstance(payload, dict) or len(payload) != 1:
        return None
    ((key, data),) = payload.items()
    if key == "dataframe_split":
        rows = _split_rows(data)
    elif key in ("dataframe_records", "inputs", "instances") and isinstance(data, list):
        rows = _record_rows(data)
    elif key in ("inputs", "instances") and isinstance(data, dict):
        rows = _column_rows(data)
    else:
        return None
    if rows is not None and all(type(v) in (int, float) for row in rows for v in row):
        return rows
    return None


def _split_rows(split: object) -> list[list] | None:
    if not isinstance(split, dict) or split.keys() != {"columns", "data"}:
        return None
    columns, rows = split["columns"], split["data"]
    if not isinstance(columns, list) or sorted(map(str, columns)) != sorted(FEATURES):
        return None
    if not isinstance(rows, list) or not all(
        isinstance(row, list) and len(row) == len(FEATURES) for row in rows
    ):
        return None
    order = [columns.index(name) for name in FEATURES]
    return [[row[i] for i in order] for row in rows]


def _record_rows(records: list) -> list[list] | None:
    if not all(isinstance(row, dict) and row.keys() == FEATURE_SET for row in records):
        return None
    return [[row[name] for name in FEATURES] for row in records]


def _column_rows(columns: dict) -> list[list] | None:
    if columns.keys() != FEATURE_SET or not all(isinstance(v, list) for v in columns.values()):
        return None
    if len({len(values) for values in columns.values()}) != 1:
        return None
    return [list(row) for row in zip(*(columns[name] for name in FEATURES), strict=True)]


def fast_path_network(model: Any) -> Callable[[Any], Any] | None:
    """The network of a loaded model the fast path may answer for: an IrisClassifier of
    this code (not an older logged class) with the signature this code logs; else None."""
    try:
        python_model = model.unwrap_python_model()
    except Exception:  # not a PythonModel pyfunc
        return None
    if type(python_model) is not IrisClassifier:
        return None
    metadata = model.metadata
    if metadata.get_input_schema() != SIGNATURE.inputs or metadata.get_params_schema():
        return None
    return python_model.network


async def read_body(request: Request) -> bytes:
    """The whole body, or a 413 once all of it has been read: answering before the client
    has sent everything makes many clients report a broken connection instead of our 413."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
    if size > MAX_BODY_BYTES:
        raise RequestError(
            413,
            "INVALID_PARAMETER_VALUE",
            f"request body is over {MAX_BODY_BYTES // 2**20} MiB; send fewer rows per request",
        )
    return b"".join(chunks)


def score(champion: Champion, body: bytes, content_type: str) -> Response:
    """MLflow's scoring: parse, enforce the schema, predict, answer as its server does."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415 (imported by then)
    from mlflow.pyfunc.scoring_server import invocations  # noqa: PLC0415

    try:
        result = invocations(body, content_type, champion.model, champion.input_schema)
    except MlflowException as error:
        return Response(
            error.serialize_as_json(),
            status_code=error.get_http_status_code(),
            media_type=JSON_TYPE,
        )
    except Exception as error:  # a bug, not a bad request: say so, keep serving
        log.exception("scoring failed")
        return error_response(500, "INTERNAL_ERROR", f"scoring failed: {first_line(error)}")
    return Response(result.response, status_code=result.status, media_type=result.mimetype)


class ModelServer:
    """What the HTTP app reads and the watcher writes: the champion, one reference."""

    def __init__(self, name: str, alias: str) -> None:
        self.name, self.alias = name, alias
        #: None until the first version is loaded; then replaced whole by the watcher.
        self.champion: Champion | None = None
        self.no_champion_message = (
            f"no version of {name} has the alias @{alias} yet; "
            "train a model (the notebook or iris-train) and this server picks it up"
        )
        #: What a request gets while there is no champion (503); the watcher keeps it true.
        self.unavailable_message = self.no_champion_message

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/ping", self.ping, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/version", self.version, methods=["GET"]),
                Route("/invocations", self.invocations, methods=["POST"]),
            ],
            exception_handlers={HTTPException: http_error},
        )

    def unavailable(self) -> Response:
        return error_response(503, "TEMPORARILY_UNAVAILABLE", self.unavailable_message)

    async def ping(self, request: Request) -> Response:  # noqa: ARG002 (Starlette endpoint)
        champion = self.champion
        if champion is None:
            return self.unavailable()
        return Response("\n", media_type=JSON_TYPE, headers=version_header(champion))

    async def health(self, request: Request) -> Response:  # noqa: ARG002 (Starlette endpoint)
        champion = self.champion
        if champion is None:
            state = {"status": "waiting", "message": self.unavailable_message}
        else:
            state = {"status": "serving", "model": f"{champion.name}/{champion.version}"}
        return Response(json.dumps(state), media_type=JSON_TYPE)

    async def version(self, request: Request) -> Response:  # noqa: ARG002 (Starlette endpoint)
        from mlflow.version import VERSION  # noqa: PLC0415

        return Response(VERSION, media_type=JSON_TYPE)

    async def invocations(self, request: Request) -> Response:
        try:
            body = await read_body(request)
        except RequestError as error:
            return error_response(error.status, error.error_code, error.message)
        except ClientDisconnect:
            return Response(status_code=499)
        champion = self.champion  # one read: this request is answered by this version
        if champion is None:
            return self.unavailable()
        content_type = request.headers.get("content-type", "")
        if mime_type(content_type) not in (JSON_TYPE, CSV_TYPE):
            # MLflow also takes Parquet, which needs pyarrow; the model server has none.
            return error_response(
                415,
                "INVALID_PARAMETER_VALUE",
                f"content type {content_type or '(none)'!r} is not supported; "
                f"send {JSON_TYPE} or {CSV_TYPE}",
            )
        payload, columns = read_request(body, content_type)
        if columns is not None:
            try:
                check_columns(columns)
            except InvalidMeasurementsError as error:
                return error_response(400, "INVALID_PARAMETER_VALUE", error.message)
        if len(body) <= INLINE_BODY_BYTES:
            answer = fast_answer(champion, payload, content_type)
            if answer is None:
                answer = score(champion, body, content_type)
        else:
            answer = await run_in_threadpool(score, champion, body, content_type)
        answer.headers.update(version_header(champion))
        return answer


async def http_error(request: Request, error: Exception) -> Response:
    """Starlette's 404 and 405, in MLflow's JSON error format like every other answer."""
    status = getattr(error, "status_code", 500)
    code = {404: "ENDPOINT_NOT_FOUND", 405: "BAD_REQUEST"}.get(status, "INTERNAL_ERROR")
    message = f"{request.method} {request.url.path}: {getattr(error, 'detail', error)}"
    return error_response(status, code, message)


def version_header(champion: Champion) -> dict[str, str]:
    """Which registered version answered: lets a client see a swap happen."""
    return {"x-model-version": f"{champion.name}/{champion.version}"}


def load_champion(name: str, version: str, workdir: Path) -> Champion:
    """Download and load a version, and have it answer its own input example."""
    import mlflow  # noqa: PLC0415

    directory = Path(tempfile.mkdtemp(prefix=f"version-{version}-", dir=workdir))
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(directory)
        )
        model = mlflow.pyfunc.load_model(local)
        example = model.metadata.load_input_example(local)
        if example is not None:
            model.predict(example)
    except BaseException:
        forget(directory)
        raise
    return Champion(
        name, version, model, model.metadata.get_input_schema(), directory,
        network=fast_path_network(model),
    )  # fmt: skip


def forget(directory: Path) -> None:
    """Delete a version's files, and the code path MLflow put on sys.path when loading it."""
    shutil.rmtree(directory, ignore_errors=True)
    sys.path = [p for p in sys.path if not p.startswith(str(directory))]


class ChampionWatcher:
    """Polls the registry for the alias; loads a version that takes it, then swaps it in."""

    def __init__(self, server: ModelServer, poll_seconds: float, workdir: Path) -> None:
        self.server, self.poll_seconds, self.workdir = server, poll_seconds, workdir
        self.stopping = threading.Event()
        self.failures = 0
        self.failed_version: str | None = None
        self.retry_at = 0.0
        self.registry_down_since: float | None = None
        self.last_registry_note = 0.0
        self.last_wait_note = 0.0

    def run(self) -> None:
        from mlflow import MlflowClient  # noqa: PLC0415 (after logging is set up)

        client = MlflowClient()
        while not self.stopping.is_set():
            self.poll(client)
            self.stopping.wait(self.poll_seconds)

    def target_version(self, client) -> str | None:
        from iris_mlflow.registry import champion_version  # noqa: PLC0415

        holder = champion_version(client, self.server.name, self.server.alias)
        return str(holder.version) if holder else None

    def poll(self, client) -> None:
        server = self.server
        try:
            target = self.target_version(client)
        except Exception as error:
            # One line when it starts failing, then one a minute.
            if self.registry_down_since is None or time.monotonic() - self.last_registry_note > 60:
                log.warning(
                    "cannot ask the registry (%s); keeping what is served", first_line(error)
                )
                self.last_registry_note = time.monotonic()
            if self.registry_down_since is None:
                self.registry_down_since = time.monotonic()
            return
        if self.registry_down_since is not None:
            log.info("the registry answers again")
            self.registry_down_since = None
        current = server.champion
        if target is None:
            if current is None and time.monotonic() - self.last_wait_note > 60:
                log.info("%s", server.no_champion_message)
                self.last_wait_note = time.monotonic()
            return
        if current is not None and current.version == target:
            return
        if target == self.failed_version and time.monotonic() < self.retry_at:
            return
        self.load(target, current)

    def load(self, version: str, current: Champion | None) -> None:
        server = self.server
        if version != self.failed_version:
            self.failures, self.failed_version = 0, None
        if current is None:
            server.unavailable_message = (
                f"loading version {version} of {server.name} (@{server.alias}); "
                "retry in a few seconds"
            )
            log.info("loading %s version %s (@%s)", server.name, version, server.alias)
        else:
            log.info(
                "@%s moved from version %s to %s: loading it; version %s serves meanwhile",
                server.alias, current.version, version, current.version,
            )  # fmt: skip
        started = time.monotonic()
        try:
            champion = load_champion(server.name, version, self.workdir)
        except Exception as error:
            self.failures += 1
            self.failed_version = version
            delay = min(MAX_RETRY_SECONDS, 2.0**self.failures)
            self.retry_at = time.monotonic() + delay
            serving = f"; version {current.version} serves meanwhile" if current else ""
            log.error(
                "cannot load %s version %s (%s: %s); retrying in %.0f s%s",
                server.name, version, type(error).__name__, first_line(error), delay, serving,
            )  # fmt: skip
            if current is None:
                server.unavailable_message = (
                    f"version {version} of {server.name} (@{server.alias}) could not be loaded "
                    f"({first_line(error)}); retrying in {delay:.0f} s"
                )
            return
        server.champion = champion  # the swap: requests from now on get this version
        self.failures, self.failed_version = 0, None
        log.info(
            "serving %s version %s (@%s), loaded in %.1f s",
            server.name, version, server.alias, time.monotonic() - started,
        )  # fmt: skip
        if current is not None:
            # Requests still on the old version hold the model object, not its files.
            forget(current.directory)


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iris-serve", description=__doc__.splitlines()[0])
    env = os.environ.get
    parser.add_argument(
        "--model-name",
        default=env("MODEL_NAME", REGISTERED_MODEL_NAME),
        help="registered model to serve (env MODEL_NAME; default: %(default)s)",
    )
    parser.add_argument(
        "--alias",
        default=env("MODEL_ALIAS", CHAMPION),
        help="the alias whose version is served (env MODEL_ALIAS; default: %(default)s)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="default: %(default)s")  # noqa: S104 (inside its container)
    parser.add_argument(
        "--port",
        type=int,
        default=int(env("MODEL_SERVER_PORT", "5001")),
        help="env MODEL_SERVER_PORT; default: %(default)s",
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=float(env("POLL_SECONDS", "2")),
        help="how often to ask the registry where the alias points "
        "(env POLL_SECONDS; default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Progress bars of the model download would fill the log with carriage returns.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # What MLflow's own scoring server sets for the models it serves.
    os.environ["_MLFLOW_IS_IN_SERVING_ENVIRONMENT"] = "true"
    import uvicorn  # noqa: PLC0415

    server = ModelServer(args.model_name, args.alias)
    config = uvicorn.Config(
        server.app(), host=args.host, port=args.port, lifespan="off", access_log=False,
        log_config=None, timeout_graceful_shutdown=20,
    )  # fmt: skip
    http = uvicorn.Server(config)
    # uvicorn stops on SIGTERM/SIGINT and then raises the signal again: let that second one
    # pass, so the watcher is stopped and the downloaded models deleted below.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    with tempfile.TemporaryDirectory(
        prefix="iris-model-server-", ignore_cleanup_errors=True
    ) as workdir:
        watcher = ChampionWatcher(server, args.poll_seconds, Path(workdir))
        thread = threading.Thread(target=watcher.run, name="champion-watcher", daemon=True)
        thread.start()
        try:
            http.run()
        finally:
            log.info("stopping")
            watcher.stopping.set()
            thread.join(timeout=10)
    return 0 if http.started else 1


if __name__ == "__main__":
    sys.exit(main())
