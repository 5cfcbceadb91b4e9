//! Integration tests of seg-heads' building blocks (discriminators, gradient reversal), one
//! binary (`tests/it`). The heads themselves are tested in `seg-methods`, as methods run them.

mod common;
mod discriminator;
mod grl;
mod output_maps;
