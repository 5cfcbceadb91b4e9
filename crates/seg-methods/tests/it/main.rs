//! Integration tests of seg-methods: the method list and its configs, every head as a method
//! builds it, and the methods' steps, on a tiny test backbone (one binary, `tests/it`).

mod common;
mod config;
mod heads;
mod methods;
mod size;
