"""``iris-train``: the notebook's training run, from a terminal.

Exit codes: 0 done; 2 a bad argument (usage error); 1 the run could not be made (tracking
server unreachable or not MLflow, an MLflow error); 130 interrupted. Every error is one line
on stderr. Arguments are checked, and the tracking server asked, before TensorFlow loads.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from iris_mlflow.config import ConfigError, TrainingConfig
from iris_mlflow.names import REGISTERED_MODEL_NAME
from iris_mlflow.tracking_server import TrackingServerError, check_server, resolve_tracking_uri

EXIT_BAD_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
PROG = "iris-train"


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not the usage block plus the error."""

    def error(self, message: str):
        self.exit(EXIT_BAD_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The options. Types only parse text; what a value may be is TrainingConfig's to say."""
    defaults = TrainingConfig()
    parser = _OneLineParser(
        prog=PROG,
        description="Train the iris classifier and track the run in MLflow "
        "(MLFLOW_TRACKING_URI; with none set, a local mlflow.db).",
    )
    for knob, kind in (
        ("epochs", int),
        ("batch_size", int),
        ("hidden_units", int),
        ("learning_rate", float),
        ("seed", int),
        ("test_size", float),
        ("val_size", float),
    ):
        parser.add_argument(
            f"--{knob.replace('_', '-')}",
            type=kind,
            default=getattr(defaults, knob),
            help="default: %(default)s",
        )
    parser.add_argument(
        "--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    parser.add_argument(
        "--experiment", help="default: $MLFLOW_EXPERIMENT_NAME, else iris-classifier"
    )
    parser.add_argument("--run-name")
    parser.add_argument(
        "--registered-model",
        default=REGISTERED_MODEL_NAME,
        help="register the model under this name (default: %(default)s)",
    )
    parser.add_argument("--no-register", action="store_true", help="do not register the model")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    return parser


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, TrainingConfig]:
    """The arguments and the run's config; a bad value is a usage error (exit 2, one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
    except ConfigError as error:
        parser.error(f"argument --{error.field.replace('_', '-')}: {error.message}")
    return args, config


def fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args, config = parse(argv)
    try:
        check_server(resolve_tracking_uri(args.tracking_uri))
    except TrackingServerError as error:
        return fail(str(error))

    # TensorFlow's C++ start-up chatter is not for this terminal; warnings still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # A batch MLflow's background logger could not send is reported by train() in one line;
    # the logger's own line per failed batch would only repeat it.
    logging.getLogger("mlflow.utils.async_logging").setLevel(logging.CRITICAL)
    from mlflow.exceptions import MlflowException  # noqa: PLC0415 (heavy: after the checks)

    from iris_mlflow.train import train  # noqa: PLC0415 (imports TensorFlow)

    try:
        result = train(
            config,
            tracking_uri=args.tracking_uri,
            experiment_name=args.experiment,
            run_name=args.run_name,
            progress=None if args.quiet else print,
            register_as=None if args.no_register else args.registered_model,
        )
    except TrackingServerError as error:
        return fail(str(error))
    except MlflowException as error:
        return fail(f"MLflow: {error.message.splitlines()[0]}")
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the run is marked KILLED", file=sys.stderr)
        return EXIT_INTERRUPTED

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
