//! candle custom ops over the kernels of `seg-kernels` (CPU) and `seg-cuda` (CUDA), for the
//! pieces whose composite-op versions spend their time in strided copies and allocations:
//! convolutions ([`conv`]), a 2×2 max pool with an argmax gradient ([`pool`]), training-mode
//! batch norm with the closed-form gradient ([`norm`]) and masked cross-entropy fused with its
//! gradient ([`xent`]). Each op checks for contiguous f32 input; callers use candle's composite
//! ops where [`applies`] says no.

pub mod conv;
pub mod norm;
pub mod pool;
pub mod xent;

use candle_core::{CpuStorage, Layout, Result, Tensor};

/// The contiguous f32 values of a CPU operand, or an error naming the op.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: f32 input expected")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: contiguous input expected"),
    }
}

/// A CPU f32 tensor's values (copied), or an error naming the op.
pub(crate) fn cpu_data(t: &Tensor, what: &str) -> Result<Vec<f32>> {
    if !applies(t) {
        candle_core::bail!("{what}: CPU f32 tensor expected");
    }
    t.flatten_all()?.to_vec1::<f32>()
}

/// Whether the fast CPU kernels apply to `x`: f32 on the CPU.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}
