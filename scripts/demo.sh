#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh), builds cairn and runs its main job on a sample disk:
# a day-0 image and two later days from the shared workload generator become a VHD chain
# (dynamic key + two differencing VHDs), which is checked and read back bit-exact.
#   usage: scripts/demo.sh [WORKDIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cairn/target}
cargo build --locked --manifest-path "$repo/Cargo.toml" -p cairn-cli
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
echo "== cairn vhd info / check"
"$cairn" vhd info "$work/chain/day2.vhd"
"$cairn" vhd check "$work/chain/day2.vhd"
echo "== cairn vhd to-raw: the chain read back"
"$cairn" vhd to-raw "$work/chain/day2.vhd" "$work/restored.raw"
cmp "$work/restored.raw" "$work/day2.raw" && echo "restored day 2 is bit-exact"
