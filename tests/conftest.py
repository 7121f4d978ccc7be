"""Shared fixtures. Tests that need root and tracefs skip on a laptop but fail in CI (CI set)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
TRACEFS = Path("/sys/kernel/tracing")


def unavailable(reason: str) -> None:
    """Skip where the machine cannot run the test; in CI the same condition is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)


def require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        unavailable(f"needs {', '.join(missing)} on PATH")


@pytest.fixture(scope="session")
def tracefs() -> Path:
    """tracefs mounted (mounting it if needed, and unmounting it again after the session)."""
    if os.geteuid() != 0:
        unavailable("needs root for tracefs")
    mounted_here = False
    if not (TRACEFS / "instances").exists():
        result = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True, text=True)
        if result.returncode != 0:
            unavailable(f"cannot mount tracefs: {result.stderr.strip()}")
        mounted_here = True
    yield TRACEFS
    if mounted_here:
        subprocess.run(["umount", str(TRACEFS)], check=False)


@pytest.fixture(scope="session")
def data() -> Path:
    return DATA
