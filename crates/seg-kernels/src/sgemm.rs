//! Single-precision matrix products for the convolution kernels: `C = [C +] A·B` over strided
//! views, blocked and packed the way BLIS does it, with an AVX-512 register kernel of 12 rows
//! by 32 columns.
//!
//! Why not the `gemm` crate alone: at the shapes a training step produces it loses about half
//! its speed when the left operand is stored by columns (every input gradient) and on narrow
//! weight gradients, and a convolution wants to pack its kernel once and its unfolded input
//! straight from the image, which an opaque product cannot do. This one packs both operands
//! from any strides into the layout the register kernel reads ([`PackedA`] for an operand packed
//! once and reused, [`PackB`] for one that packs itself). Where AVX-512 is missing (checked at
//! run time, [`available`]) the convolutions hand every product to `gemm` instead.
//!
//! Blocking (for 32 KiB L1, 1 MiB L2 per core): a `KC × NC` block of B is packed once per
//! (column block, depth block); for each `MC`-row block of A, the kernel keeps one `KC × NR`
//! sliver of B in L1 while it walks down A's slivers, then moves to the next B sliver. Threads
//! split C's columns (or its rows, for products with few columns and an A packed as it goes)
//! and pack their own parts of the operands.

use rayon::prelude::*;

/// Register kernel rows.
pub(crate) const MR: usize = 12;
/// Register kernel columns (two 16-lane vectors).
pub(crate) const NR: usize = 32;
/// Depth of one packed block.
const KC: usize = 256;
/// Columns of one packed B block (`KC·NC·4` bytes = 512 KiB, in L2).
const NC: usize = 512;
/// Rows of one packed A block.
const MC: usize = 96;

/// A strided matrix view: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub rs: isize,
    pub cs: isize,
}

/// Shareable raw pointers for the worker threads (each thread writes a disjoint part of C).
#[derive(Clone, Copy)]
struct Ptrs {
    c: *mut f32,
    a: *const f32,
    b: *const f32,
}
impl Ptrs {
    /// The three pointers moved by the given element offsets (a method, so that closures
    /// capture the whole struct rather than its raw-pointer fields).
    fn shifted(self, c: isize, a: isize, b: isize) -> Self {
        Self {
            c: self.c.wrapping_offset(c),
            a: self.a.wrapping_offset(a),
            b: self.b.wrapping_offset(b),
        }
    }
}

// SAFETY: the threads read A and B and write disjoint column (or row) ranges of C.
unsafe impl Send for Ptrs {}
// SAFETY: as for `Send`: shared reads, disjoint writes.
unsafe impl Sync for Ptrs {}

/// Whether the AVX-512 kernel runs on this machine.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `C (m×n) = [C +] A (m×k) · B (k×n)`.
///
/// # Safety
/// Every element addressed through the views must lie inside its allocation, C must not
/// overlap A or B, and the machine must have AVX-512F ([`available`]). When `acc` is false, C
/// is only written, never read.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    vc: View,
    acc: bool,
    a: *const f32,
    va: View,
    b: *const f32,
    vb: View,
) {
    // SAFETY: forwarded contract.
    unsafe { run(m, n, k, Ptrs { c, a, b }, vc, acc, Lhs::Raw(va), Rhs::Raw(vb)) }
}

/// [`sgemm`] on the calling thread only (for callers that share out their own work).
///
/// # Safety
/// As [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_serial(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    vc: View,
    acc: bool,
    a: *const f32,
    va: View,
    b: *const f32,
    vb: View,
) {
    // SAFETY: forwarded contract.
    unsafe { run_on(1, m, n, k, Ptrs { c, a, b }, vc, acc, Lhs::Raw(va), Rhs::Raw(vb)) }
}

/// A left operand packed once into the register kernel's layout, for products that reuse it
/// (a convolution's kernel across its bands of output rows).
pub struct PackedA {
    m: usize,
    k: usize,
    buf: Vec<f32>,
    off: usize,
}

impl PackedA {
    /// Packs `A (m×k)`.
    ///
    /// # Safety
    /// Every element addressed through `va` must lie inside `a`'s allocation.
    pub unsafe fn new(m: usize, k: usize, a: *const f32, va: View) -> Self {
        let slivers = m.div_ceil(MR);
        let len = slivers * MR * k;
        let mut buf = vec![0f32; len + 16];
        let off = buf.as_ptr().align_offset(64);
        let src = Ptrs {
            c: std::ptr::null_mut(),
            a,
            b: std::ptr::null(),
        };
        buf[off..off + len]
            .par_chunks_mut(slivers * MR * KC)
            .enumerate()
            .for_each(|(blk, o)| {
                let pc = blk * KC;
                let kc = KC.min(k - pc);
                let a = src.shifted(0, pc as isize * va.cs, 0).a;
                // SAFETY: columns pc..pc + kc of A, inside it by the caller's contract.
                unsafe { pack_a(m, kc, a, va, &mut o[..slivers * MR * kc]) };
            });
        Self { m, k, buf, off }
    }

    /// `(rows, columns)` of the packed matrix.
    pub fn dims(&self) -> (usize, usize) {
        (self.m, self.k)
    }

    /// The slivers of depth block `pc` (a multiple of `KC`).
    fn block(&self, pc: usize) -> &[f32] {
        let slivers = self.m.div_ceil(MR);
        let kc = KC.min(self.k - pc);
        &self.buf[self.off + slivers * MR * pc..][..slivers * MR * kc]
    }
}

/// `C (m×n) = [C +] A · B (k×n)` with A packed beforehand (`A` is `packed.m × packed.k`).
///
/// # Safety
/// As [`sgemm`], for C and B.
pub unsafe fn sgemm_packed(n: usize, c: *mut f32, vc: View, acc: bool, a: &PackedA, b: *const f32, vb: View) {
    let p = Ptrs {
        c,
        a: std::ptr::null(),
        b,
    };
    // SAFETY: forwarded contract.
    unsafe { run(a.m, n, a.k, p, vc, acc, Lhs::Packed(a, 0), Rhs::Raw(vb)) }
}

/// A right operand that packs itself: a matrix never stored whole, such as a convolution's
/// unfolded input (im2col), packed straight from its source.
pub trait PackB: Sync {
    /// Writes rows `p0 .. p0 + kc` and columns `j0 .. j0 + nc` of B as slivers of [`NR`]
    /// columns: `out[s·NR·kc + p·NR + j] = B(p0 + p, j0 + s·NR + j)`, zero past column
    /// `j0 + nc`. `out` holds `⌈nc / NR⌉·NR·kc` values.
    fn pack(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]);
}

/// Columns per sliver of packed B (what [`PackB::pack`] lays out).
pub const SLIVER: usize = NR;

/// `C (m×n) = [C +] A · B` with A packed beforehand and B packing itself.
///
/// # Safety
/// Every element of C addressed through `vc` must lie inside its allocation.
pub unsafe fn sgemm_packed_by(n: usize, c: *mut f32, vc: View, acc: bool, a: &PackedA, b: &dyn PackB) {
    let p = Ptrs {
        c,
        a: std::ptr::null(),
        b: std::ptr::null(),
    };
    // SAFETY: forwarded contract.
    unsafe { run(a.m, n, a.k, p, vc, acc, Lhs::Packed(a, 0), Rhs::By(b, 0)) }
}

/// Where the right operand comes from.
#[derive(Clone, Copy)]
enum Rhs<'a> {
    /// Strided, packed block by block.
    Raw(View),
    /// Packs itself; the product starts at this column.
    By(&'a dyn PackB, usize),
}

/// Where the left operand comes from.
#[derive(Clone, Copy)]
enum Lhs<'a> {
    /// Strided, packed block by block as the product goes.
    Raw(View),
    /// Packed beforehand; the product starts at this row (a multiple of `MR`).
    Packed(&'a PackedA, usize),
}

/// Splits the product over the threads and runs each part. An empty product writes nothing;
/// one with no depth (`k = 0`) zeroes C unless it accumulates.
#[allow(clippy::too_many_arguments)]
unsafe fn run(m: usize, n: usize, k: usize, p: Ptrs, vc: View, acc: bool, lhs: Lhs<'_>, rhs: Rhs<'_>) {
    // SAFETY: forwarded contract.
    unsafe { run_on(rayon::current_num_threads(), m, n, k, p, vc, acc, lhs, rhs) }
}

/// [`run`] split over at most `threads` parts.
#[allow(clippy::too_many_arguments)]
unsafe fn run_on(
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    p: Ptrs,
    vc: View,
    acc: bool,
    lhs: Lhs<'_>,
    rhs: Rhs<'_>,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: inside C by the caller's contract.
                    unsafe { *p.c.offset(i as isize * vc.rs + j as isize * vc.cs) = 0.0 };
                }
            }
        }
        return;
    }
    let threads = threads.max(1);
    // Split the wider side into one part per thread, in whole kernel tiles; with A packed
    // beforehand, split B's columns whenever there are enough, so that no thread packs the
    // same part of B as another.
    let prepacked = matches!(lhs, Lhs::Packed(..));
    let by_cols = n.div_ceil(NR) >= m.div_ceil(MR) || (prepacked && n.div_ceil(NR) >= 2 * threads);
    let (len, unit) = if by_cols { (n, NR) } else { (m, MR) };
    let parts = threads.min(len.div_ceil(unit)).max(1);
    if parts == 1 || (m * n * k) < (1 << 18) {
        // SAFETY: forwarded contract.
        unsafe { serial(m, n, k, p, vc, acc, lhs, rhs) };
        return;
    }
    let per = len.div_ceil(unit).div_ceil(parts) * unit;
    (0..parts).into_par_iter().for_each(|t| {
        let lo = t * per;
        let hi = ((t + 1) * per).min(len);
        if lo >= hi {
            return;
        }
        // Shift the pointers (or the self-packing B's column, the packed A's row) to the part.
        let (q, l, r) = if by_cols {
            match rhs {
                Rhs::Raw(vb) => (p.shifted(lo as isize * vc.cs, 0, lo as isize * vb.cs), lhs, rhs),
                Rhs::By(src, c0) => (p.shifted(lo as isize * vc.cs, 0, 0), lhs, Rhs::By(src, c0 + lo)),
            }
        } else {
            match lhs {
                Lhs::Raw(va) => (p.shifted(lo as isize * vc.rs, lo as isize * va.rs, 0), lhs, rhs),
                Lhs::Packed(pa, r0) => (p.shifted(lo as isize * vc.rs, 0, 0), Lhs::Packed(pa, r0 + lo), rhs),
            }
        };
        let (mm, nn) = if by_cols { (m, hi - lo) } else { (hi - lo, n) };
        // SAFETY: a sub-block of the caller's product; the parts write disjoint parts of C.
        unsafe { serial(mm, nn, k, q, vc, acc, l, r) };
    });
}

thread_local! {
    /// Packing buffers of this thread (A block, B block), reused across calls.
    static PACK: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// One thread's product.
#[allow(clippy::too_many_arguments)]
unsafe fn serial(m: usize, n: usize, k: usize, p: Ptrs, vc: View, acc: bool, lhs: Lhs<'_>, rhs: Rhs<'_>) {
    PACK.with(|bufs| {
        let mut bufs = bufs.borrow_mut();
        let (pa, pb) = &mut *bufs;
        let pa = aligned(pa, MC.div_ceil(MR) * MR * KC);
        let pb = aligned(pb, NC.div_ceil(NR) * NR * KC);
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                match rhs {
                    // SAFETY: the block lies inside B by the caller's contract.
                    Rhs::Raw(vb) => unsafe {
                        pack_b(kc, nc, p.b.offset(pc as isize * vb.rs + jc as isize * vb.cs), vb, pb)
                    },
                    Rhs::By(src, c0) => src.pack(pc, kc, c0 + jc, nc, &mut pb[..nc.div_ceil(NR) * NR * kc]),
                }
                let add = acc || pc > 0;
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    let slivers: &[f32] = match lhs {
                        Lhs::Raw(va) => {
                            let a = p.a.wrapping_offset(ic as isize * va.rs + pc as isize * va.cs);
                            // SAFETY: the block lies inside A.
                            unsafe { pack_a(mc, kc, a, va, pa) };
                            pa
                        }
                        Lhs::Packed(packed, r0) => &packed.block(pc)[(r0 + ic) * kc..],
                    };
                    for jr in (0..nc).step_by(NR) {
                        let nr = NR.min(nc - jr);
                        for ir in (0..mc).step_by(MR) {
                            let mr = MR.min(mc - ir);
                            let cp =
                                p.c.wrapping_offset((ic + ir) as isize * vc.rs + (jc + jr) as isize * vc.cs);
                            // SAFETY: packed slivers hold kc·MR and kc·NR values; the tile
                            // (mr × nr) lies inside C.
                            unsafe {
                                tile(
                                    kc,
                                    slivers[ir * kc..].as_ptr(),
                                    pb[jr * kc..].as_ptr(),
                                    cp,
                                    vc,
                                    mr,
                                    nr,
                                    add,
                                )
                            };
                        }
                    }
                }
            }
        }
    });
}

/// `len` values of `v` starting on a 64-byte boundary. The register kernel's 64-byte loads
/// from packed B would otherwise each straddle two cache lines (a heap block is only 16-byte
/// aligned), which costs about a third of its speed.
fn aligned(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    v.resize(len + 16, 0.0);
    let off = v.as_ptr().align_offset(64);
    &mut v[off..off + len]
}

/// Packs an `mc × kc` block of A as slivers of [`MR`] rows: sliver `s` holds, for each depth
/// `p`, the values of rows `s·MR .. s·MR+MR` (zero past the block's last row).
unsafe fn pack_a(mc: usize, kc: usize, a: *const f32, va: View, out: &mut [f32]) {
    for (s, i0) in (0..mc).step_by(MR).enumerate() {
        let rows = MR.min(mc - i0);
        let dst = &mut out[s * MR * kc..(s + 1) * MR * kc];
        if va.cs == 1 && rows == MR && kc >= 16 {
            // Row-stored A (a weight gradient's output gradient): register transposes for
            // whole blocks of 16 depths, then the remainder one value at a time.
            let whole = kc / 16 * 16;
            // SAFETY: rows i0..i0 + MR, depths 0..whole, inside A; `dst` holds kc·MR values.
            unsafe { transpose_sliver(whole, a.offset(i0 as isize * va.rs), va.rs, dst) };
            for r in 0..MR {
                for p in whole..kc {
                    // SAFETY: inside A.
                    dst[p * MR + r] = unsafe { *a.offset((i0 + r) as isize * va.rs + p as isize) };
                }
            }
        } else if va.cs == 1 {
            for r in 0..rows {
                // SAFETY: row i0 + r, columns 0..kc, inside A.
                let src = unsafe { std::slice::from_raw_parts(a.offset((i0 + r) as isize * va.rs), kc) };
                for (d, &v) in dst.chunks_exact_mut(MR).zip(src) {
                    d[r] = v;
                }
            }
        } else if va.rs == 1 {
            for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
                // SAFETY: column p, rows i0..i0+rows, inside A.
                let src = unsafe { std::slice::from_raw_parts(a.offset(i0 as isize + p as isize * va.cs), rows) };
                d[..rows].copy_from_slice(src);
            }
        } else {
            for p in 0..kc {
                for r in 0..rows {
                    // SAFETY: inside A.
                    dst[p * MR + r] = unsafe { *a.offset((i0 + r) as isize * va.rs + p as isize * va.cs) };
                }
            }
        }
        if rows < MR {
            for p in 0..kc {
                dst[p * MR + rows..(p + 1) * MR].fill(0.0);
            }
        }
    }
}

/// Packs a `kc × nc` block of B as slivers of [`NR`] columns: sliver `s` holds, for each depth
/// `p`, the values of columns `s·NR .. s·NR+NR` (zero past the block's last column).
unsafe fn pack_b(kc: usize, nc: usize, b: *const f32, vb: View, out: &mut [f32]) {
    for (s, j0) in (0..nc).step_by(NR).enumerate() {
        let cols = NR.min(nc - j0);
        let dst = &mut out[s * NR * kc..(s + 1) * NR * kc];
        if vb.cs == 1 && cols == NR {
            // SAFETY: rows 0..kc, columns j0..j0 + NR, inside B; `dst` holds kc·NR values.
            unsafe { copy_rows(kc, b.add(j0), vb.rs, dst) };
        } else if vb.rs == 1 && cols == NR && kc >= 16 {
            // Column-stored B (a weight gradient's unfolded input): 16×16 register transposes
            // for whole blocks of 16 rows, then the remainder one value at a time.
            let whole = kc / 16 * 16;
            for half in 0..NR / 16 {
                let col = b.wrapping_offset((j0 + 16 * half) as isize * vb.cs);
                // SAFETY: columns j0 + 16·half .. +16, rows 0..whole, inside B; `dst` holds
                // kc·NR values.
                unsafe { transpose_rows(whole, col, vb.cs, &mut dst[16 * half..]) };
            }
            for j in 0..cols {
                for p in whole..kc {
                    // SAFETY: inside B.
                    dst[p * NR + j] = unsafe { *b.offset((j0 + j) as isize * vb.cs + p as isize) };
                }
            }
        } else if vb.cs == 1 {
            for p in 0..kc {
                // SAFETY: row p, columns j0..j0+cols, inside B.
                let src = unsafe { std::slice::from_raw_parts(b.offset(p as isize * vb.rs + j0 as isize), cols) };
                dst[p * NR..p * NR + cols].copy_from_slice(src);
                dst[p * NR + cols..(p + 1) * NR].fill(0.0);
            }
        } else {
            if cols < NR {
                dst.fill(0.0);
            }
            for j in 0..cols {
                // SAFETY: column j0 + j, rows 0..kc, inside B.
                let col = b.wrapping_offset((j0 + j) as isize * vb.cs);
                if vb.rs == 1 {
                    // SAFETY: B's column j0 + j has kc contiguous values from `col`.
                    let src = unsafe { std::slice::from_raw_parts(col, kc) };
                    for (d, &v) in dst.chunks_exact_mut(NR).zip(src) {
                        d[j] = v;
                    }
                } else {
                    for p in 0..kc {
                        // SAFETY: row p < kc of the column, inside B.
                        dst[p * NR + j] = unsafe { *col.offset(p as isize * vb.rs) };
                    }
                }
            }
        }
    }
}

/// Copies `kc` rows of [`NR`] values at stride `rs` into `dst`, one after the other (two vector
/// moves a row: the packing of a row-major B, which a `memcpy` call per 128 bytes slowed).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_rows(kc: usize, b: *const f32, rs: isize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(dst.len() >= kc * NR);
    let d = dst.as_mut_ptr();
    for p in 0..kc {
        // SAFETY: row p's NR values lie inside B (caller); `dst` holds kc·NR values.
        unsafe {
            let s = b.offset(p as isize * rs);
            _mm512_storeu_ps(d.add(p * NR), _mm512_loadu_ps(s));
            _mm512_storeu_ps(d.add(p * NR + 16), _mm512_loadu_ps(s.add(16)));
        }
    }
}

/// The 16×16 transpose of `r` (row i in `r[i]`): four rounds of lane shuffles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose16(r: [std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, c) = (r[(i / 2) * 2], r[(i / 2) * 2 + 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, c)
        } else {
            _mm512_unpackhi_ps(a, c)
        }
    });
    // Pairs of 64-bit lanes: u[4q + 0..4] from t[4q + 0..4].
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let q = i / 4 * 4;
        let (a, c) = match i % 4 {
            0 | 1 => (t[q], t[q + 2]),
            _ => (t[q + 1], t[q + 3]),
        };
        let (a, c) = (_mm512_castps_pd(a), _mm512_castps_pd(c));
        _mm512_castpd_ps(if i % 2 == 0 {
            _mm512_unpacklo_pd(a, c)
        } else {
            _mm512_unpackhi_pd(a, c)
        })
    });
    // 128-bit lanes, twice.
    let v: [__m512; 16] = std::array::from_fn(|i| {
        let (g, k) = (i / 8 * 8, i % 8);
        let (a, c) = (u[g + k % 4], u[g + 4 + k % 4]);
        if k < 4 {
            _mm512_shuffle_f32x4::<0x88>(a, c)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, c)
        }
    });
    std::array::from_fn(|i| {
        let (a, c) = (v[i % 8], v[8 + i % 8]);
        if i < 8 {
            _mm512_shuffle_f32x4::<0x88>(a, c)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, c)
        }
    })
}

/// For 16 columns of a column-stored matrix (column `j` at `b + j·cs`, contiguous in its
/// rows): writes rows `0..rows` (a multiple of 16) as `dst[p·NR + j]`, transposing 16×16 blocks
/// in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_rows(rows: usize, b: *const f32, cs: isize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(rows.is_multiple_of(16) && (rows == 0 || dst.len() >= (rows - 1) * NR + 16));
    let d = dst.as_mut_ptr();
    for p0 in (0..rows).step_by(16) {
        // SAFETY: columns 0..16 at stride cs, rows p0..p0 + 16, inside B (caller); the
        // stores land in rows p0..p0 + 16 of `dst` (asserted above).
        unsafe {
            let r: [__m512; 16] = std::array::from_fn(|j| _mm512_loadu_ps(b.offset(j as isize * cs).add(p0)));
            for (i, row) in transpose16(r).into_iter().enumerate() {
                _mm512_storeu_ps(d.add((p0 + i) * NR), row);
            }
        }
    }
}

/// One whole sliver of a row-stored A (row `i` at `a + i·rs`, contiguous along the depth):
/// writes depths `0..kc` (a multiple of 16) as `dst[p·MR + i]`, transposing blocks of 16
/// depths in registers (the rows past `MR` are padding that is never stored).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_sliver(kc: usize, a: *const f32, rs: isize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(kc.is_multiple_of(16) && dst.len() >= kc * MR);
    let d = dst.as_mut_ptr();
    let keep: __mmask16 = (1 << MR) - 1;
    for p0 in (0..kc).step_by(16) {
        // SAFETY: rows 0..MR, depths p0..p0 + 16, inside A (caller); each masked store writes
        // MR values of row p0 + i of `dst` (asserted above).
        unsafe {
            let r: [__m512; 16] = std::array::from_fn(|i| {
                if i < MR {
                    _mm512_loadu_ps(a.offset(i as isize * rs).add(p0))
                } else {
                    _mm512_setzero_ps()
                }
            });
            for (i, row) in transpose16(r).into_iter().enumerate() {
                _mm512_mask_storeu_ps(d.add((p0 + i) * MR), keep, row);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose_sliver(_: usize, _: *const f32, _: isize, _: &mut [f32]) {
    unreachable!("sgemm::available() is false off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose_rows(_: usize, _: *const f32, _: isize, _: &mut [f32]) {
    unreachable!("sgemm::available() is false off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn copy_rows(_: usize, _: *const f32, _: isize, _: &mut [f32]) {
    unreachable!("sgemm::available() is false off x86_64")
}

/// One `mr × nr` tile of C from packed slivers: straight into C when the tile is whole and C's
/// rows are contiguous, through a scratch tile otherwise.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: *mut f32, vc: View, mr: usize, nr: usize, add: bool) {
    if mr == MR && nr == NR && vc.cs == 1 {
        // SAFETY: a whole tile with unit column stride; AVX-512 checked by the caller.
        unsafe { kernel(kc, a, b, c, vc.rs, add) };
        return;
    }
    #[repr(align(64))]
    struct Scratch([f32; MR * NR]);
    let mut t = Scratch([0f32; MR * NR]);
    let t = &mut t.0;
    // SAFETY: the scratch tile is MR × NR with row stride NR.
    unsafe { kernel(kc, a, b, t.as_mut_ptr(), NR as isize, false) };
    for i in 0..mr {
        for j in 0..nr {
            // SAFETY: (i, j) inside the tile, inside C.
            unsafe {
                let d = c.offset(i as isize * vc.rs + j as isize * vc.cs);
                *d = if add { *d + t[i * NR + j] } else { t[i * NR + j] };
            }
        }
    }
}

/// `C (MR × NR, rows at stride rsc) = [C +] A·B` from one packed sliver of each operand
/// (`kc·MR` and `kc·NR` values).
///
/// # Safety
/// AVX-512F present; the slivers hold `kc·MR` and `kc·NR` values; C's tile lies inside its
/// allocation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, c: *mut f32, rsc: isize, add: bool) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    // SAFETY: (the whole function) the slivers hold kc·MR and kc·NR values; C's tile has MR
    // rows of NR contiguous values at stride rsc.
    unsafe {
        if add {
            // C's tile is read only at the end: start fetching it now.
            for i in 0..MR {
                let d = c.offset(i as isize * rsc) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(d);
                _mm_prefetch::<_MM_HINT_T0>(d.add(64));
            }
        }
        for p in 0..kc {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            let ap = a.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(i));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
        }
        for (i, row) in acc.iter().enumerate() {
            let d = c.offset(i as isize * rsc);
            if add {
                _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), row[0]));
                _mm512_storeu_ps(d.add(16), _mm512_add_ps(_mm512_loadu_ps(d.add(16)), row[1]));
            } else {
                _mm512_storeu_ps(d, row[0]);
                _mm512_storeu_ps(d.add(16), row[1]);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn kernel(_: usize, _: *const f32, _: *const f32, _: *mut f32, _: isize, _: bool) {
    unreachable!("sgemm::available() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], va: View, b: &[f32], vb: View) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    let x = a[(i as isize * va.rs + p as isize * va.cs) as usize];
                    let y = b[(p as isize * vb.rs + j as isize * vb.cs) as usize];
                    s += x as f64 * y as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn matches_a_naive_product_for_every_layout_and_edge() {
        if !available() {
            eprintln!("no AVX-512 here: the gemm fallback runs instead");
            return;
        }
        let mut seed = 7u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for &(m, n, k) in &[
            (1, 1, 1),
            (12, 32, 7),
            (13, 33, 300),
            (100, 70, 513),
            (5, 400, 40),
            (200, 3, 9),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            for (va, vb) in [
                (View { rs: k as isize, cs: 1 }, View { rs: n as isize, cs: 1 }),
                (View { rs: 1, cs: m as isize }, View { rs: 1, cs: k as isize }),
            ] {
                let want = naive(m, n, k, &a, va, &b, vb);
                for acc in [false, true] {
                    let mut c = vec![if acc { 1.0 } else { f32::NAN }; m * n];
                    // SAFETY: AVX-512 checked above; the slices hold m·k, k·n and m·n values for these views.
                    unsafe {
                        sgemm(
                            m,
                            n,
                            k,
                            c.as_mut_ptr(),
                            View { rs: n as isize, cs: 1 },
                            acc,
                            a.as_ptr(),
                            va,
                            b.as_ptr(),
                            vb,
                        )
                    };
                    for (i, (&got, &w)) in c.iter().zip(&want).enumerate() {
                        let w = if acc { w + 1.0 } else { w };
                        assert!(
                            (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{m}x{n}x{k} [{i}]: {got} vs {w}"
                        );
                    }
                }
                // The same product with A packed beforehand.
                // SAFETY: as above, and the packed copy reads the same A.
                let packed = unsafe { PackedA::new(m, k, a.as_ptr(), va) };
                let mut c = vec![f32::NAN; m * n];
                // SAFETY: C holds m·n values; B is inside `b` for its view.
                unsafe {
                    sgemm_packed(
                        n,
                        c.as_mut_ptr(),
                        View { rs: n as isize, cs: 1 },
                        false,
                        &packed,
                        b.as_ptr(),
                        vb,
                    )
                };
                for (i, (&got, &w)) in c.iter().zip(&want).enumerate() {
                    assert!(
                        (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "packed {m}x{n}x{k} [{i}]: {got} vs {w}"
                    );
                }
                // A column-major C.
                let mut c = vec![0f32; m * n];
                // SAFETY: as above, with C stored by columns.
                unsafe {
                    sgemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        View { rs: 1, cs: m as isize },
                        false,
                        a.as_ptr(),
                        va,
                        b.as_ptr(),
                        vb,
                    )
                };
                for i in 0..m {
                    for j in 0..n {
                        let (got, w) = (c[j * m + i], want[i * n + j]);
                        assert!(
                            (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{m}x{n}x{k} col-major C: {got} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
