"""Counters-only bundles (`kptrace-record --counters-only`, docs/counters.md) read into typed frames.

The collector appends, every 100 ms, a line `@ <t_ns>` (CLOCK_MONOTONIC just before the read) and
the text of /proc/interrupts, /proc/softirqs and /proc/stat; a request count and `perf stat -I`
may sit beside them. Counts are cumulative; the per-interval deltas are what analyses use.

What goes wrong on real servers is said, never hidden: a block cut short by the recording's end is
left out; a count that goes backwards is a 32-bit wrap (corrected) or a reset (its interval left
out); an interval across a sample where a CPU was missing (offline) is left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from kptrace.errors import TraceError

#: /proc/stat counts in USER_HZ ticks, which the kernel's ABI fixes at 100 per second.
USER_HZ = 100
#: /proc/stat cpuN columns, in the kernel's order (guest time is already inside user and nice).
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
#: /proc/interrupts per-CPU counts are unsigned int: a drop from the upper half is a wrap.
WRAP = 2 ** 32
SERIES_KEYS = {"interrupts": ("cpu", "irq", "source"), "softirqs": ("cpu", "source"),
               "stat": ("cpu", "field"), "requests": ()}


@dataclass
class CountersBundle:
    """One counters-only bundle: cumulative counts per sample, and what reading them raised."""

    path: Path
    manifest: dict
    interrupts: pl.DataFrame      # sample, t_ns, cpu, irq, source, device, count
    softirqs: pl.DataFrame        # sample, t_ns, cpu, source, count
    stat: pl.DataFrame            # sample, t_ns, cpu, field, count (ticks)
    requests: pl.DataFrame | None  # sample, t_ns, count (null where the command failed)
    perf_stat: pl.DataFrame | None  # t_ns, cpu, event, value (per interval, null: not counted)
    warnings: list[str] = field(default_factory=list)


def is_counters_bundle(path: Path) -> bool:
    """A bundle directory whose manifest says `"capture": "counters"`."""
    try:
        return json.loads((path / "manifest.json").read_text()).get("capture") == "counters"
    except (OSError, ValueError, AttributeError):
        return False


def read_counters_bundle(bundle: Path) -> CountersBundle:
    """Every file the manifest names, parsed; a missing /proc file is a one-line error."""
    manifest = _manifest(bundle)
    files = manifest.get("files") or {}
    warnings: list[str] = []
    if (bundle / "INCOMPLETE").exists():
        warnings.append("INCOMPLETE: the recording was killed or is still running; the whole samples written "
                        "so far are read")
    parsed = {}
    for name, parse in (("interrupts", _per_cpu_table), ("softirqs", _per_cpu_table), ("stat", _stat_table)):
        path = bundle / (files.get(name) or f"counters/{name}.txt")
        blocks = _blocks(path, warnings)
        parsed[name] = _with_samples(parse(blocks, path, warnings), blocks)
    requests = _requests(bundle / files["requests"], warnings) if files.get("requests") else None
    perf_stat = _perf_stat(bundle / files["perf_stat"], manifest, warnings) if files.get("perf_stat") else None
    interrupts = parsed["interrupts"].with_columns(
        device=pl.col("irq").str.contains(r"^\d+$"),
        source=pl.when(pl.col("irq").str.contains(r"^\d+$")).then(pl.col("source")).otherwise(pl.col("irq")))
    warnings += _cpus_missing(parsed["stat"])
    return CountersBundle(bundle, manifest, interrupts, parsed["softirqs"].drop("irq"), parsed["stat"],
                          requests, perf_stat, warnings)


def _cpus_missing(stat: pl.DataFrame) -> list[str]:
    """A CPU absent from some samples was offline then (hotplug): its intervals there are unknown."""
    samples = stat["sample"].n_unique()
    seen = stat.group_by("cpu").agg(pl.col("sample").n_unique().alias("n")).filter(pl.col("n") < samples).sort("cpu")
    return [f"stat.txt: CPU {cpu} is missing from {samples - n} of {samples} samples (offline then): its "
            "intervals around them are left out" for cpu, n in seen.iter_rows()]


def _manifest(bundle: Path) -> dict:
    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
    except FileNotFoundError:
        raise TraceError(bundle, "not a bundle: no manifest.json") from None
    except (ValueError, OSError) as error:
        raise TraceError(bundle / "manifest.json", f"not JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("capture") != "counters":
        raise TraceError(bundle, 'not a counters-only bundle (manifest "capture" is not "counters")')
    return manifest


# --------------------------------------------------------------------------- the sample blocks


def _blocks(path: Path, warnings: list[str]) -> list[tuple[int, list[str]]]:
    """(t_ns, lines) per `@ t_ns` block. A last block shorter than the one before it, or a file
    that ends mid-line, was cut by the recording's end: it is left out, with a warning."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        raise TraceError(path, "missing: the manifest names it but the bundle lacks it") from None
    blocks: list[tuple[int, list[str]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("@ "):
            try:
                blocks.append((int(line[2:]), []))
            except ValueError:
                raise TraceError(path, f"line {number}: expected '@ <t_ns>', got {line[:40]!r}") from None
        elif blocks:
            blocks[-1][1].append(line)
        elif line.strip():
            raise TraceError(path, f"line {number}: expected '@ <t_ns>' before the first sample")
    if not blocks:
        raise TraceError(path, "no samples ('@ <t_ns>' blocks) in it")
    torn = not text.endswith("\n") or len(blocks) > 1 and len(blocks[-1][1]) < len(blocks[-2][1])
    if torn:
        warnings.append(f"{path.name}: the last sample (t {blocks[-1][0]} ns) is incomplete (the recording "
                        "stopped while writing it): left out")
        blocks.pop()
    return blocks


def _with_samples(rows: pl.DataFrame, blocks: list[tuple[int, list[str]]]) -> pl.DataFrame:
    times = pl.DataFrame({"sample": range(len(blocks)), "t_ns": [t for t, _ in blocks]},
                         schema={"sample": pl.Int32, "t_ns": pl.Int64})
    return rows.join(times, on="sample", how="left").select("sample", "t_ns", pl.exclude("sample", "t_ns"))


def _lines_frame(blocks: list[tuple[int, list[str]]]) -> pl.DataFrame:
    return pl.DataFrame({"sample": [i for i, (_, lines) in enumerate(blocks) for _ in lines],
                         "line": [line for _, lines in blocks for line in lines]},
                        schema={"sample": pl.Int32, "line": pl.String})


def _per_cpu_table(blocks: list[tuple[int, list[str]]], path: Path, warnings: list[str]) -> pl.DataFrame:
    """/proc/interrupts or /proc/softirqs: each block's header names its online CPUs (`CPU0 CPU2`);
    each line is `LABEL: count per CPU [chip, hwirq, type] name`. Lines with fewer counts than CPUs
    (ERR, MIS: one system-wide count) are not per-CPU counts and are skipped."""
    lines = _lines_frame(blocks).with_columns(pl.col("line").str.strip_chars())
    header = (lines.filter(pl.col("line").str.starts_with("CPU"))
              .group_by("sample").agg(pl.col("line").first())
              .select("sample", cpus=pl.col("line").str.extract_all(r"\d+").cast(pl.List(pl.Int32))))
    rows = (lines.filter(pl.col("line").str.contains(":"))
            .with_columns(irq=pl.col("line").str.extract(r"^([^:]+):", 1).str.strip_chars(),
                          fields=pl.col("line").str.replace(r"^[^:]+:", "").str.strip_chars().str.split(" "))
            .with_columns(pl.col("fields").list.eval(pl.element().filter(pl.element() != "")))
            .join(header, on="sample", how="inner")
            .with_columns(ncpu=pl.col("cpus").list.len()))
    per_cpu = rows.filter(pl.col("fields").list.len() >= pl.col("ncpu"))
    counts = per_cpu.with_columns(counts=pl.col("fields").list.head(pl.col("ncpu")),
                                  source=pl.when(pl.col("fields").list.len() > pl.col("ncpu"))
                                  .then(pl.col("fields").list.last()).otherwise(pl.col("irq")))
    long = (counts.select("sample", "irq", "source", "cpus", "counts").explode("cpus", "counts")
            .rename({"cpus": "cpu"})
            .with_columns(count=pl.col("counts").cast(pl.Int64, strict=False)).drop("counts"))
    bad = long.filter(pl.col("count").is_null())
    if bad.height:
        warnings.append(f"{path.name}: {bad.height} count(s) that are not numbers (e.g. sample {bad['sample'][0]}, "
                        f"{bad['irq'][0]}): left out")
    return long.filter(pl.col("count").is_not_null()).with_columns(pl.col("cpu").cast(pl.Int32))


def _stat_table(blocks: list[tuple[int, list[str]]], path: Path, warnings: list[str]) -> pl.DataFrame:
    """/proc/stat's `cpuN` lines (the `cpu` total is left out: it is their sum), one row per field."""
    lines = _lines_frame(blocks).filter(pl.col("line").str.contains(r"^cpu\d+ "))
    fields = lines.select("sample", cpu=pl.col("line").str.extract(r"^cpu(\d+)", 1).cast(pl.Int32),
                          values=pl.col("line").str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
                          .list.slice(1, len(STAT_FIELDS)))
    short = fields.filter(pl.col("values").list.len() < len(STAT_FIELDS))
    if short.height:
        warnings.append(f"{path.name}: {short.height} cpu line(s) with fewer than {len(STAT_FIELDS)} counts "
                        f"(e.g. sample {short['sample'][0]}, CPU {short['cpu'][0]}): left out")
    long = (fields.filter(pl.col("values").list.len() == len(STAT_FIELDS))
            .with_columns(field=pl.lit(list(STAT_FIELDS)))
            .explode("values", "field")
            .select("sample", "cpu", "field", count=pl.col("values").cast(pl.Int64, strict=False)))
    bad = long.filter(pl.col("count").is_null())
    if bad.height:
        warnings.append(f"{path.name}: {bad.height} /proc/stat count(s) that are not numbers: left out")
    return long.filter(pl.col("count").is_not_null())


def _requests(path: Path, warnings: list[str]) -> pl.DataFrame:
    """`<t_ns> <count>` per sample; `-` (the command failed) and unreadable lines become nulls."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        raise TraceError(path, "missing: the manifest names it but the bundle lacks it") from None
    pairs = [line.split() for line in lines if line.strip()]
    frame = pl.DataFrame({"t_ns": [p[0] for p in pairs], "count": [p[1] if len(p) > 1 else None for p in pairs]},
                         schema={"t_ns": pl.String, "count": pl.String})
    frame = frame.select(pl.int_range(pl.len(), dtype=pl.Int32).alias("sample"),
                         pl.col("t_ns").cast(pl.Int64, strict=False),
                         pl.col("count").cast(pl.Int64, strict=False))
    failed = frame.filter(pl.col("count").is_null()).height
    if failed:
        warnings.append(f"{path.name}: the request command gave no count in {failed} of {frame.height} samples: "
                        "the intervals around them have no request count")
    return frame.filter(pl.col("t_ns").is_not_null())


def _perf_stat(path: Path, manifest: dict, warnings: list[str]) -> pl.DataFrame | None:
    """`perf stat -a -A -I 100 -x,`: seconds since perf started, CPUn, value, unit, event, ...
    Each line is one interval's count. `<not supported>` / `<not counted>` become nulls."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        raise TraceError(path, "missing: the manifest names it but the bundle lacks it") from None
    rows = [line.split(",") for line in lines if line.strip() and not line.startswith("#")]
    rows = [r for r in rows if len(r) >= 5 and r[1].startswith("CPU")]
    start = (manifest.get("counters_only") or {}).get("perf_stat_start_ns")
    if not rows:
        warnings.append(f"{path.name}: no per-CPU interval lines: no perf counters")
        return None
    if start is None:
        warnings.append(f"{path.name}: the manifest has no perf_stat_start_ns, so perf's intervals cannot be "
                        "placed on the samples' clock: perf counters left out")
        return None
    frame = pl.DataFrame({"seconds": [r[0].strip() for r in rows], "cpu": [r[1][3:] for r in rows],
                          "value": [r[2] for r in rows], "event": [r[4] for r in rows]})
    return frame.select(t_ns=(pl.col("seconds").cast(pl.Float64, strict=False) * 1e9).round().cast(pl.Int64) + start,
                        cpu=pl.col("cpu").cast(pl.Int32, strict=False), event="event",
                        value=pl.col("value").cast(pl.Float64, strict=False)).drop_nulls(["t_ns", "cpu"])


# --------------------------------------------------------------------------- deltas


def interval_deltas(cumulative: pl.DataFrame, keys: tuple[str, ...], label: str,
                    warnings: list[str]) -> pl.DataFrame:
    """Per series (`keys`), the change of `count` between consecutive samples, with the interval's
    start and end (t0_ns, t1_ns). A drop from the upper half of 32 bits is a wrap (2^32 added); any
    other drop is a reset, and an interval across a missing sample (a CPU offline) spans unknown
    time: both are left out (null delta), and said in a warning."""
    by = list(keys) or None
    ordered = cumulative.sort([*keys, "sample"])
    deltas = ordered.with_columns(
        previous=pl.col("count").shift(1).over(by) if by else pl.col("count").shift(1),
        previous_sample=pl.col("sample").shift(1).over(by) if by else pl.col("sample").shift(1),
        t0_ns=pl.col("t_ns").shift(1).over(by) if by else pl.col("t_ns").shift(1),
    ).filter(pl.col("previous_sample").is_not_null()).rename({"t_ns": "t1_ns"})
    raw = pl.col("count") - pl.col("previous")
    wrapped = (raw < 0) & (pl.col("previous") >= WRAP // 2) & (pl.col("previous") < WRAP) & (pl.col("count") < WRAP // 2)
    gap = pl.col("sample") - pl.col("previous_sample") != 1
    deltas = deltas.with_columns(
        delta=pl.when(gap).then(None).when(wrapped).then(raw + WRAP).when(raw < 0).then(None).otherwise(raw),
        wrapped=wrapped.fill_null(False), reset=(raw < 0).fill_null(False) & ~wrapped.fill_null(False),
        gap=gap)
    _warn_deltas(deltas, keys, label, warnings)
    return deltas.select("sample", "t0_ns", "t1_ns", *keys, "delta")


def _warn_deltas(deltas: pl.DataFrame, keys: tuple[str, ...], label: str, warnings: list[str]) -> None:
    def example(rows: pl.DataFrame) -> str:
        row = rows.row(0, named=True)
        return ", ".join(f"{k} {row[k]}" for k in keys) + f", sample {row['sample']}"

    for column, text in (("wrapped", "wrapped at 2^32 (counted as a wrap)"),
                         ("reset", "went backwards (a reset): those intervals left out"),
                         ("gap", "span samples where the series was missing (a CPU offline?): those intervals "
                                 "left out")):
        hit = deltas.filter(pl.col(column))
        if hit.height:
            noun = "counts" if column != "gap" else "intervals"
            warnings.append(f"{label}: {hit.height} {noun} {text} (e.g. {example(hit)})")
