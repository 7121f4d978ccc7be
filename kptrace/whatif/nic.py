"""One NIC receive queue per core, processed under the kernel's interrupt knobs.

The simulator (kptrace.simulate, with a NIC) and the what-if replayer (network policies) step
the same queue, so a prediction and its simulated ground truth follow the same rules:

- Packets arrive at given times. With IRQs enabled, the NIC raises its IRQ `moderation_ns`
  after the first unprocessed packet (the NIC's own interrupt moderation) or, for packets
  already waiting, that long after IRQs were re-enabled.
- An IRQ masks the queue's IRQ and runs NET_RX at its exit: NAPI polls of up to `budget`
  packets each, every packet that arrived by the poll's start; each poll costs a fixed part
  plus a per-packet part. Work done in interrupt context slows the request it lands in by
  `indirect_per_packet_ns` per packet (cache and pipeline damage scale with the work).
- After an interrupt-context poll (`napi_complete_done`): with `defer` and `gro_flush_timeout`
  set, IRQs stay masked and an hrtimer polls again after gro_flush_timeout; a poll that found
  work re-arms `defer` empty polls, and IRQs come back after that many empty ones. Without
  them IRQs are re-enabled at once.
- Busy polling (`app_polls`): each epoll_wait polls the queue in the syscall's context (no
  IRQ, no indirect cost). With `hold_ns` (irq-suspend's timeout, prefer_busy_poll's
  gro_flush_timeout, kernel polling's none), IRQs stay suspended while epoll_wait finds work,
  a safety timer of `hold_ns` re-armed at each such poll; when the application would block,
  suspension ends and the defer/gro mitigation (or, without it, the IRQ) takes over.

Times are integer ns; costs are drawn per poll by `draw(mean_ns)` (the simulator's gamma
draws) or taken as their means (the replay).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass

NEVER = math.inf


@dataclass(frozen=True)
class NicCosts:
    """Mean costs of one queue's processing, ns (measured from a trace, or a simulation's truth)."""

    handler_ns: float
    poll_fixed_ns: float
    per_packet_ns: float
    indirect_per_packet_ns: float
    timer_handler_ns: float
    moderation_ns: int
    budget: int = 64


@dataclass(frozen=True)
class NicPolicy:
    """The knobs, named like the kernel's (module docstring). `hold_ns` None: IRQs are not held
    while the application polls; NEVER: held with no safety timer (kernel polling)."""

    defer: int = 0
    gro_flush_timeout: int = 0
    app_polls: bool = False
    hold_ns: float | None = None
    spin_ns: int = 0
    poll_budget: int = 64

    @property
    def deferring(self) -> bool:
        return self.defer > 0 and self.gro_flush_timeout > 0


@dataclass(frozen=True, slots=True)
class Poll:
    """What one interrupt or syscall poll did: `kind` irq | timer | syscall, when it started, its
    handler time (0 in a syscall), and each NAPI poll's (packets, ns)."""

    kind: str
    at: int
    handler_ns: int
    polls: tuple[tuple[int, int], ...]
    indirect_ns: int = 0

    @property
    def packets(self) -> int:
        return sum(k for k, _ in self.polls)

    @property
    def span_ns(self) -> int:
        return self.handler_ns + sum(ns for _, ns in self.polls)


class NicQueue:
    """The queue's state (module docstring). The walker asks `next_ts()` for its next interrupt
    and `fire(at)` runs it; an epoll_wait calls `app_poll(now, will_block)`."""

    __slots__ = ("packets", "done", "costs", "policy", "draw", "record", "irq_on", "irq_from", "timer",
                 "left", "fired")

    def __init__(self, packets: list[int], costs: NicCosts, policy: NicPolicy,
                 draw: Callable[[float], int] | None = None, record: Callable[[Poll], None] | None = None):
        self.packets = packets
        self.done = 0
        self.costs, self.policy = costs, policy
        self.draw = draw or (lambda mean: int(round(mean)))
        self.record = record
        self.irq_on, self.irq_from = True, -NEVER
        self.timer = NEVER
        self.left = 0
        self.fired = 0

    def next_ts(self) -> float:
        """When the queue next interrupts the CPU (NEVER: not before something changes)."""
        if self.irq_on and self.done < len(self.packets):
            return min(self.timer, max(self.packets[self.done], self.irq_from) + self.costs.moderation_ns)
        return self.timer

    def _napi(self, start: int, budget: int) -> tuple[list[tuple[int, int]], int]:
        """NAPI polls from `start` of every packet arrived by then, `budget` at a time."""
        arrived = bisect.bisect_right(self.packets, start, lo=self.done)
        waiting = arrived - self.done
        polls, ns = [], 0
        while True:
            k = min(waiting, budget)
            cost = self.draw(self.costs.poll_fixed_ns + k * self.costs.per_packet_ns)
            polls.append((k, cost))
            ns += cost
            waiting -= k
            if k < budget or waiting == 0:
                break
        self.done = arrived
        return polls, ns

    def fire(self, at: int) -> tuple[int, int]:
        """Run the due interrupt from `at`: (its span, the slowdown it leaves in request work)."""
        timer = self.timer <= self.next_ts() and self.timer != NEVER
        handler = self.draw(self.costs.timer_handler_ns if timer else self.costs.handler_ns)
        self.timer, self.irq_on = NEVER, False
        polls, ns = self._napi(at + handler, self.costs.budget)
        packets = sum(k for k, _ in polls)
        indirect = self.draw(packets * self.costs.indirect_per_packet_ns) if packets else 0
        self.fired += 1
        self._complete(at + handler + ns, packets > 0)
        if self.record:
            self.record(Poll("timer" if timer else "irq", at, handler, tuple(polls), indirect))
        return handler + ns, indirect

    def _complete(self, end: int, found: bool) -> None:
        """napi_complete_done: defer with the gro timer, or re-enable the IRQ."""
        policy = self.policy
        if policy.deferring and (found or self.left > 0):
            self.left = policy.defer if found else self.left - 1
            self.timer = end + policy.gro_flush_timeout
        else:
            self.left = 0
            self.irq_on, self.irq_from = True, end

    def app_poll(self, now: int, will_block: bool) -> int:
        """epoll_wait's busy poll at `now`: the ns it takes in the syscall (0 without busy polling)."""
        policy = self.policy
        if not policy.app_polls:
            return 0
        polls, ns = self._napi(now, policy.poll_budget)
        if self.record:
            self.record(Poll("syscall", now, 0, tuple(polls)))
        if policy.hold_ns is not None:
            self.timer = NEVER
            if will_block:  # suspension ends: the defer/gro mitigation takes over, as after work found
                self._complete(now + ns, True)
            else:
                self.irq_on, self.left = False, 0
                self.timer = now + ns + policy.hold_ns
        return ns


def epoll_poll(walker, queue: NicQueue, ready_ts: int) -> None:
    """An epoll_wait's busy polling on `walker` (a kptrace.walker.CoreWalker), its events ready
    at `ready_ts`: poll; if it would block, spin up to spin_ns polling, then poll once more,
    which ends IRQ suspension if it would still block."""
    policy = queue.policy
    if not policy.app_polls:
        return
    if ready_ts > walker.now and policy.spin_ns:
        walker.work(queue.app_poll(walker.now, False), False)
        walker.work(max(0, min(policy.spin_ns, ready_ts - walker.now)), False)
    walker.work(queue.app_poll(walker.now, ready_ts > walker.now), False)
