"""The champion rule: as a pure function of the versions, and against a real tracking server
with registrations racing in threads and in processes."""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from iris_mlflow import registry
from iris_mlflow.names import CHALLENGER, CHAMPION

# Tags are checked by the test's own sequential simulation, not by the module's rule.
EXACT = 0.9666666388511658  # a float32 accuracy (29 of 30): ties only when stored exactly
#: Accuracies the racing registrars draw from: ties, a tie at full float precision, losers.
RACE_ACCURACIES = (0.9, 0.9, 0.8, 0.95, 0.95, 0.7, EXACT, EXACT)
REGISTRARS = 8
THREAD_REPETITIONS = 6
PROCESS_REPETITIONS = 4
#: Random repetitions: each registrar sets off after up to MAX_START_DELAY and holds its
#: first alias write back by up to MAX_PAUSE (seconds).
MAX_START_DELAY, MAX_PAUSE = 0.3, 0.6
#: Longest a registrar waits for another in a staircase repetition (seconds).
GATE_TIMEOUT = 60


# --- the rule as a pure function ---------------------------------------------------------


def seeded(seed: int) -> random.Random:
    """Reproducible draws: a failing race names the accuracies it had."""
    return random.Random(seed)  # noqa: S311 (not cryptography)


def c(version: int, accuracy: float) -> registry.Candidate:
    """A version with its accuracy (built when a test runs: the module imports whatever
    registry it is given, which is how the race tests were seen to fail the old one)."""
    return registry.Candidate(version, accuracy)


@dataclass
class FakeVersion:
    """What the rule reads of an MLflow ModelVersion."""

    version: str
    tags: dict[str, str] = field(default_factory=dict)


@pytest.mark.parametrize(
    ("listing", "decisions", "champion", "challenger"),
    [
        pytest.param([], [], None, None, id="no versions"),
        pytest.param([(1, 0.9)], ["first champion"], 1, None, id="first version"),
        pytest.param(
            [(1, 0.9), (2, 0.8)],
            ["first champion", "challenger: 0.8000 < 0.9000"],
            1,
            2,
            id="worse model last",
        ),
        pytest.param(
            [(1, 0.9), (2, 0.9)],
            ["first champion", "champion: 0.9000 >= 0.9000"],
            2,
            None,
            id="tie goes to the newer",
        ),
        pytest.param(
            [(1, EXACT), (2, EXACT)],
            ["first champion", "champion: 0.9667 >= 0.9667"],
            2,
            None,
            id="float32 tie",
        ),
        pytest.param(
            [(1, 0.9), (2, 0.9000001)],
            ["first champion", "champion: 0.9000 >= 0.9000"],
            2,
            None,
            id="better by less than the rounding",
        ),
        pytest.param(
            [(1, 0.9000001), (2, 0.9)],
            ["first champion", "challenger: 0.9000 < 0.9000"],
            1,
            2,
            id="worse by less than the rounding",
        ),
        pytest.param(
            [(1, 0.9), (2, 0.8), (3, 0.95)],
            ["first champion", "challenger: 0.8000 < 0.9000", "champion: 0.9500 >= 0.9000"],
            3,
            2,
            id="challenger stays when a new champion comes",
        ),
        pytest.param(
            [(1, 0.9), (2, 0.8), (3, 0.7)],
            ["first champion", "challenger: 0.8000 < 0.9000", "challenger: 0.7000 < 0.9000"],
            1,
            3,
            id="challenger is the newest loser, not the best one",
        ),
        pytest.param(
            [(1, 0.7), (2, 0.9), (3, 0.8), (4, 0.9), (5, 0.85)],
            [
                "first champion",
                "champion: 0.9000 >= 0.7000",
                "challenger: 0.8000 < 0.9000",
                "champion: 0.9000 >= 0.9000",
                "challenger: 0.8500 < 0.9000",
            ],
            4,
            5,
            id="mixed",
        ),
        pytest.param(
            [(5, 0.8), (2, 0.9)],
            ["first champion", "challenger: 0.8000 < 0.9000"],
            2,
            5,
            id="judged in version order, gaps allowed",
        ),
    ],
)
def test_rule(listing, decisions, champion, challenger):
    listing = [c(*pair) for pair in listing]
    found = registry.verdicts(listing)
    assert [v.decision for v in found] == decisions
    assert [v.version for v in found] == sorted(x.version for x in listing)
    assert registry.decide(listing) == registry.Decision(champion, challenger)


def test_verdict_tags_name_the_champion_it_was_compared_with():
    first, worse, tie = registry.verdicts([c(1, 0.9), c(2, 0.8), c(3, 0.9)])
    assert first.tags == {
        "compared_with_version": "none",
        "compared_with_accuracy": "none",
        "decision": "first champion",
    }
    assert (first.alias, worse.alias, tie.alias) == (CHAMPION, CHALLENGER, CHAMPION)
    assert worse.tags == {
        "compared_with_version": "1",
        "compared_with_accuracy": "0.9",
        "decision": "challenger: 0.8000 < 0.9000",
    }
    assert tie.compared_with == c(1, 0.9)


def test_a_verdict_depends_only_on_earlier_versions():
    listing = [c(1, 0.9), c(2, 0.8), c(3, 0.95), c(4, 0.6), c(5, 0.95)]
    complete = registry.verdicts(listing)
    for n in range(1, len(listing) + 1):
        assert registry.verdicts(listing[:n]) == complete[:n]


def test_versions_without_an_accuracy_are_not_candidates():
    versions = [
        FakeVersion("10", {"test_accuracy": "0.5"}),  # sorted as a number, not as text
        FakeVersion("9", {"test_accuracy": "0.9"}),
        FakeVersion("1"),  # registered by hand
        FakeVersion("2", {"test_accuracy": "high"}),
        FakeVersion("3", {"test_accuracy": "nan"}),
        FakeVersion("4", {"test_accuracy": ""}),
        FakeVersion("5", {"other": "0.99"}),
        FakeVersion("6", {"test_accuracy": repr(EXACT)}),
    ]
    listing = registry.candidates(versions)
    assert listing == (c(6, EXACT), c(9, 0.9), c(10, 0.5))
    assert registry.verdicts(listing)[0].decision == "first champion"
    assert registry.decide(listing) == registry.Decision(6, 10)
    assert registry.decide(registry.candidates([FakeVersion("1")])) == registry.Decision(None, None)


def simulate(accuracies: dict[int, float]) -> tuple[dict[int, dict[str, str]], int, int | None]:
    """Today's sequential rule, registration by registration in version order: the spec the
    racing registrations must end up agreeing with. Tags per version, champion, challenger."""
    tags: dict[int, dict[str, str]] = {}
    champion = challenger = None
    for version in sorted(accuracies):
        mine = accuracies[version]
        if champion is None:
            wins, decision = True, "first champion"
        else:
            theirs = accuracies[champion]
            wins = mine >= theirs
            decision = (
                f"champion: {mine:.4f} >= {theirs:.4f}"
                if wins
                else f"challenger: {mine:.4f} < {theirs:.4f}"
            )
        tags[version] = {
            "test_accuracy": repr(mine),
            "compared_with_version": str(champion) if champion else "none",
            "compared_with_accuracy": repr(accuracies[champion]) if champion else "none",
            "decision": decision,
        }
        if wins:
            champion = version
        else:
            challenger = version
    return tags, champion, challenger


def test_rule_matches_registering_one_by_one():
    rng = seeded(12)
    for _ in range(300):
        accuracies = {
            v: rng.choice((0.6, 0.8, 0.9, 0.9, EXACT, 1.0))
            for v in sorted(rng.sample(range(1, 40), rng.randint(1, 12)))
        }
        tags, champion, challenger = simulate(accuracies)
        listing = [c(v, a) for v, a in accuracies.items()]
        assert registry.decide(listing) == registry.Decision(champion, challenger)
        for verdict in registry.verdicts(listing):
            assert {"test_accuracy": repr(verdict.accuracy), **verdict.tags} == tags[
                verdict.version
            ]


# --- against a real tracking server ------------------------------------------------------


@pytest.fixture(scope="module")
def tracked(mlflow_server: str) -> Iterator[str]:
    """mlflow's global tracking URI (which register uses) points at the test server."""
    import mlflow

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mlflow.set_tracking_uri(mlflow_server)
        try:
            yield mlflow_server
        finally:
            mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def model_uri(request: pytest.FixtureRequest) -> str:
    """One tiny logged model; every registration in this module registers it again."""
    import mlflow

    request.getfixturevalue("tracked")

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # noqa: ARG002 (pyfunc API)
            return model_input

    mlflow.set_experiment(f"registry-tests-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run():
        logged = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
    return logged.model_uri


def fresh_name(label: str) -> str:
    return f"race-{label}-{uuid.uuid4().hex[:8]}"


def assert_follows_the_rule(client, name: str, registrations: list) -> None:
    """The registry of `name` after every registration finished: aliases, tags and each
    Registration are what registering one by one in version order would have given."""
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == len(registrations) == len({r.version for r in registrations})
    accuracies = {int(v.version): float(v.tags["test_accuracy"]) for v in versions}
    tags, champion, challenger = simulate(accuracies)

    # The rightful champion, by the promise itself: max accuracy, newest among equals.
    best = max(accuracies.values())
    assert champion == max(v for v, a in accuracies.items() if a == best)
    aliases = {CHAMPION: str(champion)}
    if challenger is not None:
        aliases[CHALLENGER] = str(challenger)
    assert client.get_registered_model(name).aliases == aliases, (
        f"aliases wrong for {sorted(accuracies.items())}"
    )

    for version in versions:
        number = int(version.version)
        assert {k: version.tags.get(k) for k in tags[number]} == tags[number], (
            f"tags of version {number} wrong for {sorted(accuracies.items())}"
        )
    assert sum(v.tags.get("decision") == "first champion" for v in versions) == 1

    for registration in registrations:
        number = int(registration.version)
        expected = tags[number]
        assert registration.alias == (
            CHALLENGER if expected["decision"].startswith("challenger") else CHAMPION
        )
        assert registration.test_accuracy == accuracies[number]
        if expected["compared_with_version"] == "none":
            assert (registration.previous_champion, registration.previous_accuracy) == (None, None)
        else:
            assert registration.previous_champion == expected["compared_with_version"]
            assert repr(registration.previous_accuracy) == expected["compared_with_accuracy"]


def delay_alias_writes(monkeypatch: pytest.MonkeyPatch, before: Callable[[], None]) -> None:
    """Run `before` ahead of every alias write: the real write, later."""
    from mlflow import MlflowClient

    original = MlflowClient.set_registered_model_alias

    def set_alias(self, name, alias, version):
        before()
        return original(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", set_alias)


@dataclass(frozen=True)
class Job:
    """One registrar's part in a race; the events order it against the others."""

    accuracy: float
    start_delay: float = 0.0  # after every registrar is at the start line
    pause: float = 0.0  # before its first alias write
    after: object = None  # an event: set off only once it is set
    reached: object = None  # an event to set on reaching its first alias write
    write_after: tuple = ()  # events: make the first alias write only once all are set
    done: object = None  # an event to set when its registration returns


def race_plans(seed: int, repetitions: int, make_event: Callable = threading.Event) -> list:
    """Per repetition, the registrars' jobs. Staircase and random repetitions alternate.

    Staircase: registrar i sets off once registrar i-1 has listed the versions and reached
    its first alias write, and makes that write only once every later registrar is done.
    Each listing misses every later version, and the writes land newest-listing first: the
    first registrar's, decided from its own version alone, comes last. Random: delays.
    """
    rng = seeded(seed)
    plans = []
    for repetition in range(repetitions):
        accuracies = rng.sample(RACE_ACCURACIES, k=REGISTRARS)
        if repetition % 2:
            plans.append(
                [
                    Job(a, rng.uniform(0, MAX_START_DELAY), rng.uniform(0, MAX_PAUSE))
                    for a in accuracies
                ]
            )
            continue
        reached = [make_event() for _ in accuracies]
        done = [make_event() for _ in accuracies]
        plans.append(
            [
                Job(
                    a,
                    after=reached[i - 1] if i else None,
                    reached=reached[i],
                    write_after=tuple(done[i + 1 :]),
                    done=done[i],
                )
                for i, a in enumerate(accuracies)
            ]
        )
    return plans


#: The job the current thread runs, and whether its first alias write is still to come.
current = threading.local()


def wait_for(event) -> None:
    if not event.wait(GATE_TIMEOUT):
        raise TimeoutError("another registrar never got there")


def hold_first_alias_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold back each job's first alias write (the one decided from its first listing) as
    the job says; later rounds go unhindered."""

    def hold():
        job = getattr(current, "job", None)
        if job is None or not current.first_write:
            return
        current.first_write = False
        if job.reached is not None:
            job.reached.set()
        for event in job.write_after:
            wait_for(event)
        time.sleep(job.pause)

    delay_alias_writes(monkeypatch, hold)


def run_job(register: Callable, model_uri: str, name: str, job: Job, start) -> object:
    """Wait at the start line for the other registrars, then register as the job says."""
    current.job, current.first_write = job, True
    start.wait(timeout=GATE_TIMEOUT)
    try:
        if job.after is not None:
            wait_for(job.after)
        time.sleep(job.start_delay)
        return register(model_uri, job.accuracy, name)
    finally:  # never leave the others waiting
        for event in (job.reached, job.done):
            if event is not None:
                event.set()


def race_threads(register: Callable, model_uri: str, name: str, jobs: list[Job]) -> list:
    """The jobs' registrations, run at once on threads of this process."""
    start = threading.Barrier(len(jobs))
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(run_job, register, model_uri, name, j, start) for j in jobs]
        return [future.result(timeout=120) for future in futures]


@pytest.mark.slow
def test_sequential_registrations_keep_todays_behaviour(model_uri, client):
    name = fresh_name("sequential")
    done = [registry.register(model_uri, a, name) for a in (0.9, 0.8, 0.9, EXACT, EXACT, 0.99)]
    assert [r.alias for r in done] == [CHAMPION, CHALLENGER, *[CHAMPION] * 4]
    assert (done[4].previous_champion, done[4].previous_accuracy) == (done[3].version, EXACT)
    assert client.get_model_version(name, done[2].version).tags["test_accuracy"] == "0.9"
    assert registry.champion_version(client, name).version == done[-1].version
    assert registry.champion_version(client, name, CHALLENGER).version == done[1].version
    assert_follows_the_rule(client, name, done)


@pytest.mark.slow
def test_a_stale_alias_write_landing_last_is_undone(model_uri, client, monkeypatch):
    """v1 0.90 is champion. B (0.92) registers v2, decides, and stalls before writing its
    aliases; A (0.95) registers v3 and finishes; then B's stale write lands last."""
    name = fresh_name("stale")
    first = registry.register(model_uri, 0.9, name)
    stalled, a_finished = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def run_b():
        try:
            outcome["b"] = registry.register(model_uri, 0.92, name)
        except Exception as error:  # reported below
            outcome["b"] = error

    b_thread = threading.Thread(target=run_b)

    def before_alias_write():
        if threading.current_thread() is b_thread and not stalled.is_set():
            stalled.set()
            assert a_finished.wait(60), "A never finished"

    delay_alias_writes(monkeypatch, before_alias_write)
    b_thread.start()
    assert stalled.wait(60), "B never reached its alias write"
    a = registry.register(model_uri, 0.95, name)
    a_finished.set()
    b_thread.join(60)
    b = outcome["b"]
    assert isinstance(b, registry.Registration), b
    assert (first.version, b.version, a.version) == ("1", "2", "3")
    assert (b.alias, b.previous_champion) == (CHAMPION, "1")
    assert (a.alias, a.previous_champion) == (CHAMPION, "2")
    assert_follows_the_rule(client, name, [first, b, a])


@pytest.mark.slow
def test_racing_threads_settle_on_the_rule(model_uri, client, monkeypatch):
    hold_first_alias_writes(monkeypatch)
    for jobs in race_plans(2024, THREAD_REPETITIONS):
        name = fresh_name("threads")
        done = race_threads(registry.register, model_uri, name, jobs)
        assert_follows_the_rule(client, name, done)


def process_registrar(tracking_uri: str, work: list, start, results) -> None:
    """One registrar process: its job in each race, in turn."""
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    with pytest.MonkeyPatch.context() as patch:
        hold_first_alias_writes(patch)
        for name, model_uri, job in work:
            try:
                results.put(run_job(registry.register, model_uri, name, job, start))
            except Exception as error:  # reported to the test, which fails
                results.put(f"{name}: {error!r}")


@pytest.mark.slow
def test_racing_processes_settle_on_the_rule(model_uri, client, tracked):
    context = multiprocessing.get_context("forkserver")
    plans = race_plans(7, PROCESS_REPETITIONS, context.Event)
    names = [fresh_name("processes") for _ in plans]
    # Fresh interpreters, forked from one server process that imported MLflow once (eight
    # imports of MLflow cost a minute of CPU on two cores); each registrar has its own
    # interpreter, HTTP connections and MLflow client state.
    context.set_forkserver_preload([__name__])
    start, results = context.Barrier(REGISTRARS), context.Queue()
    processes = [
        context.Process(
            target=process_registrar,
            args=(
                tracked,
                [(n, model_uri, jobs[i]) for n, jobs in zip(names, plans, strict=True)],
                start,
                results,
            ),
            daemon=True,
        )
        for i in range(REGISTRARS)
    ]
    for process in processes:
        process.start()
    try:
        got = [results.get(timeout=180) for _ in range(REGISTRARS * PROCESS_REPETITIONS)]
    except queue.Empty:
        pytest.fail("registrar processes stopped answering")
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    errors = [r for r in got if isinstance(r, str)]
    assert not errors
    for name in names:
        assert_follows_the_rule(client, name, [r for r in got if r.name == name])
