//! The optimisers' in-place updates on plain `f32` slices, each one parallel pass over a
//! parameter and its buffers (the same formulas, in the same order, as the tensor path in
//! `seg-nn` and the CUDA kernels in `seg-cuda`).

use rayon::prelude::*;

/// Chunk of elements per rayon task.
const CHUNK: usize = 1 << 16;

/// `f(dst[i], a[i], b[i])` for every element, in parallel chunks.
fn each3(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(&mut f32, f32, f32) + Sync) {
    assert!(
        a.len() == dst.len() && b.len() == dst.len(),
        "operands of different sizes"
    );
    dst.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(d, (a, b))| {
            for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
                f(d, a, b);
            }
        });
}

/// SGD's momentum buffer: `buf = m·buf + (g + wd·p)` (with `m = 0` it is the step).
pub fn momentum(buf: &mut [f32], g: &[f32], p: &[f32], m: f32, wd: f32) {
    each3(buf, g, p, |b, g, p| {
        let g = if wd != 0.0 { g + p * wd } else { g };
        *b = if m != 0.0 { *b * m + g } else { g };
    });
}

/// `p = p − lr·buf`.
pub fn descend(p: &mut [f32], buf: &[f32], lr: f32) {
    assert_eq!(p.len(), buf.len(), "operands of different sizes");
    p.par_chunks_mut(CHUNK).zip(buf.par_chunks(CHUNK)).for_each(|(p, b)| {
        for (p, &b) in p.iter_mut().zip(b) {
            *p -= b * lr;
        }
    });
}

/// Adam's moment: `mom = β·mom + rest·h` with `h = g'` (or `g'²` when `square`),
/// `g' = g + wd·p`, and `rest = 1 − β` as the caller computed it.
pub fn moment(mom: &mut [f32], g: &[f32], p: &[f32], beta: f32, rest: f32, wd: f32, square: bool) {
    each3(mom, g, p, |mo, g, p| {
        let g = if wd != 0.0 { g + p * wd } else { g };
        let h = if square { g * g } else { g };
        *mo = *mo * beta + h * rest;
    });
}

/// Adam's step: `p = p − lr · (m / bc1) / (sqrt(v / bc2) + eps)`.
pub fn adam_step(p: &mut [f32], m: &[f32], v: &[f32], lr: f32, bc1: f32, bc2: f32, eps: f32) {
    each3(p, m, v, |p, m, v| {
        let denom = (v / bc2).sqrt() + eps;
        *p -= (m / bc1) / denom * lr;
    });
}
