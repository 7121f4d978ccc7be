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

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from kptrace.walker import NEVER, Arrival, CoreWalker, direct_span
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
    arrivals: tuple[Arrival, ...]
    #: Per source, the slowdown its measured hits left in each request's demand (inputs.hit_indirect).
    hit_indirect: dict[str, np.ndarray]
    #: The NIC queue of this core (kptrace.whatif.inputs.nic_inputs): packet arrival times and
    #: costs; `epoll` marks the requests an epoll_wait returned just before. None: no NIC.
    nic_packets: np.ndarray | None = None
    nic_costs: NicCosts | None = None
    epoll: np.ndarray | None = None
    #: Set by a network policy: the NIC queue is replayed under it (its measured IRQs removed).
    nic_policy: NicPolicy | None = None


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
    """The measured arrivals repeated MAX_PERIODS times, `period_ns` apart, in time order (ties in
    repeat order, as a stable sort leaves them); each Arrival is built only when the walker takes
    it: a saturated replay takes a few of them, and building them all was a third of its time."""

    __slots__ = ("arrivals", "period_ns", "order")

    def __init__(self, arrivals: tuple[Arrival, ...], period_ns: int, order: list[int]):
        self.arrivals, self.period_ns, self.order = arrivals, period_ns, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> Arrival:
        k, j = divmod(self.order[i], len(self.arrivals))
        a = self.arrivals[j]
        return Arrival(a.ts + k * self.period_ns, a.source, a.handler_ns, a.softirq_ns, a.indirect_ns, a.tag)


def _tiled_stamps(arrivals: tuple[Arrival, ...], period_ns: int) -> np.ndarray:
    """The arrival times repeated MAX_PERIODS times (repeat by repeat, as _Tiled numbers them)."""
    ts = np.fromiter((a.ts for a in arrivals), np.int64, len(arrivals))
    return (ts[None, :] + period_ns * np.arange(MAX_PERIODS, dtype=np.int64)[:, None]).ravel()


def replay_core(core: CoreInput, saturated: bool, record: bool = False) -> CoreRun:
    """Replay one core at the recorded load (ready times kept) or at saturation (none kept).
    `record` keeps when each interrupt was taken (for a timeline); without it the walker keeps its
    default span function, so the bootstrap's many replays pay nothing for it."""
    taken: list[tuple[int, Arrival]] = []

    def take_and_record(start_ts: int, arrival: Arrival) -> int:
        taken.append((start_ts, arrival))
        return direct_span(start_ts, arrival)

    take = take_and_record if record else None
    if saturated:
        stamps = _tiled_stamps(core.arrivals, core.period_ns)
        order = np.argsort(stamps, kind="stable")
        walker = CoreWalker.in_order(_Tiled(core.arrivals, core.period_ns, order.tolist()), stamps[order].tolist(),
                                     core.start_ns, take)
    else:
        stamps = np.fromiter((a.ts for a in core.arrivals), np.int64, len(core.arrivals))
        walker = CoreWalker(core.arrivals, core.start_ns, take)
    queue = None
    if core.nic_policy is not None:
        packets = core.nic_packets
        if saturated:
            packets = (packets[None, :] + core.period_ns * np.arange(MAX_PERIODS)[:, None]).ravel()
        queue = walker.nic = NicQueue(packets.tolist(), core.nic_costs, core.nic_policy)
        polls = core.epoll.tolist()
    n = len(core.demand_ns)
    starts, ends = np.empty(n, np.int64), np.empty(n, np.int64)
    ready, pre, wake, post, demand = (core.ready_ts.tolist(), core.pre_ns.tolist(), core.wake_ns.tolist(),
                                      core.post_ns.tolist(), core.demand_ns.tolist())
    if saturated:
        ready = [-1] * n
    if queue is None and saturated:
        _step_back_to_back(walker, core, starts, ends)
    elif queue is None:
        _step_requests(walker, ready, pre, wake, post, demand, starts, ends)
    else:
        for i in range(n):
            walker.work(pre[i], False)
            if polls[i]:
                epoll_poll(walker, queue, -1 if saturated else ready[i] - wake[i])
            _request_on_walker(walker, ready[i], wake[i], post[i], demand[i], starts, ends, i)
    n_taken = int(np.searchsorted(stamps, walker.now))  # (on the arrivals as given, sorted or not)
    n_taken += queue.fired if queue is not None else 0
    return CoreRun(starts=starts, ends=ends, busy_ns=walker.busy_ns, window_ns=walker.now - core.start_ns,
                   interrupts=n_taken, taken=tuple(taken))


def _request_on_walker(walker: CoreWalker, ready: int, wake: int, post: int, demand: int,
                       starts: np.ndarray, ends: np.ndarray, i: int) -> None:
    """Request i after its loop work: wait for its ready time (waking the core), then run it."""
    if ready > walker.now:
        walker.idle_until(ready - wake)
        walker.work(wake, False)
    walker.work(post, False)
    starts[i] = walker.now
    walker.work(demand, True)
    ends[i] = walker.now


def _step_requests(walker: CoreWalker, ready: list, pre: list, wake: list, post: list, demand: list,
                   starts: np.ndarray, ends: np.ndarray) -> None:
    """The requests stepped on `walker` (ready -1: none to wait for). Most requests end before the
    next interrupt arrives: those are stepped here with a few integer operations, the same ones
    the walker would do; only a request that an arrival may land in is handed to the walker."""
    stamps = walker._ts
    next_arrival = stamps[walker._next] if walker._next < len(stamps) else NEVER
    now, idle = walker.now, 0
    for i in range(len(pre)):
        at = now + pre[i]
        wait = 0
        if ready[i] > at:
            wait = max(ready[i] - wake[i] - at, 0)
            at += wait + wake[i]
        start = at + post[i]
        end = start + demand[i]
        if end <= next_arrival:  # no work or idle time of this request reaches the next arrival
            starts[i], ends[i] = start, end
            walker.busy_ns += end - now - wait
            idle += wait
            now = end
            continue
        walker.now, walker.idle_ns = now, walker.idle_ns + idle
        idle = 0
        walker.work(pre[i], False)
        _request_on_walker(walker, ready[i], wake[i], post[i], demand[i], starts, ends, i)
        now = walker.now
        next_arrival = stamps[walker._next] if walker._next < len(stamps) else NEVER
    walker.now, walker.idle_ns = now, walker.idle_ns + idle


def _step_back_to_back(walker: CoreWalker, core: CoreInput, starts: np.ndarray, ends: np.ndarray) -> None:
    """_step_requests at saturation, where requests run back to back: the run of requests that
    ends before the next arrival is one cumulative sum; the request the arrival lands in is
    handed to the walker."""
    pre, post, demand = core.pre_ns, core.post_ns, core.demand_ns
    ran = np.concatenate([[0], np.cumsum(pre + post + demand)])
    ran_list = ran.tolist()  # bisect on a list: one arrival's step costs no numpy call overhead
    stamps, n, i = walker._ts, len(demand), 0
    while i < n:
        now = walker.now
        if walker._next < len(stamps):  # requests [i, m) end by the next arrival
            m = max(i, bisect_right(ran_list, stamps[walker._next] - now + ran_list[i]) - 1)
        else:
            m = n
        if m > i:
            ends[i:m] = ran[i + 1:m + 1] + (now - ran_list[i])
            starts[i:m] = ends[i:m] - demand[i:m]
        walker.now = now + (ran_list[m] - ran_list[i])
        walker.busy_ns += ran_list[m] - ran_list[i]
        if m < n:
            walker.work(int(pre[m]), False)
            _request_on_walker(walker, -1, 0, int(post[m]), int(demand[m]), starts, ends, m)
        i = m + 1
