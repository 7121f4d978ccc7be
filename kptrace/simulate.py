"""Synthetic traces with known ground truth, in the real text formats, for tests and demos.

The model: one epoll server thread on one CPU serves requests back to back. Each loop it waits
in epoll_wait (an idle gap), reads a request (1.5 µs syscall), runs the request's user work (its
kind's service demand), and answers with sendmsg (3 µs syscall). Interrupt sources fire as
Poisson processes. An interrupt takes the CPU for its handler time plus the softirq it raises
(its direct cost) and, when it lands inside a request, makes the rest of that request slower by
its indirect cost — the stand-in for the cache and pipeline damage the paper measures.
Counters (perf format only, read at each epoll_wait return): the thread's own work runs at
`clock_ghz` and retires `ipc_clean` instructions per cycle; an indirect slowdown adds cycles
but no instructions, so it shows up as lower IPC, as on real hardware. Handler time is not
counted (the counters follow the thread).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kptrace.schema import SOFTIRQ_NAMES


@dataclass(frozen=True)
class Source:
    """One interrupt source. `vector` set means an APIC vector (irq_vectors:<name>_entry)."""

    name: str
    rate_per_s: float
    handler_ns: int
    indirect_ns: int
    irq: int = 0
    softirq: str | None = None
    softirq_ns: int = 0
    vector: int | None = None

    @property
    def direct_ns(self) -> int:
        return self.handler_ns + (self.softirq_ns + SOFTIRQ_GAP_NS if self.softirq else 0)


@dataclass(frozen=True)
class Kind:
    name: str
    share: float
    demand_ns: int
    bytes_in: int
    bytes_out: int


@dataclass
class Scenario:
    """Everything the generator needs; written beside the trace as truth.json."""

    duration_s: float = 1.0
    cpu: int = 1
    cpus: int = 2
    idle_mean_ns: int = 4_000
    clock_ghz: float = 2.0
    ipc_clean: float = 1.6
    seed: int = 1
    kinds: tuple[Kind, ...] = (Kind("get", 0.9, 9_000, 64, 1_024), Kind("set", 0.1, 15_000, 1_100, 8))
    sources: tuple[Source, ...] = field(default_factory=lambda: (
        Source("sim-disk", 3_000, 3_000, 4_000, irq=41, softirq="BLOCK", softirq_ns=6_000),
        Source("local_timer", 1_000, 2_000, 2_000, vector=236),
    ))


SOFTIRQ_GAP_NS = 300
READ_NS, SEND_NS = 1_500, 3_000
SERVER = ("sim-server", 4242, 4240)
EPFD, CONN_FD = 5, 9


class _Timeline:
    """Walks the server thread's time forward, inserting interrupts as they arrive."""

    def __init__(self, scenario: Scenario, start_ns: int):
        self.scenario = scenario
        self.now = start_ns
        self.rows: list[tuple[int, str, dict]] = []
        rng = random.Random(scenario.seed)
        end = start_ns + int(scenario.duration_s * 1e9)
        arrivals = []
        for source in scenario.sources:
            at = start_ns
            while (at := at + int(rng.expovariate(source.rate_per_s) * 1e9)) < end:
                arrivals.append((at, source))
        self.arrivals = sorted(arrivals, key=lambda a: a[0])
        self.next = 0
        self.end = end
        self.rng = rng
        self.cycles = 0
        self.instructions = 0

    def emit(self, ts: int, event: str, **fields) -> None:
        self.rows.append((ts, event, fields))

    def run(self, work_ns: int, in_request: bool) -> None:
        """Advance by `work_ns` of the thread's own work; interrupts stretch it."""
        finish = self.now + work_ns
        self.cycles += int(work_ns * self.scenario.clock_ghz)
        self.instructions += int(work_ns * self.scenario.clock_ghz * self.scenario.ipc_clean)
        while self.next < len(self.arrivals) and self.arrivals[self.next][0] < finish:
            at, source = self.arrivals[self.next]
            self.next += 1
            at = max(at, self.now)
            span = self._interrupt(at, source)
            extra = source.indirect_ns if in_request else 0
            self.cycles += int(extra * self.scenario.clock_ghz)
            finish += span + extra
            self.now = at + span
        self.now = finish

    def _interrupt(self, at: int, source: Source) -> int:
        if source.vector is not None:
            self.emit(at, f"{source.name}_entry", vector=source.vector, ctx="hardirq")
            self.emit(at + source.handler_ns, f"{source.name}_exit", vector=source.vector, ctx="hardirq")
        else:
            self.emit(at, "irq_handler_entry", irq=source.irq, name=source.name, ctx="hardirq")
            if source.softirq:
                self.emit(at + source.handler_ns // 2, "softirq_raise", vec=SOFTIRQ_NAMES.index(source.softirq),
                          ctx="hardirq")
            self.emit(at + source.handler_ns, "irq_handler_exit", irq=source.irq, ctx="hardirq")
        if source.softirq:
            begin = at + source.handler_ns + SOFTIRQ_GAP_NS
            vec = SOFTIRQ_NAMES.index(source.softirq)
            self.emit(begin, "softirq_entry", vec=vec, ctx="softirq")
            self.emit(begin + source.softirq_ns, "softirq_exit", vec=vec, ctx="softirq")
        return source.direct_ns

    def syscall(self, name: str, cost_ns: int, ret: int, in_request: bool, **args) -> None:
        self.emit(self.now, f"sys_enter_{name}", **args)
        self.run(cost_ns, in_request)
        self.emit(self.now, f"sys_exit_{name}", ret=ret)


def simulate_rows(scenario: Scenario, start_ns: int = 100_000_000_000) -> list[tuple[int, str, dict]]:
    """The event rows (ts ns, event, fields) of one scenario, in time order."""
    line = _Timeline(scenario, start_ns)
    weights = [k.share for k in scenario.kinds]
    while line.now < line.end:
        line.emit(line.now, "sys_enter_epoll_wait", fd=EPFD, count=32)
        line.run(int(line.rng.expovariate(1 / scenario.idle_mean_ns)), in_request=False)
        line.emit(line.now, "sys_exit_epoll_wait", ret=1)
        line.emit(line.now, "counters", cycles=line.cycles, instructions=line.instructions)
        kind = line.rng.choices(scenario.kinds, weights)[0]
        line.syscall("read", READ_NS, kind.bytes_in, True, fd=CONN_FD, count=16_384)
        line.run(kind.demand_ns, in_request=True)
        line.syscall("sendmsg", SEND_NS, kind.bytes_out, True, fd=CONN_FD)
    return sorted(line.rows, key=lambda row: row[0])


def truth(scenario: Scenario) -> dict:
    """Ground truth, in the units kptrace reports (ns per interrupt, interrupts/s)."""
    return {
        "model": __doc__.strip().splitlines()[0],
        "scenario": asdict(scenario),
        "sources": {s.name: {"rate_per_s": s.rate_per_s, "direct_ns": s.direct_ns, "indirect_ns": s.indirect_ns,
                             "cpu": scenario.cpu} for s in scenario.sources},
    }


def write_simulation(out_dir: str | Path, scenario: Scenario, fmt: str = "tracefs") -> Path:
    """Write `trace.txt` in `fmt` (tracefs | trace-cmd | perf) and `truth.json`; return the trace path."""
    from kptrace.export.text import FORMATTERS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = simulate_rows(scenario)
    path = out / "trace.txt"
    path.write_text(FORMATTERS[fmt](rows, scenario.cpu, scenario.cpus, SERVER))
    (out / "truth.json").write_text(json.dumps(truth(scenario), indent=2) + "\n")
    return path
