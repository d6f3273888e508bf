#!/usr/bin/env bash
# Side by side, in one run: the same stack (PostgreSQL, Redis, NGINX, Prometheus,
# node_exporter, the Airflow and Superset venvs from the same lock files, their
# units) installed by an Ansible playbook written the way an Ansible user would
# (bench/ansible/site.yml: ansible-core from PyPI, builtin modules only) and by
# `analytics-stack apply`, each in an identical fresh real-systemd container, from
# the same warm caches (apt's archives, pip's and uv's caches on the host's disk,
# warmed by a first run of each that is not counted). Prints cold install time,
# no-op re-run time and the services it restarted, idle PSS, and the ratios.
# Run as root; about 20 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/harness/container.sh
cargo build --release --bins -q
work=/var/tmp/analytics-stack-bench
mkdir -p "$work/apt" "$work/pip" "$work/uv"
cp -n "$ROOTFS"/var/cache/apt/archives/*.deb "$work/apt/" 2>/dev/null || true
if [ ! -x "$work/ansible/bin/ansible-playbook" ]; then
  /usr/bin/python3 -m venv "$work/ansible"
  "$work/ansible/bin/pip" install -q 'ansible-core==2.18.*'
fi
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
inside() { container_exec "$LEADER" "$1"; }
# main_pids UNITS...: "unit pid" lines.
main_pids() { inside "for u in $*; do echo \"\$u \$(systemctl show -p MainPID --value \$u)\"; done"; }
# pss UNITS...: total PSS (MiB) of the units' cgroups.
pss() {
  inside "t=0; for u in $*; do for p in \$(cat /sys/fs/cgroup/systemd/system.slice/\$u.service/cgroup.procs 2>/dev/null); do s=\$(awk '/^Pss:/ {print \$2}' /proc/\$p/smaps_rollup 2>/dev/null); t=\$((t + \${s:-0})); done; done; echo \$((t / 1024))"
}
boot() {
  container_boot_with "$1" \
    --bind-ro="$PWD/target/release/analytics-stackd:/usr/sbin/analytics-stackd" \
    --bind-ro="$PWD/target/release/analytics-stack:/usr/bin/analytics-stack" \
    --bind-ro="$PWD/units/analytics-stackd.service:/etc/systemd/system/analytics-stackd.service" \
    --bind-ro="$PWD/packaging/dbus-1/system.d/org.analyticsstack.Stack1.conf:/etc/dbus-1/system.d/org.analyticsstack.Stack1.conf" \
    --bind="$work/apt:/var/cache/apt/archives" --bind="$work/pip:/root/.cache/pip" \
    --bind="$work/uv:/var/cache/analytics-stack/uv" --bind-ro="$work/ansible:/opt/ansible-runner" \
    --bind-ro="$PWD:/srv/repo"
  # Both start from a host with Python (Ansible needs it on the target; the stack
  # would install it): not counted.
  inside 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 >/dev/null'
}

ansible_units="postgresql@15-main redis-server nginx prometheus prometheus-node-exporter airflow-api-server airflow-scheduler airflow-dag-processor airflow-triggerer airflow-worker superset-web superset-worker"
stack_units="analytics-postgres analytics-redis-broker analytics-redis-cache analytics-nginx analytics-prometheus analytics-node-exporter analytics-airflow-api-server analytics-airflow-scheduler analytics-airflow-dag-processor analytics-airflow-triggerer analytics-airflow-worker analytics-superset-web analytics-superset-worker"

# measure NAME COMMAND UNITS...: in the booted container, runs COMMAND (cold), then
# again (no-op); prints "cold-seconds noop-seconds services-restarted idle-PSS-MiB".
measure() {
  local name=$1 cmd=$2 t0 t1 t2 before after restarted
  shift 2
  t0=$(now); inside "$cmd" >"$work/$name.log" 2>&1 || { tail -40 "$work/$name.log" >&2; return 1; }; t1=$(now)
  before=$(main_pids "$@")
  inside "$cmd" >"$work/$name-noop.log" 2>&1; t2=$(now)
  after=$(main_pids "$@")
  restarted=$(diff <(echo "$before") <(echo "$after") | grep -c '^>' || true)
  sleep 60
  echo "$(secs "$t0" "$t1") $(secs "$t1" "$t2") $restarted $(pss "$@")"
}

run_ansible() {
  boot "$1"
  trap "container_stop $1" RETURN
  measure "$1" "ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3 /opt/ansible-runner/bin/python /opt/ansible-runner/bin/ansible-playbook -i localhost, -c local /srv/repo/bench/ansible/site.yml" $ansible_units
}

# run_stack NAME [STEPS]: STEPS caps how many steps an apply runs at once (1: one
# after another, the executor before the plan became a graph).
run_stack() {
  boot "$1"
  trap "container_stop $1" RETURN
  if [ -n "${2:-}" ]; then
    inside "mkdir -p /run/systemd/system/analytics-stackd.service.d && printf '[Service]\\nEnvironment=ANALYTICS_STACK_APPLY_STEPS=$2\\n' > /run/systemd/system/analytics-stackd.service.d/apply-steps.conf"
  fi
  inside 'systemctl daemon-reload && systemctl start analytics-stackd.service'
  inside "mkdir -p /etc/analytics-stack && printf '[dlt]\\nenabled = false\\n[postgres_exporter]\\nenabled = false\\n[statsd_exporter]\\nenabled = false\\n[loki]\\nenabled = false\\n[log_shipper]\\nenabled = false\\n[grafana]\\nenabled = false\\n' > /etc/analytics-stack/stack.toml"
  measure "$1" 'analytics-stack apply' $stack_units
}

echo "warming the caches (not counted)..." >&2
run_ansible as-bench-ansible-warm >/dev/null
run_stack as-bench-stack-warm >/dev/null
read -r a_cold a_noop a_restart a_pss < <(run_ansible as-bench-ansible)
read -r s_cold s_noop s_restart s_pss < <(run_stack as-bench-stack)
read -r s1_cold s1_noop _ _ < <(run_stack as-bench-stack-serial 1)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f×", a / b; else print "-" }'; }
printf '%-34s %14s %18s %8s\n' "" "Ansible" "analytics-stack" "ratio"
printf '%-34s %12s s %16s s %8s\n' "cold install to healthy" "$a_cold" "$s_cold" "$(ratio "$a_cold" "$s_cold")"
printf '%-34s %12s s %16s s %8s\n' "  one step at a time" "$a_cold" "$s1_cold" "$(ratio "$a_cold" "$s1_cold")"
printf '%-34s %12s s %16s s %8s\n' "no-op re-run" "$a_noop" "$s_noop" "$(ratio "$a_noop" "$s_noop")"
printf '%-34s %14s %18s\n' "services restarted by the re-run" "$a_restart" "$s_restart"
printf '%-34s %10s MiB %14s MiB %8s\n' "idle PSS of the services" "$a_pss" "$s_pss" "$(ratio "$a_pss" "$s_pss")"
