//! Helpers shared by the tests: seeded random tensors.

use candle_core::{Device, Tensor};
use seg_core::Rng;

/// A normal random tensor (seeded) plus `offset`.
pub(crate) fn randn(rng: &mut Rng, shape: &[usize], offset: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() + offset).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}
