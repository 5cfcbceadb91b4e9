//! Convolutions on plain `f32` slices: forward, input gradient and weight gradient each run as
//! tiled im2col/col2im plus one matrix product per tile ([`crate::matmul`]), so no full-size
//! im2col buffer is ever built; 3×3 stride-1 layers go to [`crate::winograd`] where it applies.
//!
//! A tile is a band of output rows whose column buffer stays under a few MiB: the band is
//! unfolded (in parallel over input channels), multiplied straight into the output (or into the
//! weight gradient, or folded back into the input gradient), and the buffer is reused for the
//! next band. 1×1 stride-1 convolutions skip the unfolding. A transposed convolution is the
//! input gradient's kernel with the roles swapped (the caller decides).
//!
//! Layouts: `x` is `N×C×H×W`, `w` is `Co×C×kh×kw`, `y` is `N×Co×Ho×Wo`, all row-major.

use crate::geom::Geom;
use crate::matmul::{extent, matmul, product, sgemm_on, Lhs, COL, ROW};
use crate::sgemm;
use rayon::prelude::*;

/// Largest kernel (elements) the forward pass copies into transposed order.
const WT_MAX: usize = 1 << 24;

/// The unfolded input of output rows `oy0..` of one image, packed for the product straight
/// from the image: the forward never writes the column buffer (B = im2col(x), `K × t`).
struct Unfolded<'a> {
    g: &'a Geom,
    x: &'a [f32],
    oy0: usize,
}

impl Unfolded<'_> {
    /// `row[..]` = B(kidx, j ..) for kidx = (c, ky, kx): unfolded row `kidx` at band pixels
    /// `j ..` (any geometry; may cross output rows).
    fn fill(&self, (c, ky, kx): (usize, usize, usize), j: usize, row: &mut [f32]) {
        let g = self.g;
        let img = &self.x[c * g.h * g.w..(c + 1) * g.h * g.w];
        let off = (kx * g.dil) as isize - g.pad as isize;
        let mut done = 0;
        while done < row.len() {
            let jj = j + done;
            let (oy, ox) = (self.oy0 + jj / g.wo, jj % g.wo);
            let run = (g.wo - ox).min(row.len() - done);
            let iy = (oy * g.stride + ky * g.dil) as isize - g.pad as isize;
            unfold_run(g, img, iy, ox, off, &mut row[done..done + run]);
            done += run;
        }
    }
}

/// Output columns `ox .. ox + dst.len()` of one unfolded row: source row `iy` of `img` at
/// columns `ox·stride + off`, zero where that falls outside the image.
fn unfold_run(g: &Geom, img: &[f32], iy: isize, ox: usize, off: isize, dst: &mut [f32]) {
    if iy < 0 || iy >= g.h as isize {
        dst.fill(0.0);
        return;
    }
    let src = &img[iy as usize * g.w..(iy as usize + 1) * g.w];
    let run = dst.len();
    if g.stride == 1 {
        // Valid: 0 <= ox + i + off < W.
        let lo = (-(ox as isize) - off).clamp(0, run as isize) as usize;
        let hi = (g.w as isize - ox as isize - off).clamp(lo as isize, run as isize) as usize;
        dst[..lo].fill(0.0);
        dst[hi..].fill(0.0);
        if hi > lo {
            let s0 = (ox as isize + lo as isize + off) as usize;
            dst[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
        }
    } else {
        for (i, d) in dst.iter_mut().enumerate() {
            let ix = ((ox + i) * g.stride) as isize + off;
            *d = if ix >= 0 && ix < g.w as isize {
                src[ix as usize]
            } else {
                0.0
            };
        }
    }
}

/// A sliver's first pixel, its columns, and its (output row, column) when it lies inside one
/// output row.
type Sliver = (usize, usize, Option<(usize, usize)>);

impl sgemm::PackB for Unfolded<'_> {
    fn pack(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
        const S: usize = sgemm::SLIVER;
        let g = self.g;
        let slivers = nc.div_ceil(S);
        // Per sliver: first pixel, columns, and (output row, column) when the sliver lies
        // inside one output row (the common case: widths that are multiples of S).
        let info: Vec<Sliver> = (0..slivers)
            .map(|s| {
                let js = j0 + s * S;
                let cols = S.min(j0 + nc - js);
                let (oy, ox) = (self.oy0 + js / g.wo, js % g.wo);
                (js, cols, (cols == S && ox + S <= g.wo).then_some((oy, ox)))
            })
            .collect();
        for p in 0..kc {
            let kidx = p0 + p;
            let (c, r) = (kidx / (g.kh * g.kw), kidx % (g.kh * g.kw));
            let (ky, kx) = (r / g.kw, r % g.kw);
            let img = &self.x[c * g.h * g.w..(c + 1) * g.h * g.w];
            let off = (kx * g.dil) as isize - g.pad as isize;
            for (s, &(js, cols, whole)) in info.iter().enumerate() {
                let row = &mut out[s * S * kc + p * S..][..S];
                match whole {
                    Some((oy, ox)) => {
                        let iy = (oy * g.stride + ky * g.dil) as isize - g.pad as isize;
                        unfold_run(g, img, iy, ox, off, row);
                    }
                    None => {
                        self.fill((c, ky, kx), js, &mut row[..cols]);
                        row[cols..].fill(0.0);
                    }
                }
            }
        }
    }
}

/// Unfolds output rows `oy0..oy1` of image `x` (C×H×W) into `cols` (K × rows·Wo).
fn im2col(g: &Geom, x: &[f32], oy0: usize, oy1: usize, cols: &mut [f32]) {
    let t = (oy1 - oy0) * g.wo;
    let hw = g.h * g.w;
    cols[..g.k() * t]
        .par_chunks_mut(g.kh * g.kw * t)
        .enumerate()
        .for_each(|(c, block)| {
            let img = &x[c * hw..(c + 1) * hw];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = &mut block[(ky * g.kw + kx) * t..(ky * g.kw + kx + 1) * t];
                    let off = (kx * g.dil) as isize - g.pad as isize;
                    for (r, oy) in (oy0..oy1).enumerate() {
                        let iy = (oy * g.stride + ky * g.dil) as isize - g.pad as isize;
                        unfold_run(g, img, iy, 0, off, &mut row[r * g.wo..(r + 1) * g.wo]);
                    }
                }
            }
        });
}

/// The adjoint of [`im2col`]: adds `cols` (K × rows·Wo) for output rows `oy0..oy1` into `dx`.
fn col2im(g: &Geom, cols: &[f32], oy0: usize, oy1: usize, dx: &mut [f32]) {
    let t = (oy1 - oy0) * g.wo;
    let hw = g.h * g.w;
    dx.par_chunks_mut(hw)
        .zip(cols[..g.k() * t].par_chunks(g.kh * g.kw * t))
        .for_each(|(img, block)| {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = &block[(ky * g.kw + kx) * t..(ky * g.kw + kx + 1) * t];
                    let off = (kx * g.dil) as isize - g.pad as isize;
                    for (r, oy) in (oy0..oy1).enumerate() {
                        let iy = (oy * g.stride + ky * g.dil) as isize - g.pad as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let src = &row[r * g.wo..(r + 1) * g.wo];
                        let dst = &mut img[iy as usize * g.w..(iy as usize + 1) * g.w];
                        if g.stride == 1 {
                            let lo = (-off).clamp(0, g.wo as isize) as usize;
                            let hi = (g.w as isize - off).clamp(lo as isize, g.wo as isize) as usize;
                            if hi == lo {
                                continue;
                            }
                            let d0 = (lo as isize + off) as usize;
                            for (d, s) in dst[d0..d0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                                *d += s;
                            }
                        } else {
                            for (ox, &v) in src.iter().enumerate() {
                                let ix = (ox * g.stride) as isize + off;
                                if ix >= 0 && ix < g.w as isize {
                                    dst[ix as usize] += v;
                                }
                            }
                        }
                    }
                }
            }
        });
}

/// Bands of output rows.
fn bands(g: &Geom) -> impl Iterator<Item = (usize, usize)> {
    let b = g.band();
    let ho = g.ho;
    (0..ho).step_by(b).map(move |a| (a, (a + b).min(ho)))
}

/// `y = conv(x, w)`.
pub fn forward(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    if crate::winograd::applies(g) {
        return crate::winograd::forward(g, x, w, None);
    }
    let (k, p) = (g.k(), g.ho * g.wo);
    let mut y = vec![0f32; g.n * g.y_len()];
    let packed = Lhs::new(g.co, k, w, ROW(k), g.several_products());
    let unfold = !g.pointwise() && !packed.packed();
    let mut cols = vec![0f32; if unfold { k * g.band() * g.wo } else { 0 }];
    // gemm runs this product 1.2-1.4x faster with the kernel stored transposed (measured on an
    // AVX-512 Xeon); the copy is skipped for huge kernels (fc6) where it would cost more, and
    // where sgemm runs (it packs the kernel from either layout).
    let wt;
    let lhs = if packed.packed() || g.pointwise() || g.co * k > WT_MAX || sgemm_on() {
        packed
    } else {
        wt = transposed(w, g.co, k);
        Lhs::Plain(&wt, COL(g.co))
    };
    for (yi, xi) in y.chunks_mut(g.y_len()).zip(x.chunks(g.x_len())) {
        if g.pointwise() {
            product(g.co, p, k, yi, ROW(p), false, &lhs, xi, ROW(p));
            continue;
        }
        for (a, b) in bands(g) {
            let t = (b - a) * g.wo;
            if let Lhs::Packed(pa) = &lhs {
                // The unfolded band is packed straight from the image.
                let dst = &mut yi[a * g.wo..];
                assert!(extent(g.co, t, ROW(p)) <= dst.len());
                let src = Unfolded { g, x: xi, oy0: a };
                // SAFETY: the assert keeps C inside `dst`.
                unsafe { sgemm::sgemm_packed_by(t, dst.as_mut_ptr(), ROW(p), false, pa, &src) };
                continue;
            }
            im2col(g, xi, a, b, &mut cols);
            product(g.co, t, k, &mut yi[a * g.wo..], ROW(p), false, &lhs, &cols, ROW(t));
        }
    }
    y
}

/// `w` (rows × cols, row-major) transposed.
fn transposed(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for (r, row) in w.chunks(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

/// `dx = convᵀ(dy, w)`: the input gradient (and a transposed convolution's forward).
pub fn input_grad(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    if crate::winograd::applies(g) {
        return crate::winograd::input_grad(g, dy, w);
    }
    let (k, p) = (g.k(), g.ho * g.wo);
    let mut dx = vec![0f32; g.n * g.x_len()];
    let mut cols = vec![0f32; if g.pointwise() { 0 } else { k * g.band() * g.wo }];
    let lhs = Lhs::new(k, g.co, w, COL(k), g.several_products());
    for (dxi, dyi) in dx.chunks_mut(g.x_len()).zip(dy.chunks(g.y_len())) {
        if g.pointwise() {
            product(k, p, g.co, dxi, ROW(p), false, &lhs, dyi, ROW(p));
            continue;
        }
        for (a, b) in bands(g) {
            let t = (b - a) * g.wo;
            product(k, t, g.co, &mut cols, ROW(t), false, &lhs, &dyi[a * g.wo..], ROW(p));
            col2im(g, &cols, a, b, dxi);
        }
    }
    dx
}

/// `dw = Σₙ dyₙ · im2col(xₙ)ᵀ`.
pub fn weight_grad(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if crate::winograd::applies(g) {
        return crate::winograd::weight_grad(g, x, dy);
    }
    let (k, p) = (g.k(), g.ho * g.wo);
    let mut dw = vec![0f32; g.co * k];
    let mut cols = vec![0f32; if g.pointwise() { 0 } else { k * g.band() * g.wo }];
    for (xi, dyi) in x.chunks(g.x_len()).zip(dy.chunks(g.y_len())) {
        if g.pointwise() {
            matmul(g.co, k, p, &mut dw, ROW(k), true, dyi, ROW(p), xi, COL(p));
            continue;
        }
        for (a, b) in bands(g) {
            let t = (b - a) * g.wo;
            im2col(g, xi, a, b, &mut cols);
            matmul(
                g.co,
                k,
                t,
                &mut dw,
                ROW(k),
                true,
                &dyi[a * g.wo..],
                ROW(p),
                &cols,
                COL(t),
            );
        }
    }
    dw
}

/// `y = relu(conv(x, w) + b)` with `b` of length `Co` (Winograd applies the bias and ReLU on
/// the way out of its products; otherwise one pass over the convolution's output).
pub fn forward_bias_relu(g: &Geom, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    assert_eq!(b.len(), g.co, "one bias per output channel");
    if crate::winograd::applies(g) {
        return crate::winograd::forward(g, x, w, Some(b));
    }
    let mut y = forward(g, x, w);
    let plane = g.ho * g.wo;
    y.par_chunks_mut(plane).enumerate().for_each(|(i, p)| {
        let bias = b[i % g.co];
        for v in p {
            *v = (*v + bias).max(0.0);
        }
    });
    y
}

/// ReLU's gradient `g = dr · [r > 0]` and the bias gradient `Σ g` per channel, in one pass over
/// `N×C×H×W` (`plane = H·W`). Each plane is summed in 16 interleaved partial sums, then the
/// planes over the batch, always in the same order.
pub fn relu_grad_and_bias_sum(n: usize, c: usize, plane: usize, d: &[f32], r: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert!(
        d.len() == n * c * plane && r.len() == d.len(),
        "gradient, output and shape disagree"
    );
    let plane = plane.max(1);
    let mut g = Vec::with_capacity(d.len());
    let sums: Vec<f32> = g.spare_capacity_mut()[..d.len()]
        .par_chunks_mut(plane)
        .zip(d.par_chunks(plane).zip(r.par_chunks(plane)))
        .map(|(g, (d, r))| {
            // Sixteen running sums (one per lane of a vector), added up at the end: one sum
            // would be a chain of dependent additions the compiler cannot vectorise.
            let mut lanes = [0f32; 16];
            for ((g, d), r) in g.chunks_mut(16).zip(d.chunks(16)).zip(r.chunks(16)) {
                for (i, ((g, &d), &r)) in g.iter_mut().zip(d).zip(r).enumerate() {
                    let v = if r > 0.0 { d } else { 0.0 };
                    g.write(v);
                    lanes[i] += v;
                }
            }
            lanes.iter().sum::<f32>()
        })
        .collect();
    // SAFETY: the chunks above cover all d.len() values and wrote every one.
    unsafe { g.set_len(d.len()) };
    let db: Vec<f32> = (0..c).map(|ci| (0..n).map(|ni| sums[ni * c + ci]).sum()).collect();
    (g, db)
}
