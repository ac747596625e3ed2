"""The Model Registry: every trained model becomes a version of ``iris-classifier``; the alias
``champion`` marks the best one by held-out accuracy, ``challenger`` a newer one that lost.

Registry stages are deprecated in MLflow; aliases are what serving resolves
(``models:/iris-classifier@champion``).

The rule, as users are promised it: taken in version order, a version becomes champion when
its test accuracy is at least the champion's before it (a tie goes to the newer version), and
challenger otherwise. Trainings may register at the same time and MLflow has no
compare-and-set for aliases, so the rule is a pure function of the list of versions
(:func:`verdicts`, :func:`decide`) and :func:`register` applies it until it holds; see there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from iris_mlflow.names import CHALLENGER, CHAMPION, REGISTERED_MODEL_NAME

__all__ = [
    "ACCURACY_TAG",
    "Candidate",
    "Decision",
    "Registration",
    "RegistrationError",
    "Verdict",
    "candidates",
    "champion_version",
    "decide",
    "list_candidates",
    "register",
    "set_alias",
    "verdicts",
]

#: The version tag holding a version's exact test accuracy, written with the version itself.
ACCURACY_TAG = "test_accuracy"
#: Rounds of write-aliases-then-list one registration may take before giving up.
MAX_ROUNDS = 20
#: Tries of one alias write that collides with another registrar's first write of it.
ALIAS_WRITE_ATTEMPTS = 3
#: Versions per page when listing a registered model's versions.
PAGE_SIZE = 1000


class RegistrationError(RuntimeError):
    """The version was created but its aliases could not be settled."""


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str  # this version's own decision: CHAMPION or CHALLENGER
    test_accuracy: float
    previous_champion: str | None
    previous_accuracy: float | None


@dataclass(frozen=True, order=True)
class Candidate:
    """A version that takes part in the rule: one with an accuracy tag."""

    version: int
    accuracy: float


@dataclass(frozen=True)
class Verdict:
    """What the rule made of one version, judged against the versions before it only."""

    version: int
    accuracy: float
    alias: str  # CHAMPION or CHALLENGER
    compared_with: Candidate | None  # the champion among the earlier versions, if any

    @property
    def decision(self) -> str:
        if self.compared_with is None:
            return "first champion"
        mine, theirs = self.accuracy, self.compared_with.accuracy
        if self.alias == CHAMPION:
            return f"champion: {mine:.4f} >= {theirs:.4f}"
        return f"challenger: {mine:.4f} < {theirs:.4f}"

    @property
    def tags(self) -> dict[str, str]:
        """The version tags that explain the verdict."""
        previous = self.compared_with
        return {
            "compared_with_version": str(previous.version) if previous else "none",
            "compared_with_accuracy": repr(previous.accuracy) if previous else "none",
            "decision": self.decision,
        }


@dataclass(frozen=True)
class Decision:
    """Which versions the aliases belong on (None: the alias is not given)."""

    champion: int | None
    challenger: int | None


def parse_accuracy(value: str | None) -> float | None:
    """A tag's accuracy, or None when it is missing or not a finite number."""
    try:
        accuracy = float(value)  # None: TypeError
    except (TypeError, ValueError):
        return None
    return accuracy if math.isfinite(accuracy) else None


def candidates(versions: Iterable[ModelVersion]) -> tuple[Candidate, ...]:
    """The versions with an accuracy tag, in version order; the others (registered by other
    means) take no part in the rule."""
    found: dict[int, Candidate] = {}
    for version in versions:
        accuracy = parse_accuracy(version.tags.get(ACCURACY_TAG))
        if accuracy is not None:
            found[int(version.version)] = Candidate(int(version.version), accuracy)
    return tuple(sorted(found.values()))


def verdicts(listing: Sequence[Candidate]) -> list[Verdict]:
    """The sequential rule over versions in version order: a version is champion when its
    accuracy is at least that of the champion before it, else challenger.

    The champion before version j is the max by (accuracy, version) of the versions < j, so
    the verdict of j depends on those versions only, whatever else the list holds.
    """
    champion: Candidate | None = None
    found = []
    for candidate in sorted(listing):
        wins = champion is None or candidate.accuracy >= champion.accuracy
        alias = CHAMPION if wins else CHALLENGER
        found.append(Verdict(candidate.version, candidate.accuracy, alias, champion))
        if wins:
            champion = candidate
    return found


def decide(listing: Sequence[Candidate]) -> Decision:
    """Champion: the max by (accuracy, version), i.e. the newest among the most accurate.
    Challenger: the newest version that lost to the champion of its day."""
    found = verdicts(listing)
    champions = [v.version for v in found if v.alias == CHAMPION]
    challengers = [v.version for v in found if v.alias == CHALLENGER]
    return Decision(champions[-1] if champions else None, challengers[-1] if challengers else None)


def champion_version(
    client: MlflowClient, name: str = REGISTERED_MODEL_NAME, alias: str = CHAMPION
):
    """The version holding the alias (the champion by default), or None when none does yet."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def list_candidates(client: MlflowClient, name: str) -> tuple[Candidate, ...]:
    """Every candidate version of the registered model, read through all pages.

    Ordered by version number, so an offset page token stays valid while versions are added
    (they append at the end).
    """
    if "'" in name and '"' in name:
        raise ValueError(f"cannot search the versions of a model named {name!r}")
    quoted = f'"{name}"' if "'" in name else f"'{name}'"
    versions: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(
            f"name = {quoted}",
            max_results=PAGE_SIZE,
            order_by=["version_number ASC"],
            page_token=token,
        )
        versions.extend(v for v in page if v.name == name)
        token = page.token
        if not token:
            return candidates(versions)


def set_alias(client: MlflowClient, name: str, alias: str, version: int) -> None:
    """Point the alias at the version, however many registrars write it at once.

    The SQL store writes an alias as read-then-insert-or-update: two first writes of one alias
    at the same moment make the later insert fail on the unique key (400 BAD_REQUEST, which
    MLflow's client does not retry). The row exists by then, so writing again updates it.
    """
    for attempt in range(ALIAS_WRITE_ATTEMPTS):
        try:
            client.set_registered_model_alias(name, alias, str(version))
            return
        except MlflowException as error:
            if error.error_code != "BAD_REQUEST" or attempt == ALIAS_WRITE_ATTEMPTS - 1:
                raise


def register(
    model_uri: str, test_accuracy: float, name: str = REGISTERED_MODEL_NAME
) -> Registration:
    """Register the model as a new version and settle the aliases by the rule: champion when
    it is at least as accurate as the champion before it (a tie goes to the newer version),
    else challenger. Safe when several trainings register at once.

    1. The version is created with its exact accuracy as a tag in the same call; the SQL store
       writes both in one transaction, so whoever sees the version sees its accuracy. It
       numbers the version (highest + 1) in that transaction after updating the registered
       model's row, so versions commit in number order: a listing holding version j holds
       every version below j.
    2. Every version is listed and :func:`verdicts` gives this version's verdict, written as
       its tags. It depends only on the versions below it, which a listing holds in full and
       which do not change: the tags are true whatever the interleaving, and only the first
       candidate says "first champion".
    3. The aliases :func:`decide` gives are written, then the versions are listed again; when
       the new listing decides otherwise (versions arrived), the aliases are rewritten, and so
       on until a listing confirms what was last written (at most :data:`MAX_ROUNDS`).

    Why the aliases end right whatever the interleaving: a registrar stops only when a listing
    taken after its last alias writes decides what they wrote. The registrar of the newest
    version writes the decision of the full list, after that version exists. So the last
    write of either alias overall comes after the newest version exists, and the listing
    that confirmed it, later still, held every version: it wrote the full list's decision.
    (A challenger, once some listing names one, is named by every longer listing, so the
    newest registrar writes the challenger too whenever anyone does.) Writes are idempotent;
    only the last one counts.

    Cost in HTTP calls for a lone training: 5 for ``register_model`` (registered model,
    version, and the logged model's link to it), 1 listing, 3 tags and 1-2 aliases (MLflow's
    client reads the registered model before each such write, so 8-10), 1 confirming
    listing: 15-17 (the rule before this one took 16). Racing registrations add a round of
    alias writes and a listing for the registrars that listed before them.

    Outside the rule: deleting versions or moving aliases by hand (the next registration sets
    the aliases from the versions then present), and a server reading from a lagging replica
    (``--read-replica-backend-store-uri``), whose listings may miss committed versions.
    """
    accuracy = float(test_accuracy)
    if not math.isfinite(accuracy):
        raise ValueError(f"test accuracy must be a finite number, got {test_accuracy!r}")
    client = MlflowClient()
    created = mlflow.register_model(model_uri, name, tags={ACCURACY_TAG: repr(accuracy)})
    version = int(created.version)

    listing = list_candidates(client, name)
    mine = next((v for v in verdicts(listing) if v.version == version), None)
    if mine is None:
        raise RegistrationError(f"version {version} of {name} is missing from its own listing")
    for key, value in mine.tags.items():
        client.set_model_version_tag(name, str(version), key, value)

    decision = decide(listing)
    for _ in range(MAX_ROUNDS):
        set_alias(client, name, CHAMPION, decision.champion)
        if decision.challenger is not None:
            set_alias(client, name, CHALLENGER, decision.challenger)
        confirmed = decide(list_candidates(client, name))
        if confirmed == decision:
            break
        decision = confirmed
    else:
        raise RegistrationError(
            f"version {version} of {name} was created, but its aliases did not settle in "
            f"{MAX_ROUNDS} rounds: versions kept arriving; the next registration settles them"
        )

    previous = mine.compared_with
    return Registration(
        name,
        str(version),
        mine.alias,
        accuracy,
        str(previous.version) if previous else None,
        previous.accuracy if previous else None,
    )
