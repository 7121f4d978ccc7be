"""`kptrace fleet`: many inputs (bundles, trace files, directories of them) analysed in parallel as
Dask tasks, each into its own folder, then gathered into fleet tables, fleet.json and fleet.html
(docs/fleet.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kptrace.fleet.run import FleetError, run_fleet
from kptrace.fleet.tasks import expand_inputs

__all__ = ["FleetError", "main", "run_fleet"]

#: The exit code of a run stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def main(paths: list[Path], out: Path, scheduler: str | None, workers: int | None, as_json: bool) -> int:
    """The `kptrace fleet` command: run, print the rankings (or fleet.json), return the exit code:
    0 all inputs analysed, 1 some failed or the fleet could not run, 130 interrupted."""
    from kptrace.fleet.report import render_fleet_text

    if workers is not None and workers < 1:
        print("kptrace: error: --workers must be at least 1", file=sys.stderr)
        return 2
    missing = [str(path) for path in paths if not path.exists()]
    try:
        if missing:
            raise FleetError(f"no such input: {', '.join(missing)}")
        summary, _ = run_fleet(expand_inputs(paths), out, scheduler, workers, progress=not as_json)
    except FleetError as error:
        print(f"kptrace: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kptrace: interrupted: the fleet's tasks were cancelled; no fleet tables written", file=sys.stderr)
        return INTERRUPTED
    print(json.dumps(summary, indent=2, default=str) if as_json else render_fleet_text(summary))
    failed = summary["counts"]["failed"]
    if failed:
        print(f"kptrace: error: {failed} of {summary['counts']['inputs']} inputs could not be analyzed "
              "(their errors: fleet.json)", file=sys.stderr)
    return 1 if failed else 0
