#!/usr/bin/env bash
# Tears down the container scripts/up.sh started; nothing of it stays on the host
# (its root filesystem was a volatile overlay).
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/harness/container.sh
container_stop "${ANALYTICS_STACK_CONTAINER:-analytics-stack}"
echo "stopped"
