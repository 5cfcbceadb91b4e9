//! One matrix product on plain slices, `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)` through
//! strided views, sent to [`crate::sgemm`] (AVX-512) or to the `gemm` crate by shape, with the
//! left operand packed once when several products share it.

use crate::sgemm::{self, View};

pub(crate) fn threads() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// Row-major with `cols` columns.
#[allow(non_snake_case)]
pub(crate) fn ROW(cols: usize) -> View {
    View {
        rs: cols as isize,
        cs: 1,
    }
}

/// The transpose of a row-major matrix with `rows` columns.
#[allow(non_snake_case)]
pub(crate) fn COL(rows: usize) -> View {
    View {
        rs: 1,
        cs: rows as isize,
    }
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`, with bounds checked against the slices.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    d: View,
    acc: bool,
    lhs: &[f32],
    a: View,
    rhs: &[f32],
    b: View,
) {
    assert!(extent(m, n, d) <= dst.len());
    assert!(extent(m, k, a) <= lhs.len());
    assert!(extent(k, n, b) <= rhs.len());
    // `Geom::conv` refuses empty shapes, so every product here has a non-empty reduction.
    debug_assert!(m > 0 && n > 0 && k > 0);
    if prefer_sgemm(m, a) {
        // SAFETY: as below; `prefer_sgemm` checked for AVX-512.
        unsafe {
            sgemm::sgemm(m, n, k, dst.as_mut_ptr(), d, acc, lhs.as_ptr(), a, rhs.as_ptr(), b);
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
/// side by side at VGG16-FCN8s's shapes (`cargo run --release -p seg-kernels --example
/// sgemm_shapes`, `-p seg-fcn --example conv_gflops` with `SEG_SGEMM=0` and without): `gemm` stays
/// ahead on fc6/fc7's large row-major products. `SEG_SGEMM=0` sends everything to `gemm`.
pub(crate) fn prefer_sgemm(m: usize, a: View) -> bool {
    sgemm_on() && (a.rs == 1 || m < 1024)
}

pub(crate) fn sgemm_on() -> bool {
    sgemm::available() && crate::settings::sgemm()
}

/// Index one past the last element a `rows × cols` view addresses.
pub(crate) fn extent(rows: usize, cols: usize, v: View) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        ((rows as isize - 1) * v.rs + (cols as isize - 1) * v.cs + 1) as usize
    }
}

/// The left operand of a convolution's products: as stored, or packed once into
/// [`crate::sgemm`]'s layout when several products (bands, images) share it.
pub(crate) enum Lhs<'a> {
    Plain(&'a [f32], View),
    Packed(sgemm::PackedA),
}

impl<'a> Lhs<'a> {
    /// `a` (m×k through `v`), packed when the AVX-512 kernel runs here and either several
    /// products share it (`reuse`) or its one product goes to that kernel: packed once, the
    /// threads split the product by columns and none packs what another packs. Kernels over
    /// 64 MiB (fc6's) stay as they are.
    pub(crate) fn new(m: usize, k: usize, a: &'a [f32], v: View, reuse: bool) -> Self {
        assert!(extent(m, k, v) <= a.len());
        if sgemm_on() && m * k <= 1 << 24 && (reuse || prefer_sgemm(m, v)) {
            // SAFETY: the assert above keeps every element of the view inside `a`.
            Lhs::Packed(unsafe { sgemm::PackedA::new(m, k, a.as_ptr(), v) })
        } else {
            Lhs::Plain(a, v)
        }
    }

    pub(crate) fn packed(&self) -> bool {
        matches!(self, Lhs::Packed(_))
    }
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    d: View,
    acc: bool,
    lhs: &Lhs<'_>,
    rhs: &[f32],
    b: View,
) {
    match lhs {
        Lhs::Plain(a, v) => matmul(m, n, k, dst, d, acc, a, *v, rhs, b),
        Lhs::Packed(p) => {
            assert_eq!(p.dims(), (m, k));
            assert!(extent(m, n, d) <= dst.len());
            assert!(extent(k, n, b) <= rhs.len());
            // SAFETY: the asserts keep C and B inside their slices; `dst` does not alias
            // `rhs` (distinct borrows).
            unsafe { sgemm::sgemm_packed(n, dst.as_mut_ptr(), d, acc, p, rhs.as_ptr(), b) }
        }
    }
}
