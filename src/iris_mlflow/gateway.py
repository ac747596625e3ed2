"""The model server's front door: an ASGI app in front of MLflow's scoring server.

MLflow's schema enforcement drops columns the signature does not declare (with a warning in
the server's log) before the model sees the rows, so a request with an extra column would get
an answer computed without it. The gateway checks the column names a request carries and
answers 400 when they are not exactly the four measurements; everything else goes to the
scoring server unchanged, and its answer comes back unchanged.

It also lets :mod:`iris_mlflow.serve` swap scoring servers without refusing a request: the
new one starts on another internal port, and the gateway forwards there once it answers.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx

from iris_mlflow.classifier import InvalidMeasurementsError, check_columns

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("iris-serve")

#: Far above the largest valid request (10,000 rows of JSON records is about 1 MB).
MAX_BODY_BYTES = 16 * 1024 * 1024
#: Above MLflow's own 60 s request timeout, so the scoring server's answer is the one returned.
UPSTREAM_TIMEOUT_SECONDS = 90.0
JSON_TYPE, CSV_TYPE = "application/json", "text/csv"


class GatewayError(Exception):
    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


def request_columns(body: bytes, content_type: str) -> list[str] | None:
    """The column names a scoring request carries, or None when it names none (a list of
    lists, a malformed body): the scoring server then judges it and answers for itself."""
    kind = mime_type(content_type)
    if kind == CSV_TYPE:
        return _csv_columns(body)
    if kind == JSON_TYPE:
        try:
            return _json_columns(json.loads(body))
        except (ValueError, UnicodeDecodeError):
            return None
    return None


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


class Gateway:
    """ASGI app: forwards to ``upstream`` (set by the supervisor) after checking columns."""

    def __init__(self, unavailable_message: str) -> None:
        #: Base URL of the scoring server currently serving; None (answer 503 with
        #: ``unavailable_message``) before the first one and while one is restarted.
        self.upstream: str | None = None
        self.unavailable_message = unavailable_message
        self.client = httpx.AsyncClient(
            timeout=UPSTREAM_TIMEOUT_SECONDS,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            body = await read_body(receive)
            upstream = self.upstream
            if upstream is None:
                raise GatewayError(503, "TEMPORARILY_UNAVAILABLE", self.unavailable_message)
            if scope["method"] == "POST" and scope["path"] == "/invocations":
                content_type = header(scope, b"content-type")
                if mime_type(content_type) not in (JSON_TYPE, CSV_TYPE):
                    # MLflow also takes Parquet, which needs pyarrow; this image has none.
                    raise GatewayError(
                        415,
                        "INVALID_PARAMETER_VALUE",
                        f"content type {content_type or '(none)'!r} is not supported; "
                        f"send {JSON_TYPE} or {CSV_TYPE}",
                    )
                if (columns := request_columns(body, content_type)) is not None:
                    try:
                        check_columns(columns)
                    except InvalidMeasurementsError as error:
                        raise GatewayError(400, "INVALID_PARAMETER_VALUE", error.message) from None
            await self.forward(scope, body, upstream, send)
        except GatewayError as error:
            await respond(send, error.status, error.error_code, error.message)

    async def forward(self, scope: Scope, body: bytes, upstream: str, send: Send) -> None:
        url = upstream + scope["path"]
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        content_type = header(scope, b"content-type")
        headers = {"content-type": content_type} if content_type else {}
        try:
            answer = await self.client.request(scope["method"], url, content=body, headers=headers)
        except httpx.HTTPError as error:
            if (current := self.upstream) is not None and current != upstream:
                # Swapped while this request was on its way to the old scoring server, which is
                # stopping: a prediction is safe to ask again, of the new one.
                await self.forward(scope, body, current, send)
                return
            # The scoring server died mid-request; the supervisor restarts it.
            log.warning("scoring server did not answer: %s", error)
            raise GatewayError(
                503, "TEMPORARILY_UNAVAILABLE", "the scoring server is restarting; retry"
            ) from None
        out_headers = [(b"content-length", str(len(answer.content)).encode())]
        if content_type := answer.headers.get("content-type"):
            out_headers.append((b"content-type", content_type.encode("latin-1")))
        await send({"type": "http.response.start", "status": answer.status_code,
                    "headers": out_headers})  # fmt: skip
        await send({"type": "http.response.body", "body": answer.content})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


async def read_body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
        # Past the limit, read on without keeping it: answering before the client has sent
        # everything makes many clients report a broken connection instead of our 413.
        if not message.get("more_body", False):
            break
    if size > MAX_BODY_BYTES:
        raise GatewayError(
            413,
            "INVALID_PARAMETER_VALUE",
            f"request body is over {MAX_BODY_BYTES // 2**20} MiB; send fewer rows per request",
        )
    return b"".join(chunks)


async def respond(send: Send, status: int, error_code: str, message: str) -> None:
    """An answer in MLflow's error format, so clients parse ours and the scoring server's alike."""
    body = json.dumps({"error_code": error_code, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
