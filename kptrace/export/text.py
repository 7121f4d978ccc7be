"""Print event rows as tracefs text, `trace-cmd report` or `perf script` would (kptrace simulate).

Rows are (ts ns, event, fields). Layouts follow what the three tools print on Linux 6.x, down to
ftrace's own syscall forms and tracefs' rounding of timestamps to the nearest microsecond.
"""

from __future__ import annotations

from collections.abc import Callable

from kptrace.read.fields import VECTOR_HANDLERS
from kptrace.schema import SOFTIRQ_NAMES

Row = tuple[int, str, dict]
Task = tuple[str, int, int]

_FLAGS = {"hardirq": "d.h1.", "softirq": "..s1."}
_SYSCALL_ARGS = {
    "read": ("fd", "buf", "count"),
    "sendmsg": ("fd", "msg", "flags"),
    "epoll_wait": ("epfd", "events", "maxevents", "timeout"),
}
_POINTER = 0x7F0000001000


def _subsystem(event: str) -> str:
    if event.startswith("sys_e"):
        return "syscalls"
    if event.rsplit("_", 1)[0] in VECTOR_HANDLERS:
        return "irq_vectors"
    return "irq"


def _arg_values(name: str, fields: dict) -> list[int]:
    """Argument values in the syscall's order: fd/epfd and count from fields, pointers made up."""
    by_name = {"fd": fields.get("fd", 0), "epfd": fields.get("fd", 0), "count": fields.get("count", 0),
               "maxevents": fields.get("count", 0), "timeout": 0xFFFFFFFF, "flags": 0}
    return [by_name.get(arg, _POINTER) for arg in _SYSCALL_ARGS[name]]


def _payload(event: str, fields: dict, ftrace_syscalls: bool) -> str:
    """The text after `event:` (or ftrace's whole syscall form when ftrace_syscalls)."""
    if event.startswith("sys_enter_"):
        name = event.removeprefix("sys_enter_")
        values = _arg_values(name, fields)
        if ftrace_syscalls:
            shown = [str(v) if v < 10 else f"0x{v:x}" for v in values]
            return f"sys_{name}(" + ", ".join(f"{a}: {v}" for a, v in zip(_SYSCALL_ARGS[name], shown)) + ")"
        return ", ".join(f"{a}: 0x{v:08x}" for a, v in zip(_SYSCALL_ARGS[name], values))
    if event.startswith("sys_exit_"):
        ret = fields["ret"] & 0xFFFFFFFFFFFFFFFF
        return f"sys_{event.removeprefix('sys_exit_')} -> 0x{ret:x}" if ftrace_syscalls else f"0x{ret:x}"
    if event == "irq_handler_entry":
        return f"irq={fields['irq']} name={fields['name']}"
    if event == "irq_handler_exit":
        return f"irq={fields['irq']} ret=handled"
    if event.startswith("softirq_"):
        return f"vec={fields['vec']} [action={SOFTIRQ_NAMES[fields['vec']]}]"
    return f"vector={fields['vector']}"


def _usec(ts: int) -> tuple[int, int]:
    rounded = (ts + 500) // 1000
    return rounded // 1_000_000, rounded % 1_000_000


def tracefs_text(rows: list[Row], cpu: int, cpus: int, task: Task) -> str:
    comm, tid, tgid = task
    rows = [row for row in rows if row[1] != "counters"]
    lines = [
        "# tracer: nop", "#", f"# entries-in-buffer/entries-written: {len(rows)}/{len(rows)}   #P:{cpus}", "#",
        "#           TASK-PID       TGID    CPU#  |||||  TIMESTAMP  FUNCTION",
        "#              | |           |       |   |||||     |         |",
    ]
    for ts, event, fields in rows:
        sec, usec = _usec(ts)
        payload = _payload(event, fields, ftrace_syscalls=True)
        body = payload if event.startswith("sys_e") else f"{event}: {payload}"
        flags = _FLAGS.get(fields.get("ctx"), ".....")
        lines.append(f"{comm:>16}-{tid:<7} ({tgid:>7}) [{cpu:03d}] {flags} {sec:>5}.{usec:06d}: {body}")
    return "\n".join(lines) + "\n"


def trace_cmd_text(rows: list[Row], cpu: int, cpus: int, task: Task) -> str:
    comm, tid, _ = task
    lines = [f"cpus={cpus}"]
    for ts, event, fields in rows:
        if event == "counters":
            continue
        sec, usec = _usec(ts)
        lines.append(f"{comm:>16}-{tid:<5} [{cpu:03d}] {sec:>5}.{usec:06d}: {event + ':':<21} "
                     f"{_payload(event, fields, ftrace_syscalls=False)}")
    return "\n".join(lines) + "\n"


def perf_text(rows: list[Row], cpu: int, cpus: int, task: Task) -> str:
    """perf script --ns, with cycles/instructions read at each sys_exit_epoll_wait."""
    comm, tid, _ = task
    lines = []
    last = {"cycles": 0, "instructions": 0}
    for ts, event, fields in rows:
        stamp = f"{comm:>16} {tid:>6} [{cpu:03d}] {ts // 1_000_000_000:>5}.{ts % 1_000_000_000:09d}:"
        if event == "counters":
            for name in ("cycles", "instructions"):
                lines.append(f"{stamp} {fields[name] - last[name]:>10} {name}: ")
                last[name] = fields[name]
            continue
        lines.append(f"{stamp} {_subsystem(event)}:{event}: {_payload(event, fields, ftrace_syscalls=False)}")
    return "\n".join(lines) + "\n"


FORMATTERS: dict[str, Callable[[list[Row], int, int, Task], str]] = {
    "tracefs": tracefs_text, "trace-cmd": trace_cmd_text, "perf": perf_text,
}
