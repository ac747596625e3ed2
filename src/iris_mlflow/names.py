"""The names the project gives things, in one place: the model's columns and classes, the
experiment runs are logged to, and the registered model with its aliases.

No imports: the CLI reads these before anything heavy loads.
"""

#: Input columns, named by what they measure (all in centimetres).
FEATURES: tuple[str, ...] = ("sepal_length", "sepal_width", "petal_length", "petal_width")
#: Output classes, in the order of the model's probabilities.
SPECIES: tuple[str, ...] = ("setosa", "versicolor", "virginica")

#: The MLflow experiment runs go to unless MLFLOW_EXPERIMENT_NAME or an argument says otherwise.
EXPERIMENT_NAME = "iris-classifier"
#: The registered model every training adds a version to.
REGISTERED_MODEL_NAME = "iris-classifier"
#: Aliases in the registry: the best version by held-out accuracy, and a newer one that lost.
CHAMPION = "champion"
CHALLENGER = "challenger"
