//! The runtime switches of the CUDA side, in one typed value, on the same [`Switch`] idiom as
//! `seg_kernels::settings`: read from the environment on first use, or set before that by
//! [`Settings::apply`] (a binary calls it at start-up with [`Settings::from_env`]).
//!
//! | variable | field | default | effect |
//! |---|---|---|---|
//! | `SEG_CUDNN=0` | `cudnn` | on (where the library loads) | CUDA convolutions on cuDNN; off: candle's im2col + cuBLAS |
//! | `SEG_CUDNN_LEGACY=1` | `cudnn_legacy` | off | cuDNN's legacy API instead of the graph API |
//! | `SEG_CUDA_TF32=0` | `cuda_tf32` | on | TF32 tensor cores in cuDNN convolutions; off: FP32 multiply-adds |
//!
//! Without the `cuda` feature the switches exist and do nothing.

use seg_kernels::settings::Switch;

/// See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub cudnn: bool,
    pub cudnn_legacy: bool,
    pub cuda_tf32: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cudnn: true,
            cudnn_legacy: false,
            cuda_tf32: true,
        }
    }
}

static CUDNN: Switch = Switch::new("SEG_CUDNN", "0", true);
static CUDNN_LEGACY: Switch = Switch::new("SEG_CUDNN_LEGACY", "1", false);
static CUDA_TF32: Switch = Switch::new("SEG_CUDA_TF32", "0", true);

impl Settings {
    /// The settings the environment asks for (unset variables give the defaults).
    pub fn from_env() -> Self {
        Self {
            cudnn: CUDNN.read_env(),
            cudnn_legacy: CUDNN_LEGACY.read_env(),
            cuda_tf32: CUDA_TF32.read_env(),
        }
    }

    /// The settings in force.
    pub fn current() -> Self {
        Self {
            cudnn: CUDNN.get(),
            cudnn_legacy: CUDNN_LEGACY.get(),
            cuda_tf32: CUDA_TF32.get(),
        }
    }

    /// Puts these settings in force for the whole process (the next operation uses them).
    pub fn apply(self) {
        CUDNN.set(self.cudnn);
        CUDNN_LEGACY.set(self.cudnn_legacy);
        CUDA_TF32.set(self.cuda_tf32);
    }
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

pub(crate) fn set_cuda_tf32(on: bool) {
    CUDA_TF32.set(on);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_settings_are_in_force_until_applied_back() {
        let before = Settings::current();
        let other = Settings {
            cudnn: !before.cudnn,
            cudnn_legacy: !before.cudnn_legacy,
            cuda_tf32: !before.cuda_tf32,
        };
        other.apply();
        assert_eq!(Settings::current(), other);
        before.apply();
        assert_eq!(Settings::current(), before);
    }
}
