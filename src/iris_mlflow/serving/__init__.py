"""Serving the classifier: the logged model and the HTTP server that answers with it.

What runs where:

- :mod:`~iris_mlflow.serving.network` -- the NumPy forward pass. At log time (the training
  process, with Keras) it exports the network's layers to a JSON spec and an ``.npz`` of
  weights; wherever the model is loaded (model server, notebook) it evaluates them with NumPy.
- :mod:`~iris_mlflow.serving.model` -- the logged MLflow pyfunc model: its signature, the
  checks a request must pass, and :func:`~iris_mlflow.serving.model.log_classifier`.
- :mod:`~iris_mlflow.serving.model_code` -- the models-from-code file MLflow stores with the
  model and runs to build it when loading.
- :mod:`~iris_mlflow.serving.server` -- the model server process (``python -m
  iris_mlflow.serving``): one Starlette app on uvicorn that holds the registry's champion in
  memory and swaps in a new one when the alias moves.
- :mod:`~iris_mlflow.serving.client` -- asking a model server for species, from a notebook or
  a script.

Nothing here imports TensorFlow or Keras except ``log_classifier``/``export_network``, which
run in the training process.
"""
