"""A real ``mlflow server`` process on loopback."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from harness.processes import free_port, stop_process, wait_for_http


@contextlib.contextmanager
def mlflow_server(home: Path, port: int | None = None) -> Iterator[str]:
    """A real tracking server on loopback (on ``port``, else a free one): SQLite store and
    served artifacts under ``home``, one worker (as the stack runs it). Yields its URI;
    always stopped. Started again on the same ``home`` and port, it is the same server."""
    port = port or free_port()
    with (home / "server.log").open("ab") as log:
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
            print((home / "server.log").read_text()[-3000:], file=sys.stderr)  # noqa: T201
            raise
        finally:
            stop_process(proc)
