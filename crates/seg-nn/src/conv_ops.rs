//! Convolutions as candle custom ops: forward, input gradient and weight gradient each run as
//! tiled im2col/col2im plus one matrix product per tile (`crate::sgemm` or the `gemm` crate),
//! so no step of training goes through candle's naive `conv_transpose2d` loop and no full-size
//! im2col buffer is ever built.
//!
//! A tile is a band of output rows whose column buffer stays under [`TILE_BYTES`]: the band is
//! unfolded (in parallel over input channels), multiplied straight into the output (or into the
//! weight gradient, or folded back into the input gradient), and the buffer is reused for the
//! next band. 1×1 stride-1 convolutions skip the unfolding. Transposed convolutions (FCN's
//! learned upsampling) are the same three kernels with their roles swapped.
//!
//! On CUDA each piece (and the fused bias + ReLU and its gradient) is a cuDNN call
//! (`crate::cudnn`); where cuDNN is missing, candle's own tensor ops compute it ([`composite`]:
//! im2col + cuBLAS, the input gradient of a stride-1 conv as a forward conv with the flipped,
//! transposed kernel).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Upper bound on one tile's column buffer (bytes). Chosen to stay inside the last-level cache.
const TILE_BYTES: usize = 4 << 20;

/// Fewest output pixels per tile (a product with a shorter side runs at a fraction of the speed).
const MIN_TILE_COLS: usize = 512;

/// Largest kernel (elements) the forward pass copies into transposed order.
const WT_MAX: usize = 1 << 24;

/// Geometry of a convolution `x: N×C×H×W`, `w: Co×C×kh×kw` → `y: N×Co×Ho×Wo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub dil: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geom {
    /// The geometry of `conv2d(x, w)`; errors on channel mismatch or an input smaller than the
    /// dilated kernel.
    pub fn conv(
        x: (usize, usize, usize, usize),
        k: (usize, usize, usize, usize),
        stride: usize,
        pad: usize,
        dil: usize,
    ) -> Result<Self> {
        let (n, c, h, w) = x;
        let (co, ci, kh, kw) = k;
        if ci != c {
            candle_core::bail!("conv2d: input has {c} channels, the kernel expects {ci}");
        }
        if stride == 0 || dil == 0 || kh == 0 || kw == 0 {
            candle_core::bail!("conv2d: stride, dilation and kernel size must be positive");
        }
        if n == 0 || c == 0 || h == 0 || w == 0 || co == 0 {
            candle_core::bail!("conv2d: empty input {n}x{c}x{h}x{w} or kernel with {co} outputs");
        }
        let (eh, ew) = (dil * (kh - 1) + 1, dil * (kw - 1) + 1);
        if h + 2 * pad < eh || w + 2 * pad < ew {
            candle_core::bail!("conv2d: input {h}x{w} (padding {pad}) is smaller than the dilated {eh}x{ew} kernel");
        }
        Ok(Self {
            n,
            c,
            h,
            w,
            co,
            kh,
            kw,
            stride,
            pad,
            dil,
            ho: (h + 2 * pad - eh) / stride + 1,
            wo: (w + 2 * pad - ew) / stride + 1,
        })
    }

    /// Rows of the unfolded input: `C·kh·kw`, ordered (c, ky, kx) like the kernel's memory.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Output rows per tile: as many as fit [`TILE_BYTES`], but at least [`MIN_TILE_COLS`]
    /// columns, below which the products lose most of their speed.
    fn band(&self) -> usize {
        let by_bytes = TILE_BYTES / (4 * self.k() * self.wo).max(1);
        let by_cols = MIN_TILE_COLS.div_ceil(self.wo.max(1));
        by_bytes.max(by_cols).clamp(1, self.ho.max(1))
    }

    /// Whether one op makes more than one product with the same kernel (several bands or
    /// images), so that packing the kernel once pays.
    fn several_products(&self) -> bool {
        self.n * self.ho.div_ceil(self.band()) > 1
    }

    fn x_len(&self) -> usize {
        self.c * self.h * self.w
    }

    fn y_len(&self) -> usize {
        self.co * self.ho * self.wo
    }
}

fn threads() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// A row-major matrix view: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct Mat {
    rs: isize,
    cs: isize,
}

/// Row-major with `cols` columns.
#[allow(non_snake_case)]
fn ROW(cols: usize) -> Mat {
    Mat {
        rs: cols as isize,
        cs: 1,
    }
}

/// The transpose of a row-major matrix with `rows` columns.
#[allow(non_snake_case)]
fn COL(rows: usize) -> Mat {
    Mat {
        rs: 1,
        cs: rows as isize,
    }
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`, with bounds checked against the slices.
#[allow(clippy::too_many_arguments)]
fn matmul(m: usize, n: usize, k: usize, dst: &mut [f32], d: Mat, acc: bool, lhs: &[f32], a: Mat, rhs: &[f32], b: Mat) {
    assert!(extent(m, n, d) <= dst.len());
    assert!(extent(m, k, a) <= lhs.len());
    assert!(extent(k, n, b) <= rhs.len());
    // `Geom::conv` refuses empty shapes, so every product here has a non-empty reduction.
    debug_assert!(m > 0 && n > 0 && k > 0);
    if prefer_sgemm(m, a) {
        // SAFETY: as below; `prefer_sgemm` checked for AVX-512.
        unsafe {
            crate::sgemm::sgemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                view(d),
                acc,
                lhs.as_ptr(),
                view(a),
                rhs.as_ptr(),
                view(b),
            );
        }
        return;
    }
    // SAFETY: the asserts above keep every addressed element inside its slice, strides are
    // positive, and `dst` does not alias `lhs` or `rhs` (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            d.cs,
            d.rs,
            acc,
            lhs.as_ptr(),
            a.cs,
            a.rs,
            rhs.as_ptr(),
            b.cs,
            b.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            threads(),
        )
    }
}

/// Which products go to [`crate::sgemm`] rather than `gemm`: those whose left operand is stored
/// by columns (every input gradient), which `gemm` runs at about half speed, and those with
/// fewer than 1024 rows (the weight gradients of conv1-conv5, 10-40% faster here). Measured
/// side by side at VGG16-FCN8s's shapes (`cargo run --release -p seg-nn --example
/// sgemm_shapes`, `--example conv_gflops` with `SEG_SGEMM=0` and without): `gemm` stays
/// ahead on fc6/fc7's large row-major products. `SEG_SGEMM=0` sends everything to `gemm`.
fn prefer_sgemm(m: usize, a: Mat) -> bool {
    sgemm_on() && (a.rs == 1 || m < 1024)
}

fn sgemm_on() -> bool {
    crate::sgemm::available() && crate::settings::sgemm()
}

fn view(m: Mat) -> crate::sgemm::View {
    crate::sgemm::View { rs: m.rs, cs: m.cs }
}

/// Index one past the last element a `rows × cols` view addresses.
fn extent(rows: usize, cols: usize, v: Mat) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        ((rows as isize - 1) * v.rs + (cols as isize - 1) * v.cs + 1) as usize
    }
}

/// The left operand of a convolution's products: as stored, or packed once into
/// [`crate::sgemm`]'s layout when several products (bands, images) share it.
enum Lhs<'a> {
    Plain(&'a [f32], Mat),
    Packed(crate::sgemm::PackedA),
}

impl<'a> Lhs<'a> {
    /// `a` (m×k through `v`), packed when the AVX-512 kernel runs here and either several
    /// products share it (`reuse`) or its one product goes to that kernel: packed once, the
    /// threads split the product by columns and none packs what another packs. Kernels over
    /// 64 MiB (fc6's) stay as they are.
    fn new(m: usize, k: usize, a: &'a [f32], v: Mat, reuse: bool) -> Self {
        assert!(extent(m, k, v) <= a.len());
        if sgemm_on() && m * k <= 1 << 24 && (reuse || prefer_sgemm(m, v)) {
            // SAFETY: the assert above keeps every element of the view inside `a`.
            Lhs::Packed(unsafe { crate::sgemm::PackedA::new(m, k, a.as_ptr(), view(v)) })
        } else {
            Lhs::Plain(a, v)
        }
    }

    fn packed(&self) -> bool {
        matches!(self, Lhs::Packed(_))
    }
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`.
#[allow(clippy::too_many_arguments)]
fn product(m: usize, n: usize, k: usize, dst: &mut [f32], d: Mat, acc: bool, lhs: &Lhs<'_>, rhs: &[f32], b: Mat) {
    match lhs {
        Lhs::Plain(a, v) => matmul(m, n, k, dst, d, acc, a, *v, rhs, b),
        Lhs::Packed(p) => {
            assert_eq!(p.dims(), (m, k));
            assert!(extent(m, n, d) <= dst.len());
            assert!(extent(k, n, b) <= rhs.len());
            // SAFETY: the asserts keep C and B inside their slices; `dst` does not alias
            // `rhs` (distinct borrows).
            unsafe { crate::sgemm::sgemm_packed(n, dst.as_mut_ptr(), view(d), acc, p, rhs.as_ptr(), view(b)) }
        }
    }
}

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

impl crate::sgemm::PackB for Unfolded<'_> {
    fn pack(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
        const S: usize = crate::sgemm::SLIVER;
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
pub fn forward_cpu(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
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
                unsafe { crate::sgemm::sgemm_packed_by(t, dst.as_mut_ptr(), view(ROW(p)), false, pa, &src) };
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
pub fn input_grad_cpu(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
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
pub fn weight_grad_cpu(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
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

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: f32 input expected")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: contiguous input expected"),
    }
}

/// Which piece of a convolution an op computes. Each op takes two tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// (x, w) → y.
    Forward,
    /// (dy, w) → dx; also a transposed convolution's forward.
    InputGrad,
    /// (x, dy) → dw.
    WeightGrad,
}

#[derive(Debug, Clone, Copy)]
struct ConvOp {
    g: Geom,
    piece: Piece,
}

impl ConvOp {
    fn out_shape(&self) -> Shape {
        let g = self.g;
        match self.piece {
            Piece::Forward => Shape::from((g.n, g.co, g.ho, g.wo)),
            Piece::InputGrad => Shape::from((g.n, g.c, g.h, g.w)),
            Piece::WeightGrad => Shape::from((g.co, g.c, g.kh, g.kw)),
        }
    }

    fn run(&self, a: &Tensor, b: &Tensor, piece: Piece) -> Result<Tensor> {
        a.apply_op2_no_bwd(b, &ConvOp { g: self.g, piece })
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        match self.piece {
            Piece::Forward => "conv2d",
            Piece::InputGrad => "conv2d-input-grad",
            Piece::WeightGrad => "conv2d-weight-grad",
        }
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let g = &self.g;
        let out = match self.piece {
            Piece::Forward => forward_cpu(g, a, b),
            Piece::InputGrad => input_grad_cpu(g, a, b),
            Piece::WeightGrad => weight_grad_cpu(g, a, b),
        };
        Ok((CpuStorage::F32(out), self.out_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if cudnn_runs(candle_core::backend::BackendStorage::dtype(s1)) {
            let g = &self.g;
            let out = match self.piece {
                Piece::Forward => crate::cudnn::forward(g, s1, l1, s2, l2)?,
                Piece::InputGrad => crate::cudnn::input_grad(g, s1, l1, s2, l2)?,
                Piece::WeightGrad => crate::cudnn::weight_grad(g, s1, l1, s2, l2)?,
            };
            return Ok((out, self.out_shape()));
        }
        let (a, b) = (cuda::tensor(s1, l1)?, cuda::tensor(s2, l2)?);
        let out = match self.piece {
            Piece::Forward => composite::forward(&self.g, &a, &b)?,
            Piece::InputGrad => composite::input_grad(&self.g, &a, &b)?,
            Piece::WeightGrad => composite::weight_grad(&self.g, &a, &b)?,
        };
        cuda::storage(&out)
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        match self.piece {
            // y = conv(x, w): dx = convᵀ(dy, w), dw = Σ dy · im2col(x)ᵀ.
            Piece::Forward => Ok((
                needed(a, || self.run(&grad, b, Piece::InputGrad))?,
                weight_grad(b, || self.run(a, &grad, Piece::WeightGrad))?,
            )),
            // A transposed conv t = convᵀ(u, w): du = conv(dt, w), dw = Σ u · im2col(dt)ᵀ.
            Piece::InputGrad => Ok((
                needed(a, || self.run(&grad, b, Piece::Forward))?,
                weight_grad(b, || self.run(&grad, a, Piece::WeightGrad))?,
            )),
            Piece::WeightGrad => candle_core::bail!("conv2d-weight-grad has no gradient"),
        }
    }
}

/// The same three pieces from candle's tensor ops (the CUDA path without cuDNN, and a reference
/// in tests).
pub mod composite {
    use super::Geom;
    use candle_core::{Result, Tensor};

    pub fn forward(g: &Geom, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        x.conv2d(w, g.pad, g.stride, g.dil, 1)
    }

    /// For stride 1: a forward conv of `dy` with the flipped, transposed kernel and padding
    /// `d·(k−1) − p` (a negative padding crops `dy` instead). Otherwise candle's transposed conv.
    pub fn input_grad(g: &Geom, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        if g.stride > 1 && g.dil == 1 && g.kh.is_multiple_of(g.stride) && g.kw.is_multiple_of(g.stride) {
            return strided_input_grad(g, dy, w);
        }
        if g.stride != 1 || g.kh != g.kw {
            // The full transposed conv (no padding), then the input's window `p .. p + H`; rows
            // and columns past its end are ones no output reaches (zero gradient). This also
            // covers remainders that differ between height and width.
            let dx = dy.conv_transpose2d(w, 0, 0, g.stride, g.dil)?;
            let (_, _, h0, w0) = dx.dims4()?;
            return dx
                .pad_with_zeros(2, 0, (g.pad + g.h).saturating_sub(h0))?
                .pad_with_zeros(3, 0, (g.pad + g.w).saturating_sub(w0))?
                .narrow(2, g.pad, g.h)?
                .narrow(3, g.pad, g.w)?
                .contiguous();
        }
        let dev = w.device();
        let rev = |k: usize| Tensor::from_vec((0..k as u32).rev().collect::<Vec<_>>(), k, dev);
        let wf = w
            .transpose(0, 1)?
            .contiguous()?
            .index_select(&rev(g.kh)?, 2)?
            .index_select(&rev(g.kw)?, 3)?
            .contiguous()?;
        let full = g.dil * (g.kh - 1);
        if full >= g.pad {
            dy.conv2d(&wf, full - g.pad, 1, g.dil, 1)
        } else {
            let crop = g.pad - full;
            let dy = dy.narrow(2, crop, g.ho - 2 * crop)?.narrow(3, crop, g.wo - 2 * crop)?;
            dy.contiguous()?.conv2d(&wf, 0, 1, g.dil, 1)
        }
    }

    /// A strided conv's input gradient (a transposed conv, FCN's upsampling) when the kernel is
    /// a multiple of the stride: one matmul spreads every `dy` pixel over its `kh × kw` window,
    /// and the `(kh/s)·(kw/s)` window blocks are overlap-added as shifted, zero-padded copies.
    /// All of it runs on cuBLAS and copy kernels (candle's CUDA transposed conv is a naive loop).
    fn strided_input_grad(g: &Geom, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        let s = g.stride;
        let (mh, mw) = (g.kh / s, g.kw / s);
        let (n, co, ho, wo) = (g.n, g.co, g.ho, g.wo);
        let k = g.c * g.kh * g.kw;
        // cols[n, (c, by, ry, bx, rx), (oy, ox)] = Σ_co w[co, c, ky, kx] · dy[n, co, oy, ox].
        let wt = w.reshape((co, k))?.t()?.contiguous()?;
        let cols = wt
            .broadcast_left(n)?
            .matmul(&dy.reshape((n, co, ho * wo))?)?
            .reshape(vec![n, g.c, mh, s, mw, s, ho, wo])?;
        // acc[n, c, Y, ry, X, rx] with Y = oy + by: input row Y·s + ry − p.
        let mut acc: Option<Tensor> = None;
        for by in 0..mh {
            for bx in 0..mw {
                let part = cols
                    .narrow(2, by, 1)?
                    .narrow(4, bx, 1)?
                    .squeeze(4)?
                    .squeeze(2)? // n, c, ry, rx, oy, ox
                    .pad_with_zeros(4, by, mh - 1 - by)?
                    .pad_with_zeros(5, bx, mw - 1 - bx)?;
                acc = Some(match acc {
                    Some(a) => (a + part)?,
                    None => part,
                });
            }
        }
        let acc = acc.ok_or_else(|| candle_core::Error::Msg("empty kernel".into()))?;
        let (yh, yw) = (ho + mh - 1, wo + mw - 1);
        let full = acc.permute((0, 1, 4, 2, 5, 3))?.reshape((n, g.c, yh * s, yw * s))?;
        // Rows p .. p + H (zero-padded where the windows stop short).
        let (need_h, need_w) = (g.pad + g.h, g.pad + g.w);
        let full = full
            .pad_with_zeros(2, 0, need_h.saturating_sub(yh * s))?
            .pad_with_zeros(3, 0, need_w.saturating_sub(yw * s))?;
        full.narrow(2, g.pad, g.h)?.narrow(3, g.pad, g.w)?.contiguous()
    }

    /// candle's own kernel gradient: a conv of the transposed input by the transposed `dy`.
    pub fn weight_grad(g: &Geom, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let dw = x
            .transpose(0, 1)?
            .contiguous()?
            .conv2d(&dy.transpose(0, 1)?.contiguous()?, g.pad, g.dil, g.stride, 1)?
            .transpose(0, 1)?;
        dw.narrow(2, 0, g.kh)?.narrow(3, 0, g.kw)?.contiguous()
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::op::BackpropOp;
    use candle_core::{CudaStorage, Layout, Result, Shape, Storage, Tensor};

    /// A tensor (no gradient) holding a device copy of `s`.
    pub fn tensor(s: &CudaStorage, l: &Layout) -> Result<Tensor> {
        if !l.is_contiguous() || l.start_offset() != 0 {
            candle_core::bail!("conv2d on CUDA: contiguous input at offset 0 expected");
        }
        Ok(Tensor::from_storage(
            Storage::Cuda(s.try_clone(l)?),
            l.shape().clone(),
            BackpropOp::none(),
            false,
        ))
    }

    pub fn storage(t: &Tensor) -> Result<(CudaStorage, Shape)> {
        let t = t.contiguous()?;
        let (st, l) = t.storage_and_layout();
        match &*st {
            Storage::Cuda(c) if l.start_offset() == 0 => Ok((c.try_clone(l)?, l.shape().clone())),
            _ => candle_core::bail!("conv2d on CUDA: result is not a CUDA tensor at offset 0"),
        }
    }
}

/// Whether the custom op runs on this tensor: f32 on the CPU, or any CUDA tensor.
fn supported(x: &Tensor) -> bool {
    match x.device() {
        candle_core::Device::Cpu => supported_cpu(x),
        candle_core::Device::Cuda(_) => true,
        _ => false,
    }
}

/// Contiguous, at offset 0 (what the CUDA bridge needs; free when already so).
fn packed(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        Ok(t.clone())
    } else {
        t.copy()?.contiguous()
    }
}

/// `conv2d(x, w)` with `w: Co×C×kh×kw`, one group, no bias.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize, dilation: usize) -> Result<Tensor> {
    let g = Geom::conv(x.dims4()?, w.dims4()?, stride, padding, dilation)?;
    if !supported(x) || x.dtype() != w.dtype() {
        return x.conv2d(w, padding, stride, dilation, 1);
    }
    packed(x)?.apply_op2(
        &packed(w)?,
        ConvOp {
            g,
            piece: Piece::Forward,
        },
    )
}

/// A transposed convolution `x: N×Ci×H×W`, `w: Ci×Co×kh×kw` (PyTorch's layout), no output
/// padding: output `(H−1)·s − 2p + d·(kh−1) + 1` high.
pub fn conv_transpose2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize, dilation: usize) -> Result<Tensor> {
    let (n, ci, h, wd) = x.dims4()?;
    let (wci, co, kh, kw) = w.dims4()?;
    if wci != ci {
        candle_core::bail!("conv_transpose2d: input has {ci} channels, the kernel expects {wci}");
    }
    if kh == 0 || kw == 0 || stride == 0 || dilation == 0 || h == 0 || wd == 0 {
        candle_core::bail!("conv_transpose2d: empty input {h}x{wd}, kernel {kh}x{kw} or zero stride/dilation");
    }
    let size = |i: usize, k: usize| ((i.max(1) - 1) * stride + dilation * (k - 1) + 1).checked_sub(2 * padding);
    let (Some(ho), Some(wo)) = (size(h, kh), size(wd, kw)) else {
        candle_core::bail!("conv_transpose2d: padding {padding} is larger than the output")
    };
    // The equivalent conv maps the output (Co channels) back to the input (Ci channels).
    let g = Geom::conv((n, co, ho, wo), (ci, co, kh, kw), stride, padding, dilation)?;
    if (g.ho, g.wo) != (h, wd) {
        candle_core::bail!("conv_transpose2d: geometry mismatch ({h}x{wd} in, {ho}x{wo} out)");
    }
    if !supported(x) || x.dtype() != w.dtype() {
        return x.conv_transpose2d(w, padding, 0, stride, dilation);
    }
    packed(x)?.apply_op2(
        &packed(w)?,
        ConvOp {
            g,
            piece: Piece::InputGrad,
        },
    )
}

/// `relu(conv2d(x, w) + b)` as one op: the output is the only activation kept for the backward
/// pass (its sign is the ReLU mask), where the unfused layer keeps three (the conv output, the
/// biased sum and the ReLU output) and makes four more passes over them.
#[derive(Debug, Clone, Copy)]
struct ConvBiasRelu(Geom);

/// ReLU's gradient `g = dr · [r > 0]` and the bias gradient `Σ g` per channel, in one pass
/// (CPU, f32, contiguous `N×C×H×W`). Each plane is summed in 16 interleaved partial sums,
/// then the planes over the batch, always in the same order.
fn relu_grad_and_bias_sum(dr: &Tensor, r: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, c, h, w) = dr.dims4()?;
    if r.dims4()? != (n, c, h, w) {
        candle_core::bail!("relu-grad: gradient {:?} and output {:?} differ", dr.dims(), r.dims());
    }
    let (ds, dl) = dr.storage_and_layout();
    let (rs, rl) = r.storage_and_layout();
    let (candle_core::Storage::Cpu(ds), candle_core::Storage::Cpu(rs)) = (&*ds, &*rs) else {
        candle_core::bail!("relu-grad: CPU tensors expected")
    };
    let (d, rv) = (f32_slice(ds, dl, "relu-grad")?, f32_slice(rs, rl, "relu-grad")?);
    let plane = (h * w).max(1);
    let mut g = Vec::with_capacity(d.len());
    let sums: Vec<f32> = g.spare_capacity_mut()[..d.len()]
        .par_chunks_mut(plane)
        .zip(d.par_chunks(plane).zip(rv.par_chunks(plane)))
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
    Ok((
        Tensor::from_vec(g, (n, c, h, w), dr.device())?,
        Tensor::from_vec(db, c, dr.device())?,
    ))
}

impl CustomOp3 for ConvBiasRelu {
    fn name(&self) -> &'static str {
        "conv2d-bias-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let (x, w, b) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        if crate::winograd::applies(g) {
            let y = crate::winograd::forward(g, x, w, Some(b));
            return Ok((CpuStorage::F32(y), Shape::from((g.n, g.co, g.ho, g.wo))));
        }
        let mut y = forward_cpu(g, x, w);
        let plane = g.ho * g.wo;
        y.par_chunks_mut(plane).enumerate().for_each(|(i, p)| {
            let bias = b[i % g.co];
            for v in p {
                *v = (*v + bias).max(0.0);
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.co, g.ho, g.wo))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if cudnn_runs(candle_core::backend::BackendStorage::dtype(s1)) {
            let y = crate::cudnn::forward_bias_relu(&self.0, (s1, l1), (s2, l2), (s3, l3))?;
            let g = &self.0;
            return Ok((y, Shape::from((g.n, g.co, g.ho, g.wo))));
        }
        let (x, w, b) = (cuda::tensor(s1, l1)?, cuda::tensor(s2, l2)?, cuda::tensor(s3, l3)?);
        let y = composite::forward(&self.0, &x, &w)?.broadcast_add(&b.reshape((1, self.0.co, 1, 1))?)?;
        cuda::storage(&y.relu()?)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        r: &Tensor,
        dr: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dr = dr.contiguous()?;
        let (g, db) = if supported_cpu(&dr) {
            relu_grad_and_bias_sum(&dr, &r.contiguous()?)?
        } else if let Some(both) = cudnn_relu_grad(&dr, r)? {
            both
        } else {
            let g = (&dr * r.gt(0.0)?.to_dtype(dr.dtype())?)?;
            let db = g.sum(3)?.sum(2)?.sum(0)?;
            (g, db)
        };
        let op = ConvOp {
            g: self.0,
            piece: Piece::Forward,
        };
        Ok((
            needed(x, || op.run(&g, w, Piece::InputGrad))?,
            weight_grad(w, || op.run(x, &g, Piece::WeightGrad))?,
            weight_grad(b, || Ok(db))?,
        ))
    }
}

/// The gradient `f` computes for `t`, or nothing where `t` takes no part in differentiation
/// (an input image: no variable, no op behind it).
fn needed(t: &Tensor, f: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    if t.track_op() {
        f().map(Some)
    } else {
        Ok(None)
    }
}

/// A parameter's gradient: to the installed sink where there is one (see [`crate::grad`]),
/// otherwise back to candle.
fn weight_grad(w: &Tensor, f: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    match needed(w, f)? {
        Some(dw) => crate::grad::offer(w, dw),
        None => Ok(None),
    }
}

/// Whether a CUDA operand of this dtype goes to cuDNN: f32, with cuDNN loaded.
#[cfg(feature = "cuda")]
fn cudnn_runs(dtype: DType) -> bool {
    dtype == DType::F32 && crate::cudnn::available()
}

/// ReLU's and the bias's gradients from cuDNN, for CUDA tensors cuDNN takes.
#[cfg(feature = "cuda")]
fn cudnn_relu_grad(dr: &Tensor, r: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    if dr.device().is_cuda() && cudnn_runs(dr.dtype()) {
        return crate::cudnn::relu_grad_and_bias_sum(dr, &r.contiguous()?).map(Some);
    }
    Ok(None)
}

#[cfg(not(feature = "cuda"))]
fn cudnn_relu_grad(_: &Tensor, _: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    Ok(None)
}

/// f32 on the CPU: where the CPU kernels run.
fn supported_cpu(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// `relu(conv2d(x, w) + b)` with `b` of length `Co`: one fused op (see [`conv2d`]).
pub fn conv2d_bias_relu(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Result<Tensor> {
    let g = Geom::conv(x.dims4()?, w.dims4()?, stride, padding, dilation)?;
    if b.dims1()? != g.co {
        candle_core::bail!("conv2d: bias has {} entries for {} output channels", b.dims1()?, g.co);
    }
    if !supported(x) || x.dtype() != w.dtype() || x.dtype() != b.dtype() {
        return x
            .conv2d(w, padding, stride, dilation, 1)?
            .broadcast_add(&b.reshape((1, g.co, 1, 1))?)?
            .relu();
    }
    packed(x)?.apply_op3(&packed(w)?, &packed(b)?, ConvBiasRelu(g))
}
