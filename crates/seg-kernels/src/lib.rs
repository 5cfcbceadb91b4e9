//! The CPU compute kernels of seg-adapt, on plain `f32` slices with no tensor library:
//! convolutions (tiled im2col/col2im products and Winograd F(2×2, 3×3)) with their geometry,
//! the matrix products under them (an AVX-512 sgemm beside the `gemm` crate), a 2×2 max pool,
//! batch normalisation, masked cross-entropy, the optimisers' in-place updates, and the
//! per-pixel argmax of a prediction.
//!
//! `seg-nn` wraps each in a candle custom op; the kernels here are tested on slices against
//! direct loops. Every kernel is deterministic: a given input and thread count give the same
//! bits every run. The runtime switches (AVX-512 sgemm, Winograd) are one typed value,
//! [`settings::Settings`].

pub mod argmax;
pub mod conv;
pub mod geom;
mod matmul;
pub mod norm;
pub mod pool;
pub mod settings;
pub mod sgemm;
pub mod update;
pub mod winograd;
pub mod xent;

pub use geom::{Geom, GeomError, Piece};
pub use settings::Settings;
