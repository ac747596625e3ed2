"""The project's own hygiene: lint, and requirements files that match the lock."""

from __future__ import annotations

import os
import re
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
        ("model-server-docker/requirements.txt", "serving"),
        ("jupyter-notebook-docker/requirements-build.txt", "build"),
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


def test_stock_poetry_2_can_export_and_the_python_range_is_the_locks():
    """Poetry 2 dropped the bundled `export`: the project declares the plugin, so a plain
    Poetry 2 installs it. The Python range the project states is exactly the lock's."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    plugins = project["tool"]["poetry"]["requires-plugins"]
    assert "poetry-plugin-export" in plugins
    lock = tomllib.loads((ROOT / "poetry.lock").read_text())
    assert project["project"]["requires-python"] == lock["metadata"]["python-versions"]
    assert f"Python {lock['metadata']['python-versions']}" in (ROOT / "README.md").read_text()


def test_lock_matches_pyproject():
    done = subprocess.run(
        [poetry(), "check", "--lock"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_the_stable_layer_holds_tensorflow_and_its_dependencies_only():
    """What the jupyter image installs in its first layer: entries copied whole (hashes too)."""
    requirements = (ROOT / "jupyter-notebook-docker/requirements.txt").read_text()
    done = script(
        "requirements-closure.py",
        "poetry.lock",
        "jupyter-notebook-docker/requirements.txt",
        "tensorflow-cpu",
    )
    assert done.returncode == 0, done.stderr
    names = {line.split("==")[0] for line in done.stdout.splitlines() if "==" in line}
    assert {"tensorflow-cpu", "keras", "numpy", "h5py", "protobuf"} <= names
    assert not {"jupyterlab", "mlflow-skinny", "papermill"} & names
    for entry in re.split(r"\n(?=\S)", done.stdout.strip()):
        assert "--hash=sha256:" in entry
        assert entry in requirements


def test_the_closure_of_an_unknown_package_is_refused():
    done = script("requirements-closure.py", "poetry.lock", "mlflow-docker/requirements.txt", "x")
    assert done.returncode == 1
    assert done.stderr.strip() == "requirements-closure: none of x is in poetry.lock"


def tiny_wheel(directory: Path, version: str) -> Path:
    """A wheel of a one-module package, made by hand: no index and no build backend needed."""
    import base64
    import hashlib
    import zipfile

    name = f"irisprobe-{version}"
    files = {
        "irisprobe.py": f"VERSION = {version!r}\n",
        f"{name}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: irisprobe\nVersion: {version}\n"
        ),
        f"{name}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }

    def digest(text: str) -> str:
        raw = hashlib.sha256(text.encode()).digest()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    record = [f"{path},sha256={digest(text)},{len(text)}" for path, text in files.items()]
    files[f"{name}.dist-info/RECORD"] = "\n".join([*record, f"{name}.dist-info/RECORD,,"]) + "\n"
    wheel = directory / f"irisprobe-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def test_install_requirements_takes_pinned_files_from_the_store_only(tmp_path):
    """A stored file is installed without any index; a file whose hash the lock does not pin
    is never used (here it must be downloaded, and the index has no such package)."""
    import hashlib

    store = tmp_path / "store"
    store.mkdir()
    pinned = tiny_wheel(store, "1.0")
    digest = hashlib.sha256(pinned.read_bytes()).hexdigest()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    requirements = tmp_path / "requirements.txt"

    requirements.write_text(f"irisprobe==1.0 \\\n    --hash=sha256:{digest}\n")
    done = subprocess.run(
        [python, ROOT / "scripts/install-requirements.py", requirements, store],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PIP_INDEX_URL": "http://127.0.0.1:9/simple"},  # nothing listens
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 requirements; 0 file(s) downloaded" in done.stdout
    version = subprocess.run(
        [python, "-c", "import irisprobe; print(irisprobe.VERSION)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert version.stdout.strip() == "1.0"

    requirements.write_text(f"irisprobe==1.0 --hash=sha256:{'0' * 64}\n")
    refused = subprocess.run(
        [python, ROOT / "scripts/install-requirements.py", requirements, store],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0"},
    )  # fmt: skip
    assert refused.returncode != 0
    assert sorted(p.name for p in store.glob("*.whl")) == [pinned.name]


def test_install_requirements_refuses_an_unpinned_file(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("requests==2.0\n")
    done = script("install-requirements.py", str(requirements), str(tmp_path / "store"))
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == f"install-requirements: {requirements}: not hash-pinned: requests==2.0"
    )


def test_readme_screenshots_are_the_browser_tests():
    """`make screenshots` copies the browser test's shots over docs/img: every image the README
    shows is one the test takes, under the same name, so none can go stale unnoticed."""
    readme = (ROOT / "README.md").read_text()
    shown = set(re.findall(r"docs/img/([\w-]+)\.png", readme))
    taken = set(
        re.findall(r'shot\(page, "\d+-([\w-]+)"\)', (ROOT / "tests/test_browser.py").read_text())
    )
    refreshed = set(
        re.search(r"^SCREENSHOTS := (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
        .group(1)
        .split()
    )
    assert shown
    assert shown == refreshed
    assert shown <= taken
    assert all((ROOT / "docs/img" / f"{name}.png").is_file() for name in shown)


def test_the_sign_in_cache_was_written_for_the_locked_mlflow():
    """mlflow-docker/sign_in_cache.py replaces a function of MLflow's sign-in app and wraps its
    user store, and refuses to start a server with another MLflow: an MLflow upgrade in the
    lock fails here first, and someone reads the file again against the new sign-in app."""
    lock = (ROOT / "poetry.lock").read_text()
    (locked,) = re.findall(r'^name = "mlflow"\nversion = "([^"]+)"$', lock, re.M)
    cache_source = (ROOT / "mlflow-docker" / "sign_in_cache.py").read_text()
    (written_for,) = re.findall(r'^MLFLOW_VERSION = "([^"]+)"$', cache_source, re.M)
    assert written_for == locked
