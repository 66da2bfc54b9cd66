#!/usr/bin/env bash
# Regenerates the seed corpus from qemu-img output (and one cairn differencing VHD).
#   usage: vhd/fuzz/make_seeds.sh CAIRN_BINARY
set -euo pipefail
cairn=${1:?usage: make_seeds.sh CAIRN_BINARY}
cd "$(dirname "$0")/seeds"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
head -c 24576 /dev/zero > "$tmp/z.raw"
printf 'cairn fuzz seed' | dd of="$tmp/z.raw" bs=1 seek=5000 conv=notrunc 2>/dev/null
qemu-img create -q -f vpc -o subformat=dynamic qemu-dynamic-empty.vhd 1M
qemu-img convert -f raw -O vpc -o subformat=dynamic "$tmp/z.raw" qemu-dynamic.vhd
qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on "$tmp/z.raw" qemu-dynamic-force.vhd
qemu-img convert -f raw -O vpc -o subformat=fixed "$tmp/z.raw" qemu-fixed.vhd
"$cairn" vhd from-raw --block-size 4096 "$tmp/z.raw" "$tmp/base.vhd"
printf 'changed' | dd of="$tmp/z.raw" bs=1 seek=9000 conv=notrunc 2>/dev/null
"$cairn" vhd from-raw "$tmp/z.raw" cairn-differencing.vhd --parent "$tmp/base.vhd" --uuid 00000000-0000-4000-8000-000000000001
cp "$tmp/base.vhd" cairn-dynamic-4k.vhd
ls -l
