"""`kptrace fleet` (kptrace/fleet/): every input analysed as one Dask task, on a LocalCluster and on a
separately started scheduler with two `dask worker` processes, gathered into fleet tables equal to
`kptrace analyze` run on each input alone; a failing input among good ones, a worker killed
mid-run, Ctrl-C, and fleet.html in a real browser (offline).

Inputs are small: simulated traces of 0.2 s (`kptrace simulate`) and one sample bundle."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import psutil
import pytest
from polars.testing import assert_frame_equal

from kptrace import tables
from kptrace.fleet.run import open_client
from kptrace.fleet.tables import fleet_schema, worst_cpu
from kptrace.fleet.tasks import STARTED_TOPIC, input_names, machine_identity
from kptrace.simulate import Scenario, write_simulation
from test_report import check_html, check_page, chromium, render  # noqa: F401 - chromium is a fixture

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "sample_traces" / "memcached-baseline"
# One Polars and one BLAS thread in every process, as Dask's nanny gives its workers.
ENV = os.environ | {"PYTHONPATH": str(ROOT), "POLARS_MAX_THREADS": "1", "OMP_NUM_THREADS": "1",
                    "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
GATHERED = ("attribution", "requests", "whatif")


def kptrace(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kptrace.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def simulated(directory: Path, seeds: range, duration: float = 0.2) -> list[Path]:
    """Simulated traces as plain files (the simulation's truth.json left elsewhere)."""
    directory.mkdir(parents=True, exist_ok=True)
    traces = []
    for seed in seeds:
        trace = write_simulation(directory.parent / f"sim-{seed}", Scenario(duration_s=duration, seed=seed))
        traces.append(Path(shutil.copy(trace, directory / f"sim{seed}.txt")))
    return traces


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A directory of two simulated traces, a file no reader recognises, and one sample bundle."""
    directory = tmp_path_factory.mktemp("fleet") / "inputs"
    simulated(directory, range(1, 3))
    (directory / "notes.txt").write_text("these are not trace lines\n")
    os.symlink(BUNDLE, directory / BUNDLE.name)
    return directory


@pytest.fixture(scope="module")
def local_run(inputs, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("local") / "out"
    return kptrace("fleet", str(inputs), "-o", str(out), "--workers", "2"), out


def assert_same_table(fleet: pl.DataFrame, expected: pl.DataFrame, name: str) -> None:
    """Exactly equal, the what-if bootstrap bounds included (same input, same output)."""
    assert_frame_equal(fleet, expected, check_exact=True)


def _analyzed_alone(inputs: Path, base: Path) -> dict[str, pl.DataFrame]:
    """The gathered tables built from `kptrace analyze` run on each good input by itself."""
    frames = {name: [] for name in GATHERED}
    for item in sorted(inputs.iterdir()):
        if item.name == "notes.txt":
            continue
        name = item.stem if item.is_file() else item.name
        out = base / name
        assert kptrace("analyze", str(item), "-o", str(out), "-q").returncode == 0
        identity = {"input": name} | machine_identity(item)
        keys = [pl.lit(value, pl.String).alias(key) for key, value in identity.items()]
        summary = json.loads((out / "summary.json").read_text())
        per_input = {"attribution": pl.read_parquet(out / "attribution.parquet"),
                     "requests": pl.DataFrame(summary["requests"]["by_disrupted"]),
                     "whatif": pl.read_parquet(out / "whatif.parquet")}
        for table, frame in per_input.items():
            frames[table].append(frame.select(*keys, pl.all()))
    return {name: pl.concat(parts, how="vertical_relaxed").cast(fleet_schema(name)) for name, parts in frames.items()}


def test_fleet_tables_equal_analyze_run_on_each_input_alone(local_run, inputs, tmp_path):
    result, out = local_run
    alone = _analyzed_alone(inputs, tmp_path)
    for name in GATHERED:
        fleet = pl.read_parquet(out / "fleet" / f"{name}.parquet")
        assert list(fleet.schema.items()) == list(fleet_schema(name).items())
        assert_same_table(fleet, alone[name], name)
    # Each input's own outputs are those of analyze, in its own folder.
    for folder in ("sim1", "sim2", BUNDLE.name):
        assert {"attribution.parquet", "summary.json", "report.html", "timeline.perfetto-trace.gz"} <= {
            p.name for p in (out / folder).iterdir()}


def test_a_failing_input_does_not_stop_the_others(local_run):
    result, out = local_run
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("kptrace: error:")]
    assert len([e for e in errors if "notes.txt" in e]) == 1
    assert "Traceback" not in result.stderr
    fleet = json.loads((out / "fleet.json").read_text())
    status = {row["input"]: (row["status"], row["error"]) for row in fleet["inputs"]}
    assert status["notes"][0] == "failed" and "unknown format" in status["notes"][1]
    assert all(status[name] == ("ok", None) for name in ("sim1", "sim2", BUNDLE.name))
    assert fleet["counts"] == {"inputs": 4, "ok": 3, "failed": 1}
    assert not (out / "notes").exists()


def test_bundle_rows_carry_the_machine_snapshot_and_plain_files_unknown(local_run):
    _, out = local_run
    inputs = pl.read_parquet(out / "fleet" / "inputs.parquet")
    bundle = inputs.filter(pl.col("input") == BUNDLE.name).row(0, named=True)
    manifest = json.loads((BUNDLE / "manifest.json").read_text())
    assert (bundle["host"], bundle["kernel"]) == (manifest["hostname"], manifest["kernel"])
    assert bundle["cpu_model"] in (BUNDLE / "machine" / "cpuinfo.txt").read_text()
    assert "virtio_net" in bundle["nic"] and "lo (" not in bundle["nic"]
    sim = inputs.filter(pl.col("input") == "sim1").row(0, named=True)
    assert {sim[k] for k in ("host", "kernel", "cpu_model", "nic")} == {"unknown"}


def test_fleet_ranks_inputs_by_the_capacity_their_worst_cpu_loses(local_run):
    _, out = local_run
    attribution = pl.read_parquet(out / "fleet" / "attribution.parquet")
    fleet = json.loads((out / "fleet.json").read_text())
    ranked = fleet["hosts_by_capacity_lost"]["rows"]
    assert [r["capacity_loss"] for r in ranked] == sorted((r["capacity_loss"] for r in ranked), reverse=True)
    for row in ranked:
        mine = attribution.filter(pl.col("input") == row["input"])
        per_cpu = mine.group_by("cpu").agg(pl.col("capacity_loss").fill_null(0).sum())
        assert row["capacity_loss"] == pytest.approx(per_cpu["capacity_loss"].max())
        assert row["worst_cpu"] == per_cpu.sort("capacity_loss", descending=True)["cpu"][0]
    assert fleet["hosts_by_capacity_lost"]["provenance"]["capacity_loss"] == "modelled"
    policies = fleet["policies_by_predicted_gain"]["rows"]
    assert policies and "vanilla" not in {r["policy"] for r in policies}
    assert all(r["capacity_ratio_lo"] <= r["capacity_ratio"] <= r["capacity_ratio_hi"] for r in policies)


def test_fleet_report_renders_offline(local_run, chromium, tmp_path):  # noqa: F811 - the fixture
    _, out = local_run
    text = (out / "fleet.html").read_text()
    check_html(text, 3)
    charts, found, state = render(chromium, out / "fleet.html", tmp_path, tmp_path / "fleet.png")
    check_page(charts, found, state, ["hosts", "sources", "policies"])
    shown = {t for c in charts for t in c["texts"]}
    assert {"sim1 · unknown · CPU 1", f"{BUNDLE.name} · vm · CPU 1"} & shown
    assert "notes" in text and "unknown format" in text  # the failed input is listed with its error


# --------------------------------------------------------------------------- a real distributed cluster


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def dask_cluster(tmp: Path, workers: int = 2):
    """`dask scheduler` and `dask worker` processes (no nanny: a killed worker stays dead) on
    127.0.0.1; yields (address, client); always kills them."""
    from distributed import Client

    dask = shutil.which("dask") or pytest.fail("the dask command is not installed (pip install 'dask[distributed]')")
    address = f"tcp://127.0.0.1:{_free_port()}"
    procs, client = [], None
    logs = [open(tmp / f"dask-{i}.log", "w") for i in range(workers + 1)]  # noqa: SIM115 - closed below
    try:
        procs.append(subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                       "--dashboard-address", f"127.0.0.1:{_free_port()}"],
                                      env=ENV, stdout=logs[0], stderr=subprocess.STDOUT))
        for i in range(workers):
            procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-nanny", "--host",
                                           "127.0.0.1", "--no-dashboard", "--memory-limit", "4GB"],
                                          env=ENV, stdout=logs[i + 1],
                                          stderr=subprocess.STDOUT))
        client = Client(address, timeout="60s")
        client.wait_for_workers(workers, timeout=120)
        yield address, client
    finally:
        if client is not None:
            client.close()
        for proc in procs:
            proc.kill()
            proc.wait()
        for log in logs:
            log.close()


def test_a_separate_scheduler_and_two_workers_give_the_local_cluster_tables(local_run, inputs, tmp_path):
    _, local_out = local_run
    out = tmp_path / "out"
    with dask_cluster(tmp_path) as (address, client):
        result = kptrace("fleet", str(inputs), "-o", str(out), "--scheduler", address)
        started = client.get_events(STARTED_TOPIC)
    assert result.returncode == 1, result.stderr  # notes.txt fails here too
    assert len({event["worker"] for _, event in started}) == 2  # both workers ran tasks
    for name in (*GATHERED, "inputs"):
        assert_same_table(pl.read_parquet(out / "fleet" / f"{name}.parquet"),
                          pl.read_parquet(local_out / "fleet" / f"{name}.parquet"), name)


def test_a_worker_killed_mid_run_has_its_task_retried_on_the_other(tmp_path):
    traces = simulated(tmp_path / "inputs", range(11, 14))
    out = tmp_path / "out"
    with dask_cluster(tmp_path) as (address, client):
        fleet = subprocess.Popen([sys.executable, "-m", "kptrace.cli", "fleet", *map(str, traces), "-o", str(out),
                                  "--scheduler", address], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        deadline = time.monotonic() + 300
        while not (running := client.get_events(STARTED_TOPIC)):  # a task has begun its analysis
            assert time.monotonic() < deadline and fleet.poll() is None, "no task started"
            time.sleep(0.1)
        victim = running[0][1]["worker"]
        time.sleep(0.5)  # well inside the task: each takes seconds
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = fleet.communicate(timeout=600)
        started = client.get_events(STARTED_TOPIC)
    assert fleet.returncode == 0, stderr
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    by_path = {}
    for _, event in started:
        by_path.setdefault(event["path"], []).append(event["worker"])
    retried = [workers for workers in by_path.values() if victim in workers and workers[-1] != victim]
    assert retried, by_path  # the killed worker's task ran again, on the other worker
    fleet_json = json.loads((out / "fleet.json").read_text())
    assert [row["status"] for row in fleet_json["inputs"]] == ["ok"] * 3


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def test_ctrl_c_cancels_the_run_and_leaves_no_worker_process(tmp_path):
    # Seconds of simulated load each: a worker is still analysing when it has spent 3 s of CPU.
    traces = simulated(tmp_path / "inputs", range(21, 25), duration=1.0)
    out = tmp_path / "out"
    fleet = subprocess.Popen([sys.executable, "-m", "kptrace.cli", "fleet", *map(str, traces), "-o", str(out),
                              "--workers", "2"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    deadline = time.monotonic() + 120
    while len(workers := [p for p in _descendants(fleet.pid) if "python" in p.name()]) < 2 or not any(
            p.cpu_times().user > 3 for p in workers):  # both workers up, one busy analysing
        assert time.monotonic() < deadline and fleet.poll() is None, "the workers never started"
        time.sleep(0.2)
    spawned = _descendants(fleet.pid)
    os.killpg(fleet.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    _, stderr = fleet.communicate(timeout=120)
    assert fleet.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    gone, alive = psutil.wait_procs(spawned, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    assert not (out / "fleet.json").exists()


def _ignores_interrupts() -> bool:
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_a_restarted_worker_still_leaves_ctrl_c_to_the_fleet_process():
    handler = signal.getsignal(signal.SIGINT)  # a background job (CI) may start with SIGINT ignored
    client, cluster = open_client(None, 1)
    try:
        client.restart()  # the new worker is spawned after the fleet process took SIGINT back
        assert list(client.run(_ignores_interrupts).values()) == [True]
    finally:
        client.close()
        cluster.close()
    assert signal.getsignal(signal.SIGINT) == handler  # this process handles Ctrl-C as before


# --------------------------------------------------------------------------- pure parts


def test_input_names_never_collide_nor_take_the_fleet_outputs_names(tmp_path):
    paths = [tmp_path / "a" / "trace.txt", tmp_path / "b" / "trace.txt", tmp_path / "trace.txt.zst",
             tmp_path / "fleet", tmp_path / "x.1.txt.zst"]
    names = input_names(paths)
    assert len(set(names.values())) == len(paths)
    assert not set(names.values()) & {"fleet", "fleet.json", "fleet.html"}
    assert names[paths[-1]] == "x.1"


def test_machine_identity_is_unknown_for_a_plain_file(tmp_path):
    (tmp_path / "t.txt").write_text("x")
    assert set(machine_identity(tmp_path / "t.txt").values()) == {"unknown"}


def test_worst_cpu_sums_each_cpus_sources_and_counts_a_missing_loss_as_zero():
    attribution = pl.DataFrame({"cpu": [0, 0, 1, 1], "source": ["a", "b", "c", "d"],
                                "capacity_loss": [0.05, None, 0.03, 0.04],
                                "capacity_loss_ci": [0.01, None, 0.002, 0.003]})
    assert worst_cpu(attribution) == {"worst_cpu": 1, "capacity_loss": pytest.approx(0.07),
                                      "capacity_loss_ci": pytest.approx(0.005), "top_source": "d"}


def test_fleet_declarations_keep_the_interval_contract():
    for table in tables.FLEET_TABLES.values():
        assert [c.name for c in table.columns[:5]] == ["input", "host", "kernel", "cpu_model", "nic"]
        for figure in table.columns:
            for name in (figure.ci, *figure.bounds):
                if name:
                    interval = next(c for c in table.columns if c.name == name)
                    assert (interval.unit, interval.provenance) == (figure.unit, figure.provenance)
    assert "## fleet/inputs.parquet" in tables.tables_markdown()
