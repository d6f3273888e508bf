#!/usr/bin/env bash
# Builds analytics-stack_VERSION_ARCH.deb into target/debian/ with dpkg-buildpackage
# (debhelper compat 13), installing the build tools it needs, and runs lintian.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dpkg-buildpackage >/dev/null || ! dpkg -s debhelper >/dev/null 2>&1 || ! command -v lintian >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dpkg-dev debhelper lintian
fi
# -d: cargo comes from rustup, not from a Debian package.
dpkg-buildpackage -us -uc -b -d
mkdir -p target/debian
version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg --print-architecture)
mv ../analytics-stack_"${version}"_"${arch}".deb ../analytics-stack_"${version}"_"${arch}".buildinfo target/debian/; rm -f ../analytics-stack_"${version}"_"${arch}".changes
rm -f ../analytics-stack-dbgsym_*.deb target/debian/*.changes
echo "built target/debian/analytics-stack_${version}_${arch}.deb"
lintian --tag-display-limit 0 target/debian/analytics-stack_"${version}"_"${arch}".deb | tee target/debian/lintian.txt || true
