//! What candle 0.11 lacks or gets wrong for segmentation training, written once and tested
//! against reference numbers: a 2×2 max pool with the correct gradient, batch norm with running
//! statistics (and their re-estimation for AdaBN), masked cross-entropy with an ignore index,
//! binary cross-entropy on logits, a differentiable bilinear resize, bilinear-initialised
//! learned upsampling, SGD with momentum and weight decay, Adam, and learning-rate schedules.
//!
//! The arithmetic lives below this crate: the CPU kernels in `seg-kernels` (plain slices, no
//! candle) and the CUDA side in `seg-cuda` (cuDNN, NVRTC; a stub without the `cuda` feature).
//! Here are the candle op shells around them ([`ops`]), the layers, losses, optimisers,
//! schedules, seeded initialisation and the gradient sink.

pub mod device;
pub mod grad;
pub mod init;
pub mod layers;
pub mod loss;
pub mod ops;
pub mod optim;
pub mod precision;
pub mod schedule;
pub mod vars;

pub use grad::backward;
pub use layers::{bilinear_kernel, conv2d, max_pool2x2, resize_bilinear, BatchNorm2d, Conv2d, ConvTranspose2d};
pub use loss::{bce_with_logits, bce_with_logits_per_element, cross_entropy_ignore};
pub use ops::argmax::argmax_channels;
pub use optim::{Adam, Optimizer, OptimizerConfig, OptimizerKind, OptimizerPatch, Sgd};
pub use precision::{autocast, Precision};
pub use schedule::{lambda_schedule, poly_lr};

pub use seg_cuda::cuda_device;
