"""The Model Registry: every trained model becomes a version of ``iris-classifier``; the alias
``champion`` marks the best one by held-out accuracy, ``challenger`` a newer one that lost.

Registry stages are deprecated in MLflow; aliases are what serving resolves
(``models:/iris-classifier@champion``).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from iris_mlflow.names import CHALLENGER, CHAMPION
from iris_mlflow.names import REGISTERED_MODEL_NAME as REGISTERED_MODEL


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str  # CHAMPION or CHALLENGER
    test_accuracy: float
    previous_champion: str | None
    previous_accuracy: float | None


def champion_version(client: MlflowClient, name: str = REGISTERED_MODEL, alias: str = CHAMPION):
    """The version holding the alias (the champion by default), or None when none does yet."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def register(model_uri: str, test_accuracy: float, name: str = REGISTERED_MODEL) -> Registration:
    """Register the model and give it the champion alias if it is at least as accurate as
    the current champion (a tie goes to the newer model), else the challenger alias.
    The comparison is recorded as tags on the new version."""
    client = MlflowClient()
    current = champion_version(client, name)
    previous_accuracy = None
    if current is not None:
        tag = current.tags.get("test_accuracy")
        # A version registered by other means may lack the tag: its run has the metric.
        previous_accuracy = (
            float(tag) if tag else client.get_run(current.run_id).data.metrics["test_accuracy"]
        )

    version = mlflow.register_model(model_uri, name).version
    wins = previous_accuracy is None or test_accuracy >= previous_accuracy
    alias = CHAMPION if wins else CHALLENGER
    tags = {
        # Exact value: a rounded tag would make a tie with this model compare as a loss.
        "test_accuracy": repr(float(test_accuracy)),
        "compared_with_version": current.version if current else "none",
        "compared_with_accuracy": repr(previous_accuracy) if current else "none",
        "decision": (
            "first champion"
            if current is None
            else f"champion: {test_accuracy:.4f} >= {previous_accuracy:.4f}"
            if wins
            else f"challenger: {test_accuracy:.4f} < {previous_accuracy:.4f}"
        ),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, alias, version)
    return Registration(
        name,
        str(version),
        alias,
        test_accuracy,
        current.version if current else None,
        previous_accuracy,
    )
