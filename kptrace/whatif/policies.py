"""Interrupt policies as transformations of a replay's input (kptrace.whatif.replay.CoreInput).

Parameter names follow the kernel's knobs (../shared/docs/background.md). A policy returns the
transformed cores and notes that say what it changed, or why it changed nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from kptrace.whatif.replay import CoreInput

NETWORK_POLICIES = ("coalesce", "busy-poll", "irq-suspend", "kernel-polling")
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
        stay = tuple(a for a in core.arrivals if a.source not in sources)
        removed[core.cpu] = sum(a.handler_ns + a.softirq_ns for a in core.arrivals if a.source in sources)
        demand = core.demand_ns - sum((core.hit_indirect[s] for s in sources if s in core.hit_indirect),
                                      np.zeros_like(core.demand_ns))
        kept.append(replace(core, arrivals=stay, demand_ns=demand,
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


def apply(policy: Policy, cores: list[CoreInput], nic_sources: set[str]) -> Applied:
    """The replay input under `policy`."""
    known = {a.source for core in cores for a in core.arrivals}
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
        raise PolicyError(f"{policy.name} on NIC sources ({', '.join(sorted(nic_sources))}) is not modelled yet "
                          "(issue 8)")
    raise PolicyError(f"unknown policy {policy.name!r}; one of: {', '.join(POLICIES)}, all")
