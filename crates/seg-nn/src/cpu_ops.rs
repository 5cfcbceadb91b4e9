//! CPU kernels as candle custom ops, for the pieces whose composite-op versions spend their time
//! in strided copies and allocations (convolutions live in [`crate::conv_ops`]): a 2×2 max pool with an argmax gradient, and batch-norm
//! normalisation with the closed-form gradient. Every op checks for contiguous f32 input on the
//! CPU; callers use the composite path on other devices.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: f32 input expected")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: contiguous input expected"),
    }
}

/// 2×2 max pool, stride 2; the gradient goes to the first maximum of each window (PyTorch).
struct MaxPool2;
struct MaxPool2Bwd;

impl CustomOp1 for MaxPool2 {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let x = f32_slice(s, l, "max_pool2x2")?;
        let (ho, wo) = (h / 2, w / 2);
        let mut out = vec![0f32; n * c * ho * wo];
        out.par_chunks_mut(ho * wo)
            .zip(x.par_chunks(h * w))
            .for_each(|(o, xi)| {
                for oy in 0..ho {
                    let r0 = &xi[2 * oy * w..2 * oy * w + w];
                    let r1 = &xi[(2 * oy + 1) * w..(2 * oy + 1) * w + w];
                    for ox in 0..wo {
                        let m = r0[2 * ox].max(r0[2 * ox + 1]).max(r1[2 * ox]).max(r1[2 * ox + 1]);
                        o[oy * wo + ox] = m;
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, ho, wo))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        Ok((crate::cuda_kernels::max_pool2(s, l)?, Shape::from((n, c, h / 2, w / 2))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &MaxPool2Bwd)?,
        ))
    }
}

impl CustomOp2 for MaxPool2Bwd {
    fn name(&self) -> &'static str {
        "max-pool-2x2-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let x = f32_slice(s1, l1, "max_pool2x2 backward")?;
        let g = f32_slice(s2, l2, "max_pool2x2 backward")?;
        let (ho, wo) = (h / 2, w / 2);
        let mut out = vec![0f32; n * c * h * w];
        out.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .zip(g.par_chunks(ho * wo))
            .for_each(|((o, xi), gi)| {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let idx = [
                            2 * oy * w + 2 * ox,
                            2 * oy * w + 2 * ox + 1,
                            (2 * oy + 1) * w + 2 * ox,
                            (2 * oy + 1) * w + 2 * ox + 1,
                        ];
                        let mut best = idx[0];
                        for &i in &idx[1..] {
                            if xi[i] > xi[best] {
                                best = i;
                            }
                        }
                        o[best] += gi[oy * wo + ox];
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((crate::cuda_kernels::max_pool2_bwd(s1, l1, s2, l2)?, l1.shape().clone()))
    }
}

/// 2×2 max pool of a contiguous f32 tensor (CPU, or CUDA with the `cuda` feature) with even
/// height and width.
pub fn max_pool2(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool2)
}

/// Training-mode batch norm `y = γ (x - mean) / sqrt(var + eps) + β` over (N, H, W) per
/// channel, fused with its affine part, with the closed-form gradients
/// `dx = γ (g - mean(g) - x̂ mean(g x̂)) / sqrt(var + eps)`, `dγ = Σ g x̂`, `dβ = Σ g`.
struct BnTrain {
    eps: f32,
}

/// Per-channel mean and biased variance of an `N×C×H×W` slice.
fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s, mut s2) = (0f64, 0f64);
            for b in 0..n {
                let p = &x[(b * c + ch) * hw..(b * c + ch + 1) * hw];
                let (mut a, mut a2) = (0f32, 0f32);
                for &v in p {
                    a += v;
                    a2 += v * v;
                }
                s += a as f64;
                s2 += a2 as f64;
            }
            let cnt = (n * hw) as f64;
            let mean = s / cnt;
            (mean, (s2 / cnt - mean * mean).max(0.0))
        })
        .collect()
}

fn cpu_data(t: &Tensor, what: &str) -> Result<Vec<f32>> {
    if !applies(t) {
        candle_core::bail!("{what}: CPU f32 tensor expected");
    }
    t.flatten_all()?.to_vec1::<f32>()
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
        let (n, c, h, w) = l1.shape().dims4()?;
        let x = f32_slice(s1, l1, "batch norm")?;
        let gamma = f32_slice(s2, l2, "batch norm weight")?;
        let beta = f32_slice(s3, l3, "batch norm bias")?;
        let hw = h * w;
        let stats = channel_stats(x, n, c, hw);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(i, (o, xi))| {
                let ch = i % c;
                let (mean, var) = stats[ch];
                let scale = gamma[ch] / (var as f32 + self.eps).sqrt();
                let shift = beta[ch] - mean as f32 * scale;
                for (d, &v) in o.iter_mut().zip(xi) {
                    *d = v * scale + shift;
                }
            });
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
        let (n, c, h, w) = x.dims4()?;
        let hw = h * w;
        let xs = cpu_data(x, "batch norm backward")?;
        let gs = cpu_data(grad, "batch norm backward")?;
        let gam = cpu_data(gamma, "batch norm backward")?;
        let stats = channel_stats(&xs, n, c, hw);
        let inv: Vec<f32> = stats.iter().map(|&(_, v)| 1.0 / (v as f32 + self.eps).sqrt()).collect();
        let cnt = (n * hw) as f64;
        // Per channel: Σ g and Σ g x̂.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let m = stats[ch].0 as f32;
                let (mut sg, mut sgx) = (0f64, 0f64);
                for b in 0..n {
                    let r = (b * c + ch) * hw..(b * c + ch + 1) * hw;
                    let (mut a, mut a2) = (0f32, 0f32);
                    for (&gv, &xv) in gs[r.clone()].iter().zip(&xs[r]) {
                        a += gv;
                        a2 += gv * (xv - m);
                    }
                    sg += a as f64;
                    sgx += a2 as f64 * inv[ch] as f64;
                }
                (sg, sgx)
            })
            .collect();
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(hw).enumerate().for_each(|(i, o)| {
            let ch = i % c;
            let (sg, sgx) = sums[ch];
            let (mg, mgx) = ((sg / cnt) as f32, (sgx / cnt) as f32);
            let (m, iv, gm) = (stats[ch].0 as f32, inv[ch], gam[ch]);
            let r = i * hw..(i + 1) * hw;
            for ((d, &gv), &xv) in o.iter_mut().zip(&gs[r.clone()]).zip(&xs[r]) {
                let xh = (xv - m) * iv;
                *d = gm * iv * (gv - mg - xh * mgx);
            }
        });
        let dev = x.device();
        let dgamma = Tensor::from_vec(sums.iter().map(|s| s.1 as f32).collect::<Vec<_>>(), c, dev)?;
        let dbeta = Tensor::from_vec(sums.iter().map(|s| s.0 as f32).collect::<Vec<_>>(), c, dev)?;
        Ok((
            Some(Tensor::from_vec(dx, (n, c, h, w), dev)?),
            Some(dgamma),
            Some(dbeta),
        ))
    }
}

/// Per-channel (mean, biased variance) of a CPU f32 `N×C×H×W` tensor, and the element count
/// per channel.
pub fn batch_stats(x: &Tensor) -> Result<(Vec<(f64, f64)>, usize)> {
    let (n, c, h, w) = x.dims4()?;
    let x = x.contiguous()?;
    let (s, l) = x.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*s else {
        candle_core::bail!("batch_stats: CPU tensor expected")
    };
    let data = f32_slice(s, l, "batch norm statistics")?;
    Ok((channel_stats(data, n, c, h * w), n * h * w))
}

/// Training-mode batch norm with batch statistics (custom op with closed-form gradients).
pub fn bn_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, BnTrain { eps: eps as f32 })
}

/// Whether the fast CPU kernels apply to `x`.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// Mean pixel cross-entropy over the channel axis, skipping label `ignore`, fused with its
/// gradient `(softmax - onehot) / valid`.
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

/// Per image: (sum of -log p over valid pixels, valid count).
fn ce_image(x: &[f32], lab: &[u32], c: usize, hw: usize, ignore: u32) -> (f64, u64) {
    let (mut total, mut valid) = (0f64, 0u64);
    for (p, &t) in lab.iter().enumerate() {
        if t == ignore || t as usize >= c {
            continue;
        }
        let mut m = f32::NEG_INFINITY;
        for k in 0..c {
            m = m.max(x[k * hw + p]);
        }
        let mut s = 0f32;
        for k in 0..c {
            s += (x[k * hw + p] - m).exp();
        }
        total += (m + s.ln() - x[t as usize * hw + p]) as f64;
        valid += 1;
    }
    (total, valid)
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy-ignore"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let x = f32_slice(s1, l1, "cross entropy")?;
        let lab = labels_slice(s2, l2)?;
        let hw = h * w;
        let (total, valid) = x
            .par_chunks(c * hw)
            .zip(lab.par_chunks(hw))
            .map(|(xi, li)| ce_image(xi, li, c, hw, self.ignore))
            .collect::<Vec<_>>()
            .into_iter()
            // In image order: a parallel reduction's grouping (and so its rounding) would vary.
            .fold((0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let _ = n;
        let loss = if valid == 0 { 0.0 } else { (total / valid as f64) as f32 };
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = logits.dims4()?;
        let hw = h * w;
        let x = cpu_data(logits, "cross entropy backward")?;
        let lab = labels.flatten_all()?.to_vec1::<u32>()?;
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let valid = lab.iter().filter(|&&t| t != self.ignore && (t as usize) < c).count();
        let scale = if valid == 0 { 0.0 } else { g / valid as f32 };
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(c * hw)
            .zip(x.par_chunks(c * hw))
            .zip(lab.par_chunks(hw))
            .for_each(|((d, xi), li)| {
                for (p, &t) in li.iter().enumerate() {
                    if t == self.ignore || t as usize >= c {
                        continue;
                    }
                    let mut m = f32::NEG_INFINITY;
                    for k in 0..c {
                        m = m.max(xi[k * hw + p]);
                    }
                    let mut s = 0f32;
                    for k in 0..c {
                        s += (xi[k * hw + p] - m).exp();
                    }
                    for k in 0..c {
                        d[k * hw + p] = (xi[k * hw + p] - m).exp() / s * scale;
                    }
                    d[t as usize * hw + p] -= scale;
                }
            });
        Ok((Some(Tensor::from_vec(dx, (n, c, h, w), logits.device())?), None))
    }
}

/// Fused masked cross-entropy on CPU f32 logits `N×C×H×W` and u32 labels `N×H×W`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, ignore: u32) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2(&labels.contiguous()?, CrossEntropy { ignore })
}
