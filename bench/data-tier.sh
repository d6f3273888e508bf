#!/usr/bin/env bash
# Benchmarks the data tier in a throwaway real-systemd container and prints figures:
# apply from nothing to healthy, no-op re-apply, status round trip, daemon idle memory.
# Run as root. The .debs come from the test image's apt cache (no download counted).
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/harness/container.sh
name=as-bench
cargo build --release --bins -q
trap 'container_stop $name' EXIT
container_boot "$name" "$PWD/target/release"
inside() { container_exec "$LEADER" "$1"; }
inside 'systemctl daemon-reload && systemctl start analytics-stackd.service'
# The data tier and Debian-packaged metrics only: release archives are not downloaded here.
inside "mkdir -p /etc/analytics-stack/stack.d && printf '[statsd_exporter]\\nenabled = false\\n[loki]\\nenabled = false\\n[log_shipper]\\nenabled = false\\n[grafana]\\nenabled = false\\n[airflow]\\nenabled = false\\n[superset]\\nenabled = false\\n[dlt]\\nenabled = false\\n' > /etc/analytics-stack/stack.d/00-bench.toml"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

t0=$(now); inside 'analytics-stack apply >/dev/null 2>&1'; t1=$(now)
echo "cold apply (install + configure + start + healthy): $(secs "$t0" "$t1") s"

runs=()
for _ in 1 2 3 4 5; do
  a=$(now); inside 'analytics-stack apply >/dev/null'; b=$(now); runs+=("$(secs "$a" "$b")")
done
echo "no-op re-apply, 5 runs (s): ${runs[*]}"

a=$(now)
inside 'for i in $(seq 20); do analytics-stack status --json >/dev/null; done'
b=$(now)
echo "status round trip (CLI, 5 components, live probes), mean of 20: $(awk -v t="$(secs "$a" "$b")" 'BEGIN { printf "%.1f", t * 1000 / 20 }') ms"

sleep 3
pid=$(inside 'systemctl show -p MainPID --value analytics-stackd.service')
rss=$(inside "awk '/^VmRSS/ {print \$2}' /proc/$pid/status")
pss=$(inside "awk '/^Pss:/ {print \$2}' /proc/$pid/smaps_rollup")
echo "analytics-stackd idle: RSS $((rss / 1024)).$(( (rss % 1024) * 10 / 1024 )) MiB, PSS $((pss / 1024)).$(( (pss % 1024) * 10 / 1024 )) MiB"
for u in analytics-postgres analytics-redis-broker analytics-redis-cache analytics-nginx analytics-prometheus analytics-node-exporter; do
  total=0
  for p in $(inside "cat /sys/fs/cgroup/systemd/system.slice/$u.service/cgroup.procs 2>/dev/null || cat /sys/fs/cgroup/system.slice/$u.service/cgroup.procs"); do
    v=$(inside "awk '/^Pss:/ {print \$2}' /proc/$p/smaps_rollup 2>/dev/null || echo 0"); total=$((total + v))
  done
  echo "$u idle PSS: $((total / 1024)) MiB"
done
