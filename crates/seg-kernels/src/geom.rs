//! The geometry of one 2-D convolution, shared by every kernel (CPU here, cuDNN in `seg-cuda`)
//! and by the op shells in `seg-nn`.

/// Upper bound on one tile's column buffer (bytes). Chosen to stay inside the last-level cache.
const TILE_BYTES: usize = 4 << 20;

/// Fewest output pixels per tile (a product with a shorter side runs at a fraction of the speed).
const MIN_TILE_COLS: usize = 512;

/// Which piece of a convolution a kernel or op computes; each takes two tensors. (The CPU
/// kernels of [`crate::conv`] are one function each; `seg-nn`'s ops and `seg-cuda`'s cuDNN
/// plans are keyed by it.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Piece {
    /// (x, w) → y.
    Forward,
    /// (dy, w) → dx; also a transposed convolution's forward.
    InputGrad,
    /// (x, dy) → dw.
    WeightGrad,
}

impl Piece {
    /// The dimensions of the piece's result in `g`: y, dx or dw.
    pub fn out_dims(self, g: &Geom) -> [usize; 4] {
        match self {
            Piece::Forward => [g.n, g.co, g.ho, g.wo],
            Piece::InputGrad => [g.n, g.c, g.h, g.w],
            Piece::WeightGrad => [g.co, g.c, g.kh, g.kw],
        }
    }
}

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
    ) -> Result<Self, GeomError> {
        let (n, c, h, w) = x;
        let (co, ci, kh, kw) = k;
        if ci != c {
            return Err(GeomError(format!(
                "conv2d: input has {c} channels, the kernel expects {ci}"
            )));
        }
        if stride == 0 || dil == 0 || kh == 0 || kw == 0 {
            return Err(GeomError(
                "conv2d: stride, dilation and kernel size must be positive".into(),
            ));
        }
        if n == 0 || c == 0 || h == 0 || w == 0 || co == 0 {
            return Err(GeomError(format!(
                "conv2d: empty input {n}x{c}x{h}x{w} or kernel with {co} outputs"
            )));
        }
        let (eh, ew) = (dil * (kh - 1) + 1, dil * (kw - 1) + 1);
        if h + 2 * pad < eh || w + 2 * pad < ew {
            return Err(GeomError(format!(
                "conv2d: input {h}x{w} (padding {pad}) is smaller than the dilated {eh}x{ew} kernel"
            )));
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
    pub(crate) fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    pub(crate) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Output rows per tile: as many as fit [`TILE_BYTES`], but at least [`MIN_TILE_COLS`]
    /// columns, below which the products lose most of their speed.
    pub(crate) fn band(&self) -> usize {
        let by_bytes = TILE_BYTES / (4 * self.k() * self.wo).max(1);
        let by_cols = MIN_TILE_COLS.div_ceil(self.wo.max(1));
        by_bytes.max(by_cols).clamp(1, self.ho.max(1))
    }

    /// Whether one op makes more than one product with the same kernel (several bands or
    /// images), so that packing the kernel once pays.
    pub(crate) fn several_products(&self) -> bool {
        self.n * self.ho.div_ceil(self.band()) > 1
    }

    pub(crate) fn x_len(&self) -> usize {
        self.c * self.h * self.w
    }

    pub(crate) fn y_len(&self) -> usize {
        self.co * self.ho * self.wo
    }
}

/// A convolution whose shapes do not fit together (the message names the mismatch).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GeomError(pub String);
