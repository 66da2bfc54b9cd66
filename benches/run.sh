#!/usr/bin/env bash
# The benchmark harness: cairn beside restic and borg, and beside the machine's limits, on the
# same images in one run (see benches/run.py for the steps). Installs what it needs.
#   benches/run.sh [--quick] [--cairn-only] [--size 4G] [--work DIR] [--skip sparse,scale,...]
#                  [--only bigdisk,generations,index,...]
# Measures the release build (what users install). Prints a Markdown table; writes
# target/bench/results.json. Not run by CI.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cairn/target}
cairn_only=no
for a in "$@"; do [ "$a" = --cairn-only ] && cairn_only=yes; done
if [ $cairn_only = no ]; then
  need=()
  command -v restic >/dev/null || need+=(restic)
  command -v borg >/dev/null || need+=(borgbackup)
  command -v zstd >/dev/null || need+=(zstd)
  [ -x /usr/bin/time ] || need+=(time)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
  fi
  python3 -c "import zstandard, blake3" 2>/dev/null || python3 -m pip install -q zstandard blake3 >&2
fi
command -v qemu-img >/dev/null || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils >&2; }
# The nbd section: nbdcopy and libnbd's Python bindings (Debian's python3).
command -v nbdcopy >/dev/null && /usr/bin/python3 -c "import nbd" 2>/dev/null || {
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnbd-bin python3-libnbd >&2; }
cargo build --release --locked --manifest-path "$repo/Cargo.toml" -p cairn-cli -p cairn-benches >&2
exec python3 "$repo/benches/run.py" --cairn "$CARGO_TARGET_DIR/release/cairn" \
  --fill-index "$CARGO_TARGET_DIR/release/fill-index" \
  --report-page "$CARGO_TARGET_DIR/release/report-page" \
  --guest-disk "$CARGO_TARGET_DIR/release/guest-disk" \
  --make-fleet "$CARGO_TARGET_DIR/release/make-fleet" "$@"
