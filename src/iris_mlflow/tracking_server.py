"""Where runs go: the tracking URI and experiment, resolved the MLflow way, and a quick check
that an HTTP tracking server is there.

No heavy imports: ``iris-train`` asks the server here before TensorFlow loads, so a
mistyped URL is one line, at once.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from iris_mlflow.names import EXPERIMENT_NAME

#: With no MLFLOW_TRACKING_URI, runs go to an embedded SQLite store in the working folder.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class TrackingServerError(RuntimeError):
    """The tracking server cannot be reached or does not answer as MLflow does."""


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def resolve_experiment(experiment_name: str | None = None) -> str:
    return experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT_NAME


def check_server(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when an HTTP tracking server is not there.

    MLflow's client retries a dead server with back-off for minutes before it gives up;
    a person who mistyped a port wants to know at once.
    """
    if urlsplit(tracking_uri).scheme not in ("http", "https"):
        return
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (http(s) only, checked above)
            body = answer.read(64)
    except urllib.error.HTTPError as error:
        raise TrackingServerError(
            f"tracking server at {tracking_uri} answered {error.code} {error.reason} to /health"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingServerError(
            f"cannot reach the tracking server at {tracking_uri}: {reason}"
        ) from None
    if body.strip() != b"OK":
        raise TrackingServerError(f"{tracking_uri} does not look like an MLflow tracking server")
