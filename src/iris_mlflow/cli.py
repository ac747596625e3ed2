"""``iris-train``: the notebook's training run, from a terminal."""

from __future__ import annotations

import argparse
import math
import os
import sys

EXIT_BAD_USAGE = 2
EXIT_FAILED = 1


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not the usage block plus the error."""

    def error(self, message: str):
        self.exit(EXIT_BAD_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="iris-train",
        description="Train the iris classifier and track the run in MLflow "
        "(MLFLOW_TRACKING_URI; with none set, a local mlflow.db).",
    )
    parser.add_argument("--epochs", type=_positive_int, default=100)
    parser.add_argument("--batch-size", type=_positive_int, default=16)
    parser.add_argument("--hidden-units", type=_positive_int, default=16)
    parser.add_argument("--learning-rate", type=_positive_float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--test-size", type=_fraction, default=0.2)
    parser.add_argument("--val-size", type=_fraction, default=0.2)
    parser.add_argument(
        "--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    parser.add_argument(
        "--experiment", help="default: $MLFLOW_EXPERIMENT_NAME, else iris-classifier"
    )
    parser.add_argument("--run-name")
    parser.add_argument(
        "--registered-model",
        default="iris-classifier",
        help="register the model under this name (default: %(default)s)",
    )
    parser.add_argument("--no-register", action="store_true", help="do not register the model")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # TensorFlow's C++ start-up chatter is not for this terminal; warnings still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    # Imported after the arguments are checked: a typo answers at once, not after TensorFlow loads.
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    from iris_mlflow.tracking import TrackingServerError  # noqa: PLC0415
    from iris_mlflow.train import TrainingConfig, train  # noqa: PLC0415

    try:
        config = TrainingConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            hidden_units=args.hidden_units,
            learning_rate=args.learning_rate,
            seed=args.seed,
            test_size=args.test_size,
            val_size=args.val_size,
        )
        result = train(
            config,
            tracking_uri=args.tracking_uri,
            experiment_name=args.experiment,
            run_name=args.run_name,
            progress=None if args.quiet else print,
            register_as=None if args.no_register else args.registered_model,
        )
    except (ValueError, TrackingServerError) as error:
        print(f"iris-train: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except MlflowException as error:
        print(f"iris-train: error: MLflow: {error.message.splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("iris-train: interrupted; the run is marked KILLED", file=sys.stderr)
        return 130

    print(f"run id:        {result.run_id}")
    print(f"test accuracy: {result.test_accuracy:.4f}")
    print(f"model:         {result.model_uri}")
    if result.run_url:
        print(f"run:           {result.run_url}")
    if result.registration:
        reg = result.registration
        print(f"registered:    {reg.name} version {reg.version} @{reg.alias}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
