"""Drive the project's docker-compose.yml on a real engine, as a user would.

Each test session gets its own compose project name and free host ports, so it never
collides with a stack the developer has running, and leftovers of an interrupted earlier
session (same name prefix) are removed before it starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from functools import cache

from tests.conftest import ROOT
from tests.servers import free_port

PROJECT_PREFIX = "iristest"
SERVICES = ("mlflow", "jupyter")


@cache
def compose_command() -> tuple[str, ...]:
    """Compose v2 (`docker compose`) where it exists, else docker-compose 1.29."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    raise RuntimeError("neither `docker compose` nor `docker-compose` is installed")


def engine_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done


def remove_leftover_projects() -> None:
    """Containers, networks and volumes of earlier test sessions that did not clean up."""
    label = "label=com.docker.compose.project"
    rows = docker(
        "ps", "-a", "--filter", label, "--format", '{{.ID}} {{.Label "com.docker.compose.project"}}'
    ).stdout
    stale = [
        line.split()[0] for line in rows.splitlines() if line.split()[1].startswith(PROJECT_PREFIX)
    ]
    if stale:
        docker("rm", "-f", "-v", *stale)
    for kind in ("network", "volume"):
        names = docker(kind, "ls", "-q", "--filter", label).stdout.split()
        for name in names:
            project = docker(
                kind, "inspect", "-f", '{{index .Labels "com.docker.compose.project"}}', name
            ).stdout
            if project.strip().startswith(PROJECT_PREFIX):
                docker(kind, "rm", name, check=False)


@dataclass
class Stack:
    """One compose project of our docker-compose.yml."""

    project: str = field(default_factory=lambda: f"{PROJECT_PREFIX}{uuid.uuid4().hex[:8]}")
    mlflow_port: int = field(default_factory=free_port)
    jupyter_port: int = field(default_factory=free_port)
    model_server_port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Compose files layered over docker-compose.yml (benchmarks compare settings this way).
    overrides: tuple[str, ...] = ()

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "COMPOSE_PROJECT_NAME": self.project,
            "MLFLOW_PORT": str(self.mlflow_port),
            "JUPYTER_PORT": str(self.jupyter_port),
            "MODEL_SERVER_PORT": str(self.model_server_port),
            "JUPYTER_TOKEN": self.token,
            # Compose 1.29 builds through the docker CLI with BuildKit (cache mounts).
            "DOCKER_BUILDKIT": "1",
            "COMPOSE_DOCKER_CLI_BUILD": "1",
            **self.extra_env,
        }

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def model_server_url(self) -> str:
        return f"http://127.0.0.1:{self.model_server_port}"

    @property
    def jupyter_url(self) -> str:
        return f"http://127.0.0.1:{self.jupyter_port}"

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess:
        files = [arg for f in ("docker-compose.yml", *self.overrides) for arg in ("-f", f)]
        done = subprocess.run(
            [*compose_command(), *files, *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=self.env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            output = f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            raise RuntimeError(f"compose {' '.join(args)} exited {done.returncode}:\n{output}")
        return done

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-q", service).stdout.split()
        if len(ids) != 1:
            raise RuntimeError(f"expected one {service} container, found {ids}")
        return ids[0]

    def health(self, service: str) -> str:
        state = json.loads(
            docker("inspect", "-f", "{{json .State}}", self.container(service)).stdout
        )
        return state.get("Health", {}).get("Status", state["Status"])

    def wait_healthy(self, services=SERVICES, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        status = {}
        while time.monotonic() < deadline:
            status = {s: self.health(s) for s in services}
            if all(v == "healthy" for v in status.values()):
                return
            if any(v in ("exited", "dead", "unhealthy") for v in status.values()):
                break
            time.sleep(1)
        logs = self.compose("logs", "--tail", "60", check=False).stdout
        raise RuntimeError(f"services not healthy: {status}\n{logs[-6000:]}")

    def up(self, *services: str) -> None:
        self.compose("up", "-d", *services)
        self.wait_healthy(services or SERVICES)

    def down(self, volumes: bool = False) -> None:
        self.compose(
            "down", "--remove-orphans", *(["-v"] if volumes else []), timeout=180, check=False
        )

    def exec(self, service: str, *cmd: str, user: str | None = None, timeout: float = 600):
        return self.compose(
            "exec",
            "-T",
            *(["-u", user] if user else []),
            service,
            *cmd,
            timeout=timeout,
            check=False,
        )

    def train(self, experiment: str, *args: str) -> subprocess.CompletedProcess:
        """`iris-train` in the jupyter container, as the notebook user; it must succeed."""
        done = self.exec(
            "jupyter", "iris-train", "--quiet", "--experiment", experiment, *args, user="jovyan"
        )
        if done.returncode != 0:
            raise RuntimeError(f"iris-train exited {done.returncode}: {done.stderr[-2000:]}")
        return done
