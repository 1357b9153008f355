"""Shared pytest fixtures for stquant's Python tests."""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def build_dir() -> Path:
    """The CMake build tree: $STQUANT_BUILD_DIR (relative paths are taken from the repository
    root, as scripts/test passes "build"), default <repo>/build."""
    path = Path(os.environ.get("STQUANT_BUILD_DIR", REPO_ROOT / "build"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_dir():
        pytest.fail(f"build directory {path} does not exist (set STQUANT_BUILD_DIR)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def stquant(build_dir: Path) -> Path:
    """The stquant executable of the build tree."""
    path = build_dir / "stquant"
    if not path.is_file():
        pytest.fail(f"{path} does not exist (build the stquant_cli target)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout: golden vectors and tiny Hugging Face fixtures."""
    path = REPO_ROOT.parent / "shared"
    if not path.is_dir():
        pytest.fail(f"{path} does not exist (CI and developers have shared/ beside the repository)")
    return path
