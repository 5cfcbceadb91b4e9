//! The runtime switches of seg-nn, in one typed value. Each is read from its environment
//! variable the first time it is needed (or set before that by [`Settings::apply`], which a
//! binary may call at start-up with [`Settings::from_env`]); a test can apply other settings
//! and apply them back, so both paths of a switch are tested in one process.
//!
//! | variable | field | default | effect |
//! |---|---|---|---|
//! | `SEG_SGEMM=0` | `sgemm` | on (where AVX-512 is) | the AVX-512 sgemm for the products it wins; off sends all to `gemm` |
//! | `SEG_WINOGRAD=0` | `winograd` | on (where AVX-512 is) | Winograd F(2×2, 3×3) for the 3×3 convolutions it applies to |
//! | `SEG_CUDNN=0` | `cudnn` | on (where the library loads) | CUDA convolutions on cuDNN; off: candle's im2col + cuBLAS |
//! | `SEG_CUDNN_LEGACY=1` | `cudnn_legacy` | off | cuDNN's legacy API instead of the graph API |
//! | `SEG_CUDA_TF32=0` | `cuda_tf32` | on | TF32 tensor cores in cuDNN convolutions; off: FP32 multiply-adds |
//!
//! `SEG_ALLOC_CACHE_MB` (the caching allocator's budget) is read by the allocator itself, once,
//! before anything else runs; it is listed in ARCHITECTURE.md's table with these.

use std::sync::atomic::{AtomicU8, Ordering};

/// See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub sgemm: bool,
    pub winograd: bool,
    pub cudnn: bool,
    pub cudnn_legacy: bool,
    pub cuda_tf32: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sgemm: true,
            winograd: true,
            cudnn: true,
            cudnn_legacy: false,
            cuda_tf32: true,
        }
    }
}

/// One switch: 0 = not read yet, 1 = off, 2 = on.
struct Switch {
    state: AtomicU8,
    var: &'static str,
    /// The value the variable must have to flip the default.
    flip: &'static str,
    default: bool,
}

impl Switch {
    const fn new(var: &'static str, flip: &'static str, default: bool) -> Self {
        Self {
            state: AtomicU8::new(0),
            var,
            flip,
            default,
        }
    }

    fn read_env(&self) -> bool {
        match std::env::var(self.var) {
            Ok(v) if v == self.flip => !self.default,
            _ => self.default,
        }
    }

    fn get(&self) -> bool {
        match self.state.load(Ordering::Relaxed) {
            0 => {
                let v = self.read_env();
                self.set(v);
                v
            }
            s => s == 2,
        }
    }

    fn set(&self, on: bool) {
        self.state.store(if on { 2 } else { 1 }, Ordering::Relaxed);
    }
}

static SGEMM: Switch = Switch::new("SEG_SGEMM", "0", true);
static WINOGRAD: Switch = Switch::new("SEG_WINOGRAD", "0", true);
static CUDNN: Switch = Switch::new("SEG_CUDNN", "0", true);
static CUDNN_LEGACY: Switch = Switch::new("SEG_CUDNN_LEGACY", "1", false);
static CUDA_TF32: Switch = Switch::new("SEG_CUDA_TF32", "0", true);

impl Settings {
    /// The settings the environment asks for (unset variables give the defaults).
    pub fn from_env() -> Self {
        Self {
            sgemm: SGEMM.read_env(),
            winograd: WINOGRAD.read_env(),
            cudnn: CUDNN.read_env(),
            cudnn_legacy: CUDNN_LEGACY.read_env(),
            cuda_tf32: CUDA_TF32.read_env(),
        }
    }

    /// The settings in force.
    pub fn current() -> Self {
        Self {
            sgemm: SGEMM.get(),
            winograd: WINOGRAD.get(),
            cudnn: CUDNN.get(),
            cudnn_legacy: CUDNN_LEGACY.get(),
            cuda_tf32: CUDA_TF32.get(),
        }
    }

    /// Puts these settings in force for the whole process (the next operation uses them).
    pub fn apply(self) {
        SGEMM.set(self.sgemm);
        WINOGRAD.set(self.winograd);
        CUDNN.set(self.cudnn);
        CUDNN_LEGACY.set(self.cudnn_legacy);
        CUDA_TF32.set(self.cuda_tf32);
    }
}

pub(crate) fn sgemm() -> bool {
    SGEMM.get()
}

pub(crate) fn winograd() -> bool {
    WINOGRAD.get()
}

#[cfg(feature = "cuda")]
pub(crate) fn cudnn() -> bool {
    CUDNN.get()
}

#[cfg(feature = "cuda")]
pub(crate) fn cudnn_legacy() -> bool {
    CUDNN_LEGACY.get()
}

#[cfg(feature = "cuda")]
pub(crate) fn cuda_tf32() -> bool {
    CUDA_TF32.get()
}

#[cfg(feature = "cuda")]
pub(crate) fn set_cuda_tf32(on: bool) {
    CUDA_TF32.set(on);
}
