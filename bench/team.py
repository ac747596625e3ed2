"""The team profile against the laptop stack, side by side in one run (issue 10).

- Trainings: 8 ``iris-train`` trainings at once in the jupyter container, each logging its
  run, per-epoch metrics, plots and model, and registering a version (the team stack signed in
  as its editor user, through the load balancer to two tracking servers, PostgreSQL and the
  object store; the laptop stack to its one server, SQLite and a volume): trainings per
  minute, and every training must succeed with its run complete.
- Logging stress: the same 8 clients with no model to train, only the tracking calls, one
  ``log-batch`` per epoch over MLflow's REST API from the host, so the servers are the
  bottleneck; also against the team stack with sign-in off, to tell sign-in's cost from the
  rest. Every request must answer 200: failures are counted, not retried.
- Cold start: `up --wait` with images built and volumes kept, until every service is healthy
  (and the team's one-shot jobs have completed).
- Memory at rest per container, 20 s after a start, from `docker stats`.
- CPU at rest: the machine's busy time over the 20 s right after a cold start, in cores:
  what the healthchecks, the model server's registry polling and the services' timers cost.

Both stacks run through the whole benchmark, and each is measured with the other paused
(`docker compose pause`): the 2 cores are the measured stack's alone, as on a user's machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import requests

from bench.common import Measure, timed
from harness.processes import wait_for_http, wait_until
from harness.stack import (
    TEAM_PREFIX,
    Stack,
    container_memory_mb,
    docker,
    new_team_stack,
    remove_leftover_projects,
)

LAPTOP = "laptop stack (SQLite, 1 server)"
TEAM = "team stack (sign-in, PostgreSQL, S3, 2 servers)"
TEAM_NO_SIGN_IN = "team stack, sign-in off"
#: Layered over the team profile: the tracking servers without MLflow's basic-auth app.
NO_SIGN_IN = """
services:
  tracking:
    command: !reset []
"""
CLIENTS = 8
#: Epochs of each real training (about a minute for eight at once on 2 cores).
TRAINING_EPOCHS = 50
TRAININGS_PER_CLIENT = 3
EPOCHS = 40
#: About the size of the iris model's weights file.
MODEL_FILE = b"\0" * 40_000
API = "/api/2.0/mlflow"


class Failures:
    """Requests that did not answer 200, counted across the client threads."""

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None
        self._lock = threading.Lock()

    def add(self, what: str) -> None:
        with self._lock:
            self.count += 1
            self.first = self.first or what


def logged_training(session: requests.Session, base: str, experiment_id: str, failures) -> int:
    """One training's worth of tracking calls; returns the number of requests made."""

    def call(method: str, path: str, **kwargs) -> dict:
        try:
            answer = session.request(method, f"{base}{path}", timeout=60, **kwargs)
        except requests.RequestException as error:
            failures.add(f"{method} {path}: {error}")
            return {}
        if answer.status_code != 200:
            failures.add(f"{method} {path}: {answer.status_code} {answer.text[:200]}")
            return {}
        return answer.json() if answer.content else {}

    now = int(time.time() * 1000)
    created = call(
        "POST", f"{API}/runs/create", json={"experiment_id": experiment_id, "start_time": now}
    )
    if not created:
        return 1
    info = created["run"]["info"]
    run_id = info["run_id"]
    params = [{"key": k, "value": v} for k, v in (("epochs", str(EPOCHS)), ("seed", "42"))]
    call("POST", f"{API}/runs/log-batch", json={"run_id": run_id, "params": params})
    for epoch in range(EPOCHS):
        stamp = int(time.time() * 1000)
        metrics = [
            {"key": key, "value": 1.0 / (epoch + 1), "timestamp": stamp, "step": epoch}
            for key in ("loss", "accuracy", "val_loss", "val_accuracy")
        ]
        call("POST", f"{API}/runs/log-batch", json={"run_id": run_id, "metrics": metrics})
    artifacts = urlsplit(info["artifact_uri"]).path.lstrip("/")
    call(
        "PUT",
        f"/api/2.0/mlflow-artifacts/artifacts/{artifacts}/model/model.weights.bin",
        data=MODEL_FILE,
    )
    call(
        "POST",
        f"{API}/runs/update",
        json={"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)},
    )
    return EPOCHS + 4


def logging_throughput(base: str, auth: tuple[str, str] | None) -> tuple[float, Failures]:
    """Requests per second of CLIENTS clients each logging TRAININGS_PER_CLIENT trainings."""
    failures = Failures()
    with requests.Session() as setup:
        setup.auth = auth
        created = setup.post(
            f"{base}{API}/experiments/create",
            json={"name": f"bench-{uuid.uuid4().hex[:8]}"},
            timeout=60,
        )
        created.raise_for_status()
        experiment_id = created.json()["experiment_id"]
    counts = [0] * CLIENTS

    def client(index: int) -> None:
        with requests.Session() as session:
            session.auth = auth
            for _ in range(TRAININGS_PER_CLIENT):
                counts[index] += logged_training(session, base, experiment_id, failures)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - start), failures


def trainings_per_minute(
    stack: Stack, editor: tuple[str, str] | None, cpu_used: list[dict[str, float]]
) -> tuple[float, int]:
    """CLIENTS trainings at once in the jupyter container; (trainings per minute, failed).
    Appends to ``cpu_used`` the CPU seconds each service and the whole machine used."""
    name = f"bench-trainings-{uuid.uuid4().hex[:8]}"
    cpu_before = cpu_seconds_by_service(stack)
    start = time.perf_counter()
    trainings = [
        stack.start_training(name, "--epochs", str(TRAINING_EPOCHS), "--registered-model", name)
        for _ in range(CLIENTS)
    ]
    outcomes = [training.communicate(timeout=1800) for training in trainings]
    seconds = time.perf_counter() - start
    cpu_after = cpu_seconds_by_service(stack)
    cpu_used.append({k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after})
    failed = sum(training.returncode != 0 for training in trainings)
    # A training that exited 0 must have left a finished run with every epoch.
    with requests.Session() as session:
        session.auth = editor

        def get(path: str, **params) -> dict:
            answer = session.get(f"{stack.mlflow_url}{API}/{path}", params=params, timeout=60)
            answer.raise_for_status()
            return answer.json()

        experiment = get("experiments/get-by-name", experiment_name=name)["experiment"]
        runs = session.post(
            f"{stack.mlflow_url}{API}/runs/search",
            json={"experiment_ids": [experiment["experiment_id"]], "max_results": 100},
            timeout=60,
        ).json()["runs"]
        complete = [
            run
            for run in runs
            if run["info"]["status"] == "FINISHED"
            and len(
                get("metrics/get-history", run_id=run["info"]["run_id"], metric_key="loss")[
                    "metrics"
                ]
            )
            == TRAINING_EPOCHS
        ]
    if failed:
        errors = [
            err[-300:]
            for training, (_out, err) in zip(trainings, outcomes, strict=True)
            if training.returncode
        ]
        print(f"   failed trainings on {stack.project}: {errors[:2]}", flush=True)
    return CLIENTS / seconds * 60, max(failed, CLIENTS - len(complete))


def cpu_summary(rounds: list[dict[str, float]]) -> str:
    """Median CPU seconds per service over the rounds, what ran outside the containers
    (Docker's own work, the kernel), and the whole machine's."""
    outside = statistics.median(
        r["whole machine"] - sum(v for k, v in r.items() if k != "whole machine") for r in rounds
    )
    median = {k: statistics.median(r.get(k, 0.0) for r in rounds) for k in rounds[0]}
    machine = median.pop("whole machine")
    parts = [f"{k} {v:.0f}" for k, v in sorted(median.items(), key=lambda kv: -kv[1])]
    return f"{', '.join(parts)}; outside the containers {outside:.0f}; whole machine {machine:.0f}"


def logging_throughput_without_sign_in(team: Stack, no_sign_in: Stack) -> tuple[float, Failures]:
    """The logging stress against the team's tracking servers started without the sign-in app,
    which are then started as they were."""
    no_sign_in.compose("up", "-d", "--wait", "--no-deps", "tracking")
    try:
        wait_for_http(f"{team.mlflow_url}/health", timeout=120)
        return logging_throughput(team.mlflow_url, None)
    finally:
        team.compose("up", "-d", "--wait", "--no-deps", "tracking")


@contextlib.contextmanager
def alone(other: Stack):
    """``other`` paused for the measurements in the block. Docker counts a paused container's
    checks as failed; all are healthy again before the next measurement."""
    other.compose("pause")
    try:
        yield
    finally:
        other.compose("unpause")

        def healthy() -> bool:
            running = other.compose("ps", "--format", "{{.Health}}").stdout.split()
            return all(health == "healthy" for health in running)

        wait_until(healthy, timeout=120, what=f"{other.project} healthy again", interval=1)


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, busy + idle) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as stat:  # noqa: PTH123 (one line of a kernel file)
        ticks = [int(x) for x in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    per_second = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / per_second, sum(ticks) / per_second


def busy_cores(seconds: float) -> float:
    """How many of the machine's cores were busy, on average, over the next ``seconds``."""
    busy0, total0 = machine_cpu_seconds()
    time.sleep(seconds)
    busy1, total1 = machine_cpu_seconds()
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def container_cpu_seconds(container_id: str) -> float:
    """CPU time a running container has used, from its cgroup (v1 or v2, either cgroup
    driver); NaN where none of these is readable (the figure is then missing, not the run)."""
    root = Path("/sys/fs/cgroup")
    for folder in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"):
        v1 = root / "cpuacct" / folder / "cpuacct.usage"
        if v1.exists():
            return int(v1.read_text()) / 1e9
        v2 = root / folder / "cpu.stat"
        if v2.exists():
            usage = next(x for x in v2.read_text().splitlines() if x.startswith("usage_usec "))
            return int(usage.split()[1]) / 1e6
    return float("nan")


def cpu_seconds_by_service(stack: Stack) -> dict[str, float]:
    """CPU time the running containers of each service have used, and the whole machine's."""
    ids = stack.compose("ps", "-q").stdout.split()
    label = '{{.Id}} {{index .Config.Labels "com.docker.compose.service"}}'
    used = {"whole machine": machine_cpu_seconds()[0]}
    for row in docker("inspect", "-f", label, *ids).stdout.splitlines() if ids else []:
        container, service = row.split()
        used[service] = used.get(service, 0.0) + container_cpu_seconds(container)
    return used


def cold_start_seconds(stack: Stack) -> float:
    """`down` (volumes kept), then `up --wait` until every service is healthy."""
    stack.down()
    return timed(lambda: stack.up(timeout=900))


def at_rest_then_warm_up(stack: Stack, label: str, memory: Measure) -> None:
    """Memory at rest, then one untimed training: the first training in a container pays for
    cold file caches (the first round ran at half speed for whichever stack went first)."""
    memory_at_rest(stack, label, memory)
    stack.train("bench-warm-up", "--epochs", "1", "--no-register")


def memory_at_rest(stack: Stack, label: str, memory: Measure) -> None:
    time.sleep(20)
    running = stack.compose("ps", "--format", "{{.Service}} {{.ID}}").stdout.splitlines()
    for line in sorted(running):
        service, container = line.split()
        memory.add(f"{label}: {service}", container_memory_mb(container))


def measure(runs: int) -> list[Measure]:
    trainings = Measure(
        name="team_trainings",
        title=f"Team vs laptop: {CLIENTS} trainings at once ({TRAINING_EPOCHS} epochs, registered)",
        unit="per min",
        target="team at least 0.9x the laptop stack, 0 failed trainings",
        baseline=LAPTOP,
        notes=[
            "A training fails if `iris-train` exits non-zero or its run is not FINISHED with "
            "every epoch's loss. Each training's own compute (TensorFlow, in one jupyter "
            "container on the same 2 cores) is most of the time: this is what a team training at "
            "once sees. The CPU seconds of one round (medians over the runs, from the containers' "
            "cgroups and /proc/stat) say where the rest goes; outside the containers: Docker's own "
            "work (running the healthchecks, relaying the trainings' output) and the kernel."
        ],
    )
    throughput = Measure(
        name="team_logging_throughput",
        title=f"Team vs laptop: logging stress, {CLIENTS} clients at once, tracking calls only",
        unit="req/s",
        target="reported (the trainings above carry the 0.9x target), 0 failed requests",
        baseline=LAPTOP,
        notes=[
            f"Each client logs {TRAININGS_PER_CLIENT} trainings of {EPOCHS} epochs: a run, its "
            "parameters, one `log-batch` of four metrics per epoch, a 40 kB model file through the "
            "artifact proxy, the run closed. Clients are threads of one process on the same host "
            "(and the same 2 cores) as the stacks; requests/s counts every call. Sign-in costs the "
            "most per request: MLflow's basic-auth app loaded the whole run to check every "
            "run-level call until the servers kept each run's experiment "
            "(mlflow-docker/sign_in_cache.py; 0.84x before, at 3006fe4)."
        ],
    )
    cold = Measure(
        name="team_cold_start",
        title="Team vs laptop: cold start, `up --wait` with images built until all healthy",
        unit="s",
        target="team stack at most 30 s",
        baseline=LAPTOP,
        notes=[
            "Images built, volumes kept, containers new. The team stack's chain: PostgreSQL "
            "healthy, the backup and migration jobs (the migration checks the schema heads and "
            "stops without loading MLflow when they are current), two tracking servers healthy "
            "(each runs MLflow's app in one process, not under `mlflow server`), the load "
            "balancer healthy, then the users job beside jupyter, then the model server; the "
            "object store and the bucket job start beside the chain."
        ],
    )
    cpu_at_rest = Measure(
        name="team_cpu_at_rest",
        title="Team vs laptop: CPU at rest, the 20 s after a cold start, the other one paused",
        unit="cores",
        target="reported",
        baseline=LAPTOP,
        notes=[
            "Busy time of the whole machine (2 cores) from /proc/stat, Docker's own work for the "
            "healthchecks included; nothing else ran. Docker runs each service's healthcheck every "
            "5 s on the laptop stack; on the team stack every second while a service starts "
            "(its start is seconds shorter) and every 30 s once it is healthy."
        ],
    )
    memory = Measure(
        name="team_memory_at_rest",
        title="Team vs laptop: memory at rest per container, 20 s after start",
        unit="MB",
        target="reported",
        baseline=None,
        notes=["One reading per container, from `docker stats`, 20 s after the first start."],
    )
    remove_leftover_projects()
    remove_leftover_projects(TEAM_PREFIX)
    laptop, team = Stack(), new_team_stack()
    editor = ("notebook", team.extra_env["TEAM_EDITOR_PASSWORD"])
    failed = {LAPTOP: 0, TEAM: 0, TEAM_NO_SIGN_IN: 0}
    first_failure: dict[str, str | None] = dict.fromkeys(failed)
    failed_trainings = {LAPTOP: 0, TEAM: 0}
    cpu: dict[str, list[dict[str, float]]] = {LAPTOP: [], TEAM: []}
    with tempfile.TemporaryDirectory() as tmp:
        no_sign_in_file = Path(tmp) / "no-sign-in.yml"
        no_sign_in_file.write_text(NO_SIGN_IN)
        no_sign_in = dataclasses.replace(team, overrides=(*team.overrides, str(no_sign_in_file)))
        try:
            laptop.up(build=True, timeout=3000)
            team.up(build=True, timeout=3000)
            for label, stack in ((LAPTOP, laptop), (TEAM, team)):
                at_rest_then_warm_up(stack, label, memory)
            for _ in range(runs):
                for label, stack, other, auth in (
                    (LAPTOP, laptop, team, None),
                    (TEAM, team, laptop, editor),
                ):
                    with alone(other):
                        rate, failures = trainings_per_minute(stack, auth, cpu[label])
                        trainings.add(label, rate)
                        failed_trainings[label] += failures
                        rate, failures = logging_throughput(stack.mlflow_url, auth)
                        throughput.add(label, rate)
                        failed[label] += failures.count
                        first_failure[label] = first_failure[label] or failures.first
                        cold.add(label, cold_start_seconds(stack))
                        cpu_at_rest.add(label, busy_cores(20))
                with alone(laptop):
                    rate, failures = logging_throughput_without_sign_in(team, no_sign_in)
                throughput.add(TEAM_NO_SIGN_IN, rate)
                failed[TEAM_NO_SIGN_IN] += failures.count
                first_failure[TEAM_NO_SIGN_IN] = first_failure[TEAM_NO_SIGN_IN] or failures.first
        finally:
            laptop.down(volumes=True)
            team.down(volumes=True)
    trainings.extra["failed trainings"] = ", ".join(
        f"{k}: {v}" for k, v in failed_trainings.items()
    )
    for label, rounds in cpu.items():
        trainings.extra[f"CPU seconds of one round, {label}"] = cpu_summary(rounds)
    trainings.target_met = (
        trainings.ratio(TEAM) is not None
        and trainings.ratio(TEAM) >= 0.9
        and not any(failed_trainings.values())
    )
    throughput.extra["failed requests"] = ", ".join(f"{k}: {v}" for k, v in failed.items())
    for label, what in first_failure.items():
        if what:
            throughput.extra[f"first failure, {label}"] = what
    throughput.target_met = not any(failed.values())
    cold.target_met = cold.median(TEAM) <= 30
    return [trainings, throughput, cold, cpu_at_rest, memory]
