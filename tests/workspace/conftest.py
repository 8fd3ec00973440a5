"""Fixtures of the workspace tests: the upstream test data next to the repository.

The repository is cloned next to ``shared/`` (CI and the lead's checkout); a worktree may sit
deeper, so the ancestors are searched. Missing data fails the tests rather than skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_testdata() -> Path:
    explicit = os.environ.get("STOCKADE_SHARED_TESTDATA")
    if explicit:
        return Path(explicit)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "testdata"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("shared/testdata not found beside the repository (see its README)")


@pytest.fixture(scope="session")
def testdata() -> Path:
    return shared_testdata()


@pytest.fixture(scope="session")
def crd_schemas(testdata: Path) -> Path:
    return testdata / "crd-schemas"
