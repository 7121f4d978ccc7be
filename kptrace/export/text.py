"""Print event rows as tracefs text, `trace-cmd report` or `perf script --ns` would (kptrace simulate).

A row is (ts ns, cpu, task, event, fields, context): `task` is (comm, tid, tgid), the idle task
being ("<idle>", 0, None); `fields` is a tuple whose meaning depends on the event (see
`_payload`); `context` picks the irq-info flags tracefs prints (None: plain task context).
Layouts follow what the three tools print on Linux 6.x (tests/data holds real recordings):
ftrace's own syscall forms in tracefs (`sys_read(fd: 3, buf: 0x7ffe..., count: 0x340)`,
values below 10 in decimal) against the event format's `0x%08lx` in trace-cmd and perf;
trace-cmd's sched_switch plugin form; tracefs' and trace-cmd's timestamps rounded to the
nearest microsecond, perf's in ns; perf's event names right-aligned to the longest one.
Payloads repeat (the same IRQ, syscall or switch), so each is formatted once and cached.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from kptrace.attribute import HARDWARE_COUNTERS
from kptrace.read.fields import VECTOR_HANDLERS
from kptrace.schema import SOFTIRQ_NAMES

Task = tuple[str, int, "int | None"]
Row = tuple[int, int, Task, str, tuple, "str | None"]

_FLAGS = {None: ".....", "hardirq": "d.h1.", "softirq": "..s1.", "bh": "D..1.", "sched": "d..2."}
_FD, _COUNT, _PTR = "fd", "count", 0x7F3A5C001040
_EPOLL_ARGS = (("epfd", _FD), ("events", _PTR), ("maxevents", _COUNT))
#: Each syscall's arguments as the kernel names them (SYSCALL_DEFINEn), and where a value comes
#: from: the row's fd or count, or a fixed value (a user pointer, flags, NULL).
SYSCALL_ARGS: dict[str, tuple[tuple[str, object], ...]] = {
    "read": (("fd", _FD), ("buf", _PTR), ("count", _COUNT)),
    "recvfrom": (("fd", _FD), ("ubuf", _PTR), ("size", _COUNT), ("flags", 0), ("addr", 0), ("addr_len", 0)),
    "recvmsg": (("fd", _FD), ("msg", _PTR), ("flags", 0)),
    "sendmsg": (("fd", _FD), ("msg", _PTR), ("flags", 0)),
    "sendto": (("fd", _FD), ("buff", _PTR), ("len", _COUNT), ("flags", 0x4000), ("addr", 0), ("addr_len", 0)),
    "write": (("fd", _FD), ("buf", _PTR), ("count", _COUNT)),
    "writev": (("fd", _FD), ("vec", _PTR), ("vlen", _COUNT)),
    "epoll_wait": (*_EPOLL_ARGS, ("timeout", 0xFFFFFFFF)),
    "epoll_pwait": (*_EPOLL_ARGS, ("timeout", 0xFFFFFFFF), ("sigmask", _PTR + 0x200), ("sigsetsize", 8)),
    "epoll_pwait2": (*_EPOLL_ARGS, ("timeout", 0), ("sigmask", _PTR + 0x200), ("sigsetsize", 8)),
}


def _subsystem(event: str) -> str:
    if event.startswith("sys_e"):
        return "syscalls"
    if event.startswith("sched_"):
        return "sched"
    if event.rsplit("_", 1)[0] in VECTOR_HANDLERS:
        return "irq_vectors"
    if event == "napi_poll":
        return "napi"
    return "irq"


def _syscall_enter(name: str, fd: int, count: int, ftrace: bool) -> str:
    values = [fd if source == _FD else count if source == _COUNT else source for _, source in SYSCALL_ARGS[name]]
    names = [arg for arg, _ in SYSCALL_ARGS[name]]
    if ftrace:
        shown = [str(v) if v < 10 else f"0x{v:x}" for v in values]
        return f"sys_{name}(" + ", ".join(f"{a}: {v}" for a, v in zip(names, shown)) + ")"
    return ", ".join(f"{a}: 0x{v:08x}" for a, v in zip(names, values))


def _switch(fields: tuple, plugin: bool) -> str:
    prev_comm, prev_pid, state, next_comm, next_pid = fields
    if plugin:  # trace-cmd's sched_switch plugin: a preempted task is plain R, TASK_IDLE is W
        state = {"R+": "R", "I": "W"}.get(state, state)
        return f"{prev_comm}:{prev_pid} [120] {state} ==> {next_comm}:{next_pid} [120]"
    return (f"prev_comm={prev_comm} prev_pid={prev_pid} prev_prio=120 prev_state={state} ==> "
            f"next_comm={next_comm} next_pid={next_pid} next_prio=120")


@lru_cache(maxsize=None)
def _payload(style: str, event: str, fields: tuple) -> str:
    """The text after the event name, or, in tracefs (`style` "ftrace"), ftrace's whole
    syscall form. Fields: sys_enter_* (fd, count), sys_exit_* (ret,), irq_handler_entry
    (irq, name), irq_handler_exit (irq,), APIC vectors (vector,), softirq_* (vec,),
    sched_switch (prev_comm, prev_pid, prev_state, next_comm, next_pid)."""
    ftrace = style == "ftrace"
    if event.startswith("sys_enter_"):
        return _syscall_enter(event.removeprefix("sys_enter_"), *fields, ftrace=ftrace)
    if event.startswith("sys_exit_"):
        ret = fields[0] & 0xFFFFFFFFFFFFFFFF
        return f"sys_{event.removeprefix('sys_exit_')} -> 0x{ret:x}" if ftrace else f"0x{ret:x}"
    if event == "napi_poll":   # the kernel's own text, built by the simulator
        return fields[0]
    if event == "irq_handler_entry":
        return "irq={} name={}".format(*fields)
    if event == "irq_handler_exit":
        return f"irq={fields[0]} ret=handled"
    if event.startswith("softirq_"):
        return f"vec={fields[0]} [action={SOFTIRQ_NAMES[fields[0]]}]"
    if event == "sched_switch":
        return _switch(fields, plugin=style == "plugin")
    return f"vector={fields[0]}"


def _usec(ts: int) -> str:
    """`sec.usec`, rounded to the nearest microsecond as the kernel prints it (ns2usecs)."""
    rounded = (ts + 500) // 1000
    return f"{rounded // 1_000_000:>5}.{rounded % 1_000_000:06d}"


@lru_cache(maxsize=None)
def _tracefs_head(task: Task, cpu: int, context: str | None) -> str:
    comm, tid, tgid = task
    return f"{comm:>16}-{tid:<7} ({'-------' if tgid is None else tgid:>7}) [{cpu:03d}] {_FLAGS[context]} "


def tracefs_text(rows: list[Row], cpus: int) -> str:
    events = [row for row in rows if row[3] != "counters"]
    lines = [
        "# tracer: nop", "#", f"# entries-in-buffer/entries-written: {len(events)}/{len(events)}   #P:{cpus}", "#",
        "#           TASK-PID       TGID    CPU#  |||||  TIMESTAMP  FUNCTION",
        "#              | |           |       |   |||||     |         |",
    ]
    for ts, cpu, task, event, fields, context in events:
        payload = _payload("ftrace", event, fields)
        body = payload if event.startswith("sys_e") else f"{event}: {payload}"
        lines.append(f"{_tracefs_head(task, cpu, context)}{_usec(ts)}: {body}")
    return "\n".join(lines) + "\n"


def trace_cmd_text(rows: list[Row], cpus: int) -> str:
    lines = [f"cpus={cpus}"]
    for ts, cpu, (comm, tid, _), event, fields, _ in rows:
        if event == "counters":
            continue
        lines.append(f"{comm:>16}-{tid:<5} [{cpu:03d}] {_usec(ts)}: {event + ':':<21} "
                     f"{_payload('plugin', event, fields)}")
    return "\n".join(lines) + "\n"


def perf_text(rows: list[Row], cpus: int) -> str:
    """perf script --ns; a `counters` row (cycles, instructions: deltas since the CPU's last
    read) prints as the counter samples perf reads with sys_exit_epoll_wait as group leader."""
    names = {f"{_subsystem(event)}:{event}" for event in {row[3] for row in rows} - {"counters"}}
    width = max(map(len, names | {"instructions"}))
    lines = []
    for ts, cpu, (comm, tid, _), event, fields, _ in rows:
        sec, ns = divmod(ts, 1_000_000_000)
        stamp = f"{'swapper' if tid == 0 else comm:>16} {tid:>5} [{cpu:03d}] {sec:>5}.{ns:09d}:"
        if event == "counters":
            lines += [f"{stamp} {value:>10} {name:>{width}}: " for name, value in zip(HARDWARE_COUNTERS, fields)]
            continue
        lines.append(f"{stamp} {_subsystem(event) + ':' + event:>{width}}: {_payload('format', event, fields)}")
    return "\n".join(lines) + "\n"


FORMATTERS: dict[str, Callable[[list[Row], int], str]] = {
    "tracefs": tracefs_text, "trace-cmd": trace_cmd_text, "perf": perf_text,
}
#: Timestamp resolution of each format as printed, ns.
RESOLUTION_NS = {"tracefs": 1000, "trace-cmd": 1000, "perf": 1}


#: What a terminal may act on rather than show: C0 controls but tab and newline, DEL, C1 controls
#: (\x9b alone starts an escape sequence on some terminals), and the Unicode separators and
#: bidirectional overrides that move or reorder the text around them.
_TERMINAL_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    """Text for a terminal: a trace's names may hold escape sequences (retitle the window, clear
    the screen, fake a prompt); each such character is shown as its `\\xNN` escape instead."""
    return _TERMINAL_UNSAFE.sub(_escape, text)
