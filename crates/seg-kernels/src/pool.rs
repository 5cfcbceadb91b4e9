//! 2×2 max pooling with stride 2 on `N×C×H×W` slices (even `H` and `W`); the gradient goes to the
//! first maximum of each window, as PyTorch's does.

use rayon::prelude::*;

/// The pooled `N×C×H/2×W/2` values of `x` (`planes = N·C`).
pub fn max_pool2(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    assert_eq!(x.len(), planes * h * w, "input and shape disagree");
    let (ho, wo) = (h / 2, w / 2);
    let mut out = vec![0f32; planes * ho * wo];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(ho * wo)
        .zip(x.par_chunks(h * w))
        .for_each(|(o, xi)| {
            for oy in 0..ho {
                let r0 = &xi[2 * oy * w..2 * oy * w + w];
                let r1 = &xi[(2 * oy + 1) * w..(2 * oy + 1) * w + w];
                for ox in 0..wo {
                    let m = r0[2 * ox].max(r0[2 * ox + 1]).max(r1[2 * ox]).max(r1[2 * ox + 1]);
                    o[oy * wo + ox] = m;
                }
            }
        });
    out
}

/// The input gradient of [`max_pool2`]: each window's output gradient `g` goes to the window's
/// first maximum in `x`.
pub fn max_pool2_grad(x: &[f32], g: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let (ho, wo) = (h / 2, w / 2);
    assert_eq!(x.len(), planes * h * w, "input and shape disagree");
    assert_eq!(g.len(), planes * ho * wo, "gradient and shape disagree");
    let mut out = vec![0f32; planes * h * w];
    if g.is_empty() {
        return out;
    }
    out.par_chunks_mut(h * w)
        .zip(x.par_chunks(h * w))
        .zip(g.par_chunks(ho * wo))
        .for_each(|((o, xi), gi)| {
            for oy in 0..ho {
                for ox in 0..wo {
                    let idx = [
                        2 * oy * w + 2 * ox,
                        2 * oy * w + 2 * ox + 1,
                        (2 * oy + 1) * w + 2 * ox,
                        (2 * oy + 1) * w + 2 * ox + 1,
                    ];
                    let mut best = idx[0];
                    for &i in &idx[1..] {
                        if xi[i] > xi[best] {
                            best = i;
                        }
                    }
                    o[best] += gi[oy * wo + ox];
                }
            }
        });
    out
}
