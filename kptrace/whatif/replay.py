"""A per-core discrete-event replay of a request stream with interrupt arrivals, on the walker
that `kptrace simulate` also steps (kptrace.walker).

Each request waits for its ready time (the core's wake-up before it in the trace; none when it
followed the previous one back to back), waking the core if it is idle (the wake-up IPI's time),
then the loop work before it runs, then its demand;
interrupts are taken as they arrive, stretch the work they land in by their direct cost, and a
request they land in by their indirect cost. At saturation every request is ready at once, and
the measured arrivals repeat with the trace's period for as long as the replay lasts.

Under a network policy a core's NIC queue (kptrace.whatif.nic) replaces the NIC IRQs measured
on it: the packets the trace's NAPI polls found arrive again, and the queue decides when an
IRQ or timer interrupts and how much each poll costs; each request an epoll_wait returned
first busy-polls the queue before it, when the policy polls from the syscall.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

import numpy as np

from kptrace.errors import compiled_part
from kptrace.walker import Arrival, CoreWalker, direct_span
from kptrace.whatif.arrivals import Arrivals
from kptrace.whatif.nic import NicCosts, NicPolicy, NicQueue, epoll_poll

#: The measured arrivals repeat at most this many times to cover a saturated replay.
MAX_PERIODS = 4


@dataclass(frozen=True)
class CoreInput:
    """One serving core's replay input (kptrace.whatif.inputs), as arrays."""

    cpu: int
    start_ns: int
    period_ns: int
    ready_ts: np.ndarray   # int64, -1 where the request followed the previous one back to back
    pre_ns: np.ndarray
    wake_ns: np.ndarray    # the wake-up IPI's time, charged only when the core is idle before the request
    post_ns: np.ndarray
    demand_ns: np.ndarray
    #: Interrupt arrivals (any iterable of kptrace.walker.Arrival is taken and held as Arrivals).
    arrivals: Arrivals
    #: Per source, the slowdown its measured hits left in each request's demand (inputs.hit_indirect).
    hit_indirect: dict[str, np.ndarray]
    #: The NIC queue of this core (kptrace.whatif.inputs.nic_inputs): packet arrival times and
    #: costs; `epoll` marks the requests an epoll_wait returned just before. None: no NIC.
    nic_packets: np.ndarray | None = None
    nic_costs: NicCosts | None = None
    epoll: np.ndarray | None = None
    #: Set by a network policy: the NIC queue is replayed under it (its measured IRQs removed).
    nic_policy: NicPolicy | None = None

    def __post_init__(self):
        if not isinstance(self.arrivals, Arrivals):
            object.__setattr__(self, "arrivals", Arrivals.of(self.arrivals))


@dataclass(frozen=True)
class CoreRun:
    """What one replay of one core gave: request start/end times and where the time went."""

    starts: np.ndarray
    ends: np.ndarray
    busy_ns: int
    window_ns: int
    interrupts: int
    #: With `record=True`: each interrupt taken as (start ns, arrival), in the order taken.
    taken: tuple[tuple[int, Arrival], ...] = ()


class _Tiled:
    """The measured arrivals repeated (MAX_PERIODS times at saturation, else once), `period_ns`
    apart, in time order (ties in repeat order, as a stable sort leaves them); each Arrival is
    built only when the walker takes it: a replay takes a few of them one at a time, and building
    them all was a third of its time and most of its memory."""

    __slots__ = ("arrivals", "period_ns", "order")

    def __init__(self, arrivals: Arrivals, period_ns: int, order: np.ndarray):
        self.arrivals, self.period_ns, self.order = arrivals, period_ns, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> Arrival:
        k, j = divmod(int(self.order[i]), len(self.arrivals))
        a = self.arrivals[j]
        return Arrival(a.ts + k * self.period_ns, a.source, a.handler_ns, a.softirq_ns, a.indirect_ns)


def replay_core(core: CoreInput, saturated: bool, record: bool = False) -> CoreRun:
    """Replay one core at the recorded load (ready times kept) or at saturation (none kept).
    `record` keeps when each interrupt was taken (for a timeline)."""
    repeats = (_repeats_reached(core) if core.nic_policy is None else MAX_PERIODS) if saturated else 1
    tiled = (core.arrivals.ts[None, :] + core.period_ns * np.arange(repeats, dtype=np.int64)[:, None]).ravel()
    order = np.argsort(tiled, kind="stable")
    arrivals = _Tiled(core.arrivals, core.period_ns, order)
    ready = np.full(len(core.demand_ns), -1, np.int64) if saturated else core.ready_ts
    if core.nic_policy is None:
        now, busy_ns, starts, ends, taken_at = _stepped(core, ready, tiled[order], order, repeats, record)
        taken = tuple(zip(taken_at.tolist(), map(arrivals.__getitem__, range(len(taken_at))))) if record else ()
        fired = 0
    else:
        now, busy_ns, starts, ends, taken, fired = _stepped_with_nic(core, ready, arrivals, tiled[order], saturated,
                                                                     record)
    return CoreRun(starts=starts, ends=ends, busy_ns=busy_ns, window_ns=now - core.start_ns,
                   interrupts=_count_before(core, MAX_PERIODS if saturated else 1, now) + fired, taken=taken)


def _stepped(core: CoreInput, ready: np.ndarray, stamps: np.ndarray, order: np.ndarray, repeats: int,
             record: bool):
    """The requests stepped through the tiled arrivals (`stamps`, in `order` of the repeats) by the
    compiled walker (steps.c): the walker's end and busy time, each request's start and end, and
    with `record` when each arrival it took was taken (else None)."""
    ffi, lib = compiled_part("kptrace.whatif._steps", "what-if replay")
    as_int64 = [np.ascontiguousarray(a, np.int64) for a in (
        ready, core.pre_ns, core.wake_ns, core.post_ns, core.demand_ns, stamps,
        np.tile(core.arrivals.span_ns, repeats)[order], np.tile(core.arrivals.indirect_ns, repeats)[order])]
    n = len(core.demand_ns)
    starts, ends = np.empty(n, np.int64), np.empty(n, np.int64)
    taken_at = np.empty(len(stamps), np.int64) if record else None
    state = np.array([core.start_ns, 0, 0, 0, 0], np.int64)  # now, busy, idle, irq, next arrival

    def pointer(array: np.ndarray):
        return ffi.from_buffer("int64_t[]", array)

    work, arrivals = as_int64[:5], as_int64[5:]
    lib.step_requests(n, *map(pointer, work), len(stamps), *map(pointer, arrivals), pointer(starts), pointer(ends),
                      ffi.NULL if taken_at is None else pointer(taken_at), pointer(state))
    now, busy_ns, _, _, taken = state.tolist()
    return now, busy_ns, starts, ends, None if taken_at is None else taken_at[:taken]


def _stepped_with_nic(core: CoreInput, ready: np.ndarray, arrivals: _Tiled, stamps: np.ndarray, saturated: bool,
                      record: bool):
    """The requests stepped on the walker beside the core's NIC queue replayed under its policy,
    each request an epoll_wait returned first busy-polling it when the policy polls from the
    syscall: as _stepped, with the taken arrivals themselves when `record`, and how many
    interrupts the queue fired."""
    taken: list[tuple[int, Arrival]] = []

    def take_and_record(start_ts: int, arrival: Arrival) -> int:
        taken.append((start_ts, arrival))
        return direct_span(start_ts, arrival)

    walker = CoreWalker.in_order(arrivals, stamps.tolist(), core.start_ns, take_and_record if record else None)
    packets = core.nic_packets
    if saturated:
        packets = (packets[None, :] + core.period_ns * np.arange(MAX_PERIODS)[:, None]).ravel()
    queue = walker.nic = NicQueue(packets.tolist(), core.nic_costs, core.nic_policy)
    n = len(core.demand_ns)
    starts, ends = np.empty(n, np.int64), np.empty(n, np.int64)
    ready, pre, wake, post, demand, polls = (values.tolist() for values in (
        ready, core.pre_ns, core.wake_ns, core.post_ns, core.demand_ns, core.epoll))
    for i in range(n):
        walker.work(pre[i], False)
        if polls[i]:
            epoll_poll(walker, queue, -1 if saturated else ready[i] - wake[i])
        starts[i], ends[i] = _request_on_walker(walker, ready[i], wake[i], post[i], demand[i])
    return walker.now, walker.busy_ns, starts, ends, tuple(taken), queue.fired


def _repeats_reached(core: CoreInput) -> int:
    """How many of the MAX_PERIODS repeats of the arrivals a saturated replay can reach: the later
    ones are never tiled (at 64 M events, 4 repeats of 3.5 M arrivals held 0.7 GB per replay). A
    saturated replay never runs past its work (its positive steps) plus the costs of the arrivals
    it takes, each of which arrives before it is taken: a bound from all repeats' costs, then
    tightened by counting only the arrivals before the bound so far (still a bound, each round)."""
    arrivals = core.arrivals
    if len(arrivals) == 0:
        return 1
    order = np.argsort(arrivals.ts, kind="stable")
    ts = arrivals.ts[order]
    cost = (np.maximum(arrivals.span_ns, 0) + np.maximum(arrivals.indirect_ns, 0))[order]
    cost_before = np.concatenate([[0], np.cumsum(cost)])
    work = core.start_ns + sum(int(np.maximum(x, 0).sum()) for x in (core.pre_ns, core.post_ns, core.demand_ns))
    shifts = core.period_ns * np.arange(MAX_PERIODS, dtype=np.int64)
    bound = work + MAX_PERIODS * int(cost_before[-1])
    for _ in range(MAX_PERIODS * 2):
        tighter = work + int(cost_before[np.searchsorted(ts, bound - shifts, "right")].sum())
        if tighter >= bound:
            break
        bound = tighter
    return max(1, int(np.count_nonzero(ts[0] + shifts <= bound)))


def _count_before(core: CoreInput, repeats: int, now: int) -> int:
    """np.searchsorted(tiled, now) over the arrivals' times repeated `repeats` times (as given,
    sorted or not: the same binary search, on times computed as it reads them, since fewer
    repeats than that may have been tiled): the interrupts a replay took."""
    ts, n, period = core.arrivals.ts, len(core.arrivals), core.period_ns
    return bisect_left(range(n * repeats), now, key=lambda i: int(ts[i % n]) + (i // n) * period)


def _request_on_walker(walker: CoreWalker, ready: int, wake: int, post: int, demand: int) -> tuple[int, int]:
    """A request after its loop work: wait for its ready time (waking the core), then run it;
    its start and end."""
    if ready > walker.now:
        walker.idle_until(ready - wake)
        walker.work(wake, False)
    walker.work(post, False)
    start = walker.now
    walker.work(demand, True)
    return start, walker.now
