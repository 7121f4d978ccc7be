"""The estimate as text: one block per group, every figure with its unit and what it is."""

from __future__ import annotations


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f}%"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def render_estimate(result: dict) -> str:
    blocks = [f"warning: {text}" for text in result.get("warnings", [])]
    for group in result["groups"]:
        unit = "cycles" if group["unit"] == "cycles" else "ns busy"
        lo, hi = group["cost_per_irq_ci"]
        glo, ghi = group["capacity_gain_without_irqs_ci"]
        lines = [f"{group['group']}: {group['runs']} runs; at capacity: {group['saturated_runs']} runs "
                 f"({group['saturated_by']}), {_num(group['irqs_per_request_saturated'], 4)} IRQs/request (measured)",
                 f"  cost per IRQ (estimated)                 {_num(group['cost_per_irq'])} {unit}  "
                 f"95% [{_num(lo)}, {_num(hi)}]",
                 f"  cost per request without IRQs (est.)     {_num(group['cost_per_request_without_irqs'])} {unit}"
                 f"  (with them, measured: {_num(group['cost_per_request_saturated'])})",
                 f"  IRQ share of serving-core capacity (est.) {_share(group['irq_share'])}",
                 f"  capacity gain without IRQs (estimated)   {_pct(group['capacity_gain_without_irqs'])}  "
                 f"95% [{_pct(glo)}, {_pct(ghi)}]"]
        if group["ipc"] is not None:
            part = group["ipc_part_of_gain"]
            lines.append(f"  IPC {group['ipc']:.3f}, IPQ {group['ipq']:,.0f} instructions/request (measured)"
                         + ("" if part is None else f"; part of the gain that is IPC (est.) {part:.0%}"))
        lines += [f"  ! {text}" for text in group["messages"]]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
