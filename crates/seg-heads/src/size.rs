//! Category-size constraints of FCNs in the Wild (Hoffman et al., 2016): per-class pixel-fraction
//! statistics learned from source labels, and the penalty that pushes a target image's predicted
//! class fractions into the source range.

use candle_core::{Result, Tensor, D};
use seg_core::{IGNORE, NUM_CLASSES};

use crate::ops::Presence;

/// How [`SizeConstraints::penalty`] applies the bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizePenalty {
    /// A class counts as present when its predicted fraction exceeds `presence_factor ·
    /// alpha_c` (paper: 0.1).
    pub presence_factor: f64,
    /// Which predicted fraction the presence test reads: the argmax's (hard) or the softmax's.
    pub presence: Presence,
    /// Lower bound `delta_c - lower_slack · (delta_c - alpha_c)`: 0 = the mean, 1 = the 10th
    /// percentile.
    pub lower_slack: f64,
    /// Classes with `alpha_c` above this have their gradient scaled (paper: 0.1)...
    pub large_alpha: f64,
    /// ...by this (paper: 0.1).
    pub large_grad_scale: f64,
}

/// Per-class statistics of the fraction of an image's labelled pixels that belong to the class,
/// over the source images that contain the class: `alpha` = 10th percentile, `delta` = mean,
/// `gamma` = 90th percentile. Classes found in no image have `present = false` and zeros, and
/// are never constrained.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeConstraints {
    pub alpha: [f32; NUM_CLASSES],
    pub delta: [f32; NUM_CLASSES],
    pub gamma: [f32; NUM_CLASSES],
    pub present: [bool; NUM_CLASSES],
}

/// Percentile `q` in `[0, 1]` of sorted, non-empty `v` with linear interpolation between closest
/// ranks (NumPy's default rule).
fn percentile(v: &[f32], q: f64) -> f32 {
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let f = (pos - lo as f64) as f32;
    v[lo] + (v[hi] - v[lo]) * f
}

impl SizeConstraints {
    /// Fraction of the labelled pixels (train ids below `NUM_CLASSES`; the ignore label and any
    /// other value are skipped) in each class; `None` when no pixel is labelled.
    pub fn class_fractions<T: Copy + Into<u32>>(labels: &[T]) -> Option<[f32; NUM_CLASSES]> {
        let mut counts = [0u64; NUM_CLASSES];
        let mut total = 0u64;
        for &l in labels {
            let l: u32 = l.into();
            if l != IGNORE as u32 && (l as usize) < NUM_CLASSES {
                counts[l as usize] += 1;
                total += 1;
            }
        }
        (total > 0).then(|| counts.map(|c| c as f32 / total as f32))
    }

    /// Statistics from per-image class fractions (see [`Self::class_fractions`]). For class `c`
    /// only the images with a non-zero fraction of `c` count.
    pub fn from_fractions(per_image: &[[f32; NUM_CLASSES]]) -> Self {
        let mut s = Self {
            alpha: [0.0; NUM_CLASSES],
            delta: [0.0; NUM_CLASSES],
            gamma: [0.0; NUM_CLASSES],
            present: [false; NUM_CLASSES],
        };
        for c in 0..NUM_CLASSES {
            let mut v: Vec<f32> = per_image
                .iter()
                .map(|f| f[c])
                .filter(|&x| x > 0.0 && x.is_finite())
                .collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f32::total_cmp);
            s.alpha[c] = percentile(&v, 0.1);
            s.delta[c] = (v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64) as f32;
            s.gamma[c] = percentile(&v, 0.9);
            s.present[c] = true;
        }
        s
    }

    /// The size penalty on target logits `N×C×H×W` (`C = NUM_CLASSES`), summed over classes and
    /// averaged over images.
    ///
    /// Per image, the soft predicted fraction of class `c` is the mean of its softmax over the
    /// pixels. A class counts as present when its predicted fraction (`opts.presence`: of the
    /// argmax map or of the softmax) exceeds `presence_factor · alpha_c`; a present class pays
    /// `relu(lower_c - frac) + relu(frac - gamma_c)` on the soft fraction, with `lower_c =
    /// delta_c - lower_slack · (delta_c - alpha_c)`. Classes with `alpha_c > large_alpha` have
    /// their gradient scaled by `large_grad_scale`; the value is unscaled.
    ///
    /// This is the accepted simplification of the paper's constrained multiple-instance
    /// learning, which instead solves for a latent target label map satisfying the same bounds
    /// (CCNN style) and trains on it with cross-entropy.
    pub fn penalty(&self, logits: &Tensor, opts: &SizePenalty) -> Result<Tensor> {
        let (n, c, _, _) = logits.dims4()?;
        if c != NUM_CLASSES {
            candle_core::bail!("size constraints cover {NUM_CLASSES} classes, logits have {c}");
        }
        let dev = logits.device();
        let dt = logits.dtype();
        let row = |v: Vec<f32>| Tensor::from_vec(v, (1, c), dev)?.to_dtype(dt);
        let prob = seg_nn::loss::softmax_channels(logits)?;
        let frac = prob.flatten_from(2)?.mean(D::Minus1)?; // N × C
        let seen = match opts.presence {
            Presence::Soft => frac.detach(),
            Presence::Argmax => opts.presence.of(logits)?.flatten_from(2)?.mean(D::Minus1)?,
        };
        let scale = row(self
            .alpha
            .iter()
            .map(|&a| {
                if a as f64 > opts.large_alpha {
                    opts.large_grad_scale as f32
                } else {
                    1.0
                }
            })
            .collect())?;
        let frac_scaled = (frac.broadcast_mul(&scale)? + frac.detach().broadcast_mul(&scale.affine(-1.0, 1.0)?)?)?;
        let threshold = row(self
            .alpha
            .iter()
            .map(|&a| (a as f64 * opts.presence_factor) as f32)
            .collect())?;
        let known = row(self.present.iter().map(|&p| if p { 1.0 } else { 0.0 }).collect())?;
        let present = seen.broadcast_gt(&threshold)?.to_dtype(dt)?.broadcast_mul(&known)?;
        let slack = opts.lower_slack as f32;
        let lower = row(self
            .delta
            .iter()
            .zip(&self.alpha)
            .map(|(&d, &a)| d - slack * (d - a))
            .collect())?;
        let gamma = row(self.gamma.to_vec())?;
        let below = frac_scaled.broadcast_sub(&lower)?.neg()?.relu()?;
        let above = frac_scaled.broadcast_sub(&gamma)?.relu()?;
        ((below + above)? * present)?
            .sum_all()?
            .affine(1.0 / n.max(1) as f64, 0.0)
    }
}
