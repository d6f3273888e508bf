#!/usr/bin/env bash
# Benchmarks building the application venvs from the committed lock files, on this
# host: uv (as the daemon runs it: --require-hashes --compile-bytecode) with an empty
# cache and with a warm cache, against pip (python -m venv + pip install
# --require-hashes, which compiles bytecode by default). Prints seconds and sizes.
#   bench/venvs.sh [airflow|superset|dlt ...]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-/usr/bin/python3}
version=$(awk '/^\[uv\]/{s=1} s && $1=="version" {gsub(/"/,"",$3); print $3; exit}' catalog/archives.toml)
uv="${XDG_CACHE_HOME:-$HOME/.cache}/analytics-stack/uv-$version/uv-$version.data/scripts/uv"
[ -x "$uv" ] || { echo "run scripts/lock-python.sh once first (it fetches and verifies uv)" >&2; exit 1; }
work=$(mktemp -d /var/tmp/analytics-stack-bench-venvs.XXXXXX)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

apps=("$@")
[ ${#apps[@]} -gt 0 ] || apps=(airflow superset dlt)
for app in "${apps[@]}"; do
  lock="python/$app.lock"
  export UV_NO_CONFIG=1 UV_PYTHON_DOWNLOADS=never UV_SYSTEM_CERTS=1
  for run in cold warm; do
    [ "$run" = cold ] && rm -rf "$work/uv-cache"
    rm -rf "$work/uv-$app"
    a=$(now)
    "$uv" venv -q --no-project --python "$python" "$work/uv-$app"
    UV_CACHE_DIR="$work/uv-cache" "$uv" pip sync -q --require-hashes --compile-bytecode --python "$work/uv-$app/bin/python" "$lock"
    b=$(now)
    echo "$app: uv ($run cache) $(secs "$a" "$b") s, venv $(du -sm "$work/uv-$app" | cut -f1) MiB"
  done
  rm -rf "$work/pip-$app"
  a=$(now)
  "$python" -m venv "$work/pip-$app"
  PIP_FIND_LINKS= "$work/pip-$app/bin/pip" install -q --no-cache-dir --no-deps --require-hashes -r "$lock"
  b=$(now)
  echo "$app: pip (no cache) $(secs "$a" "$b") s, venv $(du -sm "$work/pip-$app" | cut -f1) MiB"
done
