"""Commands as users run them, each in a fresh interpreter: `python -m factory.cli ...` (`factory`), or any
`python ...` (`python`), output captured as text.

Rich writes plain text there: no colour codes (NO_COLOR) and lines as wide as COLUMNS, so that what a test
looks for is not wrapped. Tests import these by name (tests/ is on sys.path), e.g. `from commands import factory`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def plain_env(columns: int = 200) -> dict[str, str]:
    """This process's environment, with rich's output plain and `columns` wide."""
    return {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}


def python(
    *args: str, cwd: Path | str | None = None, columns: int = 200, env: dict[str, str] | None = None, **options
) -> subprocess.CompletedProcess:
    """`python ARGS` in `cwd`; `env` replaces the plain environment; options go to subprocess.run (input, timeout)."""
    env = plain_env(columns) if env is None else env
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, **options)


def factory(*args: str, **options) -> subprocess.CompletedProcess:
    """`factory ARGS` (as `python -m factory.cli ARGS`); options as for `python`."""
    return python("-m", "factory.cli", *args, **options)
