//! The MultiBox loss (Liu et al. 2016, as amdegroot's and torchvision's SSD compute it), all on
//! the device: no value is read back before the backward pass.
//!
//! With `pos` the priors matched to a ground truth and `N` their count over the batch
//! (at least 1):
//! - `conf = (Σ_{pos ∪ neg} CE) / N`, where per image `neg` are the `3·|pos|` background priors
//!   of highest cross-entropy (hard-negative mining; ranks from two arg-sorts on the device);
//! - `loc = (Σ_pos smooth_L1(pred − target)) / N`, summed over the four offsets.

use candle_core::{DType, Result, Tensor, D};
use seg_core::DetTargets;

/// Negatives kept per positive.
pub const NEG_POS_RATIO: f64 = 3.0;

/// `(conf, loc)` for predictions `loc` (`N×P×4`) and `conf` (`N×P×C`, logits) against
/// matched targets.
pub fn multibox_loss(loc: &Tensor, conf: &Tensor, t: &DetTargets) -> Result<(Tensor, Tensor)> {
    let (_, p, _) = conf.dims3()?;
    let pos = t.classes.gt(0u32)?.to_dtype(DType::F32)?; // N×P
    let n_pos = pos.sum_all()?.clamp(1f32, f32::MAX)?;
    let logp = candle_nn::ops::log_softmax(conf, D::Minus1)?;
    let ce = logp
        .gather(&t.classes.unsqueeze(2)?.contiguous()?, 2)?
        .squeeze(2)?
        .neg()?; // N×P
                 // Hard negatives: rank the background priors by their (detached) loss, per image.
    let mining = (ce.detach() * (1.0 - &pos)?)?;
    let order = mining.arg_sort_last_dim(false)?;
    let rank = order.arg_sort_last_dim(true)?.to_dtype(DType::F32)?;
    let n_neg = (pos.sum_keepdim(1)? * NEG_POS_RATIO)?.clamp(0f32, (p - 1) as f32)?; // N×1
    let neg = rank.broadcast_lt(&n_neg)?.to_dtype(DType::F32)?;
    let chosen = (&pos + neg)?.clamp(0f32, 1f32)?;
    let conf_loss = (ce * chosen)?.sum_all()?.div(&n_pos)?;
    let d = (loc - &t.offsets)?;
    let a = d.abs()?;
    let q = a.clamp(0f32, 1f32)?;
    let sl1 = ((q.sqr()? * 0.5)? + (a - &q)?)?; // 0.5 d² below 1, |d| − 0.5 above
    let loc_loss = sl1.sum(D::Minus1)?.mul(&pos)?.sum_all()?.div(&n_pos)?;
    Ok((conf_loss, loc_loss))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The loss computed with plain loops, the reference's steps one by one.
    fn reference(loc: &[f32], conf: &[f32], cls: &[u32], off: &[f32], n: usize, p: usize, c: usize) -> (f32, f32) {
        let mut ce = vec![0f32; n * p];
        for i in 0..n * p {
            let row = &conf[i * c..(i + 1) * c];
            let m = row.iter().cloned().fold(f32::MIN, f32::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
            ce[i] = lse - row[cls[i] as usize];
        }
        let n_pos = cls.iter().filter(|&&k| k > 0).count().max(1) as f32;
        let (mut conf_sum, mut loc_sum) = (0f32, 0f32);
        for b in 0..n {
            let idx: Vec<usize> = (b * p..(b + 1) * p).collect();
            let np = idx.iter().filter(|&&i| cls[i] > 0).count();
            let mut negs: Vec<usize> = idx.iter().copied().filter(|&i| cls[i] == 0).collect();
            negs.sort_by(|&x, &y| ce[y].total_cmp(&ce[x]));
            let k = (3 * np).min(p - 1);
            for &i in &idx {
                if cls[i] > 0 {
                    conf_sum += ce[i];
                    for j in 0..4 {
                        let d = (loc[i * 4 + j] - off[i * 4 + j]).abs();
                        loc_sum += if d < 1.0 { 0.5 * d * d } else { d - 0.5 };
                    }
                }
            }
            for &i in negs.iter().take(k) {
                conf_sum += ce[i];
            }
        }
        (conf_sum / n_pos, loc_sum / n_pos)
    }

    #[test]
    fn matches_the_reference_on_fixed_tensors() {
        let (n, p, c) = (2usize, 9usize, 3usize);
        let mut rng = seg_core::Rng::new(7);
        let conf: Vec<f32> = (0..n * p * c).map(|_| rng.normal() * 2.0).collect();
        let loc: Vec<f32> = (0..n * p * 4).map(|_| rng.normal() * 1.5).collect();
        let off: Vec<f32> = (0..n * p * 4).map(|_| rng.normal()).collect();
        // Image 0: two positives (7 negatives, 6 mined); image 1: one positive (3 mined).
        let cls: Vec<u32> = vec![0, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        let dev = Device::Cpu;
        let t = DetTargets {
            classes: Tensor::from_vec(cls.clone(), (n, p), &dev).unwrap(),
            offsets: Tensor::from_vec(off.clone(), (n, p, 4), &dev).unwrap(),
        };
        let lt = Tensor::from_vec(loc.clone(), (n, p, 4), &dev).unwrap();
        let ct = Tensor::from_vec(conf.clone(), (n, p, c), &dev).unwrap();
        let (cl, ll) = multibox_loss(&lt, &ct, &t).unwrap();
        let (rc, rl) = reference(&loc, &conf, &cls, &off, n, p, c);
        let (cl, ll) = (cl.to_scalar::<f32>().unwrap(), ll.to_scalar::<f32>().unwrap());
        assert!((cl - rc).abs() < 1e-5 * rc.abs().max(1.0), "conf {cl} vs {rc}");
        assert!((ll - rl).abs() < 1e-5 * rl.abs().max(1.0), "loc {ll} vs {rl}");
    }

    #[test]
    fn hand_values_and_no_positives() {
        // One image, two priors, two classes; prior 0 positive (class 1) with logits (0, 0):
        // CE = ln 2; prior 1 background, mined (3·1 ≥ 1 negative), logits (0, ln 3): CE = ln 4.
        // loc: offsets 0, predictions (0.5, 2, 0, 0) → 0.125 + 1.5 = 1.625.
        let dev = Device::Cpu;
        let t = DetTargets {
            classes: Tensor::new(&[[1u32, 0]], &dev).unwrap(),
            offsets: Tensor::zeros((1, 2, 4), DType::F32, &dev).unwrap(),
        };
        let conf = Tensor::new(&[[[0f32, 0.0], [0.0, 3f32.ln()]]], &dev).unwrap();
        let loc = Tensor::new(&[[[0.5f32, 2.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]], &dev).unwrap();
        let (c, l) = multibox_loss(&loc, &conf, &t).unwrap();
        assert!((c.to_scalar::<f32>().unwrap() - (2f32.ln() + 4f32.ln())).abs() < 1e-6);
        assert!((l.to_scalar::<f32>().unwrap() - 1.625).abs() < 1e-6);
        // No positives: nothing mined, both terms 0 (N clamped to 1, no division by zero).
        let t0 = DetTargets {
            classes: Tensor::new(&[[0u32, 0]], &dev).unwrap(),
            offsets: t.offsets.clone(),
        };
        let (c, l) = multibox_loss(&loc, &conf, &t0).unwrap();
        assert_eq!(
            (c.to_scalar::<f32>().unwrap(), l.to_scalar::<f32>().unwrap()),
            (0.0, 0.0)
        );
    }
}
