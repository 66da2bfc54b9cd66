#!/usr/bin/env bash
# Chunk-size study: stored bytes and backup speed for 64K, 256K, 1M and 2M chunks on the
# shared workload (a 6-day series of one VM and of a clone from the same template), plus
# backup and restore speed and peak memory for one 4 GiB image. Prints Markdown tables.
#   usage: benches/chunk_size.sh [WORKDIR] [DISK_SIZE]      (defaults: a temp dir, 1G)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=${CAIRN_SHARED:-$repo/../shared}
[ -f "$shared/workload/gen_disk.py" ] || { echo "chunk_size.sh: $shared/workload/gen_disk.py is missing" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cairn/target}
cargo build --locked --manifest-path "$repo/Cargo.toml" -p cairn-cli >&2
cairn=$CARGO_TARGET_DIR/debug/cairn
work=${1:-$(mktemp -d)}; size=${2:-1G}
mkdir -p "$work"
for vm in 1 2; do for day in 0 1 2 3 4 5; do
  f=$work/vm$vm-day$day.raw
  [ -f "$f" ] || python3 "$shared/workload/gen_disk.py" "$f" --size "$size" --seed $vm --template 7 --day $day
done; done
echo "| chunk size | stored after VM day 0 | stored after 6 days | stored after clone (6 days) | avg backup MB/s | index + tree bytes |"
echo "|---|---|---|---|---|---|"
for cs in 64K 256K 1M 2M; do
  store=$work/store-$cs; rm -rf "$store"
  "$cairn" init "$store" --chunk-size $cs >/dev/null
  secs=0; bytes=0; after0=0; after6=0
  for vm in 1 2; do for day in 0 1 2 3 4 5; do
    out=$("$cairn" backup --store "$store" --json --vm vm$vm --time 2026-11-0$((day+1))T02:00:00Z xvda="$work/vm$vm-day$day.raw")
    secs=$(python3 -c "import json,sys; print($secs + json.loads(sys.argv[1])[0]['seconds'])" "$out")
    bytes=$(python3 -c "import json,sys; print($bytes + json.loads(sys.argv[1])[0]['size'])" "$out")
    if [ $vm = 1 ] && [ $day = 0 ]; then after0=$(du -sb "$store/packs" | cut -f1); fi
    if [ $vm = 1 ] && [ $day = 5 ]; then after6=$(du -sb "$store/packs" | cut -f1); fi
  done; done
  total=$(du -sb "$store/packs" | cut -f1)
  meta=$(python3 - "$store" <<'PY'
import json, os, sys
store = sys.argv[1]
total = 0
for d, _, files in os.walk(os.path.join(store, "index")):
    total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
for d, _, files in os.walk(os.path.join(store, "points")):
    for f in files:
        total += os.path.getsize(os.path.join(d, f))
print(total)
PY
)
  mib() { python3 -c "print(f'{$1/1048576:.1f} MiB')"; }
  echo "| $cs | $(mib $after0) | $(mib $after6) | $(mib $total) | $(python3 -c "print(f'{$bytes/1e6/$secs:.0f}')") | $(mib $meta) |"
done
# One 4 GiB image: backup and restore speed, peak memory.
big=$work/big-4g.raw
[ -f "$big" ] || python3 "$shared/workload/gen_disk.py" "$big" --size 4G --seed 3 --template 8 --day 0
store=$work/store-4g; rm -rf "$store"; "$cairn" init "$store" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
/usr/bin/time -o "$work/time.b" -f "%e %M" "$cairn" backup --store "$store" --vm big --json xvda="$big" >/dev/null
b=$(tail -1 "$work/time.b")
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
/usr/bin/time -o "$work/time.r" -f "%e %M" "$cairn" restore --store "$store" big/xvda@latest "$work/big-restored.raw" 2>/dev/null
r=$(tail -1 "$work/time.r")
cmp "$big" "$work/big-restored.raw"
echo
echo "| 4 GiB image | seconds | MB/s | peak RSS |"
echo "|---|---|---|---|"
for row in "backup $b" "restore $r"; do
  set -- $row
  echo "| $1 | $2 | $(python3 -c "print(f'{4*1073741824/1e6/$2:.0f}')") | $(python3 -c "print(f'{$3/1024:.0f} MiB')") |"
done
rm -f "$work/big-restored.raw"
