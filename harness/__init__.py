"""Real parts for the tests and the benchmarks: processes on loopback, a real ``mlflow server``,
the project's compose stack on a real Docker engine. No mocks.

Both ``tests/`` and ``bench/`` import from here; neither imports from the other.
"""

from pathlib import Path

#: The repository's root folder.
ROOT = Path(__file__).resolve().parents[1]
