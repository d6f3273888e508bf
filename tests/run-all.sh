#!/usr/bin/env bash
# Runs every test: formatting and lints, unit tests, and the end-to-end tests that
# boot a real systemd in containers (root needed). Installs what it needs itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then echo "tests/run-all.sh must run as root (the end-to-end tests boot containers)" >&2; exit 1; fi
# Each phase's wall time, printed at the end with each test's (the suite's budget).
phases=$(mktemp)
trap 'rm -f "$phases"' EXIT
phase() {
  local name=$1 started=$SECONDS rc=0
  shift
  "$@" || rc=$?
  echo "$((SECONDS - started)) $name" >>"$phases"
  return "$rc"
}

need=()
for tool in debootstrap:debootstrap systemd-nspawn:systemd-container zstd:zstd nsenter:util-linux gpg:gnupg gpgv:gpgv \
    chromium:chromium chromedriver:chromium-driver certutil:libnss3-tools; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
# The browser test's WebDriver client (tests/browser/desk.py), Debian's.
/usr/bin/python3 -c 'import selenium' 2>/dev/null || need+=(python3-selenium)
install_needed() {
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
  fi
  command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
}
phase "install what the tests need" install_needed

# Compiled crates are kept between runs and clones on this machine (cargo's
# fingerprints decide what is rebuilt: a fresh clone rebuilds this project's crates
# and reuses its dependencies'). Outputs that tests read (target/debian, the
# browser's screenshots) stay in the clone. Bounded: past 40 GiB it starts again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/analytics-stack-test/cargo-target}"
if [ -d "$CARGO_TARGET_DIR" ] && [ "$(du -s --block-size=1G "$CARGO_TARGET_DIR" | cut -f1)" -gt 40 ]; then
  rm -rf "$CARGO_TARGET_DIR"
fi
mkdir -p "$CARGO_TARGET_DIR"
# This crate's units are built from nothing in a fresh clone (CI's case): rustc's
# incremental state costs time then and is never reused (40 s instead of 49 s for the
# tests' build here). Set CARGO_INCREMENTAL=1 to keep it in an edit loop.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

phase "stop containers an interrupted run left" tests/harness/stop-leftovers.sh
phase "cargo fmt --check" cargo fmt --all -- --check
phase "cargo clippy" cargo clippy --all-targets -- -D warnings
# The root filesystem is built (or reused) before the tests, outside their timeouts.
phase "test root filesystem" tests/harness/build-rootfs.sh "${ANALYTICS_STACK_TEST_ROOTFS:-/var/tmp/analytics-stack-test/rootfs}"
phase "Debian 13 test root filesystem" tests/harness/build-rootfs.sh "${ANALYTICS_STACK_TEST_ROOTFS_TRIXIE:-/var/tmp/analytics-stack-test/rootfs-trixie}" trixie
# The Debian package, for tests/e2e_package.rs (also outside the tests' timeouts).
phase "Debian package" packaging/build-deb.sh
phase "build the tests" cargo nextest run --run-ignored all --no-run
status=0
# nextest keeps its store (the JUnit report) in the clone: target/nextest.
rm -f target/nextest/default/junit.xml target/e2e-cpu.tsv
# The cores' counters around the tests: how busy the machine was, for the budget.
stat_before=$(mktemp) stat_after=$(mktemp)
trap 'rm -f "$phases" "$stat_before" "$stat_after"' EXIT
cp /proc/stat "$stat_before"
phase "run the tests" cargo nextest run --run-ignored all --no-fail-fast || status=$?
cp /proc/stat "$stat_after"
/usr/bin/python3 tests/harness/timings.py "$phases" target/nextest/default/junit.xml \
  target/e2e-cpu.tsv "$stat_before" "$stat_after"
exit "$status"
