"""The errors kptrace raises for bad input (TraceError) and for an incomplete kptrace itself
(SetupError); the CLI prints each as a single line."""

from __future__ import annotations

import importlib
from pathlib import Path


class TraceError(Exception):
    """Input kptrace cannot use, named with its file and what was expected."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class SetupError(Exception):
    """kptrace itself is incomplete where it runs (its compiled part not built), not the input."""


def compiled_part(module: str, what: str) -> tuple:
    """kptrace's compiled (cffi) `module` as its (ffi, lib), or a SetupError that names it as
    `what` when it is not built."""
    try:
        loaded = importlib.import_module(module)
    except ImportError:
        raise SetupError(f"kptrace's compiled {what} is not built (pip install kptrace, or "
                         "python kptrace/build_compiled.py in a source checkout)") from None
    return loaded.ffi, loaded.lib
