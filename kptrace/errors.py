"""The one error type kptrace raises for bad input; the CLI prints it as a single line."""

from __future__ import annotations

from pathlib import Path


class TraceError(Exception):
    """Input kptrace cannot use, named with its file and what was expected."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
