//! Losses: pixel cross-entropy that skips an ignore label (candle's `cross_entropy` takes rank 2
//! only, with no ignore index), and binary cross-entropy on logits.

use candle_core::{DType, Result, Tensor};

/// Mean cross-entropy over the pixels whose label is not `ignore`.
/// `logits`: `N×C×H×W`; `labels`: `N×H×W` (u32). Zero when every pixel is ignored. Computed in
/// f32 (bf16 logits are widened), as every loss here.
pub fn cross_entropy_ignore(logits: &Tensor, labels: &Tensor, ignore: u32) -> Result<Tensor> {
    let logits = &crate::precision::to_f32(logits)?;
    let (n, c, h, w) = logits.dims4()?;
    let (ln, lh, lw) = labels.dims3()?;
    if (ln, lh, lw) != (n, h, w) {
        candle_core::bail!("cross_entropy_ignore: logits {n}x{c}x{h}x{w} and labels {ln}x{lh}x{lw} disagree");
    }
    let labels = labels.to_dtype(DType::U32)?;
    if crate::ops::applies(logits) && labels.device().is_cpu() {
        return crate::ops::xent::cross_entropy(logits, &labels, ignore);
    }
    let valid = labels.ne(ignore)?;
    let safe = valid.where_cond(&labels, &labels.zeros_like()?)?;
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let picked = logp.gather(&safe.unsqueeze(1)?.contiguous()?, 1)?.squeeze(1)?;
    let mask = valid.to_dtype(logits.dtype())?;
    // The count stays on the device: reading it back would stop the host until the forward
    // pass has run, where it could be queueing the backward meanwhile.
    let count = mask.sum_all()?.maximum(1.0)?;
    let total = (picked * &mask)?.sum_all()?;
    (total / count)?.neg()
}

/// Mean binary cross-entropy of `logits` against a constant target in `[0, 1]`, computed stably
/// as `max(x, 0) - x t + log(1 + exp(-|x|))`.
pub fn bce_with_logits(logits: &Tensor, target: f64) -> Result<Tensor> {
    bce_with_logits_per_element(logits, target)?.mean_all()
}

/// Per-element binary cross-entropy of logits against the constant `target` (no reduction).
pub fn bce_with_logits_per_element(logits: &Tensor, target: f64) -> Result<Tensor> {
    let logits = &crate::precision::to_f32(logits)?;
    let soft = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    (logits.relu()? - logits.affine(target, 0.0)?)? + soft
}

/// Softmax over the class dimension (1) with a working gradient (composite ops).
pub fn softmax_channels(logits: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(&crate::precision::to_f32(logits)?, 1)
}
