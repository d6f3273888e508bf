#!/usr/bin/env bash
# Runs every test: formatting and lints, unit tests, and the end-to-end tests that
# boot a real systemd in containers (root needed). Installs what it needs itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then echo "tests/run-all.sh must run as root (the end-to-end tests boot containers)" >&2; exit 1; fi
need=()
for tool in debootstrap:debootstrap systemd-nspawn:systemd-container zstd:zstd nsenter:util-linux gpg:gnupg gpgv:gpgv \
    chromium:chromium chromedriver:chromium-driver certutil:libnss3-tools; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
# The browser test's WebDriver client (tests/browser/desk.py), Debian's.
/usr/bin/python3 -c 'import selenium' 2>/dev/null || need+=(python3-selenium)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The root filesystem is built (or reused) before the tests, outside their timeouts.
tests/harness/build-rootfs.sh "${ANALYTICS_STACK_TEST_ROOTFS:-/var/tmp/analytics-stack-test/rootfs}"
# The Debian package, for tests/e2e_package.rs (also outside the tests' timeouts).
packaging/build-deb.sh
cargo nextest run --run-ignored all --no-fail-fast
