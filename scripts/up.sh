#!/usr/bin/env bash
# Brings the stack up. On a machine whose PID 1 is not systemd (like the build
# machines): builds the Debian package, boots a throwaway Debian 12 container with a
# real systemd that shares the host's network, installs the package in it with apt,
# and runs `analytics-stack apply`; the landing page is then reachable from the host.
# Tear it down with scripts/down.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/harness/container.sh
name=${ANALYTICS_STACK_CONTAINER:-analytics-stack}

if [ "$(id -u)" != 0 ]; then echo "run as root" >&2; exit 1; fi
if [ -f "/run/analytics-stack-dev/$name.pid" ] && kill -0 "$(cat "/run/analytics-stack-dev/$name.pid")" 2>/dev/null; then
  echo "container $name is already running; scripts/down.sh first" >&2; exit 1
fi
packaging/build-deb.sh >/dev/null
deb=$(ls target/debian/analytics-stack_*_"$(dpkg --print-architecture)".deb | head -n 1)
bundle_bind=()
if [ -n "${ANALYTICS_STACK_BUNDLE:-}" ]; then
  bundle_bind=(--bind-ro="$(readlink -f "$ANALYTICS_STACK_BUNDLE"):/srv/stack-bundle.tar")
fi
container_boot_with "$name" --bind-ro="$PWD/target/debian:/mnt/deb" "${bundle_bind[@]}"
container_exec "$LEADER" "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /mnt/deb/$(basename "$deb")" >/dev/null
container_exec "$LEADER" 'for i in $(seq 50); do busctl status org.analyticsstack.Stack1 >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1'
# Components from release archives need their hosts (or an [archives] mirror).
probe=$(awk -F'"' '/^amd64 = /{print $2; exit}' catalog/archives.toml)
if [ -z "${ANALYTICS_STACK_MIRROR:-}" ] && ! curl -fsS -o /dev/null -I --max-time 8 "$probe" 2>/dev/null; then
  echo "note: the release hosts cannot be reached from here: statsd-exporter, loki, the log shipper and grafana are turned off" >&2
  echo "      (set ANALYTICS_STACK_MIRROR to an internal mirror of them to include them)" >&2
  container_exec "$LEADER" "mkdir -p /etc/analytics-stack/stack.d && printf '# Written by scripts/up.sh: the release hosts were unreachable.\\n[statsd_exporter]\\nenabled = false\\n[loki]\\nenabled = false\\n[log_shipper]\\nenabled = false\\n[grafana]\\nenabled = false\\n' > /etc/analytics-stack/stack.d/00-no-release-hosts.toml"
elif [ -n "${ANALYTICS_STACK_MIRROR:-}" ]; then
  container_exec "$LEADER" "mkdir -p /etc/analytics-stack/stack.d && printf '[archives]\\nmirror = \"%s\"\\n' '$ANALYTICS_STACK_MIRROR' > /etc/analytics-stack/stack.d/00-mirror.toml"
fi
if [ -n "${ANALYTICS_STACK_BUNDLE:-}" ]; then
  container_exec "$LEADER" 'analytics-stack apply --bundle /srv/stack-bundle.tar'
else
  container_exec "$LEADER" 'analytics-stack apply'
fi
container_exec "$LEADER" 'analytics-stack status'
port=$(container_exec "$LEADER" 'analytics-stack config show' | awk -F' = ' '/^\[nginx\]/{n=1} n && $1=="port"{print $2; exit}')
echo
echo "The stack is up: http://127.0.0.1:${port:-80}/"
echo "A shell inside: nsenter -t $LEADER -a bash    Tear down: scripts/down.sh"
