#!/usr/bin/env bash
# nspawn-in-cgroup.sh NAME NSPAWN-ARGS...: runs systemd-nspawn in cgroups of its own
# below the caller's (name=systemd and the unified hierarchy), and removes them after.
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
for d in "${dirs[@]}"; do
  mkdir -p "$d" && echo $$ >"$d/cgroup.procs" || echo "nspawn-in-cgroup: cannot use $d" >&2
done
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
