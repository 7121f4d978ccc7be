"""Network policies of the what-if replayer: the NIC queue's mechanisms (kptrace.whatif.nic), and
mechanism truth: from the vanilla trace of a simulated server with a NIC, the replay predicts
the capacity and p99 measured on the same workload simulated under each policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from kptrace.analysis import analyze
from kptrace.simulate import Scenario, scenario_with_nic, write_simulation
from kptrace.walker import CoreWalker
from kptrace.whatif import Policy, PolicyError, nic_sources, servers
from kptrace.whatif.inputs import nic_inputs
from kptrace.whatif.nic import NEVER, NicCosts, NicPolicy, NicQueue, epoll_poll
from kptrace.whatif.policies import apply, nic_policy
from kptrace.whatif.predict import core_inputs, measured, replay

COSTS = NicCosts(handler_ns=1_000, poll_fixed_ns=2_000, per_packet_ns=500, indirect_per_packet_ns=300,
                 timer_handler_ns=800, moderation_ns=10_000, budget=4)


def _queue(packets, policy=NicPolicy(), record=None):
    return NicQueue(list(packets), COSTS, policy, record=record)


def test_the_nic_interrupts_after_its_moderation_delay_and_a_poll_takes_every_packet_arrived():
    polls = []
    queue = _queue([100, 2_000, 30_000], record=polls.append)
    assert queue.next_ts() == 10_100
    span, indirect = queue.fire(10_100)
    # handler 1,000, then one poll of the two packets that arrived by its start
    assert polls[0].kind == "irq" and polls[0].polls == ((2, 3_000),)
    assert (span, indirect) == (4_000, 600)
    assert queue.next_ts() == 40_000  # IRQs back on: the next packet's moderation delay


def test_a_poll_over_budget_polls_again_at_once():
    polls = []
    queue = _queue(range(0, 6_000, 1_000), record=polls.append)
    queue.fire(queue.next_ts())
    assert [k for k, _ in polls[0].polls] == [4, 2]


def test_coalesce_keeps_irqs_masked_behind_the_gro_timer_for_defer_empty_polls():
    polls = []
    queue = _queue([0, 500_000], NicPolicy(defer=2, gro_flush_timeout=20_000), polls.append)
    span, _ = queue.fire(queue.next_ts())
    at = 10_000 + span + 20_000
    assert queue.next_ts() == at  # the gro timer, not an IRQ
    for _ in range(3):  # two empty polls re-arm the timer, the third gives the IRQ back
        assert queue.next_ts() < 500_000
        queue.fire(queue.next_ts())
    assert [p.kind for p in polls] == ["irq", "timer", "timer", "timer"]
    assert all(p.packets == 0 for p in polls[1:])
    assert queue.next_ts() == 510_000


def test_irq_suspend_holds_irqs_while_epoll_finds_work_and_the_timer_takes_over_when_it_blocks():
    policy = nic_policy("irq-suspend", {"timeout": 1_000_000, "defer": 2, "gro_flush_timeout": 20_000})
    queue = _queue([0, 1_000, 40_000], policy)
    cost = queue.app_poll(5_000, will_block=False)
    assert cost == 2_000 + 2 * 500 and queue.next_ts() == 5_000 + cost + 1_000_000  # only the safety timer
    cost = queue.app_poll(50_000, will_block=True)
    assert queue.next_ts() == 50_000 + cost + 20_000  # suspension ended: the gro timer


def test_plain_busy_polling_leaves_the_irq_armed_and_spins_until_the_events_come():
    queue = _queue([0, 1_000_000], nic_policy("busy-poll", {"usecs": 50}))
    walker = CoreWalker([], 0, nic=queue)
    epoll_poll(walker, queue, ready_ts=30_000)
    assert walker.now >= 30_000 and walker.idle_ns == 0  # spun (busy) rather than slept
    assert queue.next_ts() == 1_010_000


def test_kernel_polling_unmasks_only_when_a_poll_finds_nothing():
    queue = _queue([0, 5_000, 9_000_000], nic_policy("kernel-polling", {}))
    queue.app_poll(1_000, will_block=False)
    assert queue.next_ts() == NEVER
    queue.app_poll(6_000, will_block=True)
    assert queue.next_ts() == 9_010_000


def test_a_negative_knob_is_refused():
    with pytest.raises(PolicyError, match="never negative"):
        nic_policy("coalesce", {"defer": -1, "gro_flush_timeout": 10_000})


# Mechanism truth

POLICIES = [
    ("coalesce", {"defer": 10, "gro_flush_timeout": 10_000}),
    ("coalesce", {"defer": 100, "gro_flush_timeout": 50_000}),
    ("busy-poll", {"usecs": 64}),
    ("irq-suspend", {"timeout": 20_000_000, "defer": 100, "gro_flush_timeout": 20_000}),
    ("kernel-polling", {}),
]
WORKLOAD = Scenario(duration_s=0.5, seed=3)


def _simulated(tmp_path_factory, policy, params):
    out = tmp_path_factory.mktemp(policy)
    return analyze(write_simulation(out, scenario_with_nic(WORKLOAD, policy, params), "tracefs"))


@pytest.fixture(scope="module")
def vanilla(tmp_path_factory):
    analysis = _simulated(tmp_path_factory, "vanilla", {})
    tids = servers(analysis)[0]["tids"]
    nic = nic_sources(analysis)
    return nic, nic_inputs(analysis, tids, core_inputs(analysis, tids), nic), measured(analysis, tids)


def test_the_simulated_nic_is_found_with_its_measured_poll_costs(vanilla):
    nic, cores, _ = vanilla
    assert nic == {"sim-eth0"}
    for core in cores:  # Nic() defaults: 2,000 ns per poll + 800 ns per packet, moderation 30 µs
        assert core.nic_costs.poll_fixed_ns == pytest.approx(2_000, rel=0.1)
        assert core.nic_costs.per_packet_ns == pytest.approx(800, rel=0.1)
        assert core.nic_costs.moderation_ns == pytest.approx(30_000, rel=0.05)


@pytest.mark.parametrize(("policy", "params"), POLICIES, ids=[f"{p}-{sorted(k.items())}" for p, k in POLICIES])
def test_the_replay_of_the_vanilla_trace_predicts_each_policys_simulated_capacity_and_p99(
        tmp_path_factory, vanilla, policy, params):
    nic, cores, _ = vanilla
    predicted = replay(apply(Policy(policy, params), cores, nic).cores)
    truth_analysis = _simulated(tmp_path_factory, policy, params)
    truth = measured(truth_analysis, servers(truth_analysis)[0]["tids"])
    print(f"{policy} {params}: capacity predicted {predicted['capacity_rps']:,.0f} measured "
          f"{truth['capacity_rps']:,.0f}; p99 {predicted['p99_us']:.1f} vs {truth['p99_us']:.1f} µs")
    assert predicted["capacity_rps"] == pytest.approx(truth["capacity_rps"], rel=0.05)
    assert predicted["p99_us"] == pytest.approx(truth["p99_us"], rel=0.05)


# Real NIC results (docs/whatif.md, "Real NIC results")

UPSTREAM_RUNS = Path(__file__).parent / "data" / "irqsuspend-v8-runs.csv"


@pytest.fixture(scope="module")
def upstream():
    from kptrace.whatif.upstream import compare

    table = compare(UPSTREAM_RUNS, seconds=0.1)
    print(table.drop("params"))
    return {row["group"]: row for row in table.iter_rows(named=True)}


def test_a_base_shaped_core_replayed_under_the_runs_knobs_orders_coalescing_below_base(upstream):
    ratio = {group: row["predicted_ratio"] for group, row in upstream.items()}
    assert ratio["defer10"] < ratio["defer20"] < ratio["base"] == 1.0


def test_the_configurations_that_gained_more_than_5_percent_are_predicted_to_gain_more_than_5_percent(upstream):
    gained = {g for g, row in upstream.items() if row["measured_ratio"] > 1.05}
    assert gained == {"napibusy", "suspend10", "suspend20", "suspend50", "suspend200", "fullbusy"}
    assert all(upstream[g]["predicted_ratio"] > 1.05 for g in gained)
    assert all(upstream[g]["predicted_ratio"] < 1.07 for g in set(upstream) - gained)


def test_every_configurations_saturation_throughput_against_base_is_predicted_within_8_percent(upstream):
    errors = {g: round(row["error"], 3) for g, row in upstream.items()}
    assert max(abs(e) for e in errors.values()) <= 0.08, errors


def test_suspension_takes_the_nic_irq_rate_from_thousands_to_hundreds_per_second(upstream):
    assert upstream["base"]["irq_per_s"] > 1_000
    assert all(upstream[f"suspend{x}"]["irq_per_s"] < 500 for x in (10, 20, 50, 200))
