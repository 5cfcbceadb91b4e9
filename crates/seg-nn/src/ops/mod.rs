//! candle custom ops over the kernels of `seg-kernels` (CPU) and `seg-cuda` (CUDA), for the
//! pieces whose composite-op versions spend their time in strided copies and allocations:
//! convolutions ([`conv`]), a 2×2 max pool with an argmax gradient ([`pool`]), training-mode
//! batch norm with the closed-form gradient ([`norm`]) and masked cross-entropy fused with its
//! gradient ([`xent`]). Each op checks for contiguous f32 input; callers use candle's composite
//! ops where [`applies`] says no. The convolutions and the pool also take bf16 (mixed
//! precision, [`crate::precision`]): on the CPU the kernels run in f32 on the widened values and
//! the result is rounded back to bf16.

pub mod argmax;
pub mod conv;
pub mod norm;
pub mod pool;
pub mod xent;

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};
use std::borrow::Cow;

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

/// The contiguous values of an f32 or bf16 CPU operand as f32 (borrowed for f32, widened for
/// bf16), or an error naming the op.
pub(crate) fn f32_values<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<Cow<'a, [f32]>> {
    rounded_values(s, l, what, false)
}

/// As [`f32_values`], and with `round` an f32 operand's values rounded to bf16 (an operand of a
/// product computed in bf16: the cast CUDA makes).
pub(crate) fn rounded_values<'a>(s: &'a CpuStorage, l: &Layout, what: &str, round: bool) -> Result<Cow<'a, [f32]>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: contiguous input expected")
    };
    match s {
        CpuStorage::F32(v) if round => Ok(Cow::Owned(v[a..b].iter().map(|&x| to_bf16(x)).collect())),
        CpuStorage::F32(v) => Ok(Cow::Borrowed(&v[a..b])),
        CpuStorage::BF16(v) => Ok(Cow::Owned(v[a..b].iter().map(|x| x.to_f32()).collect())),
        _ => candle_core::bail!("{what}: f32 or bf16 input expected"),
    }
}

/// `x` rounded to the nearest bf16 value (ties to even).
pub(crate) fn to_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// A kernel's f32 result as CPU storage of `dtype`: bf16 rounded to nearest even; f32 as it is,
/// or, for a product computed in bf16 (`low`), rounded to bf16 values (CUDA's bf16 result,
/// widened).
pub(crate) fn storage_of(v: Vec<f32>, low: bool, dtype: DType) -> CpuStorage {
    match dtype {
        DType::BF16 => CpuStorage::BF16(v.into_iter().map(half::bf16::from_f32).collect()),
        _ if low => CpuStorage::F32(v.into_iter().map(to_bf16).collect()),
        _ => CpuStorage::F32(v),
    }
}

/// Whether the custom convolutions and pool run on `x`: f32 or bf16 on the CPU.
pub(crate) fn applies_low(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::BF16)
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
    x.device().is_cpu() && x.dtype() == DType::F32
}
