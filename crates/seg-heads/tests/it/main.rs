//! Integration tests of seg-heads: one binary (`tests/it`) with a tiny test backbone.

mod common;
mod config;
mod discriminator;
mod grl;
mod heads;
mod methods;
mod size;
