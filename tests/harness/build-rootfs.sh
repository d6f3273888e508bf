#!/usr/bin/env bash
# Builds the Debian 12 root filesystem that the end-to-end tests boot with
# systemd-nspawn (see docs/TESTING.md). The result is cached as a directory plus a
# stamp file; bump ROOTFS_REVISION when the contents below change.
#
# The image carries the .debs of the data tier in apt's cache, so each test's
# `apt-get install` (run by the daemon, for real) does not depend on the network.
set -euo pipefail

ROOTFS_REVISION=10
# Debian 13's root (tests on trixie): its own revision.
TRIXIE_REVISION=2
out=${1:?usage: build-rootfs.sh OUTPUT_DIR [bookworm|trixie]}
suite=${2:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
case "$suite" in
  bookworm) stamp_name=".analytics-stack-rootfs-$ROOTFS_REVISION" ;;
  trixie) stamp_name=".analytics-stack-rootfs-trixie-$TRIXIE_REVISION" ;;
  *) echo "build-rootfs.sh: unknown suite $suite" >&2; exit 2 ;;
esac
stamp="$out/$stamp_name"

if [ -f "$stamp" ]; then
  exit 0
fi

for tool in debootstrap systemd-nspawn zstd; do
  command -v "$tool" >/dev/null || missing=1
done
if [ "${missing:-0}" = 1 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap systemd-container zstd
fi

rm -rf "$out"
tmp="$out.partial"
rm -rf "$tmp"
mkdir -p "$(dirname "$out")"
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,iproute2,libpam-systemd,ca-certificates,procps,curl,less \
  "$suite" "$tmp" "$mirror"

cat >"$tmp/etc/apt/sources.list" <<SRC
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${mirror%/debian}/debian-security $suite-security main
SRC

in_root() { chroot "$tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root DEBIAN_FRONTEND=noninteractive "$@"; }
# The certificate authorities this machine trusts beyond Debian's (e.g. an egress
# proxy's), so the container reaches PyPI over HTTPS as the host does.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$tmp/usr/local/share/ca-certificates/"
  in_root update-ca-certificates >/dev/null
fi
in_root apt-get update -q
# Download only: installing is the daemon's job inside each test.
in_root apt-get install -y -q --download-only --no-install-recommends postgresql redis-server nginx libnginx-mod-stream prometheus prometheus-node-exporter prometheus-postgres-exporter prometheus-alertmanager pgbackrest python3
# An ordinary user for the access-control tests.
in_root useradd --create-home --shell /bin/bash alice
# Timers that would run apt inside a test container.
for t in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer; do
  ln -sf /dev/null "$tmp/etc/systemd/system/$t"
done
# debootstrap copied the host's identity.
echo analytics-test >"$tmp/etc/hostname"
: >"$tmp/etc/machine-id"

touch "$tmp/$stamp_name"
mv "$tmp" "$out"
