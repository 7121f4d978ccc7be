"""The replay's request stepping (kptrace.whatif.replay) gives exactly what stepping every piece
of work on the walker gives: the compiled stepping (steps.c) must follow the walker's rules to
the ns."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kptrace.walker import Arrival, CoreWalker, direct_span
from kptrace.whatif.replay import MAX_PERIODS, CoreInput, replay_core


def walker_replay(core: CoreInput, saturated: bool) -> tuple:
    """The reference: every request's loop work, wait, wake-up and demand stepped on the walker,
    at saturation over every arrival repeated MAX_PERIODS times."""
    arrivals = ([replace(a, ts=a.ts + k * core.period_ns) for k in range(MAX_PERIODS) for a in core.arrivals]
                if saturated else list(core.arrivals))
    taken = []

    def take(at: int, arrival: Arrival) -> int:
        taken.append((at, arrival))
        return direct_span(at, arrival)

    walker = CoreWalker(arrivals, core.start_ns, take)
    starts, ends = [], []
    for i in range(len(core.demand_ns)):
        walker.work(int(core.pre_ns[i]), False)
        ready, wake = int(core.ready_ts[i]), int(core.wake_ns[i])
        if not saturated and ready > walker.now:
            walker.idle_until(ready - wake)
            walker.work(wake, False)
        walker.work(int(core.post_ns[i]), False)
        starts.append(walker.now)
        walker.work(int(core.demand_ns[i]), True)
        ends.append(walker.now)
    interrupts = int(np.searchsorted(np.array([a.ts for a in arrivals], np.int64), walker.now))
    return starts, ends, walker.busy_ns, walker.now - core.start_ns, interrupts, tuple(taken)


# Small times, so that arrivals often fall on the edges of requests, waits and wake-ups.
costs = st.integers(0, 300)
requests = st.lists(st.tuples(costs, costs, st.integers(0, 80), costs, st.integers(-1, 20_000)),
                    min_size=1, max_size=400)
interrupts = st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 400), st.integers(0, 300),
                                st.integers(0, 200)), max_size=40)


def core_input(rows: list, raw_arrivals: list, start: int = 1_000) -> CoreInput:
    pre, post, wake, demand, ready = (np.array(col, np.int64) for col in zip(*rows))
    # ready times as a trace gives them: -1 (back to back) or rising wake-up times
    ready = np.where(ready < 0, -1, start + np.maximum.accumulate(np.maximum(ready, 0)))
    arrivals = tuple(Arrival(start + ts, "src", handler, softirq, indirect)
                     for ts, handler, softirq, indirect in raw_arrivals)
    return CoreInput(cpu=0, start_ns=start, period_ns=20_000, ready_ts=ready, pre_ns=pre, wake_ns=wake,
                     post_ns=post, demand_ns=demand, arrivals=arrivals, hit_indirect={})


@settings(max_examples=300, deadline=None)
@given(requests, interrupts, st.booleans())
def test_stepping_requests_past_the_walker_changes_no_figure(rows, raw_arrivals, saturated):
    core = core_input(rows, raw_arrivals)
    run, recorded = replay_core(core, saturated), replay_core(core, saturated, record=True)
    starts, ends, busy, window, interrupts, taken = walker_replay(core, saturated)
    assert run.starts.tolist() == starts and run.ends.tolist() == ends
    assert (run.busy_ns, run.window_ns, run.interrupts) == (busy, window, interrupts)
    assert recorded.taken == taken and recorded.ends.tolist() == ends


def test_an_interrupt_landing_in_a_request_stretches_it_and_the_next_waits_less():
    # request 0 runs [1000, 1600); a 100 ns IRQ (50 ns indirect) arrives at 1300 inside it;
    # request 1 is ready at 2000 and wakes with 100 ns: it idles until 1900, not 2000 - 150.
    core = core_input([(0, 0, 0, 600, -1), (0, 0, 100, 300, 1_000)], [(300, 100, 0, 50)])
    run = replay_core(core, saturated=False)
    assert run.starts.tolist() == [1_000, 2_000] and run.ends.tolist() == [1_750, 2_300]
    assert run.busy_ns == 750 + 100 + 300 and run.window_ns == 1_300 and run.interrupts == 1


def test_an_arrival_on_the_last_ns_of_a_request_stretches_it_and_one_at_its_end_does_not():
    rows = [(0, 0, 0, 600, -1), (0, 0, 0, 300, -1)]
    inside = replay_core(core_input(rows, [(599, 100, 0, 0)]), saturated=False)
    at_end = replay_core(core_input(rows, [(600, 100, 0, 0)]), saturated=False)
    assert inside.ends.tolist() == [1_700, 2_000]
    assert at_end.ends.tolist() == [1_600, 2_000]


def test_a_request_ready_one_ns_too_soon_to_sleep_wakes_right_after_the_previous_one():
    # request 1 would have to start waking at 1599, but request 0 ends at 1600: no idle, and the
    # wake-up IPI's 100 ns run from 1600, so it starts at 1700, not at its ready time 1699.
    core = core_input([(0, 0, 0, 600, -1), (0, 0, 100, 300, 699), (0, 0, 100, 300, 1_500)], [])
    run = replay_core(core, saturated=False)
    assert run.starts.tolist() == [1_000, 1_700, 2_500] and run.ends.tolist() == [1_600, 2_000, 2_800]
    assert run.busy_ns == 600 + 100 + 300 + 100 + 300 and run.window_ns == 1_800


def test_an_interrupt_that_spares_a_wake_up_leaves_an_early_delay_that_a_later_request_may_wait_out():
    # with no interrupt, request 1 (ready 1650) wakes the core at 1600 and ends at 2000, request 2
    # (ready 1980) needs no wake-up; a 60 ns IRQ in request 0 moves request 1 past its ready time,
    # so it skips the wake-up and ends 40 ns early, at 1960: request 2 must then wake the core.
    core = core_input([(0, 0, 0, 600, -1), (0, 0, 100, 300, 650), (0, 0, 100, 300, 980)], [(300, 60, 0, 0)])
    run = replay_core(core, saturated=False)
    assert run.starts.tolist() == [1_000, 1_660, 2_060] and run.ends.tolist() == [1_660, 1_960, 2_360]
    assert (run.starts.tolist(), run.ends.tolist()) == walker_replay(core, False)[:2]


# Long runs back to back (few requests wait) crossed by many interrupts whose indirect costs
# often exceed a request, so that where one lands moves where the next ones land.
dense_requests = st.lists(st.tuples(costs, costs, st.integers(0, 80), costs,
                                    st.one_of(st.just(-1), st.just(-1), st.just(-1), st.integers(0, 60_000))),
                          min_size=1, max_size=600)
dense_interrupts = st.lists(st.tuples(st.integers(0, 60_000), st.integers(0, 400), st.integers(0, 300),
                                      st.integers(0, 3_000)), max_size=300)


@settings(max_examples=200, deadline=None)
@given(dense_requests, dense_interrupts, st.booleans())
def test_long_back_to_back_runs_under_many_interrupts_step_as_on_the_walker(rows, raw_arrivals, saturated):
    core = replace(core_input(rows, raw_arrivals), period_ns=60_000)
    run = replay_core(core, saturated)
    starts, ends, busy, window, interrupts, _ = walker_replay(core, saturated)
    assert run.starts.tolist() == starts and run.ends.tolist() == ends
    assert (run.busy_ns, run.window_ns, run.interrupts) == (busy, window, interrupts)


# A saturated replay of a few periods' work: it reaches some of the MAX_PERIODS repeats of the
# arrivals, and tiles only those it can reach (replay._repeats_reached).
short_requests = st.lists(st.tuples(costs, costs, st.integers(0, 80), costs, st.just(-1)), min_size=1, max_size=20)
period_interrupts = st.lists(st.tuples(st.integers(0, 2_500), st.integers(0, 400), st.integers(0, 300),
                                       st.integers(0, 200)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(short_requests, period_interrupts)
def test_a_saturated_replay_over_a_few_periods_steps_as_on_the_walker(rows, raw_arrivals):
    core = replace(core_input(rows, raw_arrivals), period_ns=2_000)
    for run in (replay_core(core, True), replay_core(core, True, record=True)):
        starts, ends, busy, window, interrupts, taken = walker_replay(core, True)
        assert run.starts.tolist() == starts and run.ends.tolist() == ends
        assert (run.busy_ns, run.window_ns, run.interrupts) == (busy, window, interrupts)
    assert run.taken == taken
