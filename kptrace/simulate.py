"""Synthetic epoll-server traces with exact ground truth, in the real text formats.

The model (every cost drawn per event, never constant; Scenario holds the parameters):
- `threads` server threads of one process, each with its own epoll fd and `fds_per_thread`
  connections, start spread over `cpus` CPUs. A thread loops: an epoll call (EPOLL, one per
  thread); when nothing is ready it blocks (sched_switch, prev_state=S) and the CPU runs
  another ready thread or idles (swapper/N, tid 0) until one wakes; then, for each ready
  connection, one request: a receive (RECEIVES, one per connection) returning the request's
  bytes, the kind's own work (lognormal: a median and a tail), one or two sends (SENDS), and
  now and then a last receive that returns -EAGAIN.
- Each send raises NET_RX in task context (loopback) and runs it inside the syscall, except
  a `netrx_defer` share that stays pending and runs at the exit of the next hard IRQ on that
  CPU, among the IRQ's own softirqs in vector order (as __do_softirq runs them): a "foreign"
  softirq in that IRQ's chain, charged in the truth to the request that raised it. As in the
  kernel, the pending bit is one per vector: when another send runs NET_RX inline first, that
  run does the deferred work too (it lands in that send's request's own time).
- Interrupt sources arrive per CPU (Poisson, or periodic with jitter for ticks). Each takes its
  handler time plus the softirqs it raises, and slows the request work it lands in by an
  indirect cost drawn per hit (gamma around the source's mean): kptrace.walker.CoreWalker
  steps each CPU. Interrupts that arrive while a softirq runs in a syscall wait for its end.
- A `preempt_share` of requests is preempted mid-work by a kworker (prev_state=R+); the
  thread then resumes on its CPU or, for a `migrate_share` of them, on another one. Threads
  also wake on another CPU now and then (`wake_migrate_share`).
- Counters (perf format only; per CPU, read at each epoll return): the server threads' own
  work runs at clock_ghz and retires ipc_clean instructions per cycle; an indirect slowdown adds
  cycles, no instructions (lower IPC, as on real hardware). Interrupts, kworkers and idle
  time are not counted.

truth.json holds the exact figures (ns, counts, per second) computed from what was generated:
- `format`, `resolution_ns` (1000 in tracefs and trace-cmd text, 1 in perf --ns), `start_ns`,
  `end_ns` (first and last event), `duration_s`, `scenario` (the parameters), `seed`.
- `per_source`, one row per (cpu, source): `count` interrupts taken, `rate_per_s` (count /
  duration_s); `handler_ns` (total hard IRQ time); `direct_ns` (total) and `direct_mean_ns`:
  hard IRQ entry to the end of its OWN softirqs, excluding foreign softirqs that ran in its
  chain; `chain_ns`: the whole chain, foreign softirqs included; `foreign_softirqs` (NET_RX runs
  raised by a request's send that ran in its chains) and `foreign_ns` (their time and the gap
  before each); `hit_any` (requests whose own execution it interrupted at least once) and
  `hit_once` (requests whose only interrupt was one of it);
  `direct_population_mean_ns` (the mean of the distribution direct costs are drawn from, what
  the direct interval targets: direct_mean_ns is one draw's realised mean);
  `indirect_mean_ns` (the configured population mean per hit, what the estimator targets) and
  `indirect_ns` (realised total slowdown added); over the CPU's serving window: `window_count`,
  `window_direct_ns`, `window_indirect_ns` and `capacity_loss` = (window_direct_ns +
  window_indirect_ns) / busy_ns of that CPU.
- `per_cpu`: `requests` started there, `window_ns` (first request start to last request end
  there), `idle_ns` (time the idle task ran, within the window), `idle_irq_ns` (interrupts taken
  while idle, within the window: their whole span, irq_exit gaps included), `busy_ns` =
  window_ns - idle_ns + idle_irq_ns and `busy_share` = busy_ns / window_ns, as
  kptrace.intervals.serving_load defines them.
- `kinds`: per request kind its `size_class` (kptrace's requests.kind), `requests`,
  `demand_mean_ns` (population mean of its own user work) and `own_mean_ns` (realised mean own
  time: receive, user work and sends with the NET_RX they ran inline; no interrupt, indirect
  slowdown or off-CPU time).
- `requests`: `total`, `two_sends`, `offcpu` (requests switched out mid-request), `offcpu_ns`,
  `switch_outs`, `migrated` (came back on another CPU), `hit` (hit by any interrupt).
- `offcpu_requests`: tid, fd, cpu, ts (ns), offcpu_ns, n_offcpu and migrated of each of them.
- `foreign_softirqs`: NET_RX runs that ran in hard IRQ chains (`in_irq_chains`, `ns`), and each
  of them (`runs`): its cpu, the chain's source and start `chain_ts`, the request whose send
  raised it (`raised_by_tid`, `raised_by_request_ts`: that request's start) and its `ns`.
- `syscalls`: how many of each syscall were made.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
import random
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from kptrace.requests import EPOLL, RECEIVES, SENDS
from kptrace.schema import SOFTIRQ_NAMES
from kptrace.walker import Arrival, CoreWalker
from kptrace.whatif.nic import NicCosts, NicQueue, Poll, epoll_poll

NET_RX = SOFTIRQ_NAMES.index("NET_RX")
EAGAIN = -11


@dataclass(frozen=True)
class Softirq:
    """A softirq an interrupt raises with `probability`, run at its irq_exit (gamma cost)."""

    name: str
    probability: float
    mean_ns: int
    cv: float = 0.5


@dataclass(frozen=True)
class Source:
    """One interrupt source, on each of `cpus` at `rate_per_s`. `vector` set means an APIC
    vector (irq_vectors:<name>_entry), else device IRQ `irq`. Costs are means: gamma draws with
    the given coefficients of variation."""

    name: str
    rate_per_s: float
    handler_ns: int
    indirect_ns: int
    cpus: tuple[int, ...] = (1,)
    irq: int = 0
    vector: int | None = None
    softirqs: tuple[Softirq, ...] = ()
    periodic: bool = False
    handler_cv: float = 0.3
    indirect_cv: float = 1.0


@dataclass(frozen=True)
class Kind:
    """A request kind: own user work lognormal (median `demand_ns`, shape `sigma`), its bytes
    in, and one send per entry of `bytes_out`."""

    name: str
    share: float
    demand_ns: int
    sigma: float
    bytes_in: int
    bytes_out: tuple[int, ...]

    @property
    def demand_mean_ns(self) -> float:
        return self.demand_ns * math.exp(self.sigma**2 / 2)


@dataclass(frozen=True)
class Nic:
    """A NIC receive queue on each of `cpus`: packets arrive (Poisson) at `packets_per_s`; its
    IRQ `irq` (handler `name`) and NAPI polls of `device` follow kptrace.whatif.nic under the
    scenario's network policy. Costs are means, drawn per poll (gamma, COST_CV); the NIC's
    own IRQ delay `moderation_ns` is a setting (like ethtool's rx-usecs), not drawn."""

    name: str = "sim-eth0"
    irq: int = 60
    device: str = "eth0"
    packets_per_s: float = 40_000
    handler_ns: int = 1_500
    poll_fixed_ns: int = 2_000
    per_packet_ns: int = 800
    indirect_per_packet_ns: int = 600
    moderation_ns: int = 30_000
    budget: int = 64
    cpus: tuple[int, ...] = (0, 1)


@dataclass
class Scenario:
    """Everything the generator needs; written into truth.json.

    A thread blocked in epoll waits WAKE_MIN_NS plus an exponential time of mean `wait_mean_ns`;
    its epoll call returns at once with probability `ready_share`. Shares are probabilities per
    request (`preempt_share`, `eagain_share`), per preemption (`migrate_share`: the thread
    resumes on another CPU), per block (`wake_migrate_share`) and per send (`netrx_defer`: its
    NET_RX waits for the next hard IRQ). `indirect_scale` multiplies every source's indirect
    cost (0: interrupts slow nothing down, for length-bias checks). With a `nic`, its queue runs
    under `policy` (a network policy of kptrace.whatif, or vanilla) with `policy_params` (its
    knobs, kptrace.whatif.policies.nic_policy); the timers a policy adds cost about what the
    local_timer source's handler costs.
    """

    duration_s: float = 1.0
    seed: int = 1
    cpus: int = 2
    threads: int = 4
    fds_per_thread: int = 3
    wait_mean_ns: int = 200_000
    ready_share: float = 0.3
    preempt_share: float = 0.01
    migrate_share: float = 0.4
    wake_migrate_share: float = 0.02
    netrx_defer: float = 0.03
    eagain_share: float = 0.3
    indirect_scale: float = 1.0
    clock_ghz: float = 2.0
    ipc_clean: float = 1.6
    kinds: tuple[Kind, ...] = (
        Kind("get", 0.7, 8_000, 0.35, 64, (1_024,)),
        Kind("set", 0.2, 14_000, 0.5, 1_100, (8,)),
        Kind("mget", 0.1, 20_000, 0.6, 200, (1_024, 4_096)),
    )
    sources: tuple[Source, ...] = field(default_factory=lambda: (
        Source("sim-disk", 3_000, 3_000, 4_000, cpus=(1,), irq=41, softirqs=(Softirq("BLOCK", 1.0, 6_000),)),
        Source("local_timer", 1_000, 2_000, 2_000, cpus=(0, 1), vector=236, periodic=True,
               softirqs=(Softirq("TIMER", 0.3, 1_500), Softirq("SCHED", 0.1, 1_000), Softirq("RCU", 0.15, 2_000))),
    ))
    nic: Nic | None = None
    policy: str = "vanilla"
    policy_params: dict = field(default_factory=dict)


#: Mean costs (ns) of the kernel paths around requests, and their coefficient of variation.
COSTS = {"epoll_enter": 800, "epoll_wake": 1_000, "epoll_return": 600, "receive": 1_500, "send_before": 1_200,
         "netrx": 3_000, "send_after": 800, "kworker": 15_000, "migrate": 5_000}
COST_CV = 0.3
SOFTIRQ_GAP_NS = (150, 700)  # irq_exit to softirq entry, and between softirqs: uniform
MIGRATE_MIN_NS = 2_000
WAKE_MIN_NS = 2_000
MAXEVENTS, RECEIVE_BUFFER = 32, 16_384
PROCESS = ("sim-server", 4240)
START_NS = 100_000_000_000

BLOCK, PREEMPT, PAUSE = "block", "preempt", "pause"
TIMER_VECTOR = 236
NIC_STREAM = 1_000  # the NIC's random stream, apart from every other one


def _napi_payload(device: str, work: int, budget: int) -> str:
    return f"napi poll on napi struct 00000000a1b2c3d4 for device {device} work {work} budget {budget}"


def _gamma(rng: np.random.Generator, mean: float, cv: float, size: int) -> np.ndarray:
    if mean <= 0:
        return np.zeros(size, dtype=np.int64)
    shape = 1 / cv**2
    return np.maximum(rng.gamma(shape, mean / shape, size), 1).astype(np.int64)


def _arrival_times(source: Source, rng: np.random.Generator, start: int, end: int) -> np.ndarray:
    if source.periodic:  # a tick: fixed period, random phase, jitter of a few µs
        period = 1e9 / source.rate_per_s
        ticks = np.arange(int((end - start) / period)) * period + rng.uniform(0, period)
        return (start + ticks + rng.normal(0, 1_500, ticks.size)).astype(np.int64)
    expected = (end - start) / 1e9 * source.rate_per_s
    gaps = rng.exponential(1e9 / source.rate_per_s, int(expected + 6 * math.sqrt(expected) + 20))
    times = start + np.cumsum(gaps).astype(np.int64)
    return times[times < end]


def arrivals(scenario: Scenario, start: int, end: int) -> dict[int, list[Arrival]]:
    """Every interrupt of every source, per CPU, with its costs drawn; the tag holds its own
    softirq runs as (vec, gap_ns, run_ns) in vector order."""
    per_cpu: dict[int, list[Arrival]] = {cpu: [] for cpu in range(scenario.cpus)}
    for index, source in enumerate(scenario.sources):
        for cpu in source.cpus:
            rng = np.random.default_rng([scenario.seed, index, cpu])
            times = _arrival_times(source, rng, start, end)
            n = times.size
            handler = _gamma(rng, source.handler_ns, source.handler_cv, n)
            indirect = _gamma(rng, source.indirect_ns * scenario.indirect_scale, source.indirect_cv, n)
            runs = [(vec, rng.random(n) < s.probability, rng.integers(*SOFTIRQ_GAP_NS, n), _gamma(rng, s.mean_ns, s.cv, n))
                    for vec, s in sorted((SOFTIRQ_NAMES.index(s.name), s) for s in source.softirqs)]
            for i in range(n):
                own = tuple((vec, int(gap[i]), int(run[i])) for vec, raised, gap, run in runs if raised[i])
                per_cpu[cpu].append(Arrival(int(times[i]), source.name, int(handler[i]),
                                            sum(g + r for _, g, r in own), int(indirect[i]), (source, own)))
    return per_cpu


class _Request:
    __slots__ = ("id", "tid", "fd", "kind", "cpu", "ts", "end", "own_ns", "hits", "offcpu_ns", "n_offcpu",
                 "migrated", "switched_out")

    def __init__(self, rid: int, tid: int, fd: int, kind: Kind, cpu: int, ts: int):
        self.id, self.tid, self.fd, self.kind, self.cpu, self.ts = rid, tid, fd, kind, cpu, ts
        self.end = None
        self.own_ns = self.offcpu_ns = self.n_offcpu = 0
        self.hits: list[tuple[int, str]] = []
        self.migrated = False
        self.switched_out = 0


class _Cpu:
    """One CPU: its walker, who runs on it, and what the truth needs from its interrupts."""

    def __init__(self, sim: _Simulation, cpu: int, arrivals: list[Arrival]):
        self.sim, self.cpu = sim, cpu
        self.walker = CoreWalker(arrivals, START_NS, self._take)
        self.idle_task = ("<idle>", 0, None)
        self.kworker = (f"kworker/{cpu}:1", 90 + cpu, 90 + cpu)
        self.task = self.idle_task
        self.thread: _Thread | None = None
        self.queue: list[_Thread] = []
        self.request: _Request | None = None
        self.pending_netrx: tuple[_Request, int] | None = None  # a deferred send's NET_RX (one at most)
        self.idle_since: int | None = START_NS
        self.cycles = self.instructions = 0.0
        self.read_cycles = self.read_instructions = 0
        self.nic = sim.nic_queue(cpu, self._nic_poll)
        self.walker.nic = self.nic

    def emit(self, event: str, fields: tuple, context: str | None = None, ts: int | None = None) -> None:
        self.sim.rows.append((self.walker.now if ts is None else ts, self.cpu, self.task, event, fields, context))

    def work(self, ns: int) -> None:
        """The running task's own work; a server thread's is counted (counters, request)."""
        request = self.request
        self.walker.work(ns, request is not None)
        if request is not None:
            request.own_ns += ns
        if self.thread is not None:
            self.cycles += ns * self.sim.scenario.clock_ghz
            self.instructions += ns * self.sim.scenario.clock_ghz * self.sim.scenario.ipc_clean

    def _take(self, at: int, arrival: Arrival) -> int:
        """Emit one interrupt's events from `at` (with any pending NET_RX) and record it."""
        source, own = arrival.tag
        if source.vector is not None:
            self.emit(f"{source.name}_entry", (source.vector,), "hardirq", at)
        else:
            self.emit("irq_handler_entry", (source.irq, source.name), "hardirq", at)
        for vec, _, _ in own:
            self.emit("softirq_raise", (vec,), "hardirq", at + arrival.handler_ns // 2)
        end = at + arrival.handler_ns
        self.emit(f"{source.name}_exit" if source.vector is not None else "irq_handler_exit",
                  (source.vector if source.vector is not None else source.irq,), "hardirq", end)
        runs, foreign_ns = own, 0
        if self.pending_netrx is not None:  # __do_softirq runs the pending vectors in number order
            raiser, run = self.pending_netrx
            gap = self.sim.rng.randrange(*SOFTIRQ_GAP_NS)
            runs = sorted(own + ((NET_RX, gap, run),))
            foreign_ns = gap + run
            self.sim.foreign.append((self.cpu, source.name, at, raiser.tid, raiser.ts, foreign_ns))
            self.pending_netrx = None
        for vec, gap, run in runs:
            self.emit("softirq_entry", (vec,), "softirq", end + gap)
            end += gap + run
            self.emit("softirq_exit", (vec,), "softirq", end)
        span = end - at
        request = self.request
        indirect = 0
        if request is not None:
            request.hits.append((self.cpu, source.name))
            indirect = arrival.indirect_ns
            self.cycles += indirect * self.sim.scenario.clock_ghz
        self.sim.interrupts.append((self.cpu, source.name, at, arrival.handler_ns, span, span - foreign_ns,
                                    int(foreign_ns > 0), foreign_ns, indirect, self.task[1] == 0))
        return span

    def _nic_poll(self, poll: Poll) -> None:
        """Emit what the NIC queue just did (kptrace.whatif.nic): an IRQ's or a timer's chain with
        its NET_RX softirq and napi_poll events, or the napi_poll events of a busy poll in a
        syscall; and record an interrupt for the truth."""
        nic = self.sim.scenario.nic
        end = poll.at + poll.handler_ns
        if poll.kind != "syscall":
            if poll.kind == "timer":
                self.emit("local_timer_entry", (TIMER_VECTOR,), "hardirq", poll.at)
            else:
                self.emit("irq_handler_entry", (nic.irq, nic.name), "hardirq", poll.at)
            self.emit("softirq_raise", (NET_RX,), "hardirq", poll.at + poll.handler_ns // 2)
            self.emit("local_timer_exit" if poll.kind == "timer" else "irq_handler_exit",
                      (TIMER_VECTOR if poll.kind == "timer" else nic.irq,), "hardirq", end)
            self.emit("softirq_entry", (NET_RX,), "softirq", end)
        for work, ns in poll.polls:
            end += ns
            self.emit("napi_poll", (_napi_payload(nic.device, work, nic.budget),),
                      None if poll.kind == "syscall" else "softirq", end)
        if poll.kind == "syscall":
            return
        self.emit("softirq_exit", (NET_RX,), "softirq", end)
        source = "local_timer" if poll.kind == "timer" else nic.name
        indirect = 0
        if self.request is not None:
            self.request.hits.append((self.cpu, source))
            indirect = poll.indirect_ns
            self.cycles += indirect * self.sim.scenario.clock_ghz
        self.sim.interrupts.append((self.cpu, source, poll.at, poll.handler_ns, poll.span_ns, poll.span_ns, 0, 0,
                                    indirect, self.task[1] == 0))

    def read_counters(self) -> None:
        cycles, instructions = int(self.cycles), int(self.instructions)
        self.emit("counters", (cycles - self.read_cycles, instructions - self.read_instructions))
        self.read_cycles, self.read_instructions = cycles, instructions

    # Scheduling

    def active(self) -> bool:
        return self.thread is not None or bool(self.queue)

    def horizon(self) -> int:
        """The earliest time a thread could leave this CPU for another."""
        if self.thread is not None:
            return self.walker.now
        return max(self.walker.now, min((t.ready_ts for t in self.queue), default=math.inf))

    def _ready(self) -> _Thread | None:
        now = self.walker.now
        ready = [t for t in self.queue if t.ready_ts <= now]
        return min(ready, key=lambda t: (t.ready_ts, t.tid)) if ready else None

    def switch(self, thread: _Thread | None, prev_state: str, task: tuple | None = None) -> None:
        """sched_switch from the current task to `thread` (or `task`, or the idle task)."""
        now = self.walker.now
        new = thread.task if thread is not None else task or self.idle_task
        prev_comm = f"swapper/{self.cpu}" if self.task[1] == 0 else self.task[0]
        next_comm = f"swapper/{self.cpu}" if new[1] == 0 else new[0]
        self.emit("sched_switch", (prev_comm, self.task[1], prev_state, next_comm, new[1]), "sched")
        if self.idle_since is not None:
            self.sim.idle.append((self.cpu, self.idle_since, now))
        self.idle_since = now if new[1] == 0 else None
        self.task, self.thread = new, thread
        self.request = thread.request if thread is not None else None
        if self.request is not None and self.request.switched_out:
            request = self.request
            request.offcpu_ns += now - request.switched_out
            request.n_offcpu += 1
            request.migrated |= self.cpu != request.cpu
            request.switched_out = 0

    def _leave(self, thread: _Thread, target: _Cpu, ready_ts: int) -> None:
        thread.ready_ts = ready_ts
        if target is not self:
            self.queue.remove(thread)
            target.queue.append(thread)
            thread.cpu = target

    def step(self, others: list[_Cpu]) -> None:
        """Run the current thread to its next scheduling point, or idle until one can come."""
        if self.thread is None:
            thread = self._ready()
            if thread is None:
                wake = min(t.ready_ts for t in self.queue) if self.queue else math.inf
                bound = min([wake] + [o.horizon() + MIGRATE_MIN_NS for o in others if o.active()])
                self.walker.idle_until(int(bound))
                return
            self.switch(thread, "R")
        thread = self.thread
        try:
            op = next(thread.steps)
        except StopIteration:
            self.queue.remove(thread)
            self.switch(self._ready(), "S")
            return
        if op[0] == BLOCK:
            _, wake, target = op
            self._leave(thread, target, wake)
            self.switch(self._ready(), "S")
        elif op[0] == PREEMPT:
            _, kworker_ns, target, delay = op
            if thread.request is not None:
                thread.request.switched_out = self.walker.now
            self.switch(None, "R+", self.kworker)
            self.work(kworker_ns)
            self._leave(thread, target, self.walker.now + delay)
            self.switch(thread if target is self else self._ready(), "I")


class _Thread:
    """One server thread: its epoll fd, connections and syscalls; `steps` runs its loop."""

    def __init__(self, sim: _Simulation, index: int, cpu: _Cpu):
        sc = sim.scenario
        self.sim, self.cpu = sim, cpu
        self.tid = PROCESS[1] + 1 + index
        self.task = ("sim-worker", self.tid, PROCESS[1])
        self.epfd = 5 + index
        self.epoll = EPOLL[index % len(EPOLL)]
        first = 5 + sc.threads + index * sc.fds_per_thread
        self.fds = list(range(first, first + sc.fds_per_thread))
        self.receive = {fd: RECEIVES[(fd - 5) % len(RECEIVES)] for fd in self.fds}
        self.send = {fd: SENDS[(fd - 5) % len(SENDS)] for fd in self.fds}
        self.ready_ts = START_NS + sim.rng.randrange(1_000, 20_000)
        self.request: _Request | None = None
        self.steps = self._loop()

    def _cost(self, name: str) -> int:
        return self.sim.cost(name)

    def _syscall(self, name: str, fd: int, count: int, cost: str, ret: int) -> None:
        cpu = self.cpu
        self.sim.syscalls[name] += 1
        cpu.emit(f"sys_enter_{name}", (fd, count))
        cpu.work(self._cost(cost))
        cpu.emit(f"sys_exit_{name}", (ret,))

    def _loop(self):
        sim, rng, sc = self.sim, self.sim.rng, self.sim.scenario
        while self.cpu.walker.now < sim.end:
            self.sim.syscalls[self.epoll] += 1
            self.cpu.emit(f"sys_enter_{self.epoll}", (self.epfd, MAXEVENTS))
            self.cpu.work(self._cost("epoll_enter"))
            if rng.random() >= sc.ready_share:
                wake = self.cpu.walker.now + WAKE_MIN_NS + int(rng.expovariate(1 / sc.wait_mean_ns))
                target = sim.other_cpu(self.cpu) if rng.random() < sc.wake_migrate_share else self.cpu
                if self.cpu.nic is not None:
                    epoll_poll(self.cpu.walker, self.cpu.nic, wake)
                if self.cpu.walker.now < wake:
                    yield BLOCK, wake, target
                    self.cpu.work(self._cost("epoll_wake"))
            elif self.cpu.nic is not None:
                epoll_poll(self.cpu.walker, self.cpu.nic, -1)
            self.cpu.work(self._cost("epoll_return"))
            ready = rng.sample(self.fds, 1 + (rng.random() < 0.3) + (rng.random() < 0.1))
            self.cpu.emit(f"sys_exit_{self.epoll}", (len(ready),))
            self.cpu.read_counters()
            for fd in ready:
                yield from self._request(fd)
            yield (PAUSE,)

    def _request(self, fd: int):
        sim, rng, sc = self.sim, self.sim.rng, self.sim.scenario
        kind = rng.choices(sc.kinds, [k.share for k in sc.kinds])[0]
        request = _Request(len(sim.requests), self.tid, fd, kind, self.cpu.cpu, self.cpu.walker.now)
        sim.requests.append(request)
        self.request = self.cpu.request = request
        self._syscall(self.receive[fd], fd, RECEIVE_BUFFER, "receive", kind.bytes_in)
        demand = max(1, int(rng.lognormvariate(math.log(kind.demand_ns), kind.sigma)))
        if rng.random() < sc.preempt_share:
            first = int(demand * rng.random())
            self.cpu.work(first)
            target = sim.other_cpu(self.cpu) if rng.random() < sc.migrate_share else self.cpu
            yield PREEMPT, self._cost("kworker"), target, MIGRATE_MIN_NS + self._cost("migrate")
            demand -= first
        self.cpu.work(demand)
        for nbytes in kind.bytes_out:
            self._send(fd, nbytes, request)
        request.end = self.cpu.walker.now
        self.request = self.cpu.request = None
        if rng.random() < sc.eagain_share:
            self._syscall(self.receive[fd], fd, RECEIVE_BUFFER, "receive", EAGAIN)

    def _send(self, fd: int, nbytes: int, request: _Request) -> None:
        """A send raises NET_RX (loopback) and usually runs it before returning."""
        cpu, name = self.cpu, self.send[fd]
        self.sim.syscalls[name] += 1
        cpu.emit(f"sys_enter_{name}", (fd, 2 if name == "writev" else nbytes))
        cpu.work(self._cost("send_before"))
        cpu.emit("softirq_raise", (NET_RX,), "bh")
        netrx = self._cost("netrx")
        if cpu.pending_netrx is None and self.sim.rng.random() < self.sim.scenario.netrx_defer:
            cpu.pending_netrx = (request, netrx)
        else:
            # One pending bit per vector: this run also does the work of a deferred raise.
            if cpu.pending_netrx is not None:
                netrx += cpu.pending_netrx[1]
                cpu.pending_netrx = None
            cpu.walker.masked = True  # interrupts that come meanwhile wait for the softirq's end
            cpu.emit("softirq_entry", (NET_RX,), "softirq")
            cpu.work(netrx)
            cpu.emit("softirq_exit", (NET_RX,), "softirq")
            cpu.walker.unmask(cpu.request is not None)
        cpu.work(self._cost("send_after"))
        cpu.emit(f"sys_exit_{name}", (nbytes,))


class _Simulation:
    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.end = START_NS + int(scenario.duration_s * 1e9)
        self.rows: list = []
        self.requests: list[_Request] = []
        self.interrupts: list[tuple] = []
        self.idle: list[tuple[int, int, int]] = []
        #: NET_RX run in an IRQ chain: (cpu, source, chain ts, raising request's tid and ts, ns)
        self.foreign: list[tuple[int, str, int, int, int, int]] = []
        self.syscalls: Counter[str] = Counter()
        self._cost_rng = np.random.default_rng([scenario.seed, len(scenario.sources)])
        self._units: list[float] = []
        self._unit_at = 0
        per_cpu = arrivals(scenario, START_NS, self.end + 10_000_000)
        self.cpus = [_Cpu(self, cpu, per_cpu[cpu]) for cpu in range(scenario.cpus)]
        for index in range(scenario.threads):
            cpu = self.cpus[index % scenario.cpus]
            cpu.queue.append(_Thread(self, index, cpu))

    def nic_queue(self, cpu: int, record) -> NicQueue | None:
        """The CPU's NIC queue under the scenario's policy, or None (no NIC there)."""
        from kptrace.whatif.policies import nic_policy

        sc, nic = self.scenario, self.scenario.nic
        if nic is None or cpu not in nic.cpus:
            return None
        rng = np.random.default_rng([sc.seed, NIC_STREAM, cpu])
        expected = (self.end + 10_000_000 - START_NS) / 1e9 * nic.packets_per_s
        gaps = rng.exponential(1e9 / nic.packets_per_s, int(expected + 6 * math.sqrt(expected) + 20))
        packets = START_NS + np.cumsum(gaps).astype(np.int64)
        timer = next((s.handler_ns for s in sc.sources if s.name == "local_timer"), 1_000)
        costs = NicCosts(nic.handler_ns, nic.poll_fixed_ns, nic.per_packet_ns, nic.indirect_per_packet_ns, timer,
                         nic.moderation_ns, nic.budget)
        units = rng.gamma(1 / COST_CV**2, COST_CV**2, 1 << 16).tolist()
        drawn = itertools.count()

        def draw(mean: float) -> int:  # mean times a unit-mean gamma draw, from a long cycle of them
            return max(1, int(mean * units[next(drawn) % len(units)]))

        return NicQueue(packets.tolist(), costs, nic_policy(sc.policy, sc.policy_params), draw, record)

    def cost(self, name: str) -> int:
        """A kernel path's cost: COSTS[name] times a unit-mean gamma draw (drawn in batches)."""
        if self._unit_at == len(self._units):
            self._units = (self._cost_rng.gamma(1 / COST_CV**2, COST_CV**2, 1 << 16)).tolist()
            self._unit_at = 0
        self._unit_at += 1
        return max(1, int(COSTS[name] * self._units[self._unit_at - 1]))

    def other_cpu(self, cpu: _Cpu) -> _Cpu:
        """Where a migrating thread goes: the other CPU with the fewest threads."""
        return min((c for c in self.cpus if c is not cpu), key=lambda c: (len(c.queue), c.cpu), default=cpu)

    def run(self) -> None:
        while active := [c for c in self.cpus if c.active()]:
            cpu = min(active, key=lambda c: (c.walker.now, c.cpu))
            cpu.step([c for c in self.cpus if c is not cpu])
        for cpu in self.cpus:
            if cpu.idle_since is not None:
                self.idle.append((cpu.cpu, cpu.idle_since, cpu.walker.now))

    def sorted_rows(self) -> list:
        order = np.argsort(np.fromiter((row[0] for row in self.rows), np.int64, len(self.rows)), kind="stable")
        return [self.rows[i] for i in order]


def scenario_with_nic(scenario: Scenario, policy: str, params: dict | None = None) -> Scenario:
    """The scenario with a NIC queue on every CPU under `policy` (its knobs in `params`): one
    thread per CPU that stays there, so that a thread that busy-polls never holds back another
    (the replay keeps the trace's order of requests on a core). Refuses an unknown policy or knob."""
    from kptrace.whatif.policies import nic_policy

    nic_policy(policy, params or {})
    return replace(scenario, nic=Nic(cpus=tuple(range(scenario.cpus))), policy=policy, policy_params=dict(params or {}),
                   threads=scenario.cpus, wake_migrate_share=0.0, migrate_share=0.0)


def simulate(scenario: Scenario) -> _Simulation:
    """Run the model; the result holds the event rows and what the truth is computed from."""
    sim = _Simulation(scenario)
    sim.run()
    return sim


def direct_population_mean_ns(source: Source) -> float:
    """The mean of the distribution a source's direct cost is drawn from (what a 95% interval of
    the mean direct cost should cover): its handler plus, for each softirq it raises, the
    probability times the mean gap before the run and the run. Gamma draws are floored to whole
    ns (-0.5 ns each); gaps are uniform integers in SOFTIRQ_GAP_NS."""
    mean_gap = (SOFTIRQ_GAP_NS[0] + SOFTIRQ_GAP_NS[1] - 1) / 2
    return source.handler_ns - 0.5 + sum(s.probability * (mean_gap + s.mean_ns - 0.5) for s in source.softirqs)


def _size_class(nbytes: int) -> str:
    """kptrace.requests' byte-size class, so that truth and analysis name kinds alike."""
    return f"2^{int(math.floor(math.log2(max(nbytes, 1))))}"


def _clipped(lo: str, hi: str) -> pl.Expr:
    return (pl.min_horizontal(pl.col(hi), "w_hi") - pl.max_horizontal(pl.col(lo), "w_lo")).clip(0)


def _hit_counts(requests: list[_Request]) -> pl.DataFrame:
    rows = [(cpu, source, request.id, len(request.hits) == 1) for request in requests
            for cpu, source in dict.fromkeys(request.hits)]
    hits = pl.DataFrame(rows, schema={"cpu": pl.Int64, "source": pl.String, "request": pl.Int64, "once": pl.Boolean},
                        orient="row")
    return hits.group_by("cpu", "source").agg(hit_any=pl.len(), hit_once=pl.col("once").sum())


def truth(sim: _Simulation, fmt: str) -> dict:
    """The exact figures of one simulation (see the module docstring for each key)."""
    from kptrace.export.text import RESOLUTION_NS

    sc = sim.scenario
    first, last = min(row[0] for row in sim.rows), max(row[0] for row in sim.rows)
    duration_s = (last - first) / 1e9
    interrupts = pl.DataFrame(sim.interrupts, orient="row", schema={
        "cpu": pl.Int64, "source": pl.String, "ts": pl.Int64, "handler_ns": pl.Int64, "chain_ns": pl.Int64,
        "direct_ns": pl.Int64,
        "foreign_softirqs": pl.Int64, "foreign_ns": pl.Int64, "indirect_ns": pl.Int64, "idle": pl.Boolean})
    requests = pl.DataFrame(
        [(r.cpu, r.tid, r.fd, r.kind.name, r.ts, r.end, r.own_ns, r.offcpu_ns, r.n_offcpu, r.migrated,
          len(r.kind.bytes_out), bool(r.hits)) for r in sim.requests], orient="row",
        schema={"cpu": pl.Int64, "tid": pl.Int64, "fd": pl.Int64, "kind": pl.String, "ts": pl.Int64, "end": pl.Int64,
                "own_ns": pl.Int64, "offcpu_ns": pl.Int64, "n_offcpu": pl.Int64, "migrated": pl.Boolean,
                "sends": pl.Int64, "hit": pl.Boolean})
    idle = pl.DataFrame(sim.idle, orient="row", schema={"cpu": pl.Int64, "ts": pl.Int64, "end": pl.Int64})
    window = requests.group_by("cpu").agg(w_lo=pl.col("ts").min(), w_hi=pl.col("end").max(), requests=pl.len())
    in_window = pl.col("ts").is_between("w_lo", "w_hi")
    means = pl.DataFrame([(cpu, s.name, direct_population_mean_ns(s), float(s.indirect_ns * sc.indirect_scale))
                          for s in sc.sources for cpu in s.cpus], orient="row",
                         schema={"cpu": pl.Int64, "source": pl.String, "direct_population_mean_ns": pl.Float64,
                                 "indirect_mean_ns": pl.Float64})

    per_cpu = (
        window.join(idle.join(window, on="cpu").group_by("cpu").agg(idle_ns=_clipped("ts", "end").sum()),
                    on="cpu", how="left")
        .join(interrupts.filter("idle").join(window, on="cpu").with_columns(end=pl.col("ts") + pl.col("chain_ns"))
              .group_by("cpu").agg(idle_irq_ns=_clipped("ts", "end").sum()), on="cpu", how="left")
        .with_columns(pl.col("idle_ns", "idle_irq_ns").fill_null(0), window_ns=pl.col("w_hi") - pl.col("w_lo"))
        .with_columns(busy_ns=pl.col("window_ns") - pl.col("idle_ns") + pl.col("idle_irq_ns"))
        .with_columns(busy_share=pl.col("busy_ns") / pl.col("window_ns"))
        .select("cpu", "requests", "window_ns", "idle_ns", "idle_irq_ns", "busy_ns", "busy_share")
        .sort("cpu")
    )
    per_source = (
        interrupts.join(window, on="cpu", how="left")
        .group_by("cpu", "source")
        .agg(count=pl.len(), handler_ns=pl.col("handler_ns").sum(), direct_ns=pl.col("direct_ns").sum(),
             chain_ns=pl.col("chain_ns").sum(),
             foreign_softirqs=pl.col("foreign_softirqs").sum(), foreign_ns=pl.col("foreign_ns").sum(),
             indirect_ns=pl.col("indirect_ns").sum(), window_count=in_window.sum(),
             window_direct_ns=pl.col("direct_ns").filter(in_window).sum(),
             window_indirect_ns=pl.col("indirect_ns").filter(in_window).sum())
        .join(_hit_counts(sim.requests), on=["cpu", "source"], how="left")
        .join(per_cpu.select("cpu", "busy_ns"), on="cpu", how="left")
        .join(means, on=["cpu", "source"], how="left")
        .with_columns(
            pl.col("hit_any", "hit_once").fill_null(0),
            rate_per_s=pl.col("count") / duration_s,
            direct_mean_ns=pl.col("direct_ns") / pl.col("count"),
            capacity_loss=(pl.col("window_direct_ns") + pl.col("window_indirect_ns")) / pl.col("busy_ns"),
        )
        .drop("busy_ns")
        .sort("cpu", "source")
    )
    kinds = {k.name: k for k in sc.kinds}
    per_kind = (
        requests.group_by("kind").agg(requests=pl.len(), own_mean_ns=pl.col("own_ns").mean())
        .with_columns(
            size_class=pl.col("kind").replace_strict(
                {n: f"{_size_class(k.bytes_in)}/{_size_class(sum(k.bytes_out))}" for n, k in kinds.items()}),
            demand_mean_ns=pl.col("kind").replace_strict({n: k.demand_mean_ns for n, k in kinds.items()}),
        )
        .sort("kind")
    )
    offcpu = requests.filter(pl.col("n_offcpu") > 0)
    return {
        "model": __doc__.strip().splitlines()[0],
        "format": fmt,
        "resolution_ns": RESOLUTION_NS[fmt],
        "seed": sc.seed,
        "start_ns": first,
        "end_ns": last,
        "duration_s": duration_s,
        "per_source": per_source.to_dicts(),
        "per_cpu": per_cpu.to_dicts(),
        "kinds": per_kind.to_dicts(),
        "requests": {
            "total": requests.height, "two_sends": int((requests["sends"] == 2).sum()), "offcpu": offcpu.height,
            "offcpu_ns": int(offcpu["offcpu_ns"].sum()), "switch_outs": int(offcpu["n_offcpu"].sum()),
            "migrated": int(requests["migrated"].sum()), "hit": int(requests["hit"].sum()),
        },
        "offcpu_requests": offcpu.select("tid", "fd", "cpu", "ts", "offcpu_ns", "n_offcpu", "migrated").to_dicts(),
        "foreign_softirqs": {
            "in_irq_chains": len(sim.foreign), "ns": sum(run[-1] for run in sim.foreign),
            "runs": [dict(zip(("cpu", "source", "chain_ts", "raised_by_tid", "raised_by_request_ts", "ns"), run))
                     for run in sim.foreign],
        },
        "syscalls": dict(sorted(sim.syscalls.items())),
        "scenario": _scenario_dict(sc),
    }


def _scenario_dict(sc: Scenario) -> dict:
    """The scenario as truth.json holds it; without a NIC, as before NICs were simulated."""
    fields = asdict(sc)
    if sc.nic is None:
        for key in ("nic", "policy", "policy_params"):
            fields.pop(key)
    return fields


def write_simulation(out_dir: str | Path, scenario: Scenario, fmt: str = "tracefs") -> Path:
    """Write `trace.txt` in `fmt` (tracefs | trace-cmd | perf) and `truth.json`; return the trace path."""
    from kptrace.export.text import FORMATTERS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sim = simulate(scenario)
    path = out / "trace.txt"
    path.write_text(FORMATTERS[fmt](sim.sorted_rows(), scenario.cpus))
    (out / "truth.json").write_text(json.dumps(truth(sim, fmt), indent=1) + "\n")
    return path


def analyzed_seed(seed: int, fmt: str = "tracefs", duration_s: float = 0.3, **changes):
    """(kptrace.analysis.analyze of one simulated trace, its truth): one draw for checks across
    seeds, such as whether 95% intervals cover the truth. `changes` replace Scenario fields."""
    from kptrace.analysis import analyze

    scenario = replace(Scenario(duration_s=duration_s, seed=seed), **changes)
    with tempfile.TemporaryDirectory(prefix="kptrace-sim-") as out:
        path = write_simulation(out, scenario, fmt)
        return analyze(path), json.loads((Path(out) / "truth.json").read_text())
