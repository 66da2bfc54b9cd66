#!/usr/bin/env bash
# Sets up what it runs (scripts/setup.sh --demo), builds cairn and runs its main job on a sample VM:
# three days of a disk from the shared workload generator are exported as a VHD chain (key +
# two differencing VHDs, as XenServer exports incremental backups), backed up into a store
# with a clone of the same template, listed, reported, and restored bit-exact as raw, as one
# VHD and as a VHD chain; then a qcow2 disk is backed up from qemu-nbd (full, then only what its
# dirty bitmap marks) and served back over NBD (instant restore); a small bootable VM is backed
# up and booted from the store (check-boot); last, the report page.
#   usage: scripts/demo.sh [WORKDIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh" --demo    # what the demo runs only: no Garage, no peer tools
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cairn/target}
cargo build --locked --manifest-path "$repo/Cargo.toml" -p cairn-cli
# The small bootable VM disk the check-boot step backs up (the tests' guest).
cargo build --locked --manifest-path "$repo/Cargo.toml" -p cairn-benches --bin guest-disk
cairn=$CARGO_TARGET_DIR/debug/cairn
shared=${CAIRN_SHARED:-$repo/../shared}
[ -f "$shared/workload/gen_disk.py" ] || { echo "demo: $shared/workload/gen_disk.py is missing: put shared/ beside the repository" >&2; exit 1; }
work=${1:-$(mktemp -d)}
mkdir -p "$work/chain"
echo "== sample VM disk: 256 MiB, days 0..2, in $work"
for day in 0 1 2; do
  python3 "$shared/workload/gen_disk.py" "$work/day$day.raw" --size 256M --seed 1 --template 7 --day $day
done
echo "== cairn vhd from-raw: key VHD and two deltas"
"$cairn" vhd from-raw "$work/day0.raw" "$work/chain/day0.vhd"
"$cairn" vhd from-raw "$work/day1.raw" "$work/chain/day1.vhd" --parent "$work/chain/day0.vhd"
"$cairn" vhd from-raw "$work/day2.raw" "$work/chain/day2.vhd" --parent "$work/chain/day1.vhd"
ls -ls "$work/chain"
echo "== cairn vhd check: the exported chain"
"$cairn" vhd check "$work/chain/day2.vhd"
echo "== cairn init + backup: the key VHD, then each delta (only its blocks are read)"
store=$work/store
rm -rf "$store"
"$cairn" init "$store" --timezone Europe/Paris
export CAIRN_STORE=$store
# VMs as Xen Orchestra names them, with the identity XAPI gives (times in the store's zone).
web01=(--vm "web01 (prod)" --vm-uuid 6f1c2a4e-0b1d-4c3e-9a8f-1d2e3f4a5b6c --pool xcp-pool-1)
for day in 0 1 2; do
  "$cairn" backup "${web01[@]}" --time 2026-11-2${day}T03:00 xvda="$work/chain/day$day.vhd"
done
echo "== a clone of the same template, from stdin"
python3 "$shared/workload/gen_disk.py" "$work/clone.raw" --size 256M --seed 2 --template 7 --day 0
web02=(--vm "web02 (staging)" --vm-uuid c0ffee00-1234-4abc-8def-0123456789ab --pool xcp-pool-1)
"$cairn" backup "${web02[@]}" --tag before-upgrade --time 2026-11-22T04:00 xvda=- < "$work/clone.raw"
echo "== cairn list / report"
"$cairn" list
"$cairn" report
"$cairn" list --pool xcp-pool-1 --tag before-upgrade --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['vm'])"
echo "== cairn restore: raw, one VHD, a VHD chain"
"$cairn" restore --force "web01 (prod)/xvda@latest" "$work/restored.raw"   # --force: a rerun replaces its own file
cmp "$work/restored.raw" "$work/day2.raw" && echo "raw: bit-exact"
"$cairn" restore --force "web01 (prod)/xvda@latest" "$work/restored.vhd" --format vhd
"$cairn" vhd to-raw "$work/restored.vhd" "$work/restored-vhd.raw"
cmp "$work/restored-vhd.raw" "$work/day2.raw" && echo "vhd: bit-exact"
"$cairn" restore --force "web01 (prod)/xvda@2026-11-21" "$work/day1-restored.vhd" --format vhd   # by date
"$cairn" vhd to-raw "$work/day1-restored.vhd" "$work/day1-restored.raw"
cmp "$work/day1-restored.raw" "$work/day1.raw" && echo "by date: bit-exact"
"$cairn" restore --force "6f1c2a4e-0b1d-4c3e-9a8f-1d2e3f4a5b6c/xvda@latest~1" "$work/day1-latest1.raw"  # by UUID; the one before the latest
cmp "$work/day1-latest1.raw" "$work/day1.raw" && echo "@latest~1: bit-exact"
rm -rf "$work/restored-chain"
"$cairn" restore "web01 (prod)/xvda@latest" "$work/restored-chain" --format vhd-chain
"$cairn" vhd check "$(ls -d "$work"/restored-chain/*.vhd | tail -1)"
"$cairn" vhd to-raw "$(ls -d "$work"/restored-chain/*.vhd | tail -1)" "$work/restored-chain.raw"
cmp "$work/restored-chain.raw" "$work/day2.raw" && echo "vhd chain: bit-exact"
echo "== restore onto a disk that holds day 1: only the chunks that differ are written"
cp "$work/day1.raw" "$work/disk.raw"
"$cairn" restore --changed-only --force "web01 (prod)/xvda@latest" "$work/disk.raw"
cmp "$work/disk.raw" "$work/day2.raw" && echo "changed only: bit-exact"
echo "== retention: protect the first point, prune to the last two, collect garbage, verify"
first=$("$cairn" list --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['id'][:12])")
"$cairn" protect "$first"
"$cairn" prune --vm "web01 (prod)" --keep-last 1 --dry-run
"$cairn" prune --vm "web01 (prod)" --keep-last 1
"$cairn" gc --dry-run
"$cairn" gc --repack-below 100     # rewrite every pack holding garbage (default: --max-unused 5)
"$cairn" verify
"$cairn" policy set --vm "web01 (prod)" --key-interval 7
"$cairn" list
echo "== a flipped byte in a pack: verify names what it damages, a key backup heals it"
pack=$(ls -S "$store"/packs/*/*.pack | head -1)
python3 - "$pack" <<'PY'
import struct, sys
path = sys.argv[1]
b = bytearray(open(path, "rb").read())
at = 32
while True:  # the first data frame: flip a byte in its payload
    stored = struct.unpack(">I", b[at + 44:at + 48])[0]
    if b[at + 49] == 0:
        b[at + 56 + stored // 2] ^= 0x5A
        break
    at += 56 + stored
open(path, "wb").write(b)
PY
"$cairn" verify || echo "(verify exit status $?)"
"$cairn" backup "${web02[@]}" --time 2026-11-23T04:00 --key xvda="$work/clone.raw"
"$cairn" verify
echo "== NBD: a Proxmox-style disk (qcow2) exported by qemu-nbd; the daily backup reads only what its dirty bitmap marks"
rm -f "$work/pve-101.qcow2" "$work"/*.sock
qemu-img convert -f raw -O qcow2 "$work/day0.raw" "$work/pve-101.qcow2"
qemu-img bitmap --add "$work/pve-101.qcow2" backup-inc      # tracking starts with the full backup
serve() {  # qemu-nbd, read-only, 4 clients at once, on a unix socket; prints its pid
  qemu-nbd -r -t -e 4 -f qcow2 -x scsi0 -k "$work/qemu.sock" --pid-file "$work/qemu.pid" --fork "$@" "$work/pve-101.qcow2"
  cat "$work/qemu.pid"
}
pid=$(serve)
"$cairn" backup --vm pve-101 --time 2026-11-20T03:00 scsi0="nbd+unix:///scsi0?socket=$work/qemu.sock"
kill "$pid"
qemu-io -f qcow2 -c "write -P 0x5a 16M 3M" -c "write -P 0x17 200M 64k" "$work/pve-101.qcow2" >/dev/null   # the day's writes
pid=$(serve -B backup-inc)
"$cairn" backup --vm pve-101 --time 2026-11-21T03:00 --dirty-bitmap backup-inc scsi0="nbd+unix:///scsi0?socket=$work/qemu.sock"
kill "$pid"
echo "== instant restore: the point served over NBD, read by qemu-img and nbdinfo"
"$cairn" serve-nbd --socket "$work/cairn.sock" pve-101/scsi0@latest &
served=$!
for _ in $(seq 100); do [ -S "$work/cairn.sock" ] && break; sleep 0.05; done
qemu-img compare -f raw -F qcow2 "nbd+unix:///pve-101/scsi0@latest?socket=$work/cairn.sock" "$work/pve-101.qcow2"
nbdinfo --map "nbd+unix:///pve-101/scsi0@latest?socket=$work/cairn.sock" | head -4
kill "$served"; wait "$served" 2>/dev/null || true
echo "== check-boot: a small bootable VM backed up, then booted from the store in a throw-away VM (no restore)"
guest=$("$CARGO_TARGET_DIR/debug/guest-disk" "$work" app01)   # SYSLINUX, a Debian kernel, busybox
"$cairn" backup --vm app01 --time 2026-11-22T05:00 xvda="$guest"
"$cairn" check-boot --timeout 3m app01/xvda@latest
"$cairn" list --boot --vm app01
echo "== the report page: one self-contained HTML file (also served live by cairn serve at /)"
"$cairn" report --html "$work/report.html"
if command -v chromium >/dev/null; then
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,1700 \
    --screenshot="$work/report.png" "file://$work/report.html" 2>/dev/null
  echo "a screenshot of it: $work/report.png"
fi
