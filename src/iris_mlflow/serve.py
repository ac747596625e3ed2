"""``iris-serve``: keep MLflow's scoring server serving the registry's champion.

The model-server container runs this. A supervisor thread resolves
``models:/iris-classifier@champion`` every few seconds; while no version has the alias the
server answers 503 and its log says it is waiting (no crash loop). When the alias moves it
starts ``mlflow models serve`` (MLflow's own scoring server, ``--env-manager local``: the
container already has the model's dependencies) for the new version on an internal port,
and once that answers, the gateway (:mod:`iris_mlflow.gateway`, the public port) sends
requests there and the old scoring server is stopped after finishing its requests. No
request is refused during the swap.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from iris_mlflow.gateway import Gateway
from iris_mlflow.registry import CHAMPION, REGISTERED_MODEL

log = logging.getLogger("iris-serve")

#: Loading TensorFlow and the model takes ~10 s on two cores; far longer means it is stuck.
READY_TIMEOUT_SECONDS = 300.0


@dataclass
class ScoringServer:
    version: str
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as answer:  # noqa: S310 (loopback)
                return answer.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM: uvicorn finishes the requests in flight, then exits."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Supervisor:
    def __init__(self, name: str, alias: str, workers: int, gateway: Gateway) -> None:
        self.name, self.alias, self.workers = name, alias, workers
        self.gateway = gateway
        self.serving: ScoringServer | None = None
        self.stopping = threading.Event()
        self.failures = 0
        self.retry_at = 0.0

    def scoring_command(self, version: str, port: int) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "models", "serve",
            "--model-uri", f"models:/{self.name}/{version}",
            "--env-manager", "local",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(self.workers),
        ]  # fmt: skip

    def launch(self, version: str) -> ScoringServer:
        port = free_port()
        # MLflow starts uvicorn by name: this interpreter's scripts must come first on PATH.
        bin_dir = Path(sys.executable).parent
        env = {
            # Progress bars of the model download would fill the log with carriage returns.
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        process = subprocess.Popen(
            self.scoring_command(version, port), env=env, start_new_session=True
        )
        return ScoringServer(version, port, process)

    def swap_to(self, version: str) -> None:
        """Start a scoring server for ``version``; switch to it once it answers."""
        log.info("loading %s version %s (@%s)", self.name, version, self.alias)
        candidate = self.launch(version)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not candidate.answers():
            failed = candidate.process.poll() is not None or time.monotonic() > deadline
            if failed or self.stopping.is_set():
                candidate.stop()
                if failed:
                    self.failures += 1
                    delay = min(60.0, 2.0**self.failures)
                    self.retry_at = time.monotonic() + delay
                    log.error(
                        "scoring server for version %s did not start (exit code %s); "
                        "retrying in %.0f s%s",
                        version,
                        candidate.process.returncode,
                        delay,
                        f", still serving version {self.serving.version}" if self.serving else "",
                    )
                return
            time.sleep(0.5)
        previous, self.serving = self.serving, candidate
        self.gateway.upstream = candidate.url
        self.failures = 0
        log.info(
            "serving %s version %s (@%s), scoring server at %s",
            self.name, version, self.alias, candidate.url,
        )  # fmt: skip
        if previous is not None:
            previous.stop()

    def target_version(self, client) -> str | None:
        from iris_mlflow.registry import champion_version  # noqa: PLC0415 (imports mlflow)

        holder = champion_version(client, self.name, self.alias)
        return str(holder.version) if holder else None

    def run(self, poll_seconds: float) -> None:
        from mlflow import MlflowClient  # noqa: PLC0415 (after logging is set up)

        client = MlflowClient()
        last_wait_note = 0.0
        while not self.stopping.is_set():
            serving = self.serving
            try:
                target = self.target_version(client)
            except Exception as error:
                log.warning(
                    "cannot ask the registry (%s); keeping what is served",
                    str(error).splitlines()[0],
                )
                target = serving.version if serving else None
            if target is None:
                if time.monotonic() - last_wait_note > 60:
                    log.info("%s", self.gateway.unavailable_message)
                    last_wait_note = time.monotonic()
            elif time.monotonic() < self.retry_at:
                pass
            elif serving is None or target != serving.version:
                if serving is not None:
                    log.info("@%s moved from version %s to %s", self.alias, serving.version, target)
                self.swap_to(target)
            elif serving.process.poll() is not None:
                log.error(
                    "scoring server for version %s exited with %s; starting another",
                    serving.version,
                    serving.process.returncode,
                )
                self.gateway.upstream = None
                self.gateway.unavailable_message = "the scoring server is restarting; retry"
                self.serving = None
                self.swap_to(target)
            self.stopping.wait(poll_seconds)

    def stop(self) -> None:
        self.stopping.set()
        if self.serving is not None:
            self.serving.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iris-serve", description=__doc__.splitlines()[0])
    parser.add_argument("--model-name", default=os.environ.get("MODEL_NAME", REGISTERED_MODEL))
    parser.add_argument("--alias", default=os.environ.get("MODEL_ALIAS", CHAMPION))
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 (inside its container)
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("MODEL_SERVER_PORT", "5001"))
    )
    parser.add_argument(
        "--workers", type=int, default=int(os.environ.get("MODEL_SERVER_WORKERS", "1"))
    )
    parser.add_argument(
        "--poll-seconds", type=float, default=float(os.environ.get("POLL_SECONDS", "5"))
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per forwarded request
    import uvicorn  # noqa: PLC0415

    gateway = Gateway(
        unavailable_message=f"no version of {args.model_name} has the alias @{args.alias} yet; "
        "train a model (the notebook or iris-train) and this server picks it up"
    )
    supervisor = Supervisor(args.model_name, args.alias, args.workers, gateway)
    config = uvicorn.Config(
        gateway, host=args.host, port=args.port, lifespan="on", access_log=False,
        log_config=None, timeout_graceful_shutdown=20,
    )  # fmt: skip
    server = uvicorn.Server(config)
    # uvicorn stops on SIGTERM/SIGINT and then raises the signal again: let that second one
    # pass, so the scoring servers are stopped below rather than left running.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    watcher = threading.Thread(
        target=supervisor.run, args=(args.poll_seconds,), name="supervisor", daemon=True
    )
    watcher.start()
    try:
        server.run()
    finally:
        log.info("stopping")
        supervisor.stopping.set()
        watcher.join(timeout=30)
        supervisor.stop()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
