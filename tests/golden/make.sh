#!/usr/bin/env bash
# Makes the golden store: a small store of the current format and the sources it holds, for
# tests/tests/golden.rs. Run once per store format (tests/golden/v1 is format 1); the result is
# checked in and never regenerated: every later cairn must read it as it is.
#   usage: tests/golden/make.sh CAIRN_BINARY OUT_DIR
set -euo pipefail
cairn=$1
out=$2
mkdir -p "$out/sources"
python3 - "$out/sources" <<'PY'
import sys, random
out = sys.argv[1]
size = 1 << 20
def disk(seed, changes):
    rnd = random.Random(seed)
    b = bytearray(size)
    # Text-like data in a few regions, zeros elsewhere (so some chunks are never stored).
    for start in (0, 300_000, 700_000):
        for i in range(start, start + 150_000, 64):
            b[i:i + 48] = f"{seed:04d} line {i:08d} {rnd.randrange(10**9):09d}\n".encode().ljust(48)[:48]
    for day in range(changes):
        at = rnd.randrange(0, size - 70_000) // 512 * 512
        b[at:at + 65_536] = bytes(rnd.randrange(256) for _ in range(65_536))
    assert len(b) == size
    return b
for name, seed, changes in (("web01-day0", 1, 0), ("web01-day1", 1, 1), ("web01-day2", 1, 2),
                            ("db01-day0", 2, 0)):
    with open(f"{out}/{name}.raw", "wb") as f:
        f.write(disk(seed, changes))
PY
s=$out/store
"$cairn" init --chunk-size 64K "$s" >/dev/null
export CAIRN_STORE=$s
"$cairn" vhd from-raw "$out/sources/web01-day1.raw" "$out/day1.vhd" >/dev/null
# One line per point: its id, then the source file it must restore to.
point_id() { python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["id"])'; }
: > "$out/points.txt"
id=$("$cairn" backup --json --vm web01 --time 2026-11-01T02:00:00Z "xvda=$out/sources/web01-day0.raw" | point_id)
echo "$id web01-day0.raw" >> "$out/points.txt"
id=$("$cairn" backup --json --vm web01 --time 2026-11-02T02:00:00Z "xvda=$out/day1.vhd" | point_id)
echo "$id web01-day1.raw" >> "$out/points.txt"
id=$("$cairn" backup --json --vm web01 --time 2026-11-03T02:00:00Z xvda=- < "$out/sources/web01-day2.raw" | point_id)
echo "$id web01-day2.raw" >> "$out/points.txt"
id=$("$cairn" backup --json --vm db01 --time 2026-11-03T03:00:00Z "sda=$out/sources/db01-day0.raw" | point_id)
echo "$id db01-day0.raw" >> "$out/points.txt"
"$cairn" protect "$(awk 'NR==1 {print $1}' "$out/points.txt")" >/dev/null
# RocksDB's info logs are not part of the format.
rm -f "$out/day1.vhd" "$s/lock" "$s"/index/LOG "$s"/index/LOG.old.*
