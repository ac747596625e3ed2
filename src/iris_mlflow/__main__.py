"""``python -m iris_mlflow``: the same as ``iris-train``."""

import sys

from iris_mlflow.cli import main

sys.exit(main())
