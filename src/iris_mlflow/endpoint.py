"""Ask the model server (MLflow's scoring protocol) for species, from a notebook or a script."""

from __future__ import annotations

import time

import pandas as pd
import requests


class ModelServerError(RuntimeError):
    """The model server refused the request or could not be reached."""


def wait_until_serving(url: str, timeout: float = 90.0) -> None:
    """Wait for ``/ping`` to answer 200: until a first champion is registered the model
    server answers 503, and loading it takes some seconds more."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{url.rstrip('/')}/ping", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise ModelServerError(f"model server at {url} is not serving after {timeout:.0f} s")
        time.sleep(1)


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
