"""The knobs of a training run, and the one place where their values are checked.

No heavy imports: ``iris-train`` checks its arguments here before TensorFlow loads, so a
typo is answered at once, and the notebook gets the same messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

#: The largest learning rate accepted: Adam diverges on this problem far below it, and a
#: larger number is nearly always a typo (20 for 0.02).
MAX_LEARNING_RATE = 10.0


class ConfigError(ValueError):
    """A value a training run cannot use; ``field`` names the knob."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _whole(value: object, minimum: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be a whole number, got {value!r}"
    if value < minimum:
        return f"must be at least {minimum}, got {value}"
    return None


def _learning_rate(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if not 0 < value <= MAX_LEARNING_RATE:
        return f"must be in (0, {MAX_LEARNING_RATE:g}], got {value!r}"
    return None


def _fraction(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        return f"must be a fraction between 0 and 1, got {value!r}"
    return None


@dataclass(frozen=True)
class TrainingConfig:
    """The knobs of one training run; each one is logged as a run parameter."""

    epochs: int = 100
    batch_size: int = 16
    hidden_units: int = 16
    learning_rate: float = 0.01
    seed: int = 42
    test_size: float = 0.2
    val_size: float = 0.2

    def __post_init__(self) -> None:
        checks = {
            "epochs": lambda v: _whole(v, 1),
            "batch_size": lambda v: _whole(v, 1),
            "hidden_units": lambda v: _whole(v, 1),
            "learning_rate": _learning_rate,
            "seed": lambda v: _whole(v, 0),
            "test_size": _fraction,
            "val_size": _fraction,
        }
        for knob in fields(self):
            problem = checks[knob.name](getattr(self, knob.name))
            if problem:
                raise ConfigError(knob.name, problem)
