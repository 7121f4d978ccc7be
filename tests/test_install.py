"""The suite tests this checkout's kptrace, not some other copy installed on the machine.

`python -m pytest` puts the working directory on sys.path, so an in-process import proves
little; the checks that matter start a fresh interpreter (and the `kptrace` command) outside
the checkout, where only the editable install or PYTHONPATH can lead back to it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kptrace

REPO = Path(__file__).resolve().parents[1]
WHERE = "import kptrace, sys; sys.stdout.write(kptrace.__file__)"


def package_root(init_file: str) -> Path:
    """The folder holding the `kptrace` package, from its `__init__.py`."""
    return Path(init_file).resolve().parents[1]


def test_the_tests_import_kptrace_from_this_checkout():
    assert package_root(kptrace.__file__) == REPO


def test_a_fresh_interpreter_outside_the_checkout_imports_this_checkout(tmp_path):
    """What the CLI subprocesses and users get: the editable install (or PYTHONPATH) points here."""
    found = subprocess.run([sys.executable, "-c", WHERE], cwd=tmp_path, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert package_root(found.stdout) == REPO, f"kptrace imported from {found.stdout}, not {REPO}"


def test_the_kptrace_command_runs_this_checkout(tmp_path):
    """The `kptrace` command (whatever wraps it: a console script, a pyenv shim) loads this
    checkout's package, as Python's verbose import log shows, and the command works."""
    command = shutil.which("kptrace")
    assert command, "no `kptrace` on PATH: the editable install (pip install -e .) did not run"
    run = subprocess.run([command, "--help"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONVERBOSE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = {Path(path).resolve() for path in re.findall(r"(/\S+)/kptrace/__init__\.py", run.stderr)}
    assert loaded == {REPO}, f"`kptrace` loaded the package from {loaded}, not {REPO}"
    assert all(name in run.stdout for name in ("record", "ingest", "analyze", "simulate")), run.stdout


SKIPPING_MODULE = """
import pytest
pytest.importorskip("a_module_that_is_not_installed")
"""
SKIPPING_TEST = """
import pytest

def test_skips():
    pytest.skip("a plain skip, not through conftest.unavailable")

@pytest.mark.xfail(reason="known gap", strict=True)
def test_known_gap():
    assert 1 + 1 == 3

def test_passes():
    assert sum([1, 2]) == 3
"""


def run_pytest_with_our_conftest(tmp_path: Path, source: str, ci: bool) -> subprocess.CompletedProcess:
    """pytest on one small file outside tests/, with tests/conftest.py loaded as a plugin."""
    (tmp_path / "test_small.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rA",
                           "test_small.py"], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_in_ci_a_plain_skip_fails_but_an_expected_failure_does_not(tmp_path):
    run = run_pytest_with_our_conftest(tmp_path, SKIPPING_TEST, ci=True)
    assert run.returncode == 1, run.stdout
    assert "CI runs every test, but this one skipped: Skipped: a plain skip" in run.stdout
    assert re.search(r"\b1 failed, 1 passed, 1 xfailed\b", run.stdout), run.stdout


def test_in_ci_a_module_skipped_at_import_fails(tmp_path):
    run = run_pytest_with_our_conftest(tmp_path, SKIPPING_MODULE, ci=True)
    assert run.returncode != 0, run.stdout
    assert "CI runs every test, but this one skipped: Skipped: could not import" in run.stdout


def test_outside_ci_a_skip_is_only_a_skip(tmp_path):
    run = run_pytest_with_our_conftest(tmp_path, SKIPPING_TEST, ci=False)
    assert run.returncode == 0, run.stdout
    assert re.search(r"\b1 passed, 1 skipped, 1 xfailed\b", run.stdout), run.stdout
    run = run_pytest_with_our_conftest(tmp_path, SKIPPING_MODULE, ci=False)
    assert run.returncode == pytest.ExitCode.NO_TESTS_COLLECTED and "1 skipped" in run.stdout, run.stdout


def test_a_source_tree_without_its_compiled_reader_says_so_in_one_line(tmp_path):
    """kptrace run from a source tree whose pages.c was never built (PYTHONPATH, no install):
    reading a binary trace ends in one error line saying how to build it, exit 1, no traceback."""
    import zstandard

    tree = tmp_path / "src"
    shutil.copytree(REPO / "kptrace", tree / "kptrace", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    trace = tmp_path / "v6.dat"
    trace.write_bytes(zstandard.ZstdDecompressor().stream_reader(
        open(REPO / "tests" / "data" / "binary" / "v6.dat.zst", "rb")).read())
    r = subprocess.run([sys.executable, "-m", "kptrace.cli", "analyze", str(trace), "-o", str(tmp_path / "out")],
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == ["kptrace: error: kptrace's compiled page reader is not built (pip install "
                                     "kptrace, or python kptrace/build_compiled.py in a source checkout)"]


def test_building_in_place_makes_every_compiled_part_and_drops_a_stale_copy(tmp_path):
    """`python kptrace/build_compiled.py` in a source tree: each module as pip names it
    (NAME.abi3.so), a copy under Python's preferred suffix (which would be loaded instead) removed,
    and the tree then reads a binary trace."""
    import sysconfig

    tree = tmp_path / "src"
    shutil.copytree(REPO / "kptrace", tree / "kptrace", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    stale = tree / "kptrace" / "whatif" / f"_steps{sysconfig.get_config_var('EXT_SUFFIX')}"
    stale.write_bytes(b"not a module")
    built = subprocess.run([sys.executable, str(tree / "kptrace" / "build_compiled.py")], cwd=tmp_path,
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.so")) == [
        "kptrace/_resample.abi3.so", "kptrace/export/_packets.abi3.so", "kptrace/read/_pages.abi3.so",
        "kptrace/whatif/_steps.abi3.so"]
    import zstandard

    trace = tmp_path / "v6.dat"
    trace.write_bytes(zstandard.ZstdDecompressor().stream_reader(
        open(REPO / "tests" / "data" / "binary" / "v6.dat.zst", "rb")).read())
    r = subprocess.run([sys.executable, "-m", "kptrace.cli", "ingest", str(trace), "-o", str(tmp_path / "out")],
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
