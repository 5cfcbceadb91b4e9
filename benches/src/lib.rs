//! Criterion benchmarks of seg-adapt live in `benches/benches/`.
