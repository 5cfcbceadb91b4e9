//! 2×2 max pool, stride 2, as a custom op: the gradient goes to the first maximum of each
//! window (PyTorch), on the CPU ([`seg_kernels::pool`]) and on CUDA ([`seg_cuda::nvrtc`]), in
//! f32 or bf16 (a maximum and a routed gradient are exact in either).

use super::{f32_values, storage_of};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

struct MaxPool2;
struct MaxPool2Bwd;

impl CustomOp1 for MaxPool2 {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let x = f32_values(s, l, "max_pool2x2")?;
        let out = seg_kernels::pool::max_pool2(&x, n * c, h, w);
        Ok((storage_of(out, false, s.dtype()), Shape::from((n, c, h / 2, w / 2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        Ok((seg_cuda::nvrtc::max_pool2(s, l)?, Shape::from((n, c, h / 2, w / 2))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.to_dtype(arg.dtype())?.contiguous()?;
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad, &MaxPool2Bwd)?))
    }
}

impl CustomOp2 for MaxPool2Bwd {
    fn name(&self) -> &'static str {
        "max-pool-2x2-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let x = f32_values(s1, l1, "max_pool2x2 backward")?;
        let g = f32_values(s2, l2, "max_pool2x2 backward")?;
        if g.len() != n * c * (h / 2) * (w / 2) {
            candle_core::bail!(
                "max_pool2x2 backward: gradient of {} values for {n}x{c}x{h}x{w}",
                g.len()
            );
        }
        let out = seg_kernels::pool::max_pool2_grad(&x, &g, n * c, h, w);
        Ok((storage_of(out, false, s2.dtype()), Shape::from((n, c, h, w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((seg_cuda::nvrtc::max_pool2_bwd(s1, l1, s2, l2)?, l1.shape().clone()))
    }
}

/// 2×2 max pool of a contiguous f32 or bf16 tensor (CPU, or CUDA with the `cuda` feature) with
/// even height and width.
pub fn max_pool2(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool2)
}
