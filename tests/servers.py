"""Real local processes the tests and benchmarks run against (no mocks)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from iris_mlflow.serve import free_port

__all__ = ["free_port", "mlflow_server", "stop", "wait_for_http"]


def wait_for_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def mlflow_server(home: Path) -> Iterator[str]:
    """A real tracking server on a free loopback port: SQLite store and served artifacts
    under ``home``, one worker (as the stack runs it). Yields its URI; always stopped."""
    port = free_port()
    with (home / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                "--serve-artifacts", "--artifacts-destination", str(home / "artifacts"),
            ],
            stdout=log, stderr=subprocess.STDOUT, cwd=home, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # fmt: skip
        uri = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{uri}/health", timeout=90, proc=proc)
            yield uri
        except Exception:
            print((home / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            stop(proc)
