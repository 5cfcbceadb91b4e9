//! Mean pixel cross-entropy over the channel axis, skipping label `ignore`, fused with its
//! gradient `(softmax − onehot) / valid` ([`seg_kernels::xent`]), CPU f32 only.

use super::{cpu_data, f32_slice};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

struct CrossEntropy {
    ignore: u32,
}

fn labels_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    let CpuStorage::U32(v) = s else {
        candle_core::bail!("cross entropy: u32 labels expected")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("cross entropy: contiguous labels expected"),
    }
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy-ignore"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let x = f32_slice(s1, l1, "cross entropy")?;
        let lab = labels_slice(s2, l2)?;
        if lab.len() != n * h * w {
            candle_core::bail!("cross entropy: {} labels for logits {n}x{c}x{h}x{w}", lab.len());
        }
        let loss = seg_kernels::xent::loss(x, lab, c, h * w, self.ignore);
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, c, h, w) = logits.dims4()?;
        let x = cpu_data(logits, "cross entropy backward")?;
        let lab = labels.flatten_all()?.to_vec1::<u32>()?;
        if x.len() != lab.len() * c {
            candle_core::bail!(
                "cross entropy backward: {} labels for {} logits of {c} classes",
                lab.len(),
                x.len()
            );
        }
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let valid = seg_kernels::xent::valid(&lab, c, self.ignore);
        let scale = if valid == 0 { 0.0 } else { g / valid as f32 };
        let dx = seg_kernels::xent::grad(&x, &lab, c, h * w, self.ignore, scale);
        Ok((Some(Tensor::from_vec(dx, logits.shape(), logits.device())?), None))
    }
}

/// Fused masked cross-entropy on CPU f32 logits `N×C×H×W` and u32 labels `N×H×W`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, ignore: u32) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2(&labels.contiguous()?, CrossEntropy { ignore })
}
