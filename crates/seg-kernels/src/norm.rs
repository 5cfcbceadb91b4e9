//! Training-mode batch normalisation on `N×C×H×W` slices, fused with its affine part:
//! `y = γ (x − mean) / sqrt(var + eps) + β` over (N, H, W) per channel, and the closed-form
//! gradients `dx = γ (g − mean(g) − x̂ mean(g x̂)) / sqrt(var + eps)`, `dγ = Σ g x̂`, `dβ = Σ g`.
//! Sums run per plane in f32 and across planes in f64, always in the same order.

use rayon::prelude::*;

/// The shape `N×C×(H·W)` of a batch-norm operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl Dims {
    fn len(&self) -> usize {
        self.n * self.c * self.hw
    }
}

/// Per-channel mean and biased variance.
pub fn channel_stats(x: &[f32], d: Dims) -> Vec<(f64, f64)> {
    assert_eq!(x.len(), d.len(), "input and shape disagree");
    let Dims { n, c, hw } = d;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s, mut s2) = (0f64, 0f64);
            for b in 0..n {
                let p = &x[(b * c + ch) * hw..(b * c + ch + 1) * hw];
                let (mut a, mut a2) = (0f32, 0f32);
                for &v in p {
                    a += v;
                    a2 += v * v;
                }
                s += a as f64;
                s2 += a2 as f64;
            }
            let cnt = (n * hw) as f64;
            let mean = s / cnt;
            (mean, (s2 / cnt - mean * mean).max(0.0))
        })
        .collect()
}

/// The normalised, scaled and shifted batch.
pub fn forward(x: &[f32], d: Dims, gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    assert!(
        gamma.len() == d.c && beta.len() == d.c,
        "one weight and bias per channel"
    );
    let (c, hw) = (d.c, d.hw.max(1));
    let stats = channel_stats(x, d);
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(i, (o, xi))| {
            let ch = i % c;
            let (mean, var) = stats[ch];
            let scale = gamma[ch] / (var as f32 + eps).sqrt();
            let shift = beta[ch] - mean as f32 * scale;
            for (d, &v) in o.iter_mut().zip(xi) {
                *d = v * scale + shift;
            }
        });
    out
}

/// The gradients `(dx, dγ, dβ)` of [`forward`] for the output gradient `g`.
pub fn backward(x: &[f32], g: &[f32], d: Dims, gamma: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(g.len(), x.len(), "gradient and input disagree");
    assert_eq!(gamma.len(), d.c, "one weight per channel");
    let Dims { n, c, hw } = d;
    let stats = channel_stats(x, d);
    let inv: Vec<f32> = stats.iter().map(|&(_, v)| 1.0 / (v as f32 + eps).sqrt()).collect();
    let cnt = (n * hw) as f64;
    // Per channel: Σ g and Σ g x̂.
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let m = stats[ch].0 as f32;
            let (mut sg, mut sgx) = (0f64, 0f64);
            for b in 0..n {
                let r = (b * c + ch) * hw..(b * c + ch + 1) * hw;
                let (mut a, mut a2) = (0f32, 0f32);
                for (&gv, &xv) in g[r.clone()].iter().zip(&x[r]) {
                    a += gv;
                    a2 += gv * (xv - m);
                }
                sg += a as f64;
                sgx += a2 as f64 * inv[ch] as f64;
            }
            (sg, sgx)
        })
        .collect();
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(hw.max(1)).enumerate().for_each(|(i, o)| {
        let ch = i % c;
        let (sg, sgx) = sums[ch];
        let (mg, mgx) = ((sg / cnt) as f32, (sgx / cnt) as f32);
        let (m, iv, gm) = (stats[ch].0 as f32, inv[ch], gamma[ch]);
        let r = i * hw..(i + 1) * hw;
        for ((d, &gv), &xv) in o.iter_mut().zip(&g[r.clone()]).zip(&x[r]) {
            let xh = (xv - m) * iv;
            *d = gm * iv * (gv - mg - xh * mgx);
        }
    });
    let dgamma = sums.iter().map(|s| s.1 as f32).collect();
    let dbeta = sums.iter().map(|s| s.0 as f32).collect();
    (dx, dgamma, dbeta)
}
