"""Drive the project's docker-compose.yml on a real engine with Compose v2, as a user would.

Each test session gets its own compose project name and free host ports, so it never
collides with a stack the developer has running, and leftovers of an interrupted earlier
session (same name prefix) are removed before it starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from harness import ROOT
from harness.processes import free_port, wait_until

PROJECT_PREFIX = "iristest"
SERVICES = ("mlflow", "jupyter")
#: The team profile: layered over docker-compose.yml, its projects under a prefix of their own.
TEAM_OVERRIDES = ("docker-compose.team.yml",)
TEAM_PREFIX = "iristeam"


#: What the README tells users to type. (docker-compose 1.29 only validates the file, in CI.)
COMPOSE = ("docker", "compose")


def engine_available() -> bool:
    """A Docker engine answers and Compose v2 is installed."""
    if not shutil.which("docker"):
        return False
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return False
    return subprocess.run([*COMPOSE, "version"], capture_output=True).returncode == 0


def docker(
    *args: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`docker ARGS`; ``env``: variables for the client, e.g. secrets `--env NAME` passes on
    without their values on a command line."""
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **env} if env else None,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done


def remove_leftover_projects(prefix: str = PROJECT_PREFIX) -> None:
    """Containers, networks and volumes of earlier test sessions that did not clean up: the
    compose projects whose name starts with ``prefix``."""
    label = "label=com.docker.compose.project"
    rows = docker(
        "ps", "-a", "--filter", label, "--format", '{{.ID}} {{.Label "com.docker.compose.project"}}'
    ).stdout
    stale = [line.split()[0] for line in rows.splitlines() if line.split()[1].startswith(prefix)]
    if stale:
        docker("rm", "-f", "-v", *stale)
    for kind in ("network", "volume"):
        names = docker(kind, "ls", "-q", "--filter", label).stdout.split()
        for name in names:
            project = docker(
                kind, "inspect", "-f", '{{index .Labels "com.docker.compose.project"}}', name
            ).stdout
            if project.strip().startswith(prefix):
                docker(kind, "rm", name, check=False)


def container_memory_mb(container: str) -> float:
    """What `docker stats` says a container uses now, in MB."""
    usage = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", container)
    amount = usage.stdout.split("/")[0].strip()
    number = float(amount.rstrip("KMGiB"))
    scale = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[amount[len(amount.rstrip("KMGiB")) :]]
    return number * scale * 1.048576  # MiB -> MB


def team_secrets() -> dict[str, str]:
    """Every secret the team profile requires, fresh for each stack (what a user puts in .env)."""
    return {
        "POSTGRES_PASSWORD": f"pg '{uuid.uuid4().hex}\"",  # quotes and a space: never in a URI
        "OBJECT_STORE_SECRET_KEY": uuid.uuid4().hex,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
        "MLFLOW_AUTH_ADMIN_PASSWORD": f"admin-{uuid.uuid4().hex}",
        "TEAM_EDITOR_PASSWORD": f"editor-{uuid.uuid4().hex}",
        "TEAM_READER_PASSWORD": f"reader-{uuid.uuid4().hex}",
    }


def new_team_stack(prefix: str = TEAM_PREFIX, **env: str) -> Stack:
    """A team-profile stack (not started) with fresh secrets; ``env`` overrides any setting.
    ``prefix`` starts its project name (a test module that cleans up after itself by prefix
    takes its own)."""
    return Stack(
        project=f"{prefix}{uuid.uuid4().hex[:8]}",
        overrides=TEAM_OVERRIDES,
        extra_env={**team_secrets(), **env},
    )


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
    #: The checkout whose docker-compose.yml this is (a benchmark runs an older commit's).
    directory: Path = ROOT

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "COMPOSE_PROJECT_NAME": self.project,
            "MLFLOW_PORT": str(self.mlflow_port),
            "JUPYTER_PORT": str(self.jupyter_port),
            "MODEL_SERVER_PORT": str(self.model_server_port),
            "JUPYTER_TOKEN": self.token,
            # BuildKit (cache mounts) with a docker CLI older than 23, as Debian's 20.10.
            "DOCKER_BUILDKIT": "1",
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

    def compose_args(self, *args: str) -> list[str]:
        files = [arg for f in ("docker-compose.yml", *self.overrides) for arg in ("-f", f)]
        return [*COMPOSE, *files, *args]

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            self.compose_args(*args),
            capture_output=True,
            text=True,
            cwd=self.directory,
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

    def containers(self, service: str) -> list[str]:
        """Every container of a service, running or exited (a replicated one has several)."""
        return self.compose("ps", "-a", "-q", service).stdout.split()

    def memory_mb(self, service: str) -> float:
        """What `docker stats` says the service's container uses now, in MB."""
        return container_memory_mb(self.container(service))

    def artifact_checksums(
        self, roots: list[str], auth: tuple[str, str] | None = None
    ) -> dict[str, str]:
        """sha256 of every file under these artifact paths, fetched through the tracking
        server's artifact proxy (signed in with ``auth`` on the team stack)."""
        from harness.stores import artifact_checksums

        return artifact_checksums(self.mlflow_url, auth, roots)

    def health(self, service: str) -> str:
        state = json.loads(
            docker("inspect", "-f", "{{json .State}}", self.container(service)).stdout
        )
        return state.get("Health", {}).get("Status", state["Status"])

    def wait_healthy(self, services=SERVICES, timeout: float = 240) -> None:
        """Until every service is healthy (after a restart or a restore); fails fast on one
        that exited or turned unhealthy, with the stack's logs."""
        status: dict[str, str] = {}

        def all_healthy() -> bool:
            status.update({s: self.health(s) for s in services})
            if any(v in ("exited", "dead", "unhealthy") for v in status.values()):
                raise RuntimeError(f"services not healthy: {status}\n{self.recent_logs()}")
            return all(v == "healthy" for v in status.values())

        try:
            wait_until(all_healthy, timeout, "services healthy", interval=1)
        except TimeoutError:
            raise RuntimeError(f"services not healthy: {status}\n{self.recent_logs()}") from None

    def recent_logs(self) -> str:
        return self.compose("logs", "--tail", "60", check=False).stdout[-6000:]

    def up(self, *services: str, build: bool = False, timeout: float = 600) -> None:
        """`docker compose up --wait`: detached, returns once every service started is
        healthy, and fails (with the logs) when one is not."""
        done = self.compose(
            "up", *(["--build"] if build else []), "--wait", "--wait-timeout", "300", *services,
            timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"compose up exited {done.returncode}: {done.stderr[-3000:]}\n{self.recent_logs()}"
            )

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

    def start_training(self, experiment: str, *args: str) -> subprocess.Popen:
        """`iris-train` in the jupyter container, in the background; read its outcome with
        ``communicate()``."""
        return subprocess.Popen(
            self.compose_args(
                "exec", "-T", "-u", "jovyan", "jupyter",
                "iris-train", "--quiet", "--experiment", experiment, *args,
            ),
            cwd=self.directory, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def train(self, experiment: str, *args: str) -> subprocess.CompletedProcess:
        """`iris-train` in the jupyter container, as the notebook user; it must succeed."""
        done = self.exec(
            "jupyter", "iris-train", "--quiet", "--experiment", experiment, *args, user="jovyan"
        )
        if done.returncode != 0:
            raise RuntimeError(f"iris-train exited {done.returncode}: {done.stderr[-2000:]}")
        return done
