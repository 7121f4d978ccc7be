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

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

import numpy as np

from kptrace.walker import NEVER, Arrival, CoreWalker, direct_span
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
    `record` keeps when each interrupt was taken (for a timeline); without it the walker keeps its
    default span function, so the bootstrap's many replays pay nothing for it."""
    taken: list[tuple[int, Arrival]] = []

    def take_and_record(start_ts: int, arrival: Arrival) -> int:
        taken.append((start_ts, arrival))
        return direct_span(start_ts, arrival)

    take = take_and_record if record else None
    repeats = (_repeats_reached(core) if core.nic_policy is None else MAX_PERIODS) if saturated else 1
    tiled = (core.arrivals.ts[None, :] + core.period_ns * np.arange(repeats, dtype=np.int64)[:, None]).ravel()
    order = np.argsort(tiled, kind="stable")
    walker = CoreWalker.in_order(_Tiled(core.arrivals, core.period_ns, order), tiled[order].tolist(), core.start_ns,
                                 take)
    costs = None
    if not record and core.nic_policy is None:
        span, indirect = (np.tile(values, repeats)[order] for values in (core.arrivals.span_ns,
                                                                         core.arrivals.indirect_ns))
        costs = ArrivalCosts(tiled[order], span, indirect)
    queue = None
    if core.nic_policy is not None:
        packets = core.nic_packets
        if saturated:
            packets = (packets[None, :] + core.period_ns * np.arange(MAX_PERIODS)[:, None]).ravel()
        queue = walker.nic = NicQueue(packets.tolist(), core.nic_costs, core.nic_policy)
        polls = core.epoll.tolist()
    n = len(core.demand_ns)
    ready = np.full(n, -1, np.int64) if saturated else core.ready_ts
    if queue is None:
        starts, ends = _step_requests(walker, ready, core.pre_ns, core.wake_ns, core.post_ns, core.demand_ns, costs)
    else:
        starts, ends = np.empty(n, np.int64), np.empty(n, np.int64)
        ready, pre, wake, post, demand = (ready.tolist(), core.pre_ns.tolist(), core.wake_ns.tolist(),
                                          core.post_ns.tolist(), core.demand_ns.tolist())
        for i in range(n):
            walker.work(pre[i], False)
            if polls[i]:
                epoll_poll(walker, queue, -1 if saturated else ready[i] - wake[i])
            starts[i], ends[i] = _request_on_walker(walker, ready[i], wake[i], post[i], demand[i])
    n_taken = _count_before(core, MAX_PERIODS if saturated else 1, walker.now)
    n_taken += queue.fired if queue is not None else 0
    return CoreRun(starts=starts, ends=ends, busy_ns=walker.busy_ns, window_ns=walker.now - core.start_ns,
                   interrupts=n_taken, taken=tuple(taken))


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


#: The free run is found by repeated guesses of each request's wait (see _free_block); past this many
#: the requests are stepped one by one instead (a long chain of waits that each move the next).
MAX_GUESSES = 64
#: The free run is solved this many requests at a time: a wrong guess moves the requests after
#: it, so over a whole core (222 k requests) the guesses took 67 rounds of all of them to settle
#: and then the stepping fallback; in a block they settle in a few rounds of its requests.
FREE_BLOCK = 2048
#: Runs of requests back to back at least this long are stepped together (_back_to_back); a
#: shorter one costs less on the walker.
MIN_RUN = 16
#: ... and when at least this many arrivals are due before the run would end with none: on the
#: benchmark, 3 in 4 runs took a single arrival, which the walker steps in a fraction of the time.
MIN_RUN_ARRIVALS = 2
#: _landings looks at this many arrivals at once after a wrong guess.
MIN_WINDOW = 32


def _free_run(now: int, ready: np.ndarray, pre: np.ndarray, wake: np.ndarray, post: np.ndarray,
              demand: np.ndarray, block: int = FREE_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Each request's end and wait when the requests run from `now` with no interrupt
    (_free_block), `block` requests at a time, each block from the previous one's last end."""
    n = len(pre)
    ends, waits = np.empty(n, np.int64), np.empty(n, np.int64)
    for lo in range(0, n, block):
        part = slice(lo, min(lo + block, n))
        ends[part], waits[part] = _free_block(now, ready[part], pre[part], wake[part], post[part], demand[part])
        now = int(ends[part.stop - 1])
    return ends, waits


def _free_block(now: int, ready: np.ndarray, pre: np.ndarray, wake: np.ndarray, post: np.ndarray,
                demand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each request's end and wait when the requests run from `now` with no interrupt: the steps
    of _step_one for all of them at once. Given which requests are late (ready time still ahead
    when their loop work ends), a request ends at the previous end plus its work (and the
    wake-up, when late), or, when late and that is later, at its ready time plus its post work
    and demand: a max-plus recurrence, one cumulative sum and one running maximum. The first
    guess is that every request with a ready time is late; a guess is checked against the ends
    it gave: the requests before the first wrong guess are right, so each round fixes at least
    one more, and a guess that agrees with its ends is the stepped result exactly (integer
    sums). A round computes only the requests from the first wrong guess on. (Guessing, as
    before, which late requests start afresh at their ready time took 3 times the rounds.)"""
    n = len(pre)
    ends, waits = np.empty(n, np.int64), np.empty(n, np.int64)
    waiting = ready >= 0
    work, fresh_end = pre + post + demand, ready + post + demand  # (the same every round)
    late = waiting.copy()
    lo = 0
    for _ in range(MAX_GUESSES):
        part = slice(lo, n)
        guess = late[part]
        total = np.cumsum(work[part] + np.where(guess, wake[part], 0))
        found = total + np.maximum.accumulate(np.where(guess, np.maximum(fresh_end[part] - total, now), now))
        at = np.concatenate([[now], found[:-1]]) + pre[part]
        really = waiting[part] & (ready[part] > at)
        wrong = np.flatnonzero(really != guess)
        right = int(wrong[0]) if len(wrong) else n - lo  # the requests before the first wrong guess are right
        ends[lo:lo + right] = found[:right]
        waits[lo:lo + right] = np.where(really[:right], np.maximum(ready[part] - wake[part] - at, 0)[:right], 0)
        if not len(wrong):
            return ends, waits
        late[part] = really
        now = int(found[right - 1]) if right else now
        lo += right
    ends[lo:], waits[lo:] = _free_run_stepped(now, ready[lo:], pre[lo:], wake[lo:], post[lo:], demand[lo:])
    return ends, waits


def _free_run_stepped(now: int, ready: np.ndarray, pre: np.ndarray, wake: np.ndarray, post: np.ndarray,
                      demand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """_free_run one request at a time."""
    ends, waits = np.empty(len(pre), np.int64), np.empty(len(pre), np.int64)
    for i, row in enumerate(zip(ready.tolist(), pre.tolist(), wake.tolist(), post.tolist(), demand.tolist())):
        _, now, waits[i] = _step_one(now, *row)
        ends[i] = now
    return ends, waits


def _step_one(now: int, ready: int, pre: int, wake: int, post: int, demand: int) -> tuple[int, int, int]:
    """One request from `now` with no interrupt: its start, end and wait for its ready time
    (the walker's steps: loop work, the wait and wake-up when its ready time is still ahead,
    then its own work)."""
    at = now + pre
    wait = 0
    if ready > at:
        wait = max(ready - wake - at, 0)
        at += wait + wake
    start = at + post
    return start, start + demand, wait


def _first_end_after(ends: np.ndarray, after_start: list[int]):
    """A search over the requests' ends: (limit, lo, hi) -> the first j in [lo, hi) whose end is
    past `limit`, else hi. Ends are in time order unless some work is negative: a bisection
    then (of `after_start`, the ends as a list after the start time, which the caller holds
    anyway), else a scan in chunks that grow (the next arrival is usually near)."""
    if np.all(ends[1:] >= ends[:-1]):
        return lambda limit, lo, hi: bisect_right(after_start, limit, lo + 1, hi + 1) - 1

    def scan(limit: float, lo: int, hi: int) -> int:
        width = 64
        while lo < hi and limit != NEVER:
            above = ends[lo:min(lo + width, hi)] > limit
            if above.any():
                return lo + int(above.argmax())
            lo, width = lo + width, width * 4
        return hi
    return scan


def _step_requests(walker: CoreWalker, ready: np.ndarray, pre: np.ndarray, wake: np.ndarray, post: np.ndarray,
                   demand: np.ndarray, costs: ArrivalCosts | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The requests stepped on `walker` (ready -1: none to wait for); their starts and ends.

    Most requests end before the next interrupt arrives, and run as they would with no
    interrupt at all (_free_run) but for a delay `late` that the interrupts taken so far left:
    those runs are taken from the free run at once. A delay carries over unchanged through
    requests that were not late in the free run (they are later still), so only one that was
    is looked at alone: it runs as in the free run when its wait absorbs the delay, else it is
    stepped (_step_one); a negative delay stops at every request that waits. Only a request
    that an arrival may land in is handed to the walker, or, with the arrivals' `costs` and a
    long run of requests back to back from it that several arrivals land in, the whole run
    (_back_to_back)."""
    n = len(pre)
    if costs is not None:
        # (_back_to_back searches the steps' ends)
        costs = costs if min(int(steps.min(initial=0)) for steps in (pre, post, demand)) >= 0 else None
        if costs is not None and n and not (ready >= 0).any():  # no request waits: one run back to back
            return _back_to_back(walker, costs, (pre, post, demand), 0, n)
    free_end, free_wait = _free_run(walker.now, ready, pre, wake, post, demand)
    free_from = np.concatenate([[walker.now], free_end]).tolist()  # [i]: when request i's loop work starts
    first_end_after = _first_end_after(free_end, free_from)
    # (an array: the loop reads it a few hundred times, fewer than a list of it would cost)
    waited = np.concatenate([[0], np.cumsum(free_wait)])
    waiting = np.flatnonzero(ready >= 0).tolist()
    # A delay carries unchanged through a request that was not late in the free run (it is later
    # still): only one that was late may absorb it.
    free_late = (ready >= 0) & (ready > np.concatenate([[walker.now], free_end[:-1]]) + pre)
    absorbing = np.flatnonzero(free_late).tolist()
    delay = np.zeros(n + 1, np.int64)   # a run's delay, as steps at its first and past its last request
    alone: list[tuple[int, int, int]] = []  # (request, start, end) stepped alone
    runs: list[tuple[int, np.ndarray, np.ndarray]] = []  # (first request, starts, ends) stepped together
    stamps, n_stamps = walker._ts, len(walker._ts)
    i, now, idle = 0, walker.now, 0
    while i < n:
        next_arrival = stamps[walker._next] if walker._next < n_stamps else NEVER
        late = now - free_from[i]
        if late:  # the run lasts until the next request that may absorb the delay (any that waits, if negative)
            stops = absorbing if late > 0 else waiting
            k = bisect_left(stops, i)
            k = stops[k] if k < len(stops) else n
        else:
            k = n
        m = first_end_after(next_arrival - late, i, k)
        if m > i:  # requests [i, m): the free run, `late` later
            if late:
                delay[i] += late
                delay[m] -= late
            waits = int(waited[m] - waited[i])
            walker.busy_ns += free_from[m] - free_from[i] - waits
            idle += waits
            now = free_from[m] + late
            i = m
            if i == n:
                break
        if m == k and free_wait[i] >= late and free_wait[i] > 0 and free_from[i + 1] <= next_arrival:
            # a delayed request whose wait absorbs the delay: it starts afresh as in the free run
            wait = int(free_wait[i]) - late
            walker.busy_ns += free_from[i + 1] - now - wait
            idle += wait
            now = free_from[i + 1]
            i += 1
            continue
        row = int(ready[i]), int(pre[i]), int(wake[i]), int(post[i]), int(demand[i])
        if m == k:  # a delayed request that waits for its ready time
            start, end, wait = _step_one(now, *row)
            if end <= next_arrival:
                alone.append((i, start, end))
                walker.busy_ns += end - now - wait
                idle += wait
                now = end
                i += 1
                continue
        walker.now, walker.idle_ns, idle = now, walker.idle_ns + idle, 0
        if costs is not None and row[0] < 0:
            k = bisect_left(waiting, i)
            k = waiting[k] if k < len(waiting) else n
            due = bisect_left(stamps, free_from[k] + late, walker._next) - walker._next  # (each lands in the run)
            if k - i >= MIN_RUN and due >= MIN_RUN_ARRIVALS:
                runs.append((i, *_back_to_back(walker, costs, (pre, post, demand), i, k)))
                now, i = walker.now, k
                continue
        walker.work(row[1], False)
        alone.append((i, *_request_on_walker(walker, row[0], row[2], row[3], row[4])))
        now = walker.now
        i += 1
    walker.now, walker.idle_ns = now, walker.idle_ns + idle
    ends = free_end + np.cumsum(delay[:-1])
    starts = ends - demand
    for first, run_starts, run_ends in runs:
        starts[first:first + len(run_starts)], ends[first:first + len(run_ends)] = run_starts, run_ends
    if alone:
        at, start, end = (np.array(column, np.int64) for column in zip(*alone))
        starts[at], ends[at] = start, end
    return starts, ends


@dataclass(frozen=True)
class ArrivalCosts:
    """What each of the walker's arrivals, in its order, stretches the work it lands in by: its
    span (handler and softirqs), and its indirect cost in a request."""

    ts: np.ndarray
    span_ns: np.ndarray
    indirect_ns: np.ndarray


def _back_to_back(walker: CoreWalker, costs: ArrivalCosts, work: tuple[np.ndarray, np.ndarray, np.ndarray],
                  lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Requests [lo, hi), which run back to back (none waits for a ready time), stepped from
    `walker.now` with the interrupts that land in them; their starts and ends. `work`: every
    request's pre, post and demand times.

    The walker steps a request as its loop work, its post work and its demand (work() three
    times); back to back, its loop and post work run as one (no wait between them), so here a
    request is two steps (`done[s]`: when step s starts with no interrupt), a third fewer to sum.
    An arrival is taken in the first step, from the previous arrival's on, whose end stretched
    by the interrupts taken so far is past its arrival time, and stretches it by its span, and
    by its indirect cost in a demand: one search per arrival, then every step's end at once."""
    start, first = walker.now, walker._next
    pre, post, demand = work
    # (only this run's steps: a copy of all before it, at each of a core's many runs, made the
    # replay quadratic in its requests)
    done = np.empty(2 * (hi - lo) + 1, np.int64)  # the start, then the steps: summed in place
    done[0] = start
    np.add(pre[lo:hi], post[lo:hi], out=done[1::2])
    done[2::2] = demand[lo:hi]
    np.cumsum(done, out=done)
    steps, stretches = _landings(done, costs, first, 0, 2 * (hi - lo))
    walker._next = first + len(steps)
    # each step's end stretched by the interrupts taken up to it: the stretch after the last
    # arrival in it (steps ascend; of several in one step the last wins), carried forward over
    # the steps none landed in
    held = np.diff(np.concatenate([[0], steps, [2 * (hi - lo)]]))
    ends = done[1:] + np.repeat(np.concatenate([[0], stretches]), held)
    walker.irq_ns += int(costs.span_ns[first:walker._next].sum())
    walker.now = int(ends[-1])
    walker.busy_ns += walker.now - start
    return ends[0::2], ends[1::2]


def _landings(step_end: np.ndarray, costs: ArrivalCosts, first: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """For the arrivals from `first` on that land in steps [lo, hi) (`step_end[s + 1]`: where
    step s ends with no interrupt; always in time order), the step each lands in and the
    stretch after it (_back_to_back). Whether an arrival lands in a demand (and so adds its
    indirect cost) is guessed; the steps follow from the guesses by one cumulative sum and one
    search; up to the first wrong guess they are right, so the arrivals up to it are kept, its
    guess corrected, and the rest searched again, each guess now the previous round's answer.
    A round looks at a window of arrivals, which doubles while the guesses hold."""
    arrive, span, indirect = costs.ts[first:], costs.span_ns[first:], costs.indirect_ns[first:]
    # Left unset (np.empty touches no memory) past the arrivals looked at so far (`seen`): a run
    # takes few of all that are left.
    steps, stretches, guess = (np.empty(len(arrive), dtype) for dtype in (np.int64, np.int64, bool))
    j, stretch, step, width, seen = 0, 0, lo, MIN_WINDOW, 0
    while j < len(arrive):
        end = min(j + width, len(arrive))
        if end > seen:
            guess[seen:end], seen = True, end
        added = span[j:end] + np.where(guess[j:end], indirect[j:end], 0)
        after = stretch + np.cumsum(added)
        landed = np.maximum.accumulate(np.maximum(step_end.searchsorted(arrive[j:end] - (after - added), "right") - 1, step))
        taken = int(landed.searchsorted(hi))
        in_demand = landed[:taken] % 2 == 1
        wrong = np.flatnonzero(in_demand != guess[j:j + taken])
        guess[j:j + taken] = in_demand
        if len(wrong):
            w = int(wrong[0])
            steps[j:j + w + 1], stretches[j:j + w] = landed[:w + 1], after[:w]
            stretches[j + w] = after[w] - added[w] + span[j + w] + (indirect[j + w] if in_demand[w] else 0)
            j, stretch, step, width = j + w + 1, int(stretches[j + w]), int(landed[w]), MIN_WINDOW
            continue
        steps[j:j + taken], stretches[j:j + taken] = landed[:taken], after[:taken]
        if j + taken < end:
            return steps[:j + taken], stretches[:j + taken]
        j, stretch, step, width = end, int(after[-1]), int(landed[-1]), width * 2
    return steps, stretches
