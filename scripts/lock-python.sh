#!/usr/bin/env bash
# Regenerates python/*.lock from python/*.in: every package pinned, with the hashes of
# every file PyPI has for it (all platforms: --universal), for the Python versions the
# stack supports from 3.11 up. Uses the uv the catalog pins, verified like the daemon
# does. Run it after editing a .in file, then commit both; the daemon embeds the locks.
#   scripts/lock-python.sh [airflow|superset|dlt|build ...]
set -euo pipefail
cd "$(dirname "$0")/.."

arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
entry() { awk -v key="$1" '/^\[/{s=($0=="[uv]")} s && $1==key {gsub(/"/,"",$3); print $3}' catalog/archives.toml; }
url=$(entry "$arch"); sha=$(entry "sha256_$arch"); version=$(entry version)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/analytics-stack/uv-$version"
uv="$cache/uv-$version.data/scripts/uv"
if [ ! -x "$uv" ]; then
  mkdir -p "$cache"
  curl -fsSL -o "$cache/uv.whl" "$url"
  echo "$sha  $cache/uv.whl" | sha256sum -c --quiet
  /usr/bin/python3 -m zipfile -e "$cache/uv.whl" "$cache"
  chmod +x "$uv"
fi

apps=("$@")
[ ${#apps[@]} -gt 0 ] || apps=(airflow superset dlt build)
for app in "${apps[@]}"; do
  "$uv" pip compile --quiet --no-config --generate-hashes --universal --python-version 3.11 \
    --index-url "${ANALYTICS_STACK_INDEX_URL:-https://pypi.org/simple}" \
    --custom-compile-command "scripts/lock-python.sh $app" \
    "python/$app.in" -o "python/$app.lock"
  echo "python/$app.lock: $(grep -c '^[a-z0-9]' "python/$app.lock") packages"
done
