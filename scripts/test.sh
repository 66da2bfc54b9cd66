#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh) and runs cairn's whole test suite: formatting, clippy
# with warnings as errors, and every unit, property and end-to-end test (the end-to-end tests
# drive the real binary and check its files with qemu-img, vhd-lib and libvhdi).
#   usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One target directory that survives between runs, so only a fresh machine builds RocksDB.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cairn/target}
export CARGO_TERM_COLOR=never
# Test binaries of earlier builds are dead weight (each links the whole workspace, hundreds of
# MB with its debug info): only the newest of each name is kept, so that the cache does not grow
# by gigabytes with every change and fill the disk.
python3 - "$CARGO_TARGET_DIR/debug/deps" <<'PRUNE'
import collections, os, sys
deps = sys.argv[1]
if os.path.isdir(deps):
    by_name = collections.defaultdict(list)
    for f in os.listdir(deps):
        p = os.path.join(deps, f)
        if "." not in f and "-" in f and os.path.isfile(p) and os.access(p, os.X_OK):
            by_name[f.rsplit("-", 1)[0]].append((os.path.getmtime(p), p))
    for runs in by_name.values():
        for _, p in sorted(runs)[:-1]:
            os.remove(p)
PRUNE
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "cairn tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
