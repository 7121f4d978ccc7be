#!/usr/bin/env bash
# Records the reader test data in tests/data/ on a real machine (root, tracefs, trace-cmd, perf,
# memcached, memcaslap). One loopback memcached load, server and client pinned to CPU1, is traced
# on CPU1 only, three ways at once:
#   - a tracefs instance, whose `trace` file is saved as tracefs.txt.zst, then extracted with
#     `trace-cmd extract -B` and rendered by `trace-cmd report` (tracecmd.txt.zst),
#     `trace-cmd report -R` (tracecmd-raw.txt.zst) and `trace-cmd report -t` (tracecmd-ns.txt.zst);
#   - `perf record` of the same tracepoints, rendered by `perf script --ns` (perf.txt.zst);
#   - `perf record` with group-leader sampling of counters at sys_exit_epoll_wait
#     (perf-counters.txt.zst).
# Usage: sudo tests/data/record-test-data.sh [REQUESTS]   (default 1000 memcached requests)
set -euo pipefail
requests=${1:-1000}
out=$(cd "$(dirname "$0")" && pwd)
T=/sys/kernel/tracing
mounted_here=0
if [ ! -e "$T/instances" ]; then mount -t tracefs nodev "$T"; mounted_here=1; fi
inst="$T/instances/kptrace-testdata"
work=$(mktemp -d)
port=11390
events="irq:irq_handler_entry irq:irq_handler_exit irq:softirq_raise irq:softirq_entry irq:softirq_exit
irq_vectors:local_timer_entry irq_vectors:local_timer_exit irq_vectors:reschedule_entry irq_vectors:reschedule_exit
irq_vectors:call_function_single_entry irq_vectors:call_function_single_exit irq_vectors:call_function_entry
irq_vectors:call_function_exit irq_vectors:irq_work_entry irq_vectors:irq_work_exit napi:napi_poll
net:netif_receive_skb net:netif_rx net:net_dev_xmit sched:sched_switch sched:sched_wakeup sched:sched_waking
sched:sched_migrate_task syscalls:sys_enter_epoll_wait syscalls:sys_exit_epoll_wait syscalls:sys_enter_read
syscalls:sys_exit_read syscalls:sys_enter_sendmsg syscalls:sys_exit_sendmsg syscalls:sys_enter_write
syscalls:sys_exit_write"
cleanup() {
  [ -n "${mc:-}" ] && kill "$mc" 2>/dev/null || true
  [ -d "$inst" ] && { echo 0 > "$inst/tracing_on"; echo 0 > "$inst/events/enable"; rmdir "$inst"; } || true
  rm -rf "$work"
  [ "$mounted_here" = 1 ] && umount "$T" || true
}
trap cleanup EXIT INT TERM
taskset -c 1 memcached -u root -l 127.0.0.1 -p "$port" -t 1 -U 0 & mc=$!
sleep 0.5
mkdir "$inst"
echo 0 > "$inst/tracing_on"   # a new instance starts with tracing on
echo 65536 > "$inst/buffer_size_kb"   # large enough that nothing is overwritten
echo perf > "$inst/trace_clock"       # the clock perf uses, so both recordings share timestamps
echo 2 > "$inst/tracing_cpumask"      # CPU1 only, where server and load run: other work stays out
echo 1 > "$inst/options/record-tgid"
for e in $events; do echo 1 > "$inst/events/${e%%:*}/${e#*:}/enable"; done
# perf may not enable irq_vectors:irq_work_exit ("No permission" on this VM): leave irq_work to tracefs.
perf_events=$(echo $events | tr ' ' '\n' | grep -v irq_work | paste -sd,)
echo 1 > "$inst/tracing_on"
perf record -q -C 1 -m 8192 -o "$work/perf.data" -e "$perf_events" -- \
  taskset -c 1 memcaslap -s "127.0.0.1:$port" -x "$requests" -c 1 -T 1 >/dev/null 2>&1
echo 0 > "$inst/tracing_on"
perf record -q -C 1 -o "$work/counters.data" \
  -e '{syscalls:sys_exit_epoll_wait,task-clock,msr/tsc/,context-switches}:S' -- \
  taskset -c 1 memcaslap -s "127.0.0.1:$port" -x "$requests" -c 1 -T 1 >/dev/null 2>&1
cat "$inst/trace" > "$work/tracefs.txt"
trace-cmd extract -B kptrace-testdata -o "$work/trace.dat" >/dev/null 2>&1
trace-cmd report -i "$work/trace.dat" > "$work/tracecmd.txt" 2>/dev/null
trace-cmd report -R -i "$work/trace.dat" > "$work/tracecmd-raw.txt" 2>/dev/null
trace-cmd report -t -i "$work/trace.dat" > "$work/tracecmd-ns.txt" 2>/dev/null
perf script --ns -i "$work/perf.data" > "$work/perf.txt" 2>/dev/null
perf script -i "$work/counters.data" > "$work/perf-counters.txt" 2>/dev/null
for f in tracefs tracecmd tracecmd-raw tracecmd-ns perf perf-counters; do
  zstd -q -12 -f "$work/$f.txt" -o "$out/$f.txt.zst"
done
echo "recorded $(grep -vc '^#' "$work/tracefs.txt") tracefs lines into $out"
