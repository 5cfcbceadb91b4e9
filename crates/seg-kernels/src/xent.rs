//! Mean pixel cross-entropy over the channel axis of `N×C×H×W` logits with `N×H×W` labels,
//! skipping the `ignore` label (and any label `≥ C`), and its gradient
//! `(softmax − onehot) · scale` at the valid pixels.

use rayon::prelude::*;

/// Pixel `p` of one image's `c` planes of `hw` logits: the largest logit `m` and `Σ exp(x − m)`
/// (the stable log-sum-exp is `m + ln Σ`).
fn max_and_sum_exp(x: &[f32], c: usize, hw: usize, p: usize) -> (f32, f32) {
    let mut m = f32::NEG_INFINITY;
    for k in 0..c {
        m = m.max(x[k * hw + p]);
    }
    let mut s = 0f32;
    for k in 0..c {
        s += (x[k * hw + p] - m).exp();
    }
    (m, s)
}

/// Per image: (sum of −log p over valid pixels, valid count).
fn image(x: &[f32], lab: &[u32], c: usize, hw: usize, ignore: u32) -> (f64, u64) {
    let (mut total, mut valid) = (0f64, 0u64);
    for (p, &t) in lab.iter().enumerate() {
        if t == ignore || t as usize >= c {
            continue;
        }
        let (m, s) = max_and_sum_exp(x, c, hw, p);
        total += (m + s.ln() - x[t as usize * hw + p]) as f64;
        valid += 1;
    }
    (total, valid)
}

/// Pixels whose label counts (neither `ignore` nor out of range).
pub fn valid(labels: &[u32], c: usize, ignore: u32) -> usize {
    labels.iter().filter(|&&t| t != ignore && (t as usize) < c).count()
}

/// The mean loss over valid pixels (0 where none is valid); `c` channels of `hw` pixels.
pub fn loss(x: &[f32], labels: &[u32], c: usize, hw: usize, ignore: u32) -> f32 {
    assert_eq!(x.len(), labels.len() * c, "logits and labels disagree");
    if labels.is_empty() || c == 0 {
        return 0.0;
    }
    let (total, valid) = x
        .par_chunks(c * hw)
        .zip(labels.par_chunks(hw))
        .map(|(xi, li)| image(xi, li, c, hw, ignore))
        .collect::<Vec<_>>()
        .into_iter()
        // In image order: a parallel reduction's grouping (and so its rounding) would vary.
        .fold((0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    if valid == 0 {
        0.0
    } else {
        (total / valid as f64) as f32
    }
}

/// `(softmax(x) − onehot(label)) · scale` at valid pixels, zero elsewhere.
pub fn grad(x: &[f32], labels: &[u32], c: usize, hw: usize, ignore: u32, scale: f32) -> Vec<f32> {
    assert_eq!(x.len(), labels.len() * c, "logits and labels disagree");
    let mut dx = vec![0f32; x.len()];
    if labels.is_empty() || c == 0 {
        return dx;
    }
    dx.par_chunks_mut(c * hw)
        .zip(x.par_chunks(c * hw))
        .zip(labels.par_chunks(hw))
        .for_each(|((d, xi), li)| {
            for (p, &t) in li.iter().enumerate() {
                if t == ignore || t as usize >= c {
                    continue;
                }
                let (m, s) = max_and_sum_exp(xi, c, hw, p);
                for k in 0..c {
                    d[k * hw + p] = (xi[k * hw + p] - m).exp() / s * scale;
                }
                d[t as usize * hw + p] -= scale;
            }
        });
    dx
}
