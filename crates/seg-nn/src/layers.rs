//! Layers with gradients we can trust: convolutions (the custom ops of [`crate::ops::conv`], with
//! `vb` names equal to field paths), a 2×2 max pool written as reshape + max (candle's `max_pool2d` scales its
//! gradient by 1/4), batch norm with running statistics, bilinear resize as two matmuls, and
//! transposed convolutions initialised to bilinear upsampling.

use candle_core::{DType, Device, Module, ModuleT, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// A 2D convolution with optional bias, stride, padding and dilation.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
}

/// Convolution settings.
#[derive(Debug, Clone, Copy)]
pub struct ConvCfg {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
    pub bias: bool,
    /// Standard deviation of a normal init; `None` = Kaiming-uniform (PyTorch default).
    pub init_std: Option<f64>,
}

impl Default for ConvCfg {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
            init_std: None,
        }
    }
}

/// Builds a conv `c_in → c_out` with a square `k × k` kernel under `vb` (`weight`, `bias`).
pub fn conv2d(c_in: usize, c_out: usize, k: usize, cfg: ConvCfg, vb: VarBuilder<'_>) -> Result<Conv2d> {
    let fan_in = (c_in / cfg.groups) * k * k;
    let init = match cfg.init_std {
        Some(stdev) => Init::Randn { mean: 0.0, stdev },
        None => {
            let bound = 1.0 / (fan_in as f64).sqrt();
            Init::Uniform {
                lo: -bound * 3f64.sqrt(),
                up: bound * 3f64.sqrt(),
            }
        }
    };
    let weight = vb.get_with_hints((c_out, c_in / cfg.groups, k, k), "weight", init)?;
    let bias = if cfg.bias {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let init = if cfg.init_std.is_some() {
            Init::Const(0.0)
        } else {
            Init::Uniform { lo: -bound, up: bound }
        };
        Some(vb.get_with_hints(c_out, "bias", init)?)
    } else {
        None
    };
    Ok(Conv2d {
        weight,
        bias,
        stride: cfg.stride,
        padding: cfg.padding,
        dilation: cfg.dilation,
        groups: cfg.groups,
    })
}

impl Conv2d {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// This layer and `x` as a forward pass takes them now, where that differs from as they
    /// are: inside a bf16 scope `x` in bf16 ([`crate::precision`]; the ops take the f32 weight
    /// and bias as they are and compute in bf16, so their gradients reach the variables
    /// directly; a grouped conv, which candle runs, gets a bf16 weight), inside a no-grad scope
    /// the weight and bias detached ([`crate::grad::no_grad`]). `f` then runs on them in f32
    /// mode (so nothing is lowered twice) and its result, bf16 under autocast, is returned.
    fn in_use(&self, x: &Tensor, f: impl FnOnce(&Self, &Tensor) -> Result<Tensor>) -> Result<Option<Tensor>> {
        let low = crate::precision::lowers(x);
        let frozen = crate::grad::disabled() && self.weight.track_op();
        if !low && !frozen {
            return Ok(None);
        }
        let grouped = self.groups != 1;
        let prepare = |t: &Tensor| {
            let t = crate::grad::param(t);
            if low && grouped {
                crate::precision::operand(&t)
            } else {
                Ok(t)
            }
        };
        let layer = Self {
            weight: prepare(&self.weight)?,
            bias: self.bias.as_ref().map(prepare).transpose()?,
            ..self.clone()
        };
        let x = if low { crate::precision::operand(x)? } else { x.clone() };
        let _f32 = crate::precision::autocast(crate::Precision::F32);
        f(&layer, &x).map(Some)
    }

    /// `relu(self.forward(x))`, fused into one op when the layer has a bias and one group.
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.in_use(x, |c, x| c.forward_relu(x))? {
            return Ok(y);
        }
        match &self.bias {
            Some(b) if self.groups == 1 => {
                crate::ops::conv::conv2d_bias_relu(x, &self.weight, b, self.stride, self.padding, self.dilation)
            }
            _ => self.forward(x)?.relu(),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.in_use(x, |c, x| c.forward(x))? {
            return Ok(y);
        }
        let y = if self.groups == 1 {
            crate::ops::conv::conv2d(x, &self.weight, self.stride, self.padding, self.dilation)?
        } else {
            x.conv2d(&self.weight, self.padding, self.stride, self.dilation, self.groups)?
        };
        match &self.bias {
            // In bf16 (mixed precision) the bias is added in bf16, as autocast adds it.
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }
}

/// 2×2 max pool, stride 2: its gradient goes to the first maximum of each window (PyTorch's
/// rule), with the custom op on the CPU and on CUDA; on other devices or dtypes, reshape + max,
/// whose gradient goes to every tied maximum. Height and width must be even.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!("max_pool2x2 needs even height and width, got {h}x{w}");
    }
    let float = matches!(x.dtype(), DType::F32 | DType::BF16);
    let on_cuda = cfg!(feature = "cuda") && x.device().is_cuda() && float;
    if crate::ops::applies_low(x) || on_cuda {
        return crate::ops::pool::max_pool2(x);
    }
    x.reshape((n, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)
}

/// Batch norm over channels with running statistics stored as (non-trained) variables
/// `running_mean` and `running_var`, PyTorch semantics (momentum 0.1, unbiased running var).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: candle_core::Var,
    running_var: candle_core::Var,
    mode: std::sync::Arc<std::sync::Mutex<BnMode>>,
    eps: f64,
}

/// How running statistics are updated: exponential (`Some(momentum)`) or, with `None`, the
/// statistics of every value seen since `None` was set, as if all its batches were one (AdaBN's
/// "mean and variance over the target domain"): the pooled mean, and the unbiased pooled
/// variance, which counts the spread of the batch means as well (PyTorch's `momentum=None`
/// averages the batch variances and leaves that spread out).
#[derive(Debug, Clone)]
struct BnMode {
    momentum: Option<f64>,
    /// Under `momentum = None`: the values seen since the estimate started (per channel), their
    /// mean and their (biased) variance.
    pooled: Option<(f64, Tensor, Tensor)>,
}

/// Names of variables that hold statistics, not trained parameters.
pub fn is_statistic(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

impl BatchNorm2d {
    /// Creates the layer under `vb`; running statistics are looked up in `stats` under the same
    /// names (the trainer keeps one `VarMap` for both).
    pub fn new(c: usize, vb: VarBuilder<'_>, stats: &candle_nn::VarMap) -> Result<Self> {
        let weight = vb.get_with_hints(c, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(c, "bias", Init::Const(0.0))?;
        let prefix = vb.prefix();
        stats.get(
            c,
            &format!("{prefix}.running_mean"),
            Init::Const(0.0),
            DType::F32,
            vb.device(),
        )?;
        stats.get(
            c,
            &format!("{prefix}.running_var"),
            Init::Const(1.0),
            DType::F32,
            vb.device(),
        )?;
        let data = stats
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
        let var = |n: &str| {
            data.get(&format!("{prefix}.{n}"))
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("missing statistic {prefix}.{n}")))
        };
        let (running_mean, running_var) = (var("running_mean")?, var("running_var")?);
        let mode = std::sync::Arc::new(std::sync::Mutex::new(BnMode {
            momentum: Some(0.1),
            pooled: None,
        }));
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            mode,
            eps: 1e-5,
        })
    }

    fn normalise(&self, x: &Tensor, mean: &Tensor, var: &Tensor) -> Result<Tensor> {
        let (weight, bias) = (crate::grad::param(&self.weight), crate::grad::param(&self.bias));
        let c = weight.dim(0)?;
        let shape = (1, c, 1, 1);
        let scale = (&weight * (var + self.eps)?.sqrt()?.recip()?)?;
        let shift = (&bias - (mean * &scale)?)?;
        x.broadcast_mul(&scale.reshape(shape)?)?
            .broadcast_add(&shift.reshape(shape)?)
    }

    /// Batch statistics `(mean, biased var)` per channel.
    fn batch_stats(x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (n, c, h, w) = x.dims4()?;
        let xt = x.transpose(0, 1)?.reshape((c, n * h * w))?;
        let mean = xt.mean(1)?;
        let var = xt.broadcast_sub(&mean.unsqueeze(1)?)?.sqr()?.mean(1)?;
        Ok((mean, var))
    }

    /// Sets the update rule of the running statistics (`None` = the pooled statistics of the
    /// batches from now on) and, with `reset`, restarts them at mean 0, variance 1 (AdaBN
    /// re-estimation).
    pub fn set_momentum(&self, momentum: Option<f64>, reset: bool) -> Result<()> {
        let mut mode = self
            .mode
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned batch-norm mode".into()))?;
        (mode.momentum, mode.pooled) = (momentum, None);
        if reset {
            self.running_mean.set(&self.running_mean.as_tensor().zeros_like()?)?;
            self.running_var.set(&self.running_var.as_tensor().ones_like()?)?;
        }
        Ok(())
    }
}

impl ModuleT for BatchNorm2d {
    /// In f32; a bf16 input (mixed precision) is widened and the result rounded back.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if x.dtype() == DType::BF16 {
            return crate::precision::in_f32(x, |x| self.forward_t(x, train));
        }
        if !train {
            let (mean, var) = (self.running_mean.as_tensor(), self.running_var.as_tensor());
            return self.normalise(x, &crate::grad::param(mean), &crate::grad::param(var));
        }
        let (n, c, h, w) = x.dims4()?;
        let count = (n * h * w) as f64;
        let (normalised, mean, var) = if crate::ops::applies(x) {
            let (stats, _) = crate::ops::norm::batch_stats(x)?;
            let mean = Tensor::from_vec(stats.iter().map(|s| s.0 as f32).collect::<Vec<_>>(), c, x.device())?;
            let var = Tensor::from_vec(stats.iter().map(|s| s.1 as f32).collect::<Vec<_>>(), c, x.device())?;
            let (weight, bias) = (crate::grad::param(&self.weight), crate::grad::param(&self.bias));
            (
                Some(crate::ops::norm::bn_train(x, &weight, &bias, self.eps)?),
                mean,
                var,
            )
        } else {
            let (mean, var) = Self::batch_stats(x)?;
            (None, mean, var)
        };
        let mut mode = self
            .mode
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned batch-norm mode".into()))?;
        let (batch_mean, batch_var) = (mean.detach(), var.detach());
        let unbiased = |var: &Tensor, n: f64| {
            if n > 1.0 {
                var * (n / (n - 1.0))
            } else {
                Ok(var.clone())
            }
        };
        let (new_mean, new_var) = match mode.momentum {
            Some(m) => (
                ((self.running_mean.as_tensor() * (1.0 - m))? + (&batch_mean * m)?)?,
                ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased(&batch_var, count)? * m)?)?,
            ),
            None => {
                // The batch merged into everything seen before (Chan et al.'s pairwise update,
                // stable where the mean is large against the spread).
                let (n, mean, var) = match mode.pooled.take() {
                    None => (count, batch_mean, batch_var),
                    Some((seen, mean, var)) => {
                        let n = seen + count;
                        let delta = (&batch_mean - &mean)?;
                        let merged_var = ((var * (seen / n))? + (&batch_var * (count / n))?)?;
                        (
                            n,
                            (mean + (&delta * (count / n))?)?,
                            (merged_var + (delta.sqr()? * (seen * count / (n * n)))?)?,
                        )
                    }
                };
                let out = (mean.clone(), unbiased(&var, n)?);
                mode.pooled = Some((n, mean, var));
                out
            }
        };
        // Set under the lock, so that two passes through the layer do not interleave.
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        drop(mode);
        match normalised {
            Some(y) => Ok(y),
            None => self.normalise(x, &mean, &var),
        }
    }
}

/// A transposed convolution, initialised to bilinear upsampling (FCN's learned upsampling).
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    weight: Tensor,
    stride: usize,
    padding: usize,
}

/// The `c × c × k × k` kernel that makes a transposed conv with stride `k/2` a bilinear upsample.
pub fn bilinear_kernel(c: usize, k: usize, device: &Device) -> Result<Tensor> {
    let factor = k.div_ceil(2);
    let center = if k % 2 == 1 {
        factor as f32 - 1.0
    } else {
        factor as f32 - 0.5
    };
    let mut filt = vec![0f32; k * k];
    for y in 0..k {
        for x in 0..k {
            filt[y * k + x] =
                (1.0 - (y as f32 - center).abs() / factor as f32) * (1.0 - (x as f32 - center).abs() / factor as f32);
        }
    }
    let mut w = vec![0f32; c * c * k * k];
    for i in 0..c {
        w[(i * c + i) * k * k..(i * c + i + 1) * k * k].copy_from_slice(&filt);
    }
    Tensor::from_vec(w, (c, c, k, k), device)
}

impl ConvTranspose2d {
    /// `c → c` channels, kernel `2 × stride`, upsampling by `stride`; weight `weight` under `vb`.
    pub fn bilinear(c: usize, stride: usize, vb: VarBuilder<'_>, vars: &candle_nn::VarMap) -> Result<Self> {
        let k = 2 * stride;
        // VarBuilder has no tensor init: create the variable, then set it to the bilinear kernel.
        let weight = vb.get_with_hints((c, c, k, k), "weight", Init::Const(0.0))?;
        let name = format!("{}.weight", vb.prefix());
        let data = vars
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
        if let Some(var) = data.get(&name) {
            var.set(&bilinear_kernel(c, k, vb.device())?)?;
        }
        Ok(Self {
            weight,
            stride,
            padding: stride / 2,
        })
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = crate::grad::param(&self.weight);
        if crate::precision::lowers(x) {
            // bf16 activations, the f32 weight cast by the op (see `Conv2d::in_use`).
            let x = crate::precision::operand(x)?;
            return crate::ops::conv::conv_transpose2d(&x, &w, self.stride, self.padding, 1);
        }
        crate::ops::conv::conv_transpose2d(x, &w, self.stride, self.padding, 1)
    }
}

/// Interpolation matrix `out × inp` of a half-pixel-centre (align_corners = false) bilinear
/// resize, PyTorch's rule.
fn interp_matrix(out: usize, inp: usize, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; out * inp];
    let scale = inp as f32 / out as f32;
    for o in 0..out {
        let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        let f = src - i0 as f32;
        m[o * inp + i0] += 1.0 - f;
        m[o * inp + i1] += f;
    }
    Tensor::from_vec(m, (out, inp), device)
}

/// Differentiable bilinear resize of `N×C×H×W` to `h × w` (align_corners = false), as two
/// matmuls with interpolation matrices. A bf16 input is resized in f32 and rounded back.
pub fn resize_bilinear(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (n, c, hi, wi) = x.dims4()?;
    if (hi, wi) == (h, w) {
        return Ok(x.clone());
    }
    if x.dtype() == DType::BF16 {
        return crate::precision::in_f32(x, |x| resize_bilinear(x, h, w));
    }
    let rx = interp_matrix(w, wi, x.device())?.to_dtype(x.dtype())?.t()?; // wi × w
    let ry = interp_matrix(h, hi, x.device())?.to_dtype(x.dtype())?; // h × hi
    let y = x.reshape((n * c * hi, wi))?.matmul(&rx)?; // (n c hi) × w
    let y = y.reshape((n * c, hi, w))?;
    ry.broadcast_left(n * c)?.matmul(&y)?.reshape((n, c, h, w))
}
