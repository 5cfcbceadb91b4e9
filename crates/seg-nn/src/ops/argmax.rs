//! The per-pixel class id of a prediction (argmax over the channels of `N×C×H×W` scores) as a
//! custom op: [`seg_kernels::argmax`] on the CPU, one NVRTC kernel on CUDA (candle's argmax over
//! a middle dimension reads each pixel's channels with a stride, one block per pixel). The first
//! maximum wins, as in candle's and PyTorch's `argmax`.

use super::f32_slice;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

struct ArgmaxChannels;

impl CustomOp1 for ArgmaxChannels {
    fn name(&self) -> &'static str {
        "argmax-channels"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let x = f32_slice(s, l, self.name())?;
        let ids = seg_kernels::argmax::channels(x, n, c, h * w);
        Ok((CpuStorage::U32(ids), Shape::from((n, h, w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, _, h, w) = l.shape().dims4()?;
        Ok((seg_cuda::nvrtc::argmax_channels(s, l)?, Shape::from((n, h, w))))
    }
}

/// The class id (u32) of every pixel of `N×C×H×W` scores: `N×H×W`. f32 scores on the CPU or
/// CUDA take the custom op, others candle's `argmax`.
pub fn argmax_channels(x: &Tensor) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    if c == 0 {
        candle_core::bail!("argmax over channels: the scores have no channels");
    }
    let fast = x.dtype() == DType::F32 && (x.device().is_cpu() || (cfg!(feature = "cuda") && x.device().is_cuda()));
    if fast {
        x.contiguous()?.apply_op1_no_bwd(&ArgmaxChannels)
    } else {
        x.argmax(1)
    }
}
