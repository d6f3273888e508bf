#!/bin/sh
# PID 1 of the test containers. nspawn mounts the cgroup v1 controllers read-only on
# hybrid hosts, which silently disables MemoryMax= and memory accounting; remount
# them read-write, then become systemd.
if [ "$(stat -f -c %T /sys/fs/cgroup)" = tmpfs ]; then
  for d in /sys/fs/cgroup/*; do
    case "${d##*/}" in systemd|unified|cpuset) continue ;; esac
    [ -L "$d" ] && continue
    mount -o remount,bind,rw "$d" 2>/dev/null || echo "init.sh: cannot remount $d" >&2
  done
fi
exec /lib/systemd/systemd "$@"
