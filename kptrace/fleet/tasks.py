"""The work one fleet task does on a worker: analyze one input exactly as `kptrace analyze` does,
write its outputs under OUT/<input>/, and send back only its small tables and figures (never an
event, interval or request table: those stay in the files on the worker's side)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from kptrace.errors import TraceError

UNKNOWN = "unknown"
#: The topic a task announces its start on, so the client can count running tasks.
STARTED_TOPIC = "kptrace-fleet-started"
COMPRESSED = (".gz", ".zst", ".xz")
#: Names under OUT that are the fleet's own outputs, never an input's folder.
RESERVED = {"fleet", "fleet.json", "fleet.html"}


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Each bundle or file is one input; a directory that is not a bundle is each of its entries
    (as `kptrace analyze` takes a directory)."""
    inputs = []
    for path in paths:
        if path.is_dir() and not (path / "manifest.json").exists():
            inputs += sorted(p for p in path.iterdir() if not p.name.startswith("."))
        else:
            inputs.append(path)
    return inputs


def _short_name(item: Path) -> str:
    if item.is_dir():
        return item.name
    name = item.name.removesuffix(item.suffix) if item.suffix in COMPRESSED else item.name
    return Path(name).stem or item.name


def input_names(inputs: list[Path]) -> dict[Path, str]:
    """Each input's folder name under OUT: its name without compression and format suffixes, its
    full name where that collides, and a `-2`, `-3` suffix where even that collides (the same file
    name in two directories) or would take a name the fleet's own outputs use."""
    short = [_short_name(item) for item in inputs]
    names, taken = {}, set(RESERVED)
    for item, name in zip(inputs, short):
        name = name if short.count(name) == 1 else item.name
        unique, n = name, 1
        while unique in taken:
            n += 1
            unique = f"{name}-{n}"
        taken.add(unique)
        names[item] = unique
    return names


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def machine_identity(path: Path) -> dict[str, str]:
    """host, kernel, cpu_model and nic of the machine a bundle was recorded on (its manifest and
    machine snapshot); `unknown` for whatever the input does not say (a plain trace file)."""
    identity = {"host": UNKNOWN, "kernel": UNKNOWN, "cpu_model": UNKNOWN, "nic": UNKNOWN}
    if not path.is_dir():
        return identity
    try:
        manifest = json.loads(_read_text(path / "manifest.json") or "{}")
    except json.JSONDecodeError:
        manifest = {}
    identity["host"] = str(manifest.get("hostname") or UNKNOWN)
    identity["kernel"] = str(manifest.get("kernel") or UNKNOWN)
    models = [line.split(":", 1)[1].strip() for line in _read_text(path / "machine" / "cpuinfo.txt").splitlines()
              if line.startswith("model name") and ":" in line]
    identity["cpu_model"] = models[0] if models else UNKNOWN
    nics = []
    for line in _read_text(path / "machine" / "net-devices.txt").splitlines():
        name, *fields = line.split()
        driver = dict(f.split("=", 1) for f in fields if "=" in f).get("driver", "none")
        if driver != "none":
            nics.append(f"{name} ({driver})")
    identity["nic"] = ", ".join(nics) or UNKNOWN
    return identity


def request_overview_frame(summary: dict) -> pl.DataFrame:
    """The request overview of summary.json as a table (fleet/requests without its keys)."""
    from kptrace.tables import FLEET_KEYS, FLEET_TABLES

    schema = {c.name: c.dtype for c in FLEET_TABLES["fleet/requests"].columns[len(FLEET_KEYS):]}
    return pl.DataFrame(summary["requests"]["by_disrupted"], schema=schema)


def _announce_start(path: Path) -> None:
    """Tell the client this task started (for the progress bar); nothing outside a Dask worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
        worker.log_event(STARTED_TOPIC, {"path": str(path), "worker": worker.address})
    except (ImportError, ValueError):
        pass


def analyze_input(path: Path, out: Path) -> dict:
    """One fleet task: analyze `path` into `out` as `kptrace analyze` does, and return its status,
    machine identity, figures and small tables. A TraceError is the input's fault: it comes back
    as `failed` with its one line (retrying would fail again); anything else raises, so that Dask
    retries the task (a lost worker, a full disk)."""
    from kptrace.analysis import analyze
    from kptrace.export.outputs import write_all
    from kptrace.summary import build_summary
    from kptrace.whatif.render import whatif_frame

    _announce_start(path)
    result = {"path": str(path), "out": str(out), "identity": machine_identity(path)}
    try:
        analysis = analyze(path)
    except TraceError as error:
        return result | {"status": "failed", "error": str(error)}
    summary = write_all(analysis, out, build_summary(analysis))
    info = summary["input"]
    return result | {
        "status": "ok", "error": None, "events": info["events"], "duration_s": info["duration_s"],
        "warnings": analysis.meta["warnings"],
        "tables": {"attribution": analysis.attribution, "requests": request_overview_frame(summary),
                   "whatif": whatif_frame(summary["whatif"]) if summary["whatif"] else None},
    }
