"""Models-from-code entry point: MLflow stores this file with the logged model and runs it
to build the model when loading, instead of unpickling an object (MLflow's recommended way)."""

from mlflow.models import set_model

from iris_mlflow.serving.model import IrisClassifier

set_model(IrisClassifier())
