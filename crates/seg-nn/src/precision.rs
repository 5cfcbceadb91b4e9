//! Mixed precision, as PyTorch's `torch.autocast(dtype=torch.bfloat16)` does it: inside an
//! [`autocast`] scope the convolutions (and transposed convolutions) of [`crate::layers`] take
//! bfloat16 operands (f32 inputs are cast; the f32 weights and biases are cast by the op)
//! and give a bfloat16 result, and the activations stay bf16 through what follows inside the
//! network: ReLU, the max pool, skip additions and crops keep their input's type, and batch
//! norm and bilinear resize compute in f32 and hand back bf16. A network's outputs leave the region through [`to_f32`] (the
//! backbones' feature maps and logits, the heads' outputs), so losses, reductions and everything
//! the methods compute stay f32, as do the weights, optimiser state and batch-norm statistics
//! (the "master weights"). Outside a scope, or with [`Precision::F32`], nothing changes.
//!
//! Both devices carry real bf16 tensors, so a type mismatch shows on the CPU as on CUDA. On
//! CUDA the products run in bf16 on cuDNN (f32 compute type). The CPU has no bf16 kernels
//! (candle 0.11's CPU convolutions refuse bf16), so the custom ops widen bf16 operands to f32,
//! run the f32 kernels and round the result to bf16: the same numerics, with the same two
//! roundings as CUDA where a bias follows a product (the product, then the bias added), the
//! fused convolution + bias + ReLU included; only the order of the products' f32 sums differs.
//! The CPU path exists to test the numerics. Since the ops take the f32
//! variables themselves, a weight's gradient (a bf16 product, widened to f32) goes to
//! [`crate::grad`]'s sink as in f32 training: no bf16 weight in the graph and no second
//! accumulation of their gradients. Each conv op keeps the bf16 copy of its weight it computed
//! its forward with, for its backward pass: one cast per weight and step.
//!
//! The scope is per thread (the thread that builds the graph: the training step's).

use std::cell::Cell;

use candle_core::{DType, Result, Tensor};
use seg_core::{FeatureTap, Features};

/// The arithmetic of the convolutions in a training step (`trainer.precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything in f32 (the default).
    #[default]
    F32,
    /// bf16 convolutions with f32 master weights, batch norm, losses and reductions.
    Bf16,
}

impl Precision {
    /// Whether this is the default (`f32`), so configs that do not set it serialise unchanged.
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The precision in force on this thread.
pub fn current() -> Precision {
    CURRENT.with(Cell::get)
}

/// Restores the previous precision when dropped.
#[must_use = "the precision holds only while the guard lives"]
pub struct Autocast {
    previous: Precision,
    /// The scope belongs to the thread that opened it (not `Send`).
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for Autocast {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// Puts `p` in force on this thread until the returned guard is dropped.
pub fn autocast(p: Precision) -> Autocast {
    let previous = CURRENT.with(|c| c.replace(p));
    Autocast {
        previous,
        _thread: std::marker::PhantomData,
    }
}

/// Whether `x`'s convolutions run in bf16 now: the scope says so and `x` is f32 or bf16.
pub(crate) fn lowers(x: &Tensor) -> bool {
    current() == Precision::Bf16 && matches!(x.dtype(), DType::F32 | DType::BF16)
}

/// An operand as a bf16 product takes it (unchanged when it is bf16 already).
pub(crate) fn operand(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::BF16)
}

/// `t` in f32, where a network's output leaves the bf16 region (unchanged when it is f32).
pub fn to_f32(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)
}

/// Runs `f` on `x` in f32 and gives the result in `x`'s type: batch norm and resize inside the
/// bf16 region, as autocast runs them (f32 arithmetic, bf16 out).
pub(crate) fn in_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if x.dtype() == DType::BF16 {
        f(&x.to_dtype(DType::F32)?)?.to_dtype(DType::BF16)
    } else {
        f(x)
    }
}

/// The feature maps as a backbone hands them out ([`seg_core::Backbone::forward_taps`]): in f32
/// (under bf16 they are bf16 inside the network). The deep maps and the logits always; the large
/// early maps (conv1, pool3, pool4) only where `taps` asks for them, since otherwise only the
/// network itself reads them back ([`seg_core::Backbone::forward_from`]).
pub fn leave(mut f: Features, taps: &[FeatureTap]) -> Result<Features> {
    for (tap, t) in f.maps.iter_mut() {
        if taps.contains(tap) || matches!(tap, FeatureTap::Conv5 | FeatureTap::Fc7 | FeatureTap::Logits) {
            *t = to_f32(t)?;
        }
    }
    Ok(f)
}
