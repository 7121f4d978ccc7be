"""altair in a process of its own, so that the report's charts cost the analysis no time.

Importing altair and building the report's specs is about 0.6 s of pure Python; in the
analysis's process it holds the GIL that the read and the stages need (docs/performance.md). The
`kptrace analyze` command starts a ChartProcess before its own imports: the child imports altair
(kptrace.export.charts) on the other core meanwhile, and later turns chart inputs into specs.

Whatever goes wrong in the child (altair missing, the process killed, a chart that fails), the
request is built in this process instead: the same specs, or the error raised where it is
reported."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

#: Seconds to wait for the child to leave once its input is closed, before it is killed.
EXIT_WAIT_S = 5


def in_process(inputs: dict[str, dict]) -> dict[str, dict]:
    """The specs of `inputs` built here (kptrace.export.charts.specs)."""
    from kptrace.export.charts import specs

    return specs(inputs)


class ChartProcess:
    """A running `python -m kptrace.export.charts`, asked through `specs` (one request at a time);
    a context manager that ends it. It runs the kptrace this process imported: it starts in the
    directory that holds it, which `-m` puts first on its path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        try:
            self._process = subprocess.Popen([sys.executable, "-m", "kptrace.export.charts"],
                                             cwd=Path(__file__).resolve().parents[2], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:
            self._process = None  # no process to start (out of processes or memory): built in-process

    def specs(self, inputs: dict[str, dict]) -> dict[str, dict]:
        """The Vega-Lite spec of each chart in `inputs` (chart inputs by chart id), built by the child
        when it can, else here."""
        with self._lock:
            answer = self._asked(inputs)
        return answer["specs"] if answer is not None and "specs" in answer else in_process(inputs)

    def _asked(self, inputs: dict[str, dict]) -> dict | None:
        """The child's answer, or None once it cannot give one (it is then no longer asked)."""
        if self._process is None:
            return None
        try:
            self._process.stdin.write(json.dumps(inputs).encode() + b"\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
            return json.loads(line)
        except (OSError, ValueError):  # a broken pipe, or no whole answer: the child has gone
            self.close()
            return None

    def close(self) -> None:
        if self._process is None:
            return
        process, self._process = self._process, None
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            process.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> ChartProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
