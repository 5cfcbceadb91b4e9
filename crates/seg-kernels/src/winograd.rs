//! 3×3 stride-1 convolutions by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, 2016),
//! for the CPU with AVX-512: 16 multiplications per 2×2 output tile and channel pair where the
//! direct product takes 36, so the three pieces of a VGG layer's training step cost 2.25× fewer
//! multiply-adds than the im2col products in [`crate::conv`].
//!
//! In one dimension, outputs `y0, y1` of a 3-tap correlation over inputs `d0..d3` are
//! `Aᵀ[(G g) ⊙ (Bᵀ d)]` with `Bᵀ d = (d0−d2, d1+d2, d2−d1, d1−d3)`,
//! `G g = (g0, (g0+g1+g2)/2, (g0−g1+g2)/2, g2)` and `Aᵀ m = (m0+m1+m2, m1−m2−m3)`; in two
//! dimensions each transform is applied along rows, then along columns, and every output tile
//! reads the 4×4 input window starting at `(2·ty − p, 2·tx − p)`. The coefficients are 0, ±1
//! and ½, so the transforms add no rounding beyond the sums' own and the results stay within
//! float rounding of the direct products (the tests compare against both).
//!
//! The 16 transformed positions ξ give 16 independent matrix products over the channels:
//! - forward: `M_ξ (Co × T) = U_ξ (Co × C) · V_ξ (C × T)` for a block of `T` tiles, with
//!   `U = G g Gᵀ` (the kernel, transformed and packed once per call), `V = Bᵀ d B` (the input,
//!   transformed straight into the register kernel's packed layout), then `y = Aᵀ M A`, with
//!   the bias and ReLU applied on the way out when the layer has them;
//! - input gradient: the forward of `dy` with the flipped, transposed kernel and padding `2 − p`;
//! - weight gradient: `dU_ξ (Co × C) = Σ_tiles dM_ξ · V_ξᵀ` with `dM = A dY Aᵀ`, then
//!   `dg = Gᵀ dU G` (the exact adjoint of the forward's transforms).
//!
//! Every transform runs on 16 tiles at a time (one vector lane per tile), reading the image
//! rows with masked loads, so the padding is never materialised.

use crate::geom::Geom;
use crate::sgemm::{self, View, MR, NR};
use rayon::prelude::*;

/// Depth (channels) of one block of the forward's products: the B sliver (`KCW × NR` values,
/// 16 KiB) stays in L1 while the kernel walks down the packed kernel.
const KCW: usize = 128;

/// Scratch (f32 values) one block of the forward aims to keep in L2: its transformed input and
/// its products.
const BLOCK_VALUES: usize = 1 << 18;

/// Scratch the weight gradient's chunk of transformed tiles may take (values), in L3.
const CHUNK_VALUES: usize = 1 << 21;

/// Extra values after each row of a scratch matrix and after each of its 16 planes.
const SKEW_ROW: usize = 16;
const SKEW_PLANE: usize = 48;

/// Whether a convolution of this geometry runs here: 3×3, stride 1, no dilation, padding at
/// most 2 (so that the input gradient is itself such a convolution), enough channels on both
/// sides for the products to pay, and the AVX-512 kernel present. `SEG_WINOGRAD=0` turns it
/// off (the im2col products run instead).
pub fn applies(g: &Geom) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.dil == 1 && g.pad <= 2 && g.c >= 16 && g.co >= 16 && enabled()
}

/// Whether [`applies`] can be true here: AVX-512 present and the `winograd` setting on
/// ([`crate::settings`], `SEG_WINOGRAD=0` turns it off).
pub fn enabled() -> bool {
    sgemm::available() && crate::settings::winograd()
}

/// The output tiles of a geometry: `th × tw` tiles of 2×2 outputs, numbered row by row.
#[derive(Clone, Copy)]
struct Tiles {
    th: usize,
    tw: usize,
}

impl Tiles {
    fn of(g: &Geom) -> Self {
        Self {
            th: g.ho.div_ceil(2),
            tw: g.wo.div_ceil(2),
        }
    }

    fn count(&self) -> usize {
        self.th * self.tw
    }
}

/// Where a transform writes value ξ of channel `ch` for the tile at local index `l`:
/// `ξ·xs + ch·cs + (l / 32)·ss + l % 32`. The packed layout of the forward's B operand
/// (slivers of 32 tiles, depth = channels) has `cs = 32, ss = 32·C`; a plain row-major
/// `[ξ][ch][tile]` matrix with `Tp` (a multiple of 32) columns has `cs = Tp, ss = 32`.
#[derive(Clone, Copy)]
struct Dst {
    xs: usize,
    cs: usize,
    ss: usize,
}

impl Dst {
    fn at(&self, xi: usize, ch: usize, l: usize) -> usize {
        xi * self.xs + ch * self.cs + (l / NR) * self.ss + l % NR
    }
}

/// A raw pointer the worker threads may share (each writes its own tiles or its own ξ).
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: the users write disjoint elements (see each use).
unsafe impl Send for Shared {}
// SAFETY: as for `Send`: every user writes elements no other touches.
unsafe impl Sync for Shared {}

impl Shared {
    fn get(self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    /// Per-thread scratch of the forward (transformed input, products), reused across calls.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `U = G g Gᵀ` for `L` kernels at once (lane `l` of `g[k]` is tap `k`, row-major, of kernel
/// `l`): 16 values per lane, ξ = 4·i + j. Written lane by lane so that it vectorises.
fn kernel_transform<const L: usize>(g: &[[f32; L]; 9]) -> [[f32; L]; 16] {
    // G on three values: (a, (a+b+c)/2, (a−b+c)/2, c).
    fn g1<const L: usize>(a: &[f32; L], b: &[f32; L], c: &[f32; L]) -> [[f32; L]; 4] {
        let mut out = [[0f32; L]; 4];
        for l in 0..L {
            out[0][l] = a[l];
            out[1][l] = 0.5 * (a[l] + b[l] + c[l]);
            out[2][l] = 0.5 * (a[l] - b[l] + c[l]);
            out[3][l] = c[l];
        }
        out
    }
    // Along the columns of each kernel row, then along the rows.
    let r: [[[f32; L]; 4]; 3] = std::array::from_fn(|ky| g1(&g[3 * ky], &g[3 * ky + 1], &g[3 * ky + 2]));
    let mut u = [[0f32; L]; 16];
    for j in 0..4 {
        let [c0, c1, c2, c3] = g1(&r[0][j], &r[1][j], &r[2][j]);
        (u[j], u[4 + j], u[8 + j], u[12 + j]) = (c0, c1, c2, c3);
    }
    u
}

/// `dg = Gᵀ dU G` (the adjoint of [`kernel_transform`]) for `L` kernels at once: 9 taps per
/// lane, row-major.
fn kernel_transform_adjoint<const L: usize>(du: &[[f32; L]; 16]) -> [[f32; L]; 9] {
    // Gᵀ on four values: (d0 + h, (d1−d2)/2, h + d3) with h = (d1+d2)/2.
    fn gt<const L: usize>(d0: &[f32; L], d1: &[f32; L], d2: &[f32; L], d3: &[f32; L]) -> [[f32; L]; 3] {
        let mut out = [[0f32; L]; 3];
        for l in 0..L {
            let h = 0.5 * (d1[l] + d2[l]);
            out[0][l] = d0[l] + h;
            out[1][l] = 0.5 * (d1[l] - d2[l]);
            out[2][l] = h + d3[l];
        }
        out
    }
    // Along i for each j (giving ky), then along j (giving kx).
    let c: [[[f32; L]; 3]; 4] = std::array::from_fn(|j| gt(&du[j], &du[4 + j], &du[8 + j], &du[12 + j]));
    let mut g = [[0f32; L]; 9];
    for ky in 0..3 {
        let [a, b, d] = gt(&c[0][ky], &c[1][ky], &c[2][ky], &c[3][ky]);
        (g[3 * ky], g[3 * ky + 1], g[3 * ky + 2]) = (a, b, d);
    }
    g
}

/// A kernel transformed and packed as the forward's left operands: for each ξ, slivers of
/// [`MR`] output channels, each holding every input channel's `MR` values
/// (`[ξ][sliver][ch][MR]`, zero past the last output channel). `tap(o, ch)` gives the 3×3
/// kernel from input channel `ch` to output channel `o`, row-major.
fn packed_kernel(co: usize, c: usize, tap: impl Fn(usize, usize) -> [f32; 9] + Sync) -> Vec<f32> {
    let slivers = co.div_ceil(MR);
    let per_xi = slivers * MR * c;
    let mut u: Vec<f32> = Vec::with_capacity(16 * per_xi);
    let u_ptr = Shared(u.as_mut_ptr());
    (0..slivers).into_par_iter().for_each(|s| {
        for ch in 0..c {
            let mut taps = [[0f32; MR]; 9];
            for r in 0..MR.min(co - s * MR) {
                for (lane, v) in taps.iter_mut().zip(tap(s * MR + r, ch)) {
                    lane[r] = v;
                }
            }
            for (xi, u_xi) in kernel_transform(&taps).iter().enumerate() {
                // SAFETY: MR values inside the capacity (ξ < 16, s < slivers, ch < c); each
                // sliver writes only its own values.
                unsafe {
                    let at = u_ptr.get().add(xi * per_xi + (s * c + ch) * MR);
                    std::ptr::copy_nonoverlapping(u_xi.as_ptr(), at, MR);
                }
            }
        }
    });
    // SAFETY: the slivers above wrote every value.
    unsafe { u.set_len(16 * per_xi) };
    u
}

/// `y = conv(x, w)` (3×3, stride 1, padding `g.pad`), and `relu(y + bias)` when `bias` is given.
pub fn forward(g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert!(x.len() >= g.n * g.c * g.h * g.w && w.len() >= g.co * g.c * 9);
    let (c, co) = (g.c, g.co);
    let u = packed_kernel(co, c, |o, ch| w[(o * c + ch) * 9..][..9].try_into().expect("9 taps"));
    forward_packed(g, x, &u, bias)
}

/// [`forward`] with the kernel already transformed ([`packed_kernel`]).
fn forward_packed(g: &Geom, x: &[f32], u: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (c, co) = (g.c, g.co);
    let co_pad = co.div_ceil(MR) * MR;
    assert!(u.len() >= 16 * co_pad * c && x.len() >= g.n * c * g.h * g.w);
    assert!(bias.is_none_or(|b| b.len() >= co));
    let tiles = Tiles::of(g);
    let total = tiles.count();
    // Tiles per block: a multiple of 32 that keeps the block's scratch near L2's size. Every
    // block reads the whole transformed kernel (16 MiB for 512 → 512 channels, from L3); where
    // the images have too few tiles for several blocks per thread anyway (the deepest layers),
    // one block takes a whole image and its output channels are split into parts instead, so
    // that each part reads only its share of the kernel (and transforms the block's input
    // again, which costs far less).
    let threads = rayon::current_num_threads().max(1);
    let by_cache = (BLOCK_VALUES / (16 * (c + co_pad))) / NR * NR;
    let mut t_blk = by_cache.clamp(NR, 512);
    if g.n * total.div_ceil(t_blk) < 4 * threads {
        t_blk = (total.div_ceil(NR) * NR).clamp(NR, 4 * NR);
    }
    let blocks = total.div_ceil(t_blk);
    let slivers_co = co_pad / MR;
    let parts = threads.div_ceil(g.n * blocks).min(slivers_co).max(1);
    let per_part = slivers_co.div_ceil(parts);
    // Every output is written below (each belongs to exactly one tile, and the stores are
    // masked to the image), so the buffer is not zero-filled first: that fill cost as much as
    // the output transform. Debug builds fill it with NaN, which a missed value would show.
    let len = g.n * co * g.ho * g.wo;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    if cfg!(debug_assertions) {
        y.resize(len, f32::NAN);
        y.clear();
    }
    let y_ptr = Shared(y.as_mut_ptr());
    // Plane and row strides skewed off multiples of 4 KiB, so that the 16 planes (and the rows
    // of one) do not all fall into the same L1 cache sets.
    let (vx, mr) = (c * t_blk + SKEW_PLANE, t_blk + SKEW_ROW);
    // A job's products: the rows of its part of the output channels only.
    let mx = per_part * MR * mr + SKEW_PLANE;
    let (v_len, m_len) = (16 * vx, 16 * mx);
    (0..g.n * blocks * parts).into_par_iter().for_each(|job| {
        let (img, b, part) = (job / (blocks * parts), job / parts % blocks, job % parts);
        let (s0, s1) = (part * per_part, ((part + 1) * per_part).min(slivers_co));
        let (t0, t1) = (b * t_blk, ((b + 1) * t_blk).min(total));
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < v_len + m_len {
                s.resize(v_len + m_len, 0.0);
            }
            let (v, m) = s.split_at_mut(v_len);
            let v = v.as_mut_ptr();
            let xi_img = &x[img * c * g.h * g.w..][..c * g.h * g.w];
            let packed = Dst {
                xs: vx,
                cs: NR,
                ss: NR * c,
            };
            let runs = runs(g, tiles, t0, t1);
            // SAFETY: AVX-512 is present (`applies`); `v` holds 16 planes of c·t_blk values (at
            // stride vx), which every index `packed.at(ξ, ch, l)` with l < t_blk stays inside.
            unsafe { input_transform(g, xi_img, &runs, v, packed) };
            let slivers = (t1 - t0).div_ceil(NR);
            for xi in 0..16 {
                let (uxi, vxi) = (&u[xi * co_pad * c..], v.wrapping_add(xi * vx));
                let mxi = m[xi * mx..].as_mut_ptr();
                for pc in (0..c).step_by(KCW) {
                    let kc = KCW.min(c - pc);
                    for js in 0..slivers {
                        let bp = vxi.wrapping_add((js * c + pc) * NR);
                        for is in s0..s1 {
                            let ap = uxi[(is * c + pc) * MR..].as_ptr();
                            // SAFETY: the A sliver holds kc·MR values and the B sliver kc·NR
                            // (channels pc..pc + kc); the MR × NR tile of M at row (is − s0)·MR,
                            // column js·NR lies inside its plane of the part's rows (at stride mr).
                            unsafe {
                                let cp = mxi.add((is - s0) * MR * mr + js * NR);
                                sgemm::kernel(kc, ap, bp, cp, mr as isize, pc > 0)
                            };
                        }
                    }
                }
            }
            // SAFETY: `m` holds 16 planes of the part's rows of t_blk; the block's tiles write only
            // their own outputs of image `img` (tiles never overlap in the output).
            unsafe {
                let y_img = y_ptr.get().add(img * co * g.ho * g.wo);
                output_transform(g, m, mx, mr, &runs, s0 * MR..(s1 * MR).min(co), y_img, bias);
            }
        });
    });
    // SAFETY: the blocks above wrote all `len` values.
    unsafe { y.set_len(len) };
    y
}

/// `dx = convᵀ(dy, w)`: the forward of `dy` with the kernel flipped and its channel axes
/// swapped, and padding `2 − p` (`applies` guarantees `p ≤ 2`).
pub fn input_grad(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (c, co) = (g.c, g.co);
    // The flipped kernel from output channel o of the backward conv (= input channel `o` of
    // the layer) to its input channel `ch` (= output channel `ch` of the layer).
    let u = packed_kernel(c, co, |o, ch| {
        let src = &w[(ch * c + o) * 9..][..9];
        std::array::from_fn(|i| src[8 - i])
    });
    // Its output is the layer's input: (Ho + 2·(2 − p) − 2) = H rows, likewise columns.
    let back = Geom::conv((g.n, co, g.ho, g.wo), (c, co, 3, 3), 1, 2 - g.pad, 1)
        .expect("a 3x3 stride-1 layer's output padded by 2 - p is at least 3 wide");
    debug_assert_eq!((back.ho, back.wo), (g.h, g.w));
    forward_packed(&back, dy, &u, None)
}

/// `dw = Σₙ Σ_tiles`: transformed input and transformed output gradient, multiplied per ξ and
/// summed over the tiles, then `Gᵀ dU G`. The tiles go in chunks (all images, in order); each
/// chunk is transformed by all threads, then its 16 products are shared out by ξ, each adding
/// into its own `dU_ξ`, so the sum runs in the same order whatever the number of threads.
pub fn weight_grad(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(x.len() >= g.n * g.c * g.h * g.w && dy.len() >= g.n * g.co * g.ho * g.wo);
    let (c, co) = (g.c, g.co);
    let tiles = Tiles::of(g);
    let total = tiles.count();
    let chunk = (CHUNK_VALUES / (16 * (c + co)) / NR * NR).clamp(4 * NR, 4096);
    // Written by the first chunk's products (not accumulated), so not zero-filled first.
    let mut du: Vec<f32> = Vec::with_capacity(16 * co * c);
    let du_ptr = Shared(du.as_mut_ptr());
    let rs = chunk + SKEW_ROW;
    let (vx, dx) = (c * rs + SKEW_PLANE, co * rs + SKEW_PLANE);
    // Scratch the transforms write before the products read it (columns 0 .. len of every
    // row): left unfilled, and only ever addressed through raw pointers.
    let mut v: Vec<f32> = Vec::with_capacity(16 * vx);
    let mut d: Vec<f32> = Vec::with_capacity(16 * dx);
    for img in 0..g.n {
        let xi_img = &x[img * c * g.h * g.w..][..c * g.h * g.w];
        let dy_img = &dy[img * co * g.ho * g.wo..][..co * g.ho * g.wo];
        for t0 in (0..total).step_by(chunk) {
            let t1 = (t0 + chunk).min(total);
            let plain = |xs: usize| Dst { xs, cs: rs, ss: NR };
            // Transform the chunk: input channels and output-gradient channels, in parallel
            // (each channel writes its own rows of every ξ plane).
            let (vp, dp) = (Shared(v.as_mut_ptr()), Shared(d.as_mut_ptr()));
            let runs = runs(g, tiles, t0, t1);
            (0..c + co).into_par_iter().with_min_len(8).for_each(|ch| {
                // SAFETY: AVX-512 present (`applies`); channel `ch` writes only its own rows
                // `ξ·xs + ch·rs + l` (l < chunk) of `v` or `d`.
                unsafe {
                    if ch < c {
                        let one = &xi_img[ch * g.h * g.w..][..g.h * g.w];
                        input_transform_channel(g, one, ch, &runs, vp.get(), plain(vx));
                    } else {
                        let o = ch - c;
                        let one = &dy_img[o * g.ho * g.wo..][..g.ho * g.wo];
                        grad_transform_channel(g, one, o, &runs, dp.get(), plain(dx));
                    }
                }
            });
            let len = t1 - t0;
            let first = img == 0 && t0 == 0;
            (0..16).into_par_iter().for_each(|xi| {
                // dU_ξ (co × c) += dM_ξ (co × len, rows at rs) · V_ξᵀ (len × c).
                let (a, b) = (dp.get().wrapping_add(xi * dx), vp.get().wrapping_add(xi * vx));
                // SAFETY: A addresses rows < co, columns < len ≤ chunk of its plane; B(p, j) =
                // V_ξ[j][p] likewise; C is plane ξ of `du` (co × c), written by this ξ alone;
                // AVX-512 present.
                unsafe {
                    sgemm::sgemm_serial(
                        co,
                        c,
                        len,
                        du_ptr.get().add(xi * co * c),
                        View { rs: c as isize, cs: 1 },
                        !first,
                        a,
                        View { rs: rs as isize, cs: 1 },
                        b,
                        View { rs: 1, cs: rs as isize },
                    )
                };
            });
        }
    }
    // SAFETY: the first chunk's 16 products wrote every value (`total` > 0: `Geom::conv`
    // refuses empty shapes).
    unsafe { du.set_len(16 * co * c) };
    // Sixteen kernels at a time, one per lane.
    let pairs = co * c;
    let mut dw = vec![0f32; pairs * 9];
    dw.par_chunks_mut(16 * 9).enumerate().for_each(|(blk, out)| {
        let n = out.len() / 9;
        let mut d = [[0f32; 16]; 16];
        for (xi, dxi) in d.iter_mut().enumerate() {
            dxi[..n].copy_from_slice(&du[xi * pairs + 16 * blk..][..n]);
        }
        let g = kernel_transform_adjoint(&d);
        for (l, taps) in out.chunks_exact_mut(9).enumerate() {
            for (k, t) in taps.iter_mut().enumerate() {
                *t = g[k][l];
            }
        }
    });
    dw
}

/// A run of at most 16 tiles inside one tile row that does not cross a multiple of 16 counted
/// from its block's first tile (so that it fills part of one vector of the scratch), with the
/// lane masks of its loads and stores.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Local index (from the block's first tile) of its first tile.
    l: usize,
    ty: usize,
    tx: usize,
    /// Lanes `0 .. len`: one per tile.
    keep: u16,
    /// Lanes inside the input row of the loads at `x0`, `x0 + 16`, `x0 + 2`, `x0 + 18`, where
    /// `x0 = 2·tx − p` is the first tile's first input column.
    input: [u16; 4],
    /// Lanes inside the output row (and inside the run) of the 32 output columns from `2·tx`.
    output: [u16; 2],
}

/// The runs of tiles `t0 .. t1`.
fn runs(g: &Geom, tiles: Tiles, t0: usize, t1: usize) -> Vec<Run> {
    let mut out = Vec::with_capacity((t1 - t0) / 16 + 2 * tiles.th.min(t1 - t0));
    let mut l = 0;
    while t0 + l < t1 {
        let t = t0 + l;
        let (ty, tx) = (t / tiles.tw, t % tiles.tw);
        let len = (16 - l % 16).min(tiles.tw - tx).min(t1 - t);
        let x0 = (2 * tx) as isize - g.pad as isize;
        let inside = |at: isize| lanes(-at, g.w as isize - at);
        let n = ((g.wo - 2 * tx) as isize).min(2 * len as isize);
        out.push(Run {
            l,
            ty,
            tx,
            keep: lanes(0, len as isize),
            input: [inside(x0), inside(x0 + 16), inside(x0 + 2), inside(x0 + 18)],
            output: [lanes(0, n), lanes(0, n - 16)],
        });
        l += len;
    }
    out
}

/// [`input_transform_channel`] for every channel of one image.
///
/// # Safety
/// As [`input_transform_channel`], for every channel `ch < g.c`.
unsafe fn input_transform(g: &Geom, x: &[f32], runs: &[Run], out: *mut f32, dst: Dst) {
    let plane = g.h * g.w;
    for ch in 0..g.c {
        // SAFETY: forwarded contract.
        unsafe { input_transform_channel(g, &x[ch * plane..][..plane], ch, runs, out, dst) };
    }
}

/// Lanes `lo .. hi` of 16 as a mask (bounds clamped to `0 ..= 16`).
#[inline(always)]
fn lanes(lo: isize, hi: isize) -> u16 {
    let (lo, hi) = (lo.clamp(0, 16) as u32, hi.clamp(0, 16) as u32);
    if hi <= lo {
        0
    } else {
        (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// Even and odd elements of the 32 values `a ‖ b`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn deinterleave(a: __m512, b: __m512) -> (__m512, __m512) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        (_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b))
    }

    /// The 32 values `a0 b0 a1 b1 …` as two vectors.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn interleave(a: __m512, b: __m512) -> (__m512, __m512) {
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        (_mm512_permutex2var_ps(a, lo, b), _mm512_permutex2var_ps(a, hi, b))
    }

    /// `Bᵀ d` along one axis: `(d0−d2, d1+d2, d2−d1, d1−d3)`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn bt(d: [__m512; 4]) -> [__m512; 4] {
        [
            _mm512_sub_ps(d[0], d[2]),
            _mm512_add_ps(d[1], d[2]),
            _mm512_sub_ps(d[2], d[1]),
            _mm512_sub_ps(d[1], d[3]),
        ]
    }

    /// `Aᵀ m` along one axis: `(m0+m1+m2, m1−m2−m3)`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn at(m: [__m512; 4]) -> [__m512; 2] {
        [
            _mm512_add_ps(_mm512_add_ps(m[0], m[1]), m[2]),
            _mm512_sub_ps(_mm512_sub_ps(m[1], m[2]), m[3]),
        ]
    }

    /// `A y` along one axis: `(y0, y0+y1, y0−y1, −y1)`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn a(y: [__m512; 2]) -> [__m512; 4] {
        [
            y[0],
            _mm512_add_ps(y[0], y[1]),
            _mm512_sub_ps(y[0], y[1]),
            _mm512_sub_ps(_mm512_setzero_ps(), y[1]),
        ]
    }
}

/// `V = Bᵀ d B` of the tiles of `runs` for one input channel `x (g.h × g.w)`, written at
/// `dst.at(ξ, ch, l)` for the tile at local index `l`; the window's parts outside the image
/// read as zero (masked loads: the padding is never materialised).
///
/// # Safety
/// AVX-512F present; the runs are [`runs`] of this geometry; every index `dst.at(ξ, ch, l)`
/// (ξ < 16, l < the block's length) lies inside `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // one index picks the same column of several rows
unsafe fn input_transform_channel(g: &Geom, x: &[f32], ch: usize, runs: &[Run], out: *mut f32, dst: Dst) {
    use std::arch::x86_64::*;
    assert!(x.len() >= g.h * g.w);
    let base = out;
    for r in runs {
        let x0 = (2 * r.tx) as isize - g.pad as isize;
        // Each of the window's 4 rows, transformed along x: t[row][j].
        let t: [[__m512; 4]; 4] = std::array::from_fn(|row| {
            let iy = (2 * r.ty + row) as isize - g.pad as isize;
            if iy < 0 || iy >= g.h as isize {
                return [_mm512_setzero_ps(); 4];
            }
            let p = x[iy as usize * g.w..].as_ptr().wrapping_offset(x0);
            // SAFETY: row iy of x; each load reads only its lanes inside the row (masked lanes
            // never fault).
            let [a, b, c, d] = unsafe {
                [
                    _mm512_maskz_loadu_ps(r.input[0], p),
                    _mm512_maskz_loadu_ps(r.input[1], p.wrapping_add(16)),
                    _mm512_maskz_loadu_ps(r.input[2], p.wrapping_add(2)),
                    _mm512_maskz_loadu_ps(r.input[3], p.wrapping_add(18)),
                ]
            };
            let (k0, k1) = simd::deinterleave(a, b);
            let (k2, k3) = simd::deinterleave(c, d);
            simd::bt([k0, k1, k2, k3])
        });
        let at = dst.at(0, ch, r.l);
        for j in 0..4 {
            let col = simd::bt([t[0][j], t[1][j], t[2][j], t[3][j]]);
            for (i, v) in col.into_iter().enumerate() {
                // SAFETY: the run's lanes land at dst.at(ξ, ch, l ..), inside `out` by the
                // caller's contract (a run never crosses a 32-tile sliver).
                unsafe { _mm512_mask_storeu_ps(base.add(at + (4 * i + j) * dst.xs), r.keep, v) };
            }
        }
    }
}

/// `dM = A dY Aᵀ` of the tiles of `runs` for one output-gradient channel `dy (g.ho × g.wo)`,
/// written at `dst.at(ξ, ch, l)`; outputs past the image's edge count as zero.
///
/// # Safety
/// As [`input_transform_channel`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // one index picks the same column of several rows
unsafe fn grad_transform_channel(g: &Geom, dy: &[f32], ch: usize, runs: &[Run], out: *mut f32, dst: Dst) {
    use std::arch::x86_64::*;
    assert!(dy.len() >= g.ho * g.wo);
    let base = out;
    for r in runs {
        // The tile's 2 output rows, expanded along x: t[row][j].
        let t: [[__m512; 4]; 2] = std::array::from_fn(|row| {
            let oy = 2 * r.ty + row;
            if oy >= g.ho {
                return [_mm512_setzero_ps(); 4];
            }
            let p = dy[oy * g.wo + 2 * r.tx..].as_ptr();
            // SAFETY: row oy of dy from column 2·tx; the loads read only the run's columns
            // inside the row.
            let (a, b) = unsafe {
                (
                    _mm512_maskz_loadu_ps(r.output[0], p),
                    _mm512_maskz_loadu_ps(r.output[1], p.wrapping_add(16)),
                )
            };
            let (e, o) = simd::deinterleave(a, b);
            simd::a([e, o])
        });
        let at = dst.at(0, ch, r.l);
        for j in 0..4 {
            let col = simd::a([t[0][j], t[1][j]]);
            for (i, v) in col.into_iter().enumerate() {
                // SAFETY: as in `input_transform_channel`.
                unsafe { _mm512_mask_storeu_ps(base.add(at + (4 * i + j) * dst.xs), r.keep, v) };
            }
        }
    }
}

/// `y = Aᵀ M A` for the tiles of `runs` from the products `m` (plane ξ at `ξ·xs`, output
/// channel `o`'s row at `(o − outs.start)·rs`, local tile index along the row), into the image
/// `y (g.co × g.ho × g.wo)` for output channels `outs`, through `relu(· + bias)` when a bias is given.
///
/// # Safety
/// AVX-512F present; the runs are [`runs`] of this geometry; `m` holds 16 planes of the rows
/// of `outs`, each at least the block's length; `y` points at `g.co·g.ho·g.wo` writable
/// values, of which these tiles' are written by no other thread.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // one index picks the same column of several rows
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    g: &Geom,
    m: &[f32],
    xs: usize,
    rs: usize,
    runs: &[Run],
    outs: std::ops::Range<usize>,
    y: *mut f32,
    bias: Option<&[f32]>,
) {
    use std::arch::x86_64::*;
    let (ho, wo) = (g.ho, g.wo);
    let first = outs.start;
    for o in outs {
        let yo = y.wrapping_add(o * ho * wo);
        let fused = bias.map(|b| _mm512_set1_ps(b[o]));
        let mo = &m[(o - first) * rs..];
        for r in runs {
            // SAFETY: plane ξ, row o, the run's values l .. l + len (masked), inside the row.
            let mv: [__m512; 16] =
                std::array::from_fn(|xi| unsafe { _mm512_maskz_loadu_ps(r.keep, mo[xi * xs + r.l..].as_ptr()) });
            // Along i (rows of the 4×4 block) for each column j, then along j.
            let s: [[__m512; 2]; 4] = std::array::from_fn(|j| simd::at([mv[j], mv[4 + j], mv[8 + j], mv[12 + j]]));
            for a in 0..2 {
                let oy = 2 * r.ty + a;
                if oy >= ho {
                    break;
                }
                let [mut y0, mut y1] = simd::at([s[0][a], s[1][a], s[2][a], s[3][a]]);
                if let Some(b) = fused {
                    let z = _mm512_setzero_ps();
                    y0 = _mm512_max_ps(_mm512_add_ps(y0, b), z);
                    y1 = _mm512_max_ps(_mm512_add_ps(y1, b), z);
                }
                let (lo, hi) = simd::interleave(y0, y1);
                let p = yo.wrapping_add(oy * wo + 2 * r.tx);
                // SAFETY: the run's columns of row oy (masked), this block's tiles.
                unsafe {
                    _mm512_mask_storeu_ps(p, r.output[0], lo);
                    _mm512_mask_storeu_ps(p.wrapping_add(16), r.output[1], hi);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn input_transform_channel(_: &Geom, _: &[f32], _: usize, _: &[Run], _: *mut f32, _: Dst) {
    unreachable!("winograd::applies() is false off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn grad_transform_channel(_: &Geom, _: &[f32], _: usize, _: &[Run], _: *mut f32, _: Dst) {
    unreachable!("winograd::applies() is false off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    _: &Geom,
    _: &[f32],
    _: usize,
    _: usize,
    _: &[Run],
    _: std::ops::Range<usize>,
    _: *mut f32,
    _: Option<&[f32]>,
) {
    unreachable!("winograd::applies() is false off x86_64")
}
