//! Tensor helpers shared by the heads: one-hot labels, average pooling of full-resolution maps
//! down to a feature grid, binary cross-entropy against a constant, and presence-weighted
//! class-wise losses.

use candle_core::{DType, Result, Tensor, D};
use seg_core::Rng;

/// How a head reads a class's presence off a (detached) target prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Presence {
    /// The softmax probabilities (the papers).
    Soft,
    /// The one-hot of the predicted class: a class is present only where it is predicted.
    Argmax,
}

impl Presence {
    /// Per-pixel presence `N×C×H×W` from logits `N×C×H×W` (no gradient).
    pub fn of(self, logits: &Tensor) -> Result<Tensor> {
        let logits = logits.detach();
        match self {
            Presence::Soft => seg_nn::loss::softmax_channels(&logits),
            Presence::Argmax => one_hot(&logits.argmax(1)?, logits.dim(1)?, logits.dtype()),
        }
    }
}

/// `N×H×W` integer labels to an `N×classes×H×W` one-hot map in `dtype`; pixels with a label
/// outside `0..classes` (the ignore label included) are all zeros.
pub fn one_hot(labels: &Tensor, classes: usize, dtype: DType) -> Result<Tensor> {
    let labels = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    let ids = Tensor::arange(0u32, classes as u32, labels.device())?.reshape((1, classes, 1, 1))?;
    labels.broadcast_eq(&ids)?.to_dtype(dtype)
}

/// Average-pools `N×C×H×W` down to `h × w`: exact block means (reshape + mean) when `H` and `W`
/// are multiples of `h` and `w`, otherwise a bilinear resize (a fallback for models whose grid
/// is not an exact division of the input).
pub fn pool_to(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    reduce_blocks_to(x, h, w, |t, d| t.mean(d))
}

/// 2×2-style max pooling by an integer factor (reshape + max: gradients go to the maximum
/// unscaled), or a bilinear resize when the sizes do not divide.
pub fn max_pool_to(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    reduce_blocks_to(x, h, w, |t, d| t.max(d))
}

/// `N×C×H×W` to `h × w` by `reduce` over each `H/h × W/w` block (the block's columns, then its
/// rows), or a bilinear resize when the sizes do not divide; unchanged at the same size.
fn reduce_blocks_to(
    x: &Tensor,
    h: usize,
    w: usize,
    reduce: impl Fn(&Tensor, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    let (n, c, hi, wi) = x.dims4()?;
    if (hi, wi) == (h, w) {
        return Ok(x.clone());
    }
    if h > 0 && w > 0 && hi % h == 0 && wi % w == 0 {
        let (sh, sw) = (hi / h, wi / w);
        reduce(&reduce(&x.contiguous()?.reshape((n, c, h, sh, w, sw))?, 5)?, 3)
    } else {
        seg_nn::resize_bilinear(x, h, w)
    }
}

/// Class-wise loss weighted by soft presence: for each image `n` and class `c`,
/// `sum_cells w · bce(x, target) / sum_cells w`, averaged over the `(n, c)` pairs whose mean
/// weight per cell is at least `min_presence` and above 0 (the others are ignored, so that a
/// threshold of 0 does not count absent classes in the mean; zero when none is left).
/// `logits`, `weights`: `N×C×h×w`; `weights` should carry no gradient.
pub fn presence_weighted_bce(logits: &Tensor, weights: &Tensor, target: f64, min_presence: f64) -> Result<Tensor> {
    let (_, _, h, w) = logits.dims4()?;
    let weights = weights.detach();
    let per = seg_nn::bce_with_logits_per_element(logits, target)?;
    let num = (per * &weights)?.sum(D::Minus1)?.sum(D::Minus1)?; // N × C
    let den = weights.sum(D::Minus1)?.sum(D::Minus1)?;
    let present = (den
        .ge(min_presence.max(0.0) * (h * w) as f64)?
        .to_dtype(logits.dtype())?
        * den.gt(0.0)?.to_dtype(logits.dtype())?)?;
    // On the device: no read-back (and wait for the GPU) in the middle of a step.
    let count = present.sum_all()?.maximum(1.0)?;
    let per_pair = (num / den.clamp(1e-12, f64::INFINITY)?)?;
    (per_pair * present)?.sum_all()? / count
}

/// The random stream of one use site in one step: independent of every other stream, so a
/// resumed run draws exactly the same dropout masks and noise.
pub(crate) fn stream(seed: u64, step: usize, site: u64) -> Rng {
    Rng::derive(seed, &[step as u64, site])
}
