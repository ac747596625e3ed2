"""The notebook, executed headless by papermill against a real server, logs a complete run."""

from __future__ import annotations

import json

import nbformat
import papermill
import pytest

from harness.processes import free_port
from tests.conftest import ROOT, assert_complete_run, only_run

NOTEBOOK = ROOT / "src" / "iris_training.ipynb"


def error_outputs(notebook) -> list[str]:
    return [
        f"{out.ename}: {out.evalue}"
        for cell in notebook.cells
        for out in cell.get("outputs", [])
        if out.output_type == "error"
    ]


@pytest.mark.slow
def test_notebook_runs_and_logs_a_complete_run(mlflow_server, client, experiment_name, tmp_path):
    """Run All completes and logs a whole run; with no model server it says so in one line."""
    closed = f"http://127.0.0.1:{free_port()}"
    executed = papermill.execute_notebook(
        NOTEBOOK,
        tmp_path / "executed.ipynb",
        parameters={
            "EPOCHS": 3,
            "TRACKING_URI": mlflow_server,
            "EXPERIMENT_NAME": experiment_name,
            # No model server listens there (as with `docker compose up jupyter mlflow`).
            "MODEL_SERVER_URL": closed,
        },
        cwd=tmp_path,
        kernel_name="python3",
        progress_bar=False,
    )
    assert error_outputs(executed) == []
    run = only_run(client, experiment_name)
    assert_complete_run(client, run.info.run_id, epochs=3)
    text = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert f"run {run.info.run_id}: test accuracy" in text
    assert "held-out flowers, same species from both" in text
    no_server = (
        f"no model server answers at {closed} (connection refused); "
        "start one with `docker compose up -d model-server`"
    )
    assert text.count("no model server") == 1
    assert no_server in text
    # Plots render inline.
    assert sum("image/png" in json.dumps(c.get("outputs", [])) for c in executed.cells) >= 3


def test_notebook_is_committed_clean_with_one_parameters_cell():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "outputs are committed"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert "EPOCHS = " in tagged[0].source
