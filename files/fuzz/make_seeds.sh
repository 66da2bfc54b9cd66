#!/usr/bin/env bash
# Seeds for the fuzz target, made by the real tools: small ext4, FAT and NTFS images, and GPT
# and MBR disks holding one. Run once before fuzzing: files/fuzz/make_seeds.sh
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p seeds
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/etc/deep"
echo web01 > "$work/src/etc/hostname"
ln -s etc/hostname "$work/src/link"
ln "$work/src/etc/hostname" "$work/src/hard"
head -c 20000 /dev/zero | tr '\0' 'x' > "$work/src/etc/deep/file"
mkfs.ext4 -q -d "$work/src" seeds/ext4.img 1M
mkfs.vfat -C seeds/fat.img 1024 >/dev/null && mcopy -s -i seeds/fat.img "$work/src/etc" ::/
truncate -s 1M seeds/ntfs.img && mkntfs -q -F -f seeds/ntfs.img 2>/dev/null && ntfscp -q seeds/ntfs.img "$work/src/etc/hostname" hostname
for label in gpt dos; do
  truncate -s 3M "seeds/$label.raw"
  printf 'label: %s\nstart=2048, size=2048\n' "$label" | sfdisk -q "seeds/$label.raw"
  dd if=seeds/ext4.img of="seeds/$label.raw" bs=1M seek=1 conv=notrunc status=none
done
ls -l seeds
