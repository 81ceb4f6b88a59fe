//! Benchmark runs (being written).
