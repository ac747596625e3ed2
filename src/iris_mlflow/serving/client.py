"""Ask the model server (MLflow's scoring protocol) for species, from a notebook or a script."""

from __future__ import annotations

import time

import pandas as pd
import requests

#: How to start a model server, for messages that find none.
START_HINT = "start one with `docker compose up -d model-server`"


class ModelServerError(RuntimeError):
    """The model server refused the request or could not be reached."""


def no_server_message(url: str | None, timeout: float = 3.0) -> str | None:
    """None when something answers HTTP at ``url`` (a model server still loading its first
    champion answers 503: :func:`wait_until_serving` waits for it); otherwise one line saying
    no model server answers there, and how to start one."""
    if not url:
        return f"no model server: MODEL_SERVER_URL is not set; {START_HINT}"
    try:
        requests.get(f"{url.rstrip('/')}/ping", timeout=timeout)
    except requests.RequestException as error:
        # Refused, a host that does not resolve, a timeout, an invalid URL.
        return f"no model server answers at {url} ({_reason(error)}); {START_HINT}"
    return None


def _reason(error: requests.RequestException) -> str:
    if isinstance(error, requests.Timeout):
        return "no answer in time"
    if isinstance(error, requests.ConnectionError):
        text = str(error)
        if "Name or service not known" in text or "resolve" in text or "getaddrinfo" in text:
            return "host not found"
        if "refused" in text:
            return "connection refused"
        return "cannot connect"
    return type(error).__name__


def wait_until_serving(url: str, timeout: float = 90.0) -> None:
    """Wait for ``/ping`` to answer 200: until a first champion is registered the model
    server answers 503, and loading it takes a moment more."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{url.rstrip('/')}/ping", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise ModelServerError(f"model server at {url} is not serving after {timeout:.0f} s")
        time.sleep(0.5)


def predict(url: str, measurements: pd.DataFrame, timeout: float = 30.0) -> pd.DataFrame:
    """POST rows of measurements (cm) to ``/invocations``; species and probabilities back."""
    payload = {"dataframe_split": measurements.to_dict(orient="split", index=False)}
    answer = requests.post(f"{url.rstrip('/')}/invocations", json=payload, timeout=timeout)
    if answer.status_code != 200:
        try:
            message = answer.json().get("message", answer.text)
        except ValueError:
            message = answer.text
        raise ModelServerError(f"{answer.status_code}: {message.splitlines()[-1][:500]}")
    return pd.DataFrame(answer.json()["predictions"])
