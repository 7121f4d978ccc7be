"""Interrupt policies as transformations of a replay's input (kptrace.whatif.replay.CoreInput).

Parameter names follow the kernel's knobs (../shared/docs/background.md). A policy returns the
transformed cores and notes that say what it changed, or why it changed nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from kptrace.whatif.nic import NEVER, NicPolicy
from kptrace.whatif.replay import CoreInput

NETWORK_POLICIES = ("coalesce", "busy-poll", "irq-suspend", "kernel-polling")
#: A network policy's knobs when not given: those of the upstream runs (defer50, napibusy
#: without its defer/gro, suspend20; ../shared/data/irqsuspend-v8-runs.csv).
NETWORK_DEFAULTS = {
    "coalesce": {"defer": 100, "gro_flush_timeout": 50_000},
    "busy-poll": {"usecs": 64, "budget": 64, "prefer": False, "defer": 0, "gro_flush_timeout": 0},
    "irq-suspend": {"timeout": 20_000_000, "defer": 100, "gro_flush_timeout": 20_000},
    "kernel-polling": {},
}
POLICIES = ("vanilla", "move-irqs", "remove", *NETWORK_POLICIES)


class PolicyError(ValueError):
    """A policy cannot be applied as asked (unknown source, missing parameter, not modelled)."""


@dataclass(frozen=True)
class Policy:
    name: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Applied:
    cores: list[CoreInput]
    notes: list[str]
    #: Work (ns) the policy moved onto a core outside the serving ones: {cpu: ns over the trace}.
    moved_ns: dict[int, int] = field(default_factory=dict)
    #: Policies with the same key leave the replay the same input (vanilla's is empty).
    key: frozenset = frozenset()


def _without(cores: list[CoreInput], sources: set[str]) -> tuple[list[CoreInput], dict[int, int]]:
    """The cores with the sources' arrivals, and the slowdown their measured hits left in the
    requests, taken out; and the direct work they held per core."""
    kept, removed = [], {}
    for core in cores:
        gone = core.arrivals.of_sources(sources)
        removed[core.cpu] = int(core.arrivals.span_ns[gone].sum())
        demand = core.demand_ns - sum((core.hit_indirect[s] for s in sources if s in core.hit_indirect),
                                      np.zeros_like(core.demand_ns))
        kept.append(replace(core, arrivals=core.arrivals.where(~gone), demand_ns=demand,
                            hit_indirect={s: v for s, v in core.hit_indirect.items() if s not in sources}))
    return kept, removed


def _sources(policy: Policy, known: set[str]) -> set[str]:
    sources = set(policy.params.get("source") or [])
    if not sources:
        raise PolicyError(f"{policy.name} needs --source NAME (interrupt sources on the serving cores: "
                          f"{', '.join(sorted(known)) or 'none'})")
    if unknown := sources - known:
        raise PolicyError(f"{policy.name}: no interrupt source {', '.join(sorted(unknown))} on the serving cores "
                          f"(known: {', '.join(sorted(known)) or 'none'})")
    return sources


def nic_policy(name: str, params: dict) -> NicPolicy:
    """The NIC queue's behaviour under a network policy (kptrace.whatif.nic), knobs named like the
    kernel's: --defer (napi_defer_hard_irqs), --gro-flush-timeout (ns), --usecs and --budget
    (busy_poll_usecs, busy_poll_budget), --prefer (prefer_busy_poll), --timeout
    (irq-suspend-timeout, ns). vanilla: IRQs as the NIC raises them."""
    if name == "vanilla":
        return NicPolicy()
    if name not in NETWORK_POLICIES:
        raise PolicyError(f"{name} is not a network policy ({', '.join(NETWORK_POLICIES)})")
    knobs = NETWORK_DEFAULTS[name] | {k: v for k, v in params.items() if v is not None}
    defer, gro = int(knobs.get("defer", 0)), int(knobs.get("gro_flush_timeout", 0))
    if min(defer, gro, int(knobs.get("usecs", 0)), int(knobs.get("timeout", 0))) < 0:
        raise PolicyError(f"{name}: knobs are counts and times, never negative ({knobs})")
    if name == "coalesce":
        return NicPolicy(defer=defer, gro_flush_timeout=gro)
    if name == "busy-poll":
        # prefer_busy_poll holds IRQs only behind the defer/gro timer, re-armed at each busy poll.
        hold = gro if knobs["prefer"] and defer and gro else None
        return NicPolicy(defer, gro, app_polls=True, hold_ns=hold, spin_ns=int(knobs["usecs"]) * 1_000,
                         poll_budget=int(knobs["budget"]))
    if name == "irq-suspend":
        # Suspension rides on the deferral: with defer or gro_flush_timeout 0 IRQs are never held.
        hold = int(knobs["timeout"]) if defer and gro else None
        return NicPolicy(defer, gro, app_polls=True, hold_ns=hold)
    return NicPolicy(app_polls=True, hold_ns=NEVER)  # kernel polling: unmask only when a poll finds nothing


def apply(policy: Policy, cores: list[CoreInput], nic_sources: set[str]) -> Applied:
    """The replay input under `policy`."""
    known = {source for core in cores for source in core.arrivals.sources()}
    if policy.name == "vanilla":
        return Applied(cores, ["the trace as measured (calibration)"])
    if policy.name in ("remove", "move-irqs") and policy.params.get("source") == []:
        return Applied(cores, [f"{policy.name}: no device IRQ on the serving cores (only APIC vectors such as the "
                               "timer), so nothing to move or remove: no change predicted"])
    if policy.name == "remove":
        sources = _sources(policy, known)
        kept, _ = _without(cores, sources)
        return Applied(kept, [f"{', '.join(sorted(sources))} removed from the serving cores (an upper bound)"],
                       key=frozenset(sources))
    if policy.name == "move-irqs":
        sources = _sources(policy, known)
        kept, removed = _without(cores, sources)
        target = policy.params.get("to_cpu")
        serving = {core.cpu for core in cores}
        if target in serving:
            raise PolicyError(f"move-irqs --to-cpu {target}: that CPU serves requests itself; pick another CPU")
        moved = {target if target is not None else -1: sum(removed.values())}
        where = f"CPU {target}" if target is not None else "a core that serves no requests"
        return Applied(kept, [f"{', '.join(sorted(sources))} hard IRQs and the softirqs they run move to {where}; "
                              "its added load is reported, not replayed"], moved, frozenset(sources))
    if policy.name in NETWORK_POLICIES:
        if not nic_sources:
            return Applied(cores, [f"{policy.name} acts on NIC interrupts, and this trace has none on the serving "
                                   "cores (no hard IRQ whose NET_RX softirq polls a device in napi_poll; loopback "
                                   "traffic raises none): no change predicted"])
        return _network(policy, cores, nic_sources)
    raise PolicyError(f"unknown policy {policy.name!r}; one of: {', '.join(POLICIES)}, all")


def _network(policy: Policy, cores: list[CoreInput], nic_sources: set[str]) -> Applied:
    """The NIC IRQs measured on the serving cores give way to each core's NIC queue, replayed
    under the policy's knobs (kptrace.whatif.nic)."""
    behaviour = nic_policy(policy.name, policy.params)
    queued = [core for core in cores if core.nic_costs is not None]
    if not queued:
        raise PolicyError(f"{policy.name} on NIC sources ({', '.join(sorted(nic_sources))}): no NIC queue input on "
                          "the serving cores (no complete NAPI poll of a device in their NET_RX softirqs there, or "
                          "the replay was not given kptrace.whatif.inputs.nic_inputs)")
    kept, _ = _without(cores, nic_sources)
    kept = [replace(core, nic_policy=behaviour) if core.nic_costs is not None else core for core in kept]
    costs = queued[0].nic_costs
    knobs = NETWORK_DEFAULTS[policy.name] | {k: v for k, v in policy.params.items() if v is not None}
    return Applied(kept, [
        f"{', '.join(sorted(nic_sources))}: the NIC queue replayed under {policy.name} "
        f"({', '.join(f'{k} {v}' for k, v in knobs.items()) or 'the paper semantics'}); per NAPI poll "
        f"{costs.poll_fixed_ns:,.0f} ns + {costs.per_packet_ns:,.0f} ns per packet and "
        f"{costs.indirect_per_packet_ns:,.0f} ns slowdown per packet in interrupt context (measured/estimated, "
        f"CPU {queued[0].cpu}); added timer interrupts cost {costs.timer_handler_ns:,.0f} ns"],
        key=frozenset({policy.name, *(f"{k}={v}" for k, v in sorted(knobs.items()))}))
