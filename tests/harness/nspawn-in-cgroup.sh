#!/usr/bin/env bash
# nspawn-in-cgroup.sh NAME NSPAWN-ARGS...: runs systemd-nspawn in cgroups of its own
# below the caller's (name=systemd and the unified hierarchy), and removes them after.
# With ANALYTICS_TEST_MEMORY_MAX=BYTES, also in a memory cgroup of its own limited to
# that: the whole container (what its systemd reads as its root memory cgroup) then
# has that much memory, like a VM of that size; the cgroup's memory.oom_control
# counts the kernel's OOM kills inside.
# Without this, `--keep-unit` on a host without systemd creates `payload` and
# `supervisor` cgroups in the host's root cgroup and leaves them there.
set -u
name=$1; shift
dirs=()
sd=$(awk -F: '$2 == "name=systemd" { print $3 }' /proc/self/cgroup)
uni=$(awk -F: '$1 == "0" { print $3 }' /proc/self/cgroup)
[ -n "$sd" ] && [ -d /sys/fs/cgroup/systemd ] && dirs+=("/sys/fs/cgroup/systemd${sd%/}/analytics-test-$name-$$")
if [ -d /sys/fs/cgroup/unified ]; then
  dirs+=("/sys/fs/cgroup/unified${uni%/}/analytics-test-$name-$$")
elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  dirs+=("/sys/fs/cgroup${uni%/}/analytics-test-$name-$$")
fi
if [ -n "${ANALYTICS_TEST_MEMORY_MAX:-}" ] && [ -d /sys/fs/cgroup/memory ]; then
  # cgroup v1: a memory cgroup of its own, below the caller's.
  mem=$(awk -F: '$2 == "memory" { print $3 }' /proc/self/cgroup)
  memdir="/sys/fs/cgroup/memory${mem%/}/analytics-test-$name-$$"
  mkdir -p "$memdir" && echo "$ANALYTICS_TEST_MEMORY_MAX" >"$memdir/memory.limit_in_bytes" \
    || { echo "nspawn-in-cgroup: cannot limit memory in $memdir" >&2; exit 1; }
  dirs+=("$memdir")
fi
for d in "${dirs[@]}"; do
  mkdir -p "$d" && echo $$ >"$d/cgroup.procs" || echo "nspawn-in-cgroup: cannot use $d" >&2
done
if [ -n "${ANALYTICS_TEST_MEMORY_MAX:-}" ] && [ ! -d /sys/fs/cgroup/memory ]; then
  # cgroup v2: the limit on the container's own cgroup.
  echo "$ANALYTICS_TEST_MEMORY_MAX" >"${dirs[-1]}/memory.max" \
    || { echo "nspawn-in-cgroup: cannot limit memory in ${dirs[-1]}" >&2; exit 1; }
fi
systemd-nspawn "$@" &
child=$!
trap 'kill -TERM $child 2>/dev/null' TERM INT
while kill -0 "$child" 2>/dev/null; do wait "$child"; done
rc=$?
# Leave the cgroups, then remove them (deepest first).
for d in "${dirs[@]}"; do
  parent=$(dirname "$d")
  echo $$ >"$parent/cgroup.procs" 2>/dev/null
  find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
done
exit $rc
