//! The CUDA side of seg-adapt's ops: cuDNN convolutions opened at run time ([`cudnn`]), NVRTC
//! kernels for SGD's update and the 2×2 max pool ([`nvrtc`]), and the device set up for
//! training on one stream ([`cuda_device`]). All of it is behind the `cuda` feature; without it
//! this crate is a stub with the same entry points, where [`cuda_device`] gives candle's "no
//! CUDA in this build" error and [`cudnn::available`] says no, so callers need no `cfg` of
//! their own beyond the op bodies that take CUDA storage.

#[cfg(feature = "cuda")]
pub mod cudnn;
#[cfg(feature = "cuda")]
pub mod nvrtc;
pub mod settings;

/// cuDNN's entry points without the `cuda` feature: never available.
#[cfg(not(feature = "cuda"))]
pub mod cudnn {
    /// Whether the CUDA convolutions run on cuDNN (never, in a build without CUDA).
    pub fn available() -> bool {
        false
    }

    /// Convolution geometries left to candle's ops (none: a build without CUDA runs none).
    pub fn left_to_candle() -> usize {
        0
    }

    /// Records whether TF32 may be used (no effect in a build without CUDA).
    pub fn set_tf32(allow: bool) {
        crate::settings::set_cuda_tf32(allow);
    }
}

pub use settings::Settings;

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
        let pool = default_pool(d)?;
        let mut keep = u64::MAX;
        // SAFETY: a valid pool and an attribute value of the type the attribute takes (u64).
        unsafe {
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

/// The device's default stream-ordered memory pool (where candle and this project allocate).
#[cfg(feature = "cuda")]
fn default_pool(
    d: &candle_core::cuda_backend::CudaDevice,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let mut pool = std::ptr::null_mut();
    // SAFETY: a valid out-pointer and the device's own ordinal.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, d.cuda_stream().context().cu_device()) }
        .result()
        .map_err(candle_core::Error::wrap)?;
    Ok(pool)
}

/// The most bytes in use at once in a CUDA device's stream-ordered memory pool (where every
/// buffer of this project and of candle is allocated) since the last [`reset_peak_memory`], as
/// PyTorch's `torch.cuda.max_memory_allocated`; `None` for other devices.
#[cfg(feature = "cuda")]
pub fn peak_memory(dev: &candle_core::Device) -> candle_core::Result<Option<u64>> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let candle_core::Device::Cuda(d) = dev else {
        return Ok(None);
    };
    let pool = default_pool(d)?;
    let mut high = 0u64;
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
    // SAFETY: a valid pool and out-pointer; the attribute's value is a u64 (cuuint64_t).
    unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut high as *mut u64).cast()) }
        .result()
        .map_err(candle_core::Error::wrap)?;
    Ok(Some(high))
}

/// Starts [`peak_memory`]'s count afresh (no effect for other devices).
#[cfg(feature = "cuda")]
pub fn reset_peak_memory(dev: &candle_core::Device) -> candle_core::Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let candle_core::Device::Cuda(d) = dev else {
        return Ok(());
    };
    let pool = default_pool(d)?;
    let mut zero = 0u64;
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
    // SAFETY: a valid pool; the high-water mark takes a u64, and 0 is the value that resets it.
    unsafe { sys::cuMemPoolSetAttribute(pool, attr, (&mut zero as *mut u64).cast()) }
        .result()
        .map_err(candle_core::Error::wrap)?;
    Ok(())
}

/// Peak pool memory (no CUDA in this build: none).
#[cfg(not(feature = "cuda"))]
pub fn peak_memory(_: &candle_core::Device) -> candle_core::Result<Option<u64>> {
    Ok(None)
}

/// Resets the peak (no CUDA in this build: nothing to reset).
#[cfg(not(feature = "cuda"))]
pub fn reset_peak_memory(_: &candle_core::Device) -> candle_core::Result<()> {
    Ok(())
}
