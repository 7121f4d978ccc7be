#!/usr/bin/env bash
# Records the binary reader test data in tests/data/binary/ on a real machine (root, tracefs,
# trace-cmd 3.1.6, two CPUs). Tracing state is touched only inside instances made here
# (`trace-cmd record -B`, and one instance for raw pages), all removed on exit.
#   v6.dat          --file-version 6, two instances (kptbin-a: irq/sched/syscalls; kptbin-b: sched+timer)
#   v7-zstd.dat     --file-version 7 --compression zstd, two instances
#   v7-none.dat     --file-version 7 --compression none, one instance
#   (this trace-cmd build offers zstd only (`trace-cmd list -c`), so no zlib file is recorded)
#   v7-drops.dat    --file-version 7 --compression none, 4 KB per-CPU buffer in overwrite mode: the kernel overwrites (loses) events
#   v6-extend.dat   --file-version 6, one filtered event every 0.2 s: records need time extends
#   *.report.txt.zst  `trace-cmd report -N -t` of each file (the reference the tests compare with)
#   raw/            an instance's per_cpu/cpuN/trace_pipe_raw pages in the collector bundle layout
#                   (raw/cpuN.raw, raw/format/SYSTEM/EVENT/format, raw/header_page, raw/header_event)
#   raw.tracefs.txt.zst  that instance's `trace` file, read before the pages were consumed
# Usage: sudo tests/data/binary/record.sh
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)
T=/sys/kernel/tracing
mounted_here=0
if [ ! -e "$T/instances" ]; then mount -t tracefs nodev "$T"; mounted_here=1; fi
inst="$T/instances/kptbin-raw"
cleanup() {
  for i in kptbin-a kptbin-b; do [ -d "$T/instances/$i" ] && { echo 0 > "$T/instances/$i/events/enable"; rmdir "$T/instances/$i"; }; done
  [ -d "$inst" ] && { echo 0 > "$inst/tracing_on"; echo 0 > "$inst/events/enable"; rmdir "$inst"; } || true
  [ "$mounted_here" = 1 ] && umount "$T" || true
}
trap cleanup EXIT INT TERM
# Interrupts, context switches and read/write syscalls on both CPUs, for about 0.2 s.
workload() {
  taskset -c 0 dd if=/dev/zero of=/dev/null bs=4k count="${1:-300}" status=none &
  taskset -c 1 bash -c 'for i in {1..20}; do sleep 0.005; done' &
  taskset -c 1 dd if=/dev/zero of=/dev/null bs=4k count="${1:-300}" status=none
  wait
}
export -f workload
A="irq/irq_handler_entry irq/irq_handler_exit irq/softirq_raise irq/softirq_entry irq/softirq_exit irq_vectors
   napi/napi_poll net/netif_receive_skb net/netif_rx net/net_dev_xmit sched/sched_switch sched/sched_wakeup
   sched/sched_waking sched/sched_migrate_task syscalls/sys_enter_read syscalls/sys_exit_read
   syscalls/sys_enter_write syscalls/sys_exit_write"
B="sched/sched_switch timer/hrtimer_start timer/hrtimer_expire_entry"
# `trace-cmd record` needs to write /proc/sys/kernel/ftrace_enabled (refused in containers), so
# the instances are made here, traced, then saved by `trace-cmd extract` (which removes them) and
# rewritten in each file version by `trace-cmd convert`.
instance() {  # NAME BUFFER_KB OVERWRITE EVENTS...
  local d="$T/instances/$1"; mkdir "$d"; echo 0 > "$d/tracing_on"; echo "$2" > "$d/buffer_size_kb"
  echo "$3" > "$d/options/overwrite"; shift 3
  for e in "$@"; do echo 1 > "$d/events/$e/enable"; done
}

record() {  # OUT COUNT INSTANCE... (instances already made)
  local out=$1 count=$2; shift 2
  for i in "$@"; do echo 1 > "$T/instances/$i/tracing_on"; done
  workload "$count"
  for i in "$@"; do echo 0 > "$T/instances/$i/tracing_on"; done
  trace-cmd extract $(printf -- '-B %s ' "$@") -o "$out" > /dev/null
}
cd "$out"
tmp=$(mktemp -d)
instance kptbin-a 1024 1 $A; instance kptbin-b 1024 1 $B; record "$tmp/two.dat" 300 kptbin-a kptbin-b
trace-cmd convert --file-version 6 -i "$tmp/two.dat" -o v6.dat
trace-cmd convert --file-version 7 --compression zstd -i "$tmp/two.dat" -o v7-zstd.dat
instance kptbin-a 1024 1 $A; record "$tmp/one.dat" 300 kptbin-a
trace-cmd convert --file-version 7 --compression none -i "$tmp/one.dat" -o v7-none.dat
instance kptbin-a 4 1 syscalls/sys_enter_read syscalls/sys_exit_read; record "$tmp/drops.dat" 3000 kptbin-a
trace-cmd convert --file-version 7 --compression none -i "$tmp/drops.dat" -o v7-drops.dat
# One write of 12345 bytes every 0.2 s: gaps longer than the 27-bit delta (134 ms) need time extends.
instance kptbin-a 64 1 syscalls/sys_enter_write; echo 'count == 12345' > "$T/instances/kptbin-a/events/syscalls/sys_enter_write/filter"
echo 1 > "$T/instances/kptbin-a/tracing_on"
for i in 1 2 3 4; do dd if=/dev/zero of=/dev/null bs=12345 count=1 status=none; sleep 0.2; done
echo 0 > "$T/instances/kptbin-a/tracing_on"
trace-cmd extract -B kptbin-a -o "$tmp/extend.dat" > /dev/null
trace-cmd convert --file-version 6 -i "$tmp/extend.dat" -o v6-extend.dat
rm -rf "$tmp"
for f in v6 v7-zstd v7-none v7-drops v6-extend; do
  trace-cmd report -N -t -i "$f.dat" 2>/dev/null | zstd -q -19 -f -o "$f.report.txt.zst"
done
# Every file holds kallsyms (MBs in version 6): the committed copies are zstd-compressed.
zstd -q -19 -f --rm v6.dat v7-none.dat v7-drops.dat v6-extend.dat
# Raw ring-buffer pages of one instance, as the collector saves them.
rm -rf raw && mkdir -p raw/format
mkdir "$inst"
echo 0 > "$inst/tracing_on"
echo 512 > "$inst/buffer_size_kb"
for e in irq/irq_handler_entry irq/irq_handler_exit irq/softirq_entry irq/softirq_exit sched/sched_switch \
         sched/sched_wakeup syscalls/sys_enter_write syscalls/sys_exit_write timer/hrtimer_start; do
  echo 1 > "$inst/events/$e/enable"
  mkdir -p "raw/format/$e" && cp "$inst/events/$e/format" "raw/format/$e/format"
done
cp "$inst/events/header_page" "$inst/events/header_event" raw/
echo 1 > "$inst/tracing_on"
workload 200
echo 0 > "$inst/tracing_on"
zstd -q -19 -f "$inst/trace" -o raw.tracefs.txt.zst 2>/dev/null || cat "$inst/trace" | zstd -q -19 -f -o raw.tracefs.txt.zst
for d in "$inst"/per_cpu/cpu*; do
  n=${d##*cpu}
  dd if="$d/trace_pipe_raw" of="raw/cpu$n.raw" bs=4096 iflag=nonblock status=none 2>/dev/null || true
done
ls -la "$out" "$out/raw"
