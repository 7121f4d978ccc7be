"""One CPU's time stepped forward: a thread's work, idle time, and the interrupts that land in them.

The simulator (kptrace.simulate) and the what-if replayer step time with this one walker, so
that a policy's prediction and the simulated ground truth follow the same rules:

- One interrupt at a time: an arrival while another interrupt runs is taken when it ends
  (back to back), never nested.
- An interrupt taken during work delays the work's end by its span (the handler and the
  softirqs run at its irq_exit) and, when the work is a request's, also by the arrival's
  `indirect_ns` (the cache and pipeline damage it leaves behind).
- While idle, an interrupt is busy time that slows nothing; the CPU stays idle until the
  interrupts that arrived back to back are done.
- While `masked` (interrupts disabled, or a policy that polls), arrivals are queued in
  `pending` and delay nothing until `unmask` takes them (interrupts re-enabled: they fire at
  once) or `take_pending` hands them to the caller (a poll runs their work itself).
- A NIC queue (`nic`, kptrace.whatif.nic.NicQueue) is a second source whose next interrupt
  depends on its state (IRQs masked, timers armed): it is asked for it at each step, and
  `fire` runs it. While `masked`, it waits for the next step after `unmask`.

Times are integer ns. The stepping is a plain loop over a sorted list: the common step, work
that no arrival lands in, is a comparison and an addition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import attrgetter

NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class Arrival:
    """One interrupt, with its costs drawn for it: `handler_ns` (hard IRQ), `softirq_ns` (the
    work it runs at irq_exit, 0 if none), `indirect_ns` (the slowdown it adds to the request
    work it lands in; ignored outside requests). `tag` is the caller's."""

    ts: int
    source: str
    handler_ns: int
    softirq_ns: int = 0
    indirect_ns: int = 0
    tag: object = None


Take = Callable[[int, Arrival], int]


def direct_span(start_ts: int, arrival: Arrival) -> int:
    """The default `take`: an interrupt keeps the CPU for its handler and its softirqs."""
    return arrival.handler_ns + arrival.softirq_ns


class CoreWalker:
    """Steps one CPU through work and idle time, taking the arrivals (one CPU's, any order) as
    they come. `take(start_ts, arrival) -> span_ns` is called as each is taken (the simulator
    emits its events there). `busy_ns`, `idle_ns` and `irq_ns` (time in interrupts, part of
    busy) add up what has been stepped since `start_ns`."""

    __slots__ = ("arrivals", "_ts", "_next", "now", "busy_ns", "idle_ns", "irq_ns", "masked", "pending", "take", "nic")

    def __init__(self, arrivals: Iterable[Arrival], start_ns: int, take: Take | None = None, nic=None):
        self.arrivals = sorted(arrivals, key=attrgetter("ts"))
        self._ts = [a.ts for a in self.arrivals]
        self._next = 0
        self.now = start_ns
        self.busy_ns = self.idle_ns = self.irq_ns = 0
        self.masked = False
        self.pending: list[Arrival] = []
        self.take = take or direct_span
        self.nic = nic

    @classmethod
    def in_order(cls, arrivals, stamps: list[int], start_ns: int, take: Take | None = None) -> CoreWalker:
        """A walker over arrivals already in time order: `arrivals[i]` (any indexable, such as one
        that builds each arrival only when it is taken) arrives at `stamps[i]`."""
        walker = cls((), start_ns, take)
        walker.arrivals, walker._ts = arrivals, stamps
        return walker

    def work(self, ns: int, in_request: bool) -> list[Arrival]:
        """Run `ns` of the current thread's own work; return the arrivals taken meanwhile."""
        if self.nic is not None:
            return self._steps(self.now + ns, in_request, idle=False)
        start = self.now
        finish = start + ns
        stamps, i = self._ts, self._next
        if i == len(stamps) or stamps[i] >= finish:
            self.now = finish
            self.busy_ns += ns
            return []
        taken = []
        while i < len(stamps) and stamps[i] < finish:
            arrival = self.arrivals[i]
            i += 1
            if (span := self._take_one(arrival)) is None:
                continue
            self.irq_ns += span
            finish += (span + arrival.indirect_ns) if in_request else span
            taken.append(arrival)
        self._next = i
        self.busy_ns += finish - start
        self.now = finish
        return taken

    def _take_one(self, arrival: Arrival) -> int | None:
        """Take an arrival now, at its time or when the CPU is free (`now` moves past it), and
        return its span; while masked, queue it and return None."""
        if self.masked:
            self.pending.append(arrival)
            return None
        at = max(arrival.ts, self.now)
        span = self.take(at, arrival)
        self.now = at + span
        return span

    def idle_until(self, ts: int) -> list[Arrival]:
        """Idle until `ts`, taking the arrivals before it (and those that arrive back to back
        with them); `now` ends at max(ts, end of the last interrupt taken)."""
        if self.nic is not None:
            return self._steps(ts, False, idle=True)
        start = self.now
        stamps, i = self._ts, self._next
        taken = []
        spans = 0
        while i < len(stamps) and stamps[i] < max(ts, self.now):
            arrival = self.arrivals[i]
            i += 1
            if (span := self._take_one(arrival)) is None:
                continue
            spans += span
            taken.append(arrival)
        self._next = i
        end = max(ts, self.now)
        self.irq_ns += spans
        self.busy_ns += spans
        self.idle_ns += end - start - spans
        self.now = end
        return taken

    def _steps(self, until: int, in_request: bool, idle: bool) -> list[Arrival]:
        """work (until its end, stretched) or idle_until, with a NIC queue beside the arrivals."""
        start, nic = self.now, self.nic
        finish = until
        stamps, taken, spans = self._ts, [], 0
        while True:
            i = self._next
            t_fixed = stamps[i] if i < len(stamps) else NEVER
            t_nic = NEVER if self.masked else nic.next_ts()
            if min(t_fixed, t_nic) >= (max(finish, self.now) if idle else finish):
                break
            if t_fixed <= t_nic:
                arrival = self.arrivals[i]
                self._next = i + 1
                if (span := self._take_one(arrival)) is None:
                    continue
                indirect = arrival.indirect_ns
                taken.append(arrival)
            else:
                at = max(int(t_nic), self.now)
                span, indirect = nic.fire(at)
                self.now = at + span
            spans += span
            finish += 0 if idle else span + (indirect if in_request else 0)
        self.irq_ns += spans
        if idle:
            end = max(finish, self.now)
            self.busy_ns += spans
            self.idle_ns += end - start - spans
        else:
            end = finish
            self.busy_ns += end - start
        self.now = end
        return taken

    def unmask(self, in_request: bool) -> list[Arrival]:
        """Re-enable interrupts: the queued arrivals are taken now, back to back; in request
        work their indirect cost then stretches the work as any hit does. Returns them and
        any arrival taken during that stretch."""
        self.masked = False
        held = self.take_pending()
        extra = 0
        for arrival in held:
            span = self.take(self.now, arrival)
            self.irq_ns += span
            self.busy_ns += span
            self.now += span
            extra += arrival.indirect_ns if in_request else 0
        return held + self.work(extra, in_request) if extra else held

    def take_pending(self) -> list[Arrival]:
        """Hand the queued arrivals to the caller (who runs their work) and forget them."""
        held, self.pending = self.pending, []
        return held
