"""``iris-serve``: keep MLflow's scoring server serving the registry's champion.

The model-server container runs this. It resolves ``models:/iris-classifier@champion``
every few seconds; while no version has the alias it waits and says so in its log (no crash
loop); when the alias moves it starts ``mlflow models serve`` on the new version and stops
the old one. The scoring server itself is MLflow's own, run with ``--env-manager local``:
the container already has the model's dependencies.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from iris_mlflow.registry import CHAMPION, REGISTERED_MODEL

log = logging.getLogger("iris-serve")


class Supervisor:
    def __init__(self, name: str, alias: str, host: str, port: int, workers: int) -> None:
        self.name, self.alias = name, alias
        self.host, self.port, self.workers = host, port, workers
        self.child: subprocess.Popen | None = None
        self.version: str | None = None
        self.stopping = False

    def scoring_command(self, version: str) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "models", "serve",
            "--model-uri", f"models:/{self.name}/{version}",
            "--env-manager", "local",
            "--host", self.host, "--port", str(self.port), "--workers", str(self.workers),
        ]  # fmt: skip

    def start(self, version: str) -> None:
        log.info(
            "serving %s version %s (@%s) on port %d", self.name, version, self.alias, self.port
        )
        # MLflow starts uvicorn by name: this interpreter's scripts must come first on PATH.
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.child = subprocess.Popen(
            self.scoring_command(version), env=env, start_new_session=True
        )
        self.version = version

    def stop(self) -> None:
        if self.child is None or self.child.poll() is not None:
            return
        os.killpg(self.child.pid, signal.SIGTERM)
        try:
            self.child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.child.pid, signal.SIGKILL)
            self.child.wait()

    def handle_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        self.stopping = True

    def run(self, poll_seconds: float) -> int:
        from mlflow import MlflowClient  # noqa: PLC0415 (after logging is set up)

        from iris_mlflow.registry import champion_version  # noqa: PLC0415

        client = MlflowClient()
        last_wait_note = 0.0
        failures = 0
        while not self.stopping:
            try:
                holder = champion_version(client, self.name, self.alias)
                target = str(holder.version) if holder else None
            except Exception as error:
                log.warning(
                    "cannot ask the registry (%s); keeping what is served",
                    str(error).splitlines()[0],
                )
                target = self.version
            if target is None:
                if time.monotonic() - last_wait_note > 60:
                    log.info(
                        "no version of %s has the alias @%s yet; waiting (train a model in "
                        "the notebook or with iris-train and this server picks it up)",
                        self.name,
                        self.alias,
                    )
                    last_wait_note = time.monotonic()
            elif target != self.version:
                if self.version is not None:
                    log.info("@%s moved from version %s to %s", self.alias, self.version, target)
                self.stop()
                self.start(target)
                failures = 0
            elif self.child is not None and self.child.poll() is not None:
                failures += 1
                delay = min(60.0, 2.0**failures)
                log.error(
                    "scoring server exited with %s; restarting in %.0f s",
                    self.child.returncode,
                    delay,
                )
                time.sleep(delay)
                self.start(self.version)
            time.sleep(poll_seconds)
        self.stop()
        return 0


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
    supervisor = Supervisor(args.model_name, args.alias, args.host, args.port, args.workers)
    signal.signal(signal.SIGTERM, supervisor.handle_signal)
    signal.signal(signal.SIGINT, supervisor.handle_signal)
    return supervisor.run(args.poll_seconds)


if __name__ == "__main__":
    sys.exit(main())
