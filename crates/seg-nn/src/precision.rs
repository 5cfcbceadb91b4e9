//! Mixed precision, as PyTorch's `torch.autocast(dtype=torch.bfloat16)` does it: inside an
//! [`autocast`] scope the convolutions (and transposed convolutions) of [`crate::layers`] take
//! bfloat16 operands and give a bfloat16-rounded result, which continues in f32; weights,
//! optimiser state, batch norm, losses and every reduction stay f32 (the "master weights").
//! Outside a scope, or with [`Precision::F32`], nothing changes.
//!
//! On CUDA the operands are cast to bf16 and the product runs in bf16 (accumulating in f32).
//! The CPU has no bf16 kernels (candle 0.11's CPU convolutions refuse bf16), so there the same
//! numerics are emulated: operands rounded to bf16, the f32 product, the result rounded to bf16.
//! Both round the operands and the product the same way; with a bias, CUDA adds it in bf16 (a
//! second rounding) where the CPU adds it in f32 before its one rounding, which the CUDA test's
//! tolerance covers. The CPU path exists to test the numerics. The bf16 weights are casts of
//! the f32 variables, so their gradients go back through candle's accumulation, not
//! [`crate::grad`]'s sink.
//!
//! The scope is per thread (the thread that builds the graph: the training step's).

use std::cell::Cell;

use candle_core::{DType, Result, Tensor};

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

/// Whether `x`'s convolutions run in bf16 now: the scope says so and `x` is f32.
pub(crate) fn lowers(x: &Tensor) -> bool {
    current() == Precision::Bf16 && x.dtype() == DType::F32
}

/// An operand as a bf16 product takes it: bf16 on CUDA; on the CPU rounded to bf16 and kept in
/// f32 (see the module documentation).
pub(crate) fn operand(t: &Tensor) -> Result<Tensor> {
    let low = t.to_dtype(DType::BF16)?;
    if t.device().is_cpu() {
        low.to_dtype(DType::F32)
    } else {
        Ok(low)
    }
}

/// A bf16 product's result back in f32 (on the CPU: the f32 result rounded to bf16 first).
pub(crate) fn result(t: &Tensor) -> Result<Tensor> {
    if t.dtype() == DType::F32 {
        t.to_dtype(DType::BF16)?.to_dtype(DType::F32)
    } else {
        t.to_dtype(DType::F32)
    }
}
