"""Shared test fixtures: the repository root and a subprocess runner with the package importable."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO_ROOT


def run_python(args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (or a module via ``['-m', ...]``) in a fresh process; output captured."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **(env or {}))
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd or REPO_ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='session')
def python_process():
    """The :func:`run_python` helper, as a fixture."""
    return run_python
