#!/usr/bin/env bash
# Installs what cairn needs on a fresh Debian machine with the Rust toolchain:
# system packages (libclang for RocksDB's bindings, qemu-utils, GNU time, zstd and Python's
# blake3 and zstandard for the benchmark smoke tests' limit rows) and the peer tools the tests check our VHDs with (qemu-img, Xen Orchestra's
# vhd-lib, libvhdi, nbdkit), curl and procps (pkill) for the tests of `cairn serve`,
# Chromium for the report page's test, qemu-system-x86 (from bookworm-backports), OVMF and a
# Debian kernel and busybox for check-boot's guest, and Garage (an S3-compatible cluster, built from
# crates.io once, about 10 minutes, cached in ~/.cache/cairn/garage) for object storage.
# Idempotent and quick when everything is already there.
#   usage: scripts/setup.sh              everything the tests use
#          scripts/setup.sh --demo       only what scripts/demo.sh runs (build tools, qemu-utils,
#                                        libnbd's nbdinfo, qemu-system-x86 and the check-boot
#                                        guest's parts): no Garage, no peer tools
#          scripts/setup.sh --build-only only what building cairn needs (libclang for RocksDB)
set -euo pipefail
mode=${1:-all}
case $mode in all|--demo|--build-only) ;; *) echo "usage: $0 [--demo|--build-only]" >&2; exit 2;; esac
here=$(cd "$(dirname "$0")/.." && pwd)
shared=${CAIRN_SHARED:-$here/../shared}
cache=${CAIRN_CACHE:-$HOME/.cache/cairn}
peers=$cache/peers
mkdir -p "$cache"

case $mode in
  --build-only) packages="libclang-dev clang" ;;
  --demo) packages="libclang-dev clang qemu-utils libnbd-bin fdisk dosfstools mtools syslinux syslinux-common cpio libglib2.0-0 libnuma1 liburing2 libudev1" ;;
  *) packages="libclang-dev clang qemu-utils zstd nbdkit libnbd-bin python3-libnbd libvhdi-utils python3-libvhdi time strace openssl curl procps chromium man-db fdisk e2fsprogs dosfstools mtools ntfs-3g fuse3 lvm2 syslinux syslinux-common syslinux-efi ovmf cpio libglib2.0-0 libnuma1 liburing2 libudev1" ;;
esac
need_apt=()
for pkg in $packages; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ "$mode" = --build-only ]; then
  exit 0
fi

# promtool (Prometheus's checker of the /metrics text), taken from Debian's prometheus package
# (downloaded, not installed: no service) into the cache.
if [ "$mode" = all ] && [ ! -x "$cache/bin/promtool" ]; then
  echo "setup: fetching promtool into $cache/bin" >&2
  rm -rf "$cache/promtool.tmp" && mkdir -p "$cache/promtool.tmp" "$cache/bin"
  (cd "$cache/promtool.tmp" && apt-get download -qq prometheus 2>/dev/null && dpkg-deb -x prometheus_*.deb x)
  cp "$cache/promtool.tmp/x/usr/bin/promtool" "$cache/bin/promtool"
  rm -rf "$cache/promtool.tmp"
fi

# check-boot: qemu-system-x86 from bookworm-backports, as qemu-utils 10 is (bookworm's own 7.2
# would replace qemu-utils and break the VHD and NBD tests); the backports suite is added for
# that one install. Then qemu-img must still be 10.
if ! command -v qemu-system-x86_64 >/dev/null; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  list=/etc/apt/sources.list.d/cairn-bookworm-backports.sources
  if [ ! -f "$list" ]; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' | $SUDO tee "$list" >/dev/null
  fi
  echo "setup: installing qemu-system-x86 from bookworm-backports" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports --no-install-recommends qemu-system-x86 >/dev/null
fi
if ! qemu-img --version | grep -q 'version 10\.'; then
  echo "setup: qemu-img is not version 10 any more ($(qemu-img --version | head -1)): reinstall qemu-utils from bookworm-backports" >&2
  exit 1
fi

# The test guest of check-boot: a Debian cloud kernel, its virtio disk, console and network
# modules, a static busybox and the QEMU guest agent with the libraries it loads, taken from
# their packages (downloaded, not installed) into the cache. `.ready` holds the set's version.
boot=$cache/boot
boot_parts=2
if [ "$(cat "$boot/.ready" 2>/dev/null)" != "$boot_parts" ]; then
  echo "setup: fetching a kernel, busybox and qemu-ga for the check-boot test guest into $boot" >&2
  rm -rf "$boot" && mkdir -p "$boot/deb" "$boot/qga/lib"
  kernel=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  (cd "$boot/deb" && apt-get download -qq "$kernel" busybox-static qemu-guest-agent 2>/dev/null)
  for d in "$boot"/deb/*.deb; do dpkg-deb -x "$d" "$boot/x"; done
  cp "$boot"/x/boot/vmlinuz-* "$boot/vmlinuz" && cp "$boot/x/bin/busybox" "$boot/busybox"
  mkdir -p "$boot/modules"
  for m in virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk \
           virtio_console failover net_failover virtio_net; do
    find "$boot/x/lib/modules" -name "$m.ko*" -exec cp {} "$boot/modules/" \;
  done
  cp "$boot/x/usr/sbin/qemu-ga" "$boot/qga/qemu-ga"
  if ldd "$boot/qga/qemu-ga" | grep -q "not found"; then
    echo "setup: qemu-ga's libraries are missing here: $(ldd "$boot/qga/qemu-ga" | grep 'not found')" >&2; exit 1
  fi
  ldd "$boot/qga/qemu-ga" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' |
    while read -r lib; do cp -L "$lib" "$boot/qga/lib/"; done
  rm -rf "$boot/deb" "$boot/x"
  echo "$boot_parts" > "$boot/.ready"
fi

if [ "$mode" != all ]; then
  exit 0
fi

if [ ! -f "$peers/.installed" ]; then
  if [ ! -x "$shared/peers/install_peers.sh" ] && [ ! -f "$shared/peers/install_peers.sh" ]; then
    echo "setup: $shared/peers/install_peers.sh is missing: the shared/ folder must sit beside the repository" >&2
    exit 1
  fi
  echo "setup: installing peer tools into $peers" >&2
  bash "$shared/peers/install_peers.sh" "$peers" >"$cache/peers-install.log" 2>&1 || {
    echo "setup: peer install failed, see $cache/peers-install.log" >&2; tail -20 "$cache/peers-install.log" >&2; exit 1; }
  touch "$peers/.installed"
fi

# Garage, built once and kept in the cache (a fresh machine pays its build, ~10 min on 2 cores).
garage=$cache/garage/bin/garage
if [ ! -x "$garage" ]; then
  echo "setup: building Garage into $cache/garage (once, about 10 minutes)" >&2
  nice -n 10 cargo install garage --locked --root "$cache/garage" >"$cache/garage-install.log" 2>&1 || {
    echo "setup: Garage's build failed, see $cache/garage-install.log" >&2; tail -20 "$cache/garage-install.log" >&2; exit 1; }
fi

# The benchmark harness's limits (BLAKE3 and zstd over an image) in this Python, as the smoke
# tests run it; the wheels are kept in the cache.
# aiosmtpd: the SMTP server the job notifications' test mails.
if ! python3 -c "import blake3, zstandard, aiosmtpd" 2>/dev/null; then
  echo "setup: installing Python's blake3, zstandard and aiosmtpd" >&2
  python3 -m pip install -q --cache-dir "$cache/pip" blake3 zstandard aiosmtpd >"$cache/pip-install.log" 2>&1 || {
    echo "setup: pip install failed, see $cache/pip-install.log" >&2; tail -20 "$cache/pip-install.log" >&2; exit 1; }
fi

