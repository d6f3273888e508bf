#!/usr/bin/env bash
# Builds analytics-stack_VERSION_ARCH.deb into target/debian/ with dpkg-buildpackage
# (debhelper compat 13), installing the build tools it needs, and runs lintian.
#   packaging/build-deb.sh               this machine's architecture
#   packaging/build-deb.sh --arch arm64  cross-built (Debian's aarch64 gcc links it;
#                                        rustup's aarch64 standard library)
set -euo pipefail
cd "$(dirname "$0")/.."
build_arch=$(dpkg --print-architecture)
arch=$build_arch
case "${1:-}" in
  "") ;;
  --arch) arch=${2:?--arch needs amd64 or arm64} ;;
  *) echo "usage: packaging/build-deb.sh [--arch amd64|arm64]" >&2; exit 2 ;;
esac
case "$arch" in
  amd64) triple=x86_64-linux-gnu; rust_target=x86_64-unknown-linux-gnu ;;
  arm64) triple=aarch64-linux-gnu; rust_target=aarch64-unknown-linux-gnu ;;
  *) echo "build-deb.sh: no $arch build (amd64 or arm64)" >&2; exit 2 ;;
esac
need=()
command -v dpkg-buildpackage >/dev/null || need+=(dpkg-dev)
dpkg -s debhelper >/dev/null 2>&1 || need+=(debhelper)
command -v lintian >/dev/null || need+=(lintian)
if [ "$arch" != "$build_arch" ]; then
  command -v "$triple-gcc" >/dev/null || need+=("gcc-$triple")
fi
if [ "$arch" != "$build_arch" ]; then
  # dpkg-shlibdeps reads the dependencies of the libraries the programs link (libc,
  # libgcc_s) from the target architecture's own packages: Debian's multiarch.
  if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
    dpkg --add-architecture "$arch"
    updated=no
  fi
  dpkg -s "libc6:$arch" >/dev/null 2>&1 || need+=("libc6:$arch")
  dpkg -s "libgcc-s1:$arch" >/dev/null 2>&1 || need+=("libgcc-s1:$arch")
fi
if [ ${#need[@]} -gt 0 ] || [ "${updated:-}" = no ]; then
  apt-get update -q
  [ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
if [ "$arch" != "$build_arch" ] && command -v rustup >/dev/null \
    && ! rustup target list --installed | grep -qx "$rust_target"; then
  rustup target add "$rust_target"
fi
# -d: cargo comes from rustup, not from a Debian package.
dpkg-buildpackage -us -uc -b -d -a"$arch"
mkdir -p target/debian
version=$(dpkg-parsechangelog -S Version)
mv ../analytics-stack_"${version}"_"${arch}".deb ../analytics-stack_"${version}"_"${arch}".buildinfo target/debian/; rm -f ../analytics-stack_"${version}"_"${arch}".changes
rm -f ../analytics-stack-dbgsym_*.deb target/debian/*.changes
echo "built target/debian/analytics-stack_${version}_${arch}.deb"
# An error or a warning fails the build (pipefail; docs/install.md says the package
# has none).
lintian --fail-on error,warning --tag-display-limit 0 target/debian/analytics-stack_"${version}"_"${arch}".deb \
  | tee target/debian/lintian-"${arch}".txt
