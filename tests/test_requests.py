"""Requests and disruptions rebuilt from hand-built event tables whose truth is known.

Times below are written in µs and stored in ns. Each trace is the smallest one that shows a
rule: who a softirq is charged to, how a request that is switched out or migrates is
measured, and which syscalls the request model recognises.
"""

from __future__ import annotations

import polars as pl
import pytest

from kptrace.intervals import build_intervals
from kptrace.requests import EPOLL, RECEIVES, SENDS, build_requests, disruptions, softirq_charging
from kptrace.schema import SOFTIRQ_NAMES, conform

US = 1_000
SERVER = 7
FD = 11


class Trace:
    """Events in the order they are added (the order of record), times in µs."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, ts: float, cpu: int, tid: int, subsystem: str, event: str, **fields) -> Trace:
        self.rows.append({"ts": round(ts * US), "cpu": cpu, "tid": tid, "comm": f"t{tid}",
                          "subsystem": subsystem, "event": event, **fields})
        return self

    def hardirq(self, start: float, end: float, cpu: int, tid: int, name: str, raises: str | None = None) -> Trace:
        """A device IRQ (`virtio…`) or an APIC vector (`local_timer`), raising a softirq inside."""
        vector = not name.startswith("virtio")
        if vector:
            self.add(start, cpu, tid, "irq_vectors", f"{name}_entry", vector=236)
        else:
            self.add(start, cpu, tid, "irq", "irq_handler_entry", irq=36, irq_name=name)
        if raises:
            self.raise_softirq((start + end) / 2, cpu, tid, raises)
        if vector:
            return self.add(end, cpu, tid, "irq_vectors", f"{name}_exit", vector=236)
        return self.add(end, cpu, tid, "irq", "irq_handler_exit", irq=36, ret=1)

    def raise_softirq(self, ts: float, cpu: int, tid: int, softirq: str) -> Trace:
        return self.add(ts, cpu, tid, "irq", "softirq_raise", softirq=softirq,
                        softirq_vec=SOFTIRQ_NAMES.index(softirq))

    def softirq(self, start: float, end: float, cpu: int, tid: int, softirq: str) -> Trace:
        vec = SOFTIRQ_NAMES.index(softirq)
        self.add(start, cpu, tid, "irq", "softirq_entry", softirq=softirq, softirq_vec=vec)
        return self.add(end, cpu, tid, "irq", "softirq_exit", softirq=softirq, softirq_vec=vec)

    def enter(self, ts: float, cpu: int, call: str, fd: int = FD) -> Trace:
        return self.add(ts, cpu, SERVER, "syscalls", f"sys_enter_{call}", fd=fd)

    def exit(self, ts: float, cpu: int, call: str, ret: int) -> Trace:
        return self.add(ts, cpu, SERVER, "syscalls", f"sys_exit_{call}", ret=ret)

    def call(self, start: float, end: float, cpu: int, call: str, ret: int) -> Trace:
        return self.enter(start, cpu, call).exit(end, cpu, call, ret)

    def switch(self, ts: float, cpu: int, prev: int, nxt: int) -> Trace:
        return self.add(ts, cpu, prev, "sched", "sched_switch", prev_pid=prev, prev_comm=f"t{prev}",
                        prev_state="R+", next_pid=nxt, next_comm=f"t{nxt}")

    def without(self, event: str) -> Trace:
        trace = Trace()
        trace.rows = [row for row in self.rows if row["event"] != event]
        return trace

    def analyse(self) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        """(intervals, disruptions, requests, hits)."""
        events = conform(pl.DataFrame(self.rows, infer_schema_length=None))
        intervals = build_intervals(events).collect()
        requests, hits = build_requests(intervals.lazy())
        return intervals, disruptions(intervals.lazy()).collect(), requests.collect(), hits.collect()


def _by_source(chains: pl.DataFrame) -> dict[str, dict]:
    return {row["source"]: row for row in chains.iter_rows(named=True)}


# --------------------------------------------------------------------------- charging


def test_a_softirq_raised_inside_a_hard_irq_is_charged_to_that_irq():
    trace = Trace().hardirq(100, 102, 0, SERVER, "virtio1-req.0", raises="BLOCK").softirq(103, 110, 0, SERVER, "BLOCK")
    _, chains, _, _ = trace.analyse()
    assert chains.select("source", "hardirq_ns", "softirq_ns", "span_ns", "n_softirq", "disruptive").rows() == [
        # the 1 µs between the handler's exit and the softirq (irq_exit) goes to the IRQ too
        ("virtio1-req.0", 2 * US, 7 * US, 10 * US, 1, True),
    ]


def test_a_softirq_whose_raiser_is_cut_from_the_table_has_no_source():
    """An interval table cut in time can keep a softirq and lose the hard IRQ that raised it:
    the softirq's chain then starts at an interval the table does not hold, and it has no
    source (nor is it disruptive), rather than another interval's."""
    trace = (Trace().hardirq(100, 102, 0, SERVER, "virtio1-req.0", raises="BLOCK").softirq(103, 110, 0, SERVER, "BLOCK")
             .hardirq(200, 202, 0, SERVER, "local_timer"))
    intervals, _, _, _ = trace.analyse()
    cut = intervals.filter(pl.col("name") != "virtio1-req.0")
    assert cut.height == intervals.height - 1
    chains = disruptions(cut.lazy()).collect()
    assert chains.select("source", "disruptive", "n_softirq").sort("n_softirq").rows() == [
        ("local_timer", True, 0),
        (None, None, 1),
    ]


def _send_interrupted_by_disk() -> Trace:
    """A request whose send raises loopback NET_RX with bottom halves off; a disk IRQ arrives,
    raises BLOCK, and both softirqs run when the send re-enables bottom halves."""
    return (
        Trace()
        .call(190, 191, 0, "epoll_wait", 1)
        .call(200, 202, 0, "read", 64)
        .enter(203, 0, "sendmsg")
        .raise_softirq(204, 0, SERVER, "NET_RX")
        .hardirq(205, 207, 0, SERVER, "virtio1-req.0", raises="BLOCK")
        .softirq(208, 212, 0, SERVER, "NET_RX")
        .softirq(212, 220, 0, SERVER, "BLOCK")
        .exit(222, 0, "sendmsg", 100)
        .call(230, 231, 0, "epoll_wait", 0)
    )


def test_a_softirq_the_task_raised_is_its_own_work_even_when_it_runs_at_an_irq_exit():
    trace = _send_interrupted_by_disk()
    intervals, chains, requests, hits = trace.analyse()
    assert softirq_charging(conform(pl.DataFrame(trace.rows, infer_schema_length=None))) == "raise"
    net_rx = intervals.filter(pl.col("name") == "NET_RX").row(0, named=True)
    assert (net_rx["raise_ts"], net_rx["raised_in"]) == (204 * US, None)
    by_source = _by_source(chains)
    assert set(by_source) == {"virtio1-req.0", "inline:NET_RX"}
    disk, inline = by_source["virtio1-req.0"], by_source["inline:NET_RX"]
    assert (disk["hardirq_ns"], disk["softirq_ns"], disk["span_ns"], disk["disruptive"]) == (2 * US, 8 * US, 10 * US, True)
    assert (inline["softirq_ns"], inline["span_ns"], inline["disruptive"]) == (4 * US, 5 * US, False)
    request = requests.row(0, named=True)
    assert requests.height == 1
    assert (request["dur"], request["disruption_ns"], request["own_ns"]) == (22 * US, 10 * US, 12 * US)
    assert (request["hardirq_ns"], request["softirq_ns"], request["n_irq"]) == (2 * US, 12 * US, 1)
    assert request["sources"] == ["virtio1-req.0"]
    assert hits.select("source", "span_ns").rows() == [("virtio1-req.0", 10 * US)]


def test_without_softirq_raise_events_softirqs_go_to_the_irq_they_ran_straight_after():
    trace = _send_interrupted_by_disk().without("softirq_raise")
    intervals, chains, requests, _ = trace.analyse()
    assert softirq_charging(conform(pl.DataFrame(trace.rows, infer_schema_length=None))) == "adjacency"
    assert intervals["raise_ts"].null_count() == intervals.height
    assert chains.select("source", "n_softirq", "span_ns").rows() == [("virtio1-req.0", 2, 15 * US)]
    assert requests.select("disruption_ns", "own_ns").row(0) == (15 * US, 7 * US)


def test_a_timer_tick_right_after_a_disk_irq_is_a_disruption_of_its_own():
    trace = (
        Trace()
        .hardirq(100, 102, 0, SERVER, "virtio1-req.0", raises="BLOCK").softirq(103, 110, 0, SERVER, "BLOCK")
        .hardirq(111, 113, 0, SERVER, "local_timer", raises="TIMER").softirq(114, 116, 0, SERVER, "TIMER")
    )
    _, chains, _, _ = trace.analyse()
    assert chains.select("disruption_id", "source", "hardirq_ns", "softirq_ns", "span_ns").rows() == [
        (0, "virtio1-req.0", 2 * US, 7 * US, 10 * US),
        (1, "local_timer", 2 * US, 2 * US, 5 * US),
    ]


def test_a_tick_nested_in_a_softirq_is_charged_once_to_the_timer():
    trace = (
        Trace()
        .hardirq(100, 102, 0, SERVER, "virtio1-req.0", raises="BLOCK")
        .add(103, 0, SERVER, "irq", "softirq_entry", softirq="BLOCK", softirq_vec=4)
        .hardirq(105, 106, 0, SERVER, "local_timer")
        .add(110, 0, SERVER, "irq", "softirq_exit", softirq="BLOCK", softirq_vec=4)
    )
    _, chains, _, _ = trace.analyse()
    assert dict(chains.select("source", "span_ns").iter_rows()) == {"virtio1-req.0": 9 * US, "local_timer": 1 * US}


def test_a_softirq_raised_inside_a_softirq_follows_it_to_the_irq():
    trace = (
        Trace()
        .hardirq(100, 102, 0, SERVER, "local_timer", raises="TIMER")
        .add(103, 0, SERVER, "irq", "softirq_entry", softirq="TIMER", softirq_vec=1)
        .raise_softirq(104, 0, SERVER, "RCU")
        .add(105, 0, SERVER, "irq", "softirq_exit", softirq="TIMER", softirq_vec=1)
        .softirq(105, 108, 0, SERVER, "RCU")
    )
    _, chains, _, _ = trace.analyse()
    assert chains.select("source", "n_softirq", "softirq_ns", "span_ns").rows() == [("local_timer", 2, 5 * US, 8 * US)]


# --------------------------------------------------------------------------- requests


def test_a_request_switched_out_on_one_cpu_and_back_on_another_is_measured_across_both():
    trace = (
        Trace()
        .switch(0, 0, 0, SERVER)
        .call(10, 11, 0, "epoll_wait", 1)
        .call(20, 22, 0, "read", 64)
        .enter(30, 0, "sendmsg")
        .switch(40, 0, SERVER, 0)
        .hardirq(45, 46, 0, 0, "local_timer")       # idle CPU0: not the request's
        .switch(55, 1, 0, SERVER)
        .hardirq(57, 58, 1, SERVER, "local_timer")  # interrupts the thread on CPU1
        .exit(60, 1, "sendmsg", 100)
        .call(70, 71, 1, "epoll_wait", 0)
        .switch(100, 1, SERVER, 0)
    )
    _, _, requests, _ = trace.analyse()
    assert requests.select("cpu", "ts", "dur", "n_offcpu", "offcpu_ns", "migrated", "disruption_ns", "own_ns",
                           "sources").rows() == [
        (0, 20 * US, 40 * US, 1, 15 * US, True, 1 * US, 24 * US, ["local_timer"]),
    ]


def test_a_request_preempted_and_resumed_on_its_cpu_is_not_migrated():
    trace = (
        Trace()
        .switch(0, 0, 0, SERVER)
        .call(20, 22, 0, "read", 64)
        .enter(30, 0, "sendmsg")
        .switch(40, 0, SERVER, 99)
        .switch(48, 0, 99, SERVER)
        .exit(60, 0, "sendmsg", 100)
        .switch(100, 0, SERVER, 0)
    )
    _, _, requests, _ = trace.analyse()
    assert requests.select("n_offcpu", "offcpu_ns", "migrated", "own_ns").rows() == [(1, 8 * US, False, 32 * US)]


def test_two_sends_answer_one_read_as_one_request():
    trace = (
        Trace()
        .call(10, 11, 0, "epoll_wait", 1)
        .call(20, 22, 0, "read", 64)
        .call(30, 32, 0, "sendmsg", 1000)
        .call(35, 40, 0, "writev", 24)
        .call(50, 51, 0, "epoll_wait", 0)
    )
    _, _, requests, _ = trace.analyse()
    assert requests.select("ts", "dur", "bytes_in", "bytes_out").rows() == [(20 * US, 20 * US, 64, 1024)]


@pytest.mark.parametrize("receive", RECEIVES)
@pytest.mark.parametrize("send", SENDS)
def test_every_receive_and_send_call_makes_a_request(receive, send):
    trace = Trace().call(10, 11, 0, "epoll_wait", 1).call(20, 22, 0, receive, 10).call(30, 32, 0, send, 20)
    _, _, requests, _ = trace.analyse()
    assert requests.select("bytes_in", "bytes_out", "dur").rows() == [(10, 20, 12 * US)]


@pytest.mark.parametrize("epoll", EPOLL)
def test_every_epoll_call_ends_the_loop_iteration(epoll):
    """A send after the next epoll call does not answer the read before it."""
    trace = Trace().call(20, 22, 0, "read", 10).call(25, 26, 0, epoll, 1).call(30, 32, 0, "sendmsg", 20)
    _, _, requests, _ = trace.analyse()
    assert requests.height == 0
    trace = Trace().call(20, 22, 0, "read", 10).call(25, 26, 0, "getpid", 1).call(30, 32, 0, "sendmsg", 20)
    assert trace.analyse()[2].height == 1


def test_a_switch_the_trace_missed_is_inferred_from_the_tasks_own_events():
    """Linux 6.18 sometimes records no sched_switch from the idle task to a task an IPI woke:
    the task's own events prove it ran. Idle ends at the last idle event (the IPI's exit), the
    server runs from there, and the idle time of the CPU is not overstated."""
    from kptrace.intervals import missed_switches

    trace = (Trace().switch(0, 1, SERVER, 0)                       # the server blocks: idle runs
             .hardirq(10, 12, 1, 0, "call_function_single")       # the wake-up IPI, taken while idle
             .call(14, 15, 1, "epoll_wait", 1)                    # no switch recorded before this
             .call(16, 20, 1, "read", 64).call(21, 25, 1, "sendmsg", 64)
             .switch(30, 1, SERVER, 0))
    intervals, *_ = trace.analyse()
    run = intervals.filter(pl.col("kind") == "running").sort("ts").select("ts", "dur", "tid").rows()
    assert run == [(0, 12 * US, 0), (12 * US, 18 * US, SERVER), (30 * US, None, 0)]
    events = conform(pl.DataFrame(trace.rows, infer_schema_length=None)).collect()
    assert missed_switches(events) == 1
    recorded = Trace()
    recorded.rows = trace.rows[:3] + Trace().switch(13, 1, 0, SERVER).rows + trace.rows[3:]
    assert missed_switches(conform(pl.DataFrame(recorded.rows, infer_schema_length=None)).collect()) == 0
    run = recorded.analyse()[0].filter(pl.col("kind") == "running").sort("ts").select("ts", "dur", "tid").rows()
    assert run == [(0, 13 * US, 0), (13 * US, 17 * US, SERVER), (30 * US, None, 0)]
