"""Shared fixtures. Tests that need root, tracefs or tools skip on a laptop but fail in CI (CI set).

In CI no test may skip at all: a plain `pytest.skip` that bypasses `unavailable` is turned into
a failure too, so that a run cannot pass by leaving tests out.
"""

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


def _fail_skips_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip (not an expected failure) into a failure when CI is set."""
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"CI runs every test, but this one skipped: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_skips_in_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    _fail_skips_in_ci(report)
    return report


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
