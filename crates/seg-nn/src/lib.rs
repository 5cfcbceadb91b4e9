//! What candle 0.11 lacks or gets wrong for segmentation training, written once and tested
//! against reference numbers: a 2×2 max pool with the correct gradient, batch norm with running
//! statistics (and their re-estimation for AdaBN), masked cross-entropy with an ignore index,
//! binary cross-entropy on logits, a differentiable bilinear resize, bilinear-initialised
//! learned upsampling, SGD with momentum and weight decay, Adam, and learning-rate schedules.

pub mod alloc;
pub mod conv_ops;
pub mod cpu_ops;
#[cfg(feature = "cuda")]
mod cuda_kernels;
#[cfg(feature = "cuda")]
pub mod cudnn;
pub mod grad;
pub mod init;
pub mod layers;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod settings;
pub mod sgemm;
pub mod winograd;

pub use grad::backward;
pub use layers::{bilinear_kernel, conv2d, max_pool2x2, resize_bilinear, BatchNorm2d, Conv2d, ConvTranspose2d};
pub use loss::{bce_with_logits, bce_with_logits_per_element, cross_entropy_ignore};
pub use optim::{Adam, Optimizer, OptimizerConfig, Sgd};
pub use schedule::{lambda_schedule, poly_lr};

/// CUDA device `ordinal`, set up for training on one stream: candle's per-buffer event
/// tracking (for work spread over several streams) is turned off, and the stream-ordered
/// memory pool keeps freed memory for the next step instead of returning it to the driver at
/// every synchronisation (PyTorch's caching allocator does the same).
#[cfg(feature = "cuda")]
pub fn cuda_device(ordinal: usize) -> candle_core::Result<candle_core::Device> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let dev = candle_core::Device::new_cuda(ordinal)?;
    if let candle_core::Device::Cuda(d) = &dev {
        // SAFETY: every op of this crate and of candle runs on the device's one stream, so no
        // buffer is used on a stream other than the one that made it.
        unsafe { d.disable_event_tracking() };
        let mut pool = std::ptr::null_mut();
        let mut keep = u64::MAX;
        // SAFETY: valid out-pointer and attribute value of the type the attribute takes (u64).
        unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, d.cuda_stream().context().cu_device())
                .result()
                .map_err(candle_core::Error::wrap)?;
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut keep as *mut u64).cast(),
            )
            .result()
            .map_err(candle_core::Error::wrap)?;
        }
    }
    Ok(dev)
}

/// CUDA device `ordinal` (this build has no CUDA: candle's error saying so).
#[cfg(not(feature = "cuda"))]
pub fn cuda_device(ordinal: usize) -> candle_core::Result<candle_core::Device> {
    candle_core::Device::new_cuda(ordinal)
}

/// Allows (the default, as PyTorch's `torch.backends.cudnn.allow_tf32`) or forbids TF32
/// tensor cores in the CUDA convolutions; no effect without the `cuda` feature.
pub fn set_cuda_tf32(allow: bool) {
    #[cfg(feature = "cuda")]
    cudnn::set_tf32(allow);
    #[cfg(not(feature = "cuda"))]
    let _ = allow;
}
