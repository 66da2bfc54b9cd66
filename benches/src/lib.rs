//! The benchmark harness: `run.sh` and `run.py` drive the `cairn` binary against its peers;
//! `fill-index` builds a large synthetic index for the large-index benchmark.
