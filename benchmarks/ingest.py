"""Ingest speed: `kptrace ingest` of tracefs text vs `trace-cmd report` of the same buffer.

Records one tracefs instance buffer of >= --events events while memcached serves a loopback
load (root, trace-cmd, memcached, memcaslap), saves it both as tracefs text and, through
`trace-cmd extract`, as trace.dat; then alternates the two tools --repeats times and prints
events/s for each, the ratio, and peak memory. Usage (root):

    python benchmarks/ingest.py [--events 1000000] [--repeats 3] [--keep DIR]

or, with an existing pair: python benchmarks/ingest.py --text trace.txt --dat trace.dat

--native times every reader (read, then normalize, each in a fresh interpreter) against
`trace-cmd report > /dev/null` of the trace.dat: the trace.dat natively, its pages in the
collector's raw/ layout, its `trace-cmd report` text, and optionally tracefs text (--text) and
perf script text (--perf, with `perf script` of --perf-data beside it); prints a Markdown
table of events/s, the ratio to trace-cmd (target >= 10x) and bytes per event (every Arrow
buffer the normalized table holds, target <= 100; and peak RSS growth):

    python benchmarks/ingest.py --native --dat trace.dat [--text T] [--perf P --perf-data D] [--repeats 3]

--sizes prints, for the normalized event table of one trace, its bytes per event wide, as held, and
under candidate schema changes, each measured by casting or splitting that real table (the
schema itself is not changed): python benchmarks/ingest.py --sizes --dat trace.dat

--baseline DIR also times `kptrace ingest` from another kptrace source tree (e.g. `git archive`
of an older commit unpacked in DIR) in the same alternation, so before and after are measured
side by side under the same load. --stages adds, for each tree, the in-process time of each
ingest stage (read, split_lines, type_fields, normalize, write; median of --repeats runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INSTANCE = Path("/sys/kernel/tracing/instances/kptrace-bench")
EVENTS = ("irq", "irq_vectors", "napi", "net", "sched")
SYSCALLS = ("read", "sendmsg", "epoll_wait")


def record(directory: Path, target_events: int) -> tuple[Path, Path]:
    """A loopback memcached load traced into one instance buffer, until it holds target_events."""
    mounted_here = not INSTANCE.parent.exists()
    if mounted_here:
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
    server = subprocess.Popen(["memcached", "-u", "root", "-l", "127.0.0.1", "-p", "11398", "-t", "1", "-U", "0"])
    try:
        INSTANCE.mkdir()
        (INSTANCE / "tracing_on").write_text("0")
        (INSTANCE / "buffer_size_kb").write_text(str(max(65536, target_events // 8)))
        (INSTANCE / "options" / "record-tgid").write_text("1")
        for system in EVENTS:
            (INSTANCE / "events" / system / "enable").write_text("1")
        for name in SYSCALLS:
            for edge in ("enter", "exit"):
                (INSTANCE / "events" / "syscalls" / f"sys_{edge}_{name}" / "enable").write_text("1")
        time.sleep(0.2)
        (INSTANCE / "tracing_on").write_text("1")
        load = subprocess.Popen(["memcaslap", "-s", "127.0.0.1:11398", "-t", "60s", "-c", "4", "-T", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while sum(int(line.split()[1]) for line in _stats_lines("entries")) < target_events and load.poll() is None:
            time.sleep(0.2)
        (INSTANCE / "tracing_on").write_text("0")
        load.terminate()
        load.wait()
        text = directory / "trace.txt"
        text.write_text((INSTANCE / "trace").read_text())
        dat = directory / "trace.dat"
        subprocess.run(["trace-cmd", "extract", "-B", INSTANCE.name, "-o", str(dat)], check=True, capture_output=True)
        return text, dat
    finally:
        server.terminate()
        server.wait()
        if INSTANCE.exists():
            (INSTANCE / "tracing_on").write_text("0")
            (INSTANCE / "events" / "enable").write_text("0")
            INSTANCE.rmdir()
        if mounted_here:
            subprocess.run(["umount", "/sys/kernel/tracing"], check=False)


def _stats_lines(field: str) -> list[str]:
    lines = []
    for stats in sorted((INSTANCE / "per_cpu").glob("cpu*/stats")):
        lines += [line for line in stats.read_text().splitlines() if line.startswith(field + ":")]
    return lines


def timed(command: list[str], tree: Path | None = None) -> float:
    """Wall seconds of one run (kptrace from `tree` if given), output discarded."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **in_tree(tree))
    return time.perf_counter() - start


#: One ingest, stage by stage, in a fresh interpreter; prints {stage: seconds} as JSON.
STAGES = """
import json, sys, time
import polars as pl
from kptrace.export.parquet import write_tables
from kptrace.normalize import normalize
from kptrace.read import RawTrace
from kptrace.read.fields import type_fields
from kptrace.read.lines import detect_format, split_lines
from kptrace.read.source import read_source
seconds, last = {}, time.perf_counter()
def done(stage):
    global last
    now = time.perf_counter()
    seconds[stage] = now - last
    last = now
source = read_source(sys.argv[1]); done("read")
fmt = detect_format(source.text)
split = split_lines(source.text, fmt); done("split_lines")
rows = type_fields(split.rows); done("type_fields")
events = normalize(RawTrace(rows=rows, source_format=fmt, files=[])); done("normalize")
write_tables(sys.argv[2], {"events": events.events}, events.meta); done("write")
print(json.dumps(seconds))
"""


#: One read + normalize in a fresh interpreter; prints seconds, table sizes and memory as JSON.
#: Memory: every buffer the event table holds (`table_bytes`), and the peak RSS above the RSS
#: after imports (ru_maxrss), after the read and after normalize. The garbage collector runs as
#: in `kptrace ingest`: the objects the imports made (~50 k) are frozen out of its scans once
#: they are done (kptrace.cli._freeze_imports).
NATIVE = """
import gc, json, resource, sys, time
start = time.perf_counter()
from benchmarks.ingest import table_bytes
from kptrace.normalize import normalize
from kptrace.read import read_any
gc.freeze()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base = rss()
imported = time.perf_counter()
raw = read_any(sys.argv[1])
read = time.perf_counter()
read_peak = peak()
events = normalize(raw)
done = time.perf_counter()
total_rss = peak() - base
print(json.dumps({"import": imported - start, "read": read - imported, "normalize": done - read,
                  "events": events.meta["event_count"], "rows_bytes": table_bytes(*raw.frames()),
                  "table_bytes": table_bytes(*events.table.frames()), "wide_bytes": table_bytes(events.events),
                  "read_rss": read_peak - base, "total_rss": total_rss}))
"""


def table_bytes(*frames) -> int:
    """Bytes of every buffer some Polars frames hold, each byte once.

    Polars' `estimated_size()` is not that: for a String column it counts the text bytes but
    not the 16-byte view every row has (a null or short string costs 16 B, counted as ~0), and
    it counts a repeated value's text once per row though the rows share one buffer. The frame
    as Arrow (zero-copy) lists the real buffers; chunks that slice one buffer (Arrow reports
    each slice's buffer from the same start address) are counted as the union of their address
    ranges. Checked against RSS: a 1 M-event table read back from Parquet holds 228.0 B/event of
    buffers and grew the process's anonymous RSS by 231.2 B/event (`estimated_size()` said
    155.6; pyarrow's own `get_total_buffer_size()` undercounts sliced chunks); the table as
    read_any and normalize build it holds 219.2 B/event, and the anonymous RSS they leave behind
    is 243 B/event once freed memory is returned (malloc_trim, 12 s for Polars' allocator).
    """
    import polars as pl

    spans = []
    for column in (c for frame in frames for c in frame.to_arrow(compat_level=pl.CompatLevel.newest()).columns):
        for chunk in column.chunks:
            arrays = [chunk, *([chunk.dictionary] if hasattr(chunk, "dictionary") else [])]
            spans += [(b.address, b.address + b.size) for a in arrays for b in a.buffers() if b is not None]
    total, end = 0, 0
    for start, stop in sorted(spans):
        total += max(stop - max(start, end), 0)
        end = max(end, stop)
    return total


#: Name columns that repeat a few values (a Categorical holds a 4-byte code per row, not a view).
NAME_COLUMNS = ("comm", "irq_name", "prev_comm", "next_comm", "task_comm", "prev_state")
#: Integer columns whose values fit a narrower type on any machine (fd < 2^31, vectors < 256,
#: NAPI work and budget < 2^15).
NARROWER = {"fd": "Int32", "vector": "Int16", "napi_work": "Int16", "napi_budget": "Int16"}
#: Event families that could each have their own table (the rest keep the wide one's columns).
FAMILIES = {
    "sched_switch": ("sched_switch",), "wakeups": ("sched_wakeup", "sched_waking", "sched_migrate_task"),
    "irq": ("irq_handler_entry", "irq_handler_exit"), "softirq": ("softirq_raise", "softirq_entry", "softirq_exit"),
    "net": ("napi_poll", "netif_receive_skb", "netif_rx", "net_dev_xmit"),
}


def split_bytes(events, side: dict[str, list[str]] | None = None, fields_aside: bool = False) -> int:
    """Bytes of the event table split into a main table and side tables of the rows each
    family has, keyed by a UInt32 row number: a side table keeps only the columns its family
    fills; `fields_aside` puts the `fields` text of rows that have it in a side table too;
    columns null in every row of the main table are dropped from it."""
    import polars as pl

    events = events.with_row_index("row")
    sides, moved = [], {"row"}
    for family, names in (side or {}).items():
        rows = events.filter(pl.col("event").cast(pl.String).is_in(names))
        kept = [c for c in rows.columns if c not in (*BASE_COLUMNS, "row") and rows[c].null_count() < rows.height]
        sides.append(rows.select("row", *kept))
        moved |= set(kept)
    if fields_aside:
        sides.append(events.filter(pl.col("fields").is_not_null()).select("row", "fields"))
        moved.add("fields")
    main = events.select([c for c in events.columns if c not in moved or c in BASE_COLUMNS])
    main = main.select([c for c in main.columns if main[c].null_count() < main.height])
    return sum(table_bytes(t) for t in [main, *sides])


#: What every event has, in the main table whatever the split.
BASE_COLUMNS = ("ts", "cpu", "tid", "comm", "subsystem", "event", "irqs_off", "bh_off", "need_resched",
                "in_hardirq", "in_softirq", "in_nmi", "preempt_depth")


def schema_sizes(path: Path) -> None:
    """Bytes per event of the normalized event table of `path`, today and under candidate
    schema changes, each measured on that table (cast or split), string views counted."""
    import polars as pl

    from kptrace.normalize import normalize
    from kptrace.read import read_any

    normalized = normalize(read_any(path))
    events = normalized.events
    n = events.height
    names = events.with_columns([pl.col(c).cast(pl.Categorical) for c in NAME_COLUMNS if c in events.columns])
    narrow = names.with_columns([pl.col(c).cast(getattr(pl, t)) for c, t in NARROWER.items() if c in events.columns])
    without_null = narrow.select([c for c in narrow.columns if narrow[c].null_count() < n])
    families = {**FAMILIES, "syscalls": tuple(e for e in events["event"].cast(pl.String).unique().to_list()
                                               if e.startswith("sys_"))}
    rows = [
        ("wide (the schema table, as the view builds it whole)", table_bytes(events)),
        ("names as Categorical", table_bytes(names)),
        ("+ fd Int32, vector/napi_work/napi_budget Int16", table_bytes(narrow)),
        (f"+ columns null in every row dropped (here {', '.join(sorted(set(narrow.columns) - set(without_null.columns)))})",
         table_bytes(without_null)),
        ("+ `fields` in a side table (UInt32 row, text)", split_bytes(narrow, fields_aside=True)),
        ("+ one side table per family (" + ", ".join(families) + ")", split_bytes(narrow, families, fields_aside=True)),
        ("today's types, `fields` in a side table", split_bytes(events, fields_aside=True)),
        ("today's types, one side table per family and `fields` aside", split_bytes(events, families, fields_aside=True)),
        ("as held: core + one table per family (kptrace.read.table)", table_bytes(*normalized.table.frames())),
    ]
    print(f"{path.name}: {n} events; bytes per event = every Arrow buffer (string views included, shared buffers once)")
    print("| event table | B/event |\n|---|---|")
    for label, size in rows:
        print(f"| {label} | {size / n:.1f} |")


def native_run(path: Path) -> dict:
    root = Path(__file__).resolve().parent.parent  # so `benchmarks.ingest` imports in the child
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(root)]))}
    result = subprocess.run([sys.executable, "-c", NATIVE, str(path.resolve())], check=True,
                            capture_output=True, text=True, env=env)
    return json.loads(result.stdout)


def raw_pages_of(dat: Path, out: Path) -> Path:
    """The pages of a trace.dat's first buffer in the collector's raw/ layout (same data, the
    raw-pages reader's container), for timing that reader on the same events."""
    from kptrace.read.source import read_bytes
    from kptrace.read.tracedat import read_tracedat

    capture = read_tracedat(read_bytes(dat).data)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in capture.header_texts.items():
        (out / name).write_text(text)
    for ident, (system, text) in capture.formats.texts().items():
        directory = out / "format" / system / f"event{ident}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "format").write_text(text)
    for cpu, pages in capture.buffers[0][1]:
        (out / f"cpu{cpu}.raw").write_bytes(pages)
    (out / "saved_cmdlines").write_text("".join(f"{pid} {comm}\n" for pid, comm in capture.comms.items()))
    return out


def native(dat: Path, raw: Path | None, texts: dict[str, Path], perf_data: Path | None, repeats: int,
           work: Path) -> None:
    """Every reader vs `trace-cmd report > /dev/null` (and `perf script`), alternating, medians.

    The trace-cmd report text is made from the trace.dat, and raw pages from its pages, so these
    three hold the same events; tracefs text and perf script text are other recordings (--text,
    --perf), timed for their events/s.
    """
    report_text = work / "report.txt"
    with open(report_text, "w") as out:
        subprocess.run(["trace-cmd", "report", "-i", str(dat)], check=True, stdout=out)
    inputs = {"trace.dat (native)": dat, "raw pages (native)": raw or raw_pages_of(dat, work / "raw"),
              "trace-cmd report text": report_text, **texts}
    tools = {"trace-cmd report > /dev/null": ["trace-cmd", "report", "-i", str(dat)],
             **({"perf script > /dev/null": ["perf", "script", "-i", str(perf_data)]} if perf_data else {})}
    runs: dict[str, list] = {name: [] for name in [*inputs, *tools]}
    for _ in range(repeats):
        for name, path in inputs.items():
            runs[name].append(native_run(path))
        for name, command in tools.items():
            runs[name].append(timed(command))
    report = statistics.median(runs["trace-cmd report > /dev/null"])
    events = runs["trace.dat (native)"][0]["events"]
    print(f"trace.dat: {events} events, {dat.stat().st_size / 1e6:.1f} MB; {repeats} alternating runs, medians; "
          f"read s = from after the imports (import s, shown beside it) to the table read, the compiled page reader's "
          f"loading included; table B/event = every Arrow buffer the normalized event table holds (its "
          f"core and family frames, kptrace.read.table; string views included, shared buffers once) / events; "
          f"wide B/event = the same of the wide schema table its view builds whole; "
          f"RSS/event = peak RSS above the post-import RSS / events")
    print("| input | events | import s | read s | read M ev/s | x trace-cmd | +normalize s | table B/ev | wide B/ev | "
          "read RSS B/ev | total RSS B/ev |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| trace-cmd report > /dev/null | {events} | | {report:.2f} | {events / report / 1e6:.2f} | 1.0 | | | | | |")
    for name, command in tools.items():
        if name.startswith("perf"):
            t = statistics.median(runs[name])
            print(f"| {name} ({perf_data.name}) | | | {t:.2f} | | | | | | | |")
    for name in inputs:
        r = runs[name][0]
        read = statistics.median(x["read"] for x in runs[name])
        norm = statistics.median(x["normalize"] for x in runs[name])
        imported = statistics.median(x["import"] for x in runs[name])
        rate = r["events"] / read
        print(f"| {name} | {r['events']} | {imported:.2f} | {read:.2f} | {rate / 1e6:.2f} | {rate / (events / report):.1f} | "
              f"{norm:.2f} | {r['table_bytes'] / r['events']:.0f} | {r['wide_bytes'] / r['events']:.0f} | "
              f"{r['read_rss'] / r['events']:.0f} | {r['total_rss'] / r['events']:.0f} |")
    native_read = statistics.median(x["read"] for x in runs["trace.dat (native)"])
    held = runs["trace.dat (native)"][0]["table_bytes"] / events
    print(f"trace.dat native read vs trace-cmd report: {report / native_read:.1f}x (goal >= 10x); "
          f"event table {held:.0f} B/event (goal <= 100)")


def in_tree(tree: Path | None) -> dict:
    """subprocess.run arguments that make `python` import kptrace from `tree` (None: as installed).

    `python -m` and `-c` put the working directory first on sys.path, so both are set.
    """
    if tree is None:
        return {}
    return {"cwd": tree, "env": {**os.environ, "PYTHONPATH": str(tree.resolve())}}


def stage_seconds(text: Path, out: Path, tree: Path | None) -> dict[str, float]:
    result = subprocess.run([sys.executable, "-c", STAGES, str(text.resolve()), str(out)], check=True,
                            capture_output=True, text=True, **in_tree(tree))
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text", type=Path)
    parser.add_argument("--dat", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the recorded trace.txt and trace.dat here")
    parser.add_argument("--baseline", type=Path, help="another kptrace source tree to time side by side")
    parser.add_argument("--stages", action="store_true", help="also time each ingest stage in-process")
    parser.add_argument("--native", action="store_true", help="time the native binary readers instead")
    parser.add_argument("--raw", type=Path, help="with --native: a raw/ pages directory (default: made from --dat)")
    parser.add_argument("--perf", type=Path, help="with --native: a perf script text file to time too")
    parser.add_argument("--perf-data", type=Path, help="with --native: the perf.data to time `perf script` on")
    parser.add_argument("--sizes", action="store_true", help="bytes per event of --dat's table under candidate schemas")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kptrace-bench-"))
    try:
        if args.sizes:
            schema_sizes(args.dat)
            return
        if args.native:
            texts = {**({"tracefs text": args.text} if args.text else {}),
                     **({"perf script text": args.perf} if args.perf else {})}
            native(args.dat or record(args.keep or work, args.events)[1], args.raw, texts, args.perf_data,
                   args.repeats, work)
            return
        text, dat = (args.text, args.dat) if args.text else record(args.keep or work, args.events)
        out = work / "ingested"
        kptrace_cmd = [sys.executable, "-m", "kptrace.cli", "ingest", str(text.resolve()), "-o", str(out)]
        subprocess.run(kptrace_cmd, check=True, capture_output=True)
        import kptrace

        events = kptrace.load(out).meta["event_count"]
        contenders = {"kptrace ingest (tracefs text)": (kptrace_cmd, None)}
        if args.baseline:
            contenders["baseline kptrace ingest"] = (kptrace_cmd, args.baseline)
        contenders["trace-cmd report (trace.dat)"] = (["trace-cmd", "report", "-i", str(dat)], None)
        runs: dict[str, list[float]] = {name: [] for name in contenders}
        stages: dict[str, list[dict[str, float]]] = {name: [] for name in contenders
                                                     if args.stages and "kptrace" in name}
        for _ in range(args.repeats):
            for name, (command, tree) in contenders.items():
                runs[name].append(timed(command, tree))
                if name in stages:
                    stages[name].append(stage_seconds(text, work / "stages", tree))
        peaks = {name: _peak_rss(command, tree) for name, (command, tree) in contenders.items()}
        print(f"trace: {events} events, {text.stat().st_size / 1e6:.1f} MB text, {dat.stat().st_size / 1e6:.1f} MB trace.dat; "
              f"{args.repeats} alternating runs each, wall time")
        rates = {}
        for name, times in runs.items():
            rates[name] = events / statistics.median(times)
            print(f"  {name:<32} median {statistics.median(times):6.2f} s  (min {min(times):.2f}, max {max(times):.2f})"
                  f"  {rates[name] / 1e6:5.2f} M events/s  peak RSS {peaks[name] / 1024:6.0f} MiB")
        for name, samples in stages.items():
            print(f"  stages of {name} (median s): " + ", ".join(
                f"{stage} {statistics.median(s[stage] for s in samples):.2f}" for stage in samples[0]))
        kp, tc = rates["kptrace ingest (tracefs text)"], rates["trace-cmd report (trace.dat)"]
        print(f"ratio kptrace/trace-cmd events/s: {kp / tc:.2f}x (target >= 4x)")
        if args.baseline:
            print(f"speed-up over baseline: {kp / rates['baseline kptrace ingest']:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _peak_rss(command: list[str], tree: Path | None = None) -> int:
    """Peak RSS (KiB) of one more run, measured by GNU time (Debian package `time`)."""
    if not Path("/usr/bin/time").exists():
        return 0
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True, **in_tree(tree))
    return int(result.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
