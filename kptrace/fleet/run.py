"""Run one fleet task per input on Dask distributed: a LocalCluster of worker processes on this
machine, or the cluster behind a scheduler address. Dask, not a home-made pool, so that the same
command scales from a laptop to a cluster, retries a task whose worker died, and cancels cleanly."""

from __future__ import annotations

import logging
import signal
import os
import sys
import threading
import time
from pathlib import Path

from distributed import WorkerPlugin

from kptrace.fleet.tasks import STARTED_TOPIC, analyze_input, input_names, machine_identity

#: Per-task memory bound, the one issue 9 sets for a 50 M-event capture: a worker runs one task at
#: a time (one thread), so its limit is the task's. Dask restarts a worker that passes it.
MEMORY_PER_TASK = "4GB"
#: How many times Dask reruns a task that raised or whose worker died, before it counts as failed.
RETRIES = 2
CONNECT_TIMEOUT = "10s"


class IgnoreInterrupts(WorkerPlugin):
    """Worker plugin: the worker ignores SIGINT, so Ctrl-C reaches only the fleet process, which
    cancels the tasks and closes the cluster. Inheritance alone is not enough: a worker that Dask
    restarts is spawned after the fleet process took SIGINT back."""

    name = "kptrace-ignore-interrupts"

    def setup(self, worker) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


class FleetError(Exception):
    """The fleet could not run at all (no inputs, no scheduler): one line for the user."""


def open_client(scheduler: str | None, workers: int | None):
    """(client, cluster): the scheduler's cluster, or a LocalCluster of `workers` processes (default
    one per core) that we own and close."""
    from distributed import Client, LocalCluster

    # Cancelling tasks (Ctrl-C) makes the nannies log their CancelledError tracebacks at ERROR:
    # an interrupted fleet says so in one line of its own instead.
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    if scheduler is not None:
        try:
            return Client(scheduler, timeout=CONNECT_TIMEOUT), None
        except (OSError, TimeoutError, ValueError) as error:
            raise FleetError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
    count = workers or os.cpu_count() or 1
    # Each worker's Polars gets its share of the cores, so that workers do not oversubscribe them.
    threads = str(max(1, (os.cpu_count() or 1) // count))
    # Ctrl-C reaches the whole process group: the workers start with SIGINT ignored (inherited) and
    # keep ignoring it after a restart (IgnoreInterrupts), so only this process handles it.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True, memory_limit=MEMORY_PER_TASK,
                               dashboard_address=None, silence_logs=logging.CRITICAL,
                               env={"POLARS_MAX_THREADS": threads})
    finally:
        signal.signal(signal.SIGINT, previous)
    client = Client(cluster)
    client.register_plugin(IgnoreInterrupts())
    return client, cluster


def failed_result(path: Path, out: Path, error: BaseException) -> dict:
    """The result of a task Dask gave up on (it raised on every try, or killed its workers)."""
    line = " ".join(f"{type(error).__name__}: {error}".split())
    return {"path": str(path), "out": str(out), "identity": machine_identity(path), "status": "failed",
            "error": f"{path}: {line}"}


class Progress:
    """Inputs done / running / failed, on stderr: a rich bar on a terminal, else a line per input."""

    def __init__(self, total: int, enabled: bool):
        from rich.console import Console

        self.total, self.done, self.failed, self.started = total, 0, 0, set()
        self.lock = threading.Lock()
        self.console = Console(stderr=True)
        self.bar = None
        if enabled and self.console.is_terminal:
            from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn

            self.bar = Bar(TextColumn("kptrace fleet"), BarColumn(), TextColumn("{task.description}"),
                           TimeElapsedColumn(), console=self.console)
            self.task = self.bar.add_task(self._counts(), total=total)
            self.bar.start()
        self.enabled, self.began = enabled, time.monotonic()

    def _counts(self) -> str:
        running = len(self.started) - self.done
        return f"{self.done}/{self.total} done · {max(running, 0)} running · {self.failed} failed"

    def _show(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, description=self._counts())

    def started_event(self, event) -> None:
        """A task's start, heard from its worker (Dask event topic)."""
        with self.lock:
            self.started.add(event[1]["path"])
            self._show()

    def finished(self, result: dict, name: str) -> None:
        with self.lock:
            self.done += 1
            self.started.add(result["path"])
            self.failed += result["status"] == "failed"
            self._show()
            if self.bar is None and self.enabled:
                print(f"kptrace: [{time.monotonic() - self.began:6.1f} s] {name}: {result['status']} "
                      f"({self._counts()})", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_tasks(client, jobs: dict[str, tuple[Path, Path]], progress: Progress) -> dict[str, dict]:
    """Submit one task per input, gather their results as they finish (each with its `input`
    name), and cancel whatever is left if interrupted."""
    from distributed import as_completed

    client.subscribe_topic(STARTED_TOPIC, progress.started_event)
    futures = {client.submit(analyze_input, path, out, key=f"kptrace-fleet-{name}", pure=False,
                             retries=RETRIES): name for name, (path, out) in jobs.items()}
    results = {}
    try:
        for future in as_completed(futures):
            name = futures[future]
            path, out = jobs[name]
            try:
                result = future.result()
            except Exception as error:  # noqa: BLE001 - Dask gave up on it: its error is the input's result
                result = failed_result(path, out, error)
            if result["status"] == "failed":
                print(f"kptrace: error: {result['error']}", file=sys.stderr, flush=True)
            results[name] = result | {"input": name}
            progress.finished(result, name)
    except BaseException:
        client.cancel(list(futures), force=True)
        raise
    finally:
        client.unsubscribe_topic(STARTED_TOPIC)
    return results


def run_fleet(inputs: list[Path], out: Path, scheduler: str | None = None, workers: int | None = None,
              progress: bool = True) -> tuple[dict, list[dict]]:
    """Analyze every input as one Dask task into OUT/<input>/, then write the fleet tables,
    fleet.json and fleet.html; return (fleet.json's content, the results in input order)."""
    from kptrace.fleet.report import write_fleet_report
    from kptrace.fleet.tables import write_fleet

    if not inputs:
        raise FleetError("no inputs: give bundles, trace files or directories of them")
    out = out.absolute()
    names = input_names(inputs)
    jobs = {name: (path.absolute(), out / name) for path, name in names.items()}
    bar = Progress(len(jobs), progress)
    client, cluster = open_client(scheduler, workers)
    try:
        results = run_tasks(client, jobs, bar)
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
    ordered = [results[name] for name in jobs]
    summary = write_fleet(out, ordered)
    write_fleet_report(out / "fleet.html", summary)
    return summary, ordered
