# Shell helpers to boot a real systemd in a throwaway container (systemd-nspawn with a
# volatile overlay over the cached test root filesystem). Sourced by scripts/ and
# bench/; the Rust tests have the same logic in tests/common/mod.rs.

HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$HARNESS_DIR/../.." && pwd)
ROOTFS=${ANALYTICS_STACK_TEST_ROOTFS:-/var/tmp/analytics-stack-test/rootfs}

# container_boot NAME BIN_DIR: boots NAME in the background with the binaries of
# BIN_DIR, the daemon's unit and D-Bus policy bound in; sets LEADER.
container_boot() {
  local name=$1 bindir=$2
  container_boot_with "$name" \
    --bind-ro="$bindir/analytics-stackd:/usr/sbin/analytics-stackd" \
    --bind-ro="$bindir/analytics-stack:/usr/bin/analytics-stack" \
    --bind-ro="$REPO_DIR/units/analytics-stackd.service:/etc/systemd/system/analytics-stackd.service" \
    --bind-ro="$REPO_DIR/packaging/dbus-1/system.d/org.analyticsstack.Stack1.conf:/etc/dbus-1/system.d/org.analyticsstack.Stack1.conf"
}

# container_boot_with NAME NSPAWN-ARGS...: boots NAME with extra nspawn arguments.
container_boot_with() {
  local name=$1; shift
  "$HARNESS_DIR/build-rootfs.sh" "$ROOTFS"
  mkdir -p /run/analytics-stack-dev
  setsid "$HARNESS_DIR/nspawn-in-cgroup.sh" "$name" -q -D "$ROOTFS" -M "$name" --register=no --keep-unit --link-journal=no \
    --volatile=overlay --kill-signal=SIGRTMIN+3 "$@" \
    --bind-ro="$HARNESS_DIR/init.sh:/usr/local/sbin/analytics-test-init" \
    /usr/local/sbin/analytics-test-init </dev/null >/run/analytics-stack-dev/"$name".log 2>&1 &
  local nspawn=$!
  echo "$nspawn" >/run/analytics-stack-dev/"$name".pid
  LEADER=
  for _ in $(seq 300); do
    LEADER=$(container_leader "$nspawn") && [ -n "$LEADER" ] && break
    sleep 0.1
  done
  [ -n "$LEADER" ] || { echo "container $name did not start" >&2; return 1; }
  for _ in $(seq 300); do
    case "$(container_exec "$LEADER" 'systemctl is-system-running --wait 2>/dev/null')" in
      running|degraded) return 0 ;;
    esac
    sleep 0.2
  done
  echo "systemd in $name did not come up" >&2
  return 1
}

# container_leader NSPAWN_PID: the container's PID 1 as seen from the host.
container_leader() {
  local todo=("$1") pid c
  while [ ${#todo[@]} -gt 0 ]; do
    pid=${todo[0]}; todo=("${todo[@]:1}")
    for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
      if awk '/^NSpid:/ { exit !(NF == 3 && $3 == 1) }' /proc/"$c"/status 2>/dev/null; then
        echo "$c"; return 0
      fi
      todo+=("$c")
    done
  done
  return 1
}

# container_exec LEADER CMD: runs CMD as root inside, with a clean environment.
container_exec() {
  nsenter -t "$1" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 bash -c "$2"
}

# container_stop NAME: halts the container and waits for it.
container_stop() {
  local pidfile=/run/analytics-stack-dev/$1.pid pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# container_leader_of NAME: the leader of a running container started by container_boot.
container_leader_of() {
  container_leader "$(cat /run/analytics-stack-dev/"$1".pid)"
}
