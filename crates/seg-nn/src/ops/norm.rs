//! Training-mode batch norm as a custom op with closed-form gradients
//! ([`seg_kernels::norm`]), CPU f32 only (other devices take the composite path).

use super::{cpu_data, f32_slice};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use seg_kernels::norm::{self as kernel, Dims};

struct BnTrain {
    eps: f32,
}

fn dims(shape: &Shape) -> Result<Dims> {
    let (n, c, h, w) = shape.dims4()?;
    Ok(Dims { n, c, hw: h * w })
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = dims(l1.shape())?;
        let x = f32_slice(s1, l1, "batch norm")?;
        let gamma = f32_slice(s2, l2, "batch norm weight")?;
        let beta = f32_slice(s3, l3, "batch norm bias")?;
        if gamma.len() != d.c || beta.len() != d.c {
            candle_core::bail!(
                "batch norm: {} weights and {} biases for {} channels",
                gamma.len(),
                beta.len(),
                d.c
            );
        }
        let out = kernel::forward(x, d, gamma, beta, self.eps);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = dims(x.shape())?;
        let xs = cpu_data(x, "batch norm backward")?;
        let gs = cpu_data(grad, "batch norm backward")?;
        let gam = cpu_data(gamma, "batch norm backward")?;
        let (dx, dgamma, dbeta) = kernel::backward(&xs, &gs, d, &gam, self.eps);
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dgamma, d.c, dev)?),
            Some(Tensor::from_vec(dbeta, d.c, dev)?),
        ))
    }
}

/// Per-channel (mean, biased variance) of a CPU f32 `N×C×H×W` tensor, and the element count
/// per channel.
pub fn batch_stats(x: &Tensor) -> Result<(Vec<(f64, f64)>, usize)> {
    let x = x.contiguous()?;
    let d = dims(x.shape())?;
    let (s, l) = x.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*s else {
        candle_core::bail!("batch_stats: CPU tensor expected")
    };
    let data = f32_slice(s, l, "batch norm statistics")?;
    Ok((kernel::channel_stats(data, d), d.n * d.hw))
}

/// Training-mode batch norm with batch statistics (custom op with closed-form gradients).
pub fn bn_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, BnTrain { eps: eps as f32 })
}
