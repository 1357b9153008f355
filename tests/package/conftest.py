"""Tests of the installed Python package (the wheel), run by scripts/test-wheel: `stquant` must be
imported from the wheel installed in a fresh virtual environment ($STQUANT_WHEEL_VENV), never from
the source tree."""
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def wheel_venv() -> Path:
    path = os.environ.get("STQUANT_WHEEL_VENV")
    if not path:
        pytest.fail("STQUANT_WHEEL_VENV is not set: run these tests through scripts/test-wheel")
    return Path(path)


@pytest.fixture(scope="session")
def stquant_module(wheel_venv):
    import stquant

    assert Path(stquant.__file__).resolve().is_relative_to(wheel_venv.resolve()), stquant.__file__
    return stquant


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = REPO_ROOT.parent / "shared"
    if not path.is_dir():
        pytest.fail(f"{path} does not exist")
    return path


@pytest.fixture(scope="session")
def cli_binary() -> Path:
    """The C++ executable of the Release build, to compare the wheel's `stquant` command with."""
    path = REPO_ROOT / os.environ.get("STQUANT_BUILD_DIR", "build") / "stquant"
    if not path.is_file():
        pytest.fail(f"{path} does not exist")
    return path
