//! The benchmark harness (filled by the benchmark issue).
