#!/usr/bin/env bash
# Stops the test containers an interrupted earlier run left behind (their cgroups,
# made by nspawn-in-cgroup.sh, are named analytics-test-NAME-PID): a container on
# the host's network that outlived its test holds the stack's ports, and every
# host-network test after it would fail at boot. Run before the tests, never
# beside another run on the same machine.
set -u
tops() { find /sys/fs/cgroup -maxdepth 5 -type d -name 'analytics-test-*' -prune 2>/dev/null; }
left=0
for round in 1 2 3 4 5; do
  pids=$(tops | while IFS= read -r top; do find "$top" -name cgroup.procs -exec cat {} + 2>/dev/null; done | sort -u)
  [ -z "$pids" ] && break
  [ "$round" = 1 ] && left=$(echo "$pids" | wc -l)
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null
  sleep 1
done
tops | while IFS= read -r top; do find "$top" -depth -type d -exec rmdir {} \; 2>/dev/null; done
# Their roots: overlays on the host's disk (tests/common/mod.rs, overlay_root).
for root in /var/tmp/analytics-stack-test/overlay-*/root; do
  [ -d "$root" ] || continue
  umount -l "$root" 2>/dev/null
  rm -rf "${root%/root}"
done
[ "$left" -gt 0 ] && echo "stopped $left processes of test containers an earlier run left" >&2
exit 0
