"""``python -m iris_mlflow.serving``: the model server (:mod:`iris_mlflow.serving.server`)."""

import sys

from iris_mlflow.serving.server import main

sys.exit(main())
