#!/usr/bin/env bash
# The worker-host figures (root; boots four containers on a private bridge): the
# 20-task DAG's wall time with one worker host and with two, the run that lost a
# worker mid-run, an asynchronous SQL Lab query's round trip through a worker host,
# and how long the bundle, the primary and two joins take. It runs
# tests/e2e_workers.rs, which asserts what the figures mean (the tasks ran on the
# workers, the lost ones were retried, the query ran on a worker host), and prints
# its [figure] lines.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/harness/build-rootfs.sh "${ANALYTICS_STACK_TEST_ROOTFS:-/var/tmp/analytics-stack-test/rootfs}" >/dev/null
cargo nextest run --run-ignored only -E 'binary(e2e_workers)' --no-capture 2>&1 | grep '\[figure\]'
