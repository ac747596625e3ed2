"""The project's own hygiene: lint, and requirements files that match the lock."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def test_ruff_is_clean():
    done = subprocess.run(
        [BIN / "ruff", "check", "--no-cache", "."], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_is_applied():
    done = subprocess.run(
        [BIN / "ruff", "format", "--check", "--no-cache", "."],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_notebook_passes_nbqa_pycodestyle():
    """The same PEP 8 check users run in cells with pycodestyle_magic, over the whole notebook."""
    done = subprocess.run(
        [BIN / "nbqa", "pycodestyle", "src/iris_training.ipynb"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def poetry() -> str:
    found = os.environ.get("POETRY") or shutil.which("poetry")
    if not found:
        pytest.skip("poetry is not installed (set POETRY to its path)")
    return found


@pytest.mark.parametrize(
    ("target", "groups"),
    [
        ("jupyter-notebook-docker/requirements.txt", "main,notebook"),
        ("mlflow-docker/requirements.txt", "server"),
    ],
)
def test_requirements_files_match_the_lock(target, groups, tmp_path):
    """The images install exactly what poetry.lock says; `make requirements` regenerates them."""
    fresh = tmp_path / "requirements.txt"
    done = subprocess.run(
        [
            poetry(),
            "export",
            "--only",
            groups,
            "--format",
            "requirements.txt",
            "--output",
            str(fresh),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (ROOT / target).read_text() == fresh.read_text(), (
        f"{target} is out of date with poetry.lock: run `make requirements`"
    )
    assert "--hash=sha256:" in fresh.read_text()


def test_lock_matches_pyproject():
    done = subprocess.run(
        [poetry(), "check", "--lock"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
