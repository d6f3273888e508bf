#!/bin/sh
# pss.sh: run inside a host of the stack; prints each analytics-* unit's PSS (MiB,
# the sum over the processes of its cgroup, from /proc/PID/smaps_rollup) and the total.
# PSS splits shared pages between the processes sharing them, so the per-unit
# figures add up to what the stack holds.
set -eu
total=0
printf '%-42s %6s %5s\n' unit PSS/MiB procs
for unit in $(systemctl list-units --type=service --state=running --no-legend --plain 'analytics-*' | awk '{print $1}'); do
  procs=$(systemctl show -p ControlGroup --value "$unit")
  file=""
  for root in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
    [ -f "$root$procs/cgroup.procs" ] && { file="$root$procs/cgroup.procs"; break; }
  done
  [ -n "$file" ] || continue
  kib=0; n=0
  for pid in $(cat "$file"); do
    p=$(awk '/^Pss:/{print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
    kib=$((kib + ${p:-0})); n=$((n + 1))
  done
  case "$unit" in analytics-stackd.service) ;; *) total=$((total + kib));; esac
  printf '%-42s %6d %5d\n' "$unit" $((kib / 1024)) "$n"
done
printf '%-42s %6d\n' "total (without the daemon)" $((total / 1024))
