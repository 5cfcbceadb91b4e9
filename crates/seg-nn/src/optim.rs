//! Optimisers with PyTorch semantics: SGD with momentum and (coupled) weight decay, and Adam.
//! State (momentum buffers, moments, step count) is exposed by name so checkpoints store it and
//! a resumed run continues bit for bit. Buffers are variables updated in place.
//!
//! On the CPU each update is a fused in-place pass over the parameter and its buffers (candle
//! in-place custom ops, [`inplace`]): no tensor is allocated per parameter per step. Elsewhere
//! the same formulas run as tensor ops.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// Which optimiser a parameter group uses, and its settings. Written to a config whole (with
/// its `kind`); read back, as any optimiser table, through [`OptimizerPatch`] and
/// [`OptimizerConfig::amended`], so it has no `Deserialize` of its own.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum OptimizerConfig {
    Sgd {
        momentum: f64,
        weight_decay: f64,
    },
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    /// Checks the settings (`key` names the config section in the message): momentum and betas
    /// in `[0, 1)`, weight decay ≥ 0, Adam's eps > 0.
    pub fn validate(&self, key: &str) -> std::result::Result<(), String> {
        let unit = |name: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{key}.{name} = {v}: must be in [0, 1)"))
            }
        };
        let (OptimizerConfig::Sgd { weight_decay, .. } | OptimizerConfig::Adam { weight_decay, .. }) = *self;
        if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
            return Err(format!("{key}.weight_decay = {weight_decay}: must be finite and ≥ 0"));
        }
        match *self {
            OptimizerConfig::Sgd { momentum, .. } => unit("momentum", momentum),
            OptimizerConfig::Adam { beta1, beta2, eps, .. } => {
                unit("beta1", beta1)?;
                unit("beta2", beta2)?;
                if eps > 0.0 && eps.is_finite() {
                    Ok(())
                } else {
                    Err(format!("{key}.eps = {eps}: must be finite and positive"))
                }
            }
        }
    }

    /// Builds the optimiser over `(name, variable, lr multiplier)` triples.
    pub fn build(&self, params: Vec<(String, Var, f64)>) -> Result<Box<dyn Optimizer>> {
        Ok(match *self {
            OptimizerConfig::Sgd { momentum, weight_decay } => Box::new(Sgd::new(params, momentum, weight_decay)?),
            OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => Box::new(Adam::new(params, beta1, beta2, eps, weight_decay)?),
        })
    }
}

/// The two optimisers, as a config's `kind` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

impl OptimizerKind {
    fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        }
    }
}

/// An optimiser table as a config file writes it, every field optional: it amends an
/// optimiser ([`OptimizerConfig::amended`]), so a field left out keeps that optimiser's value.
/// A `kind` other than the amended optimiser's starts from that kind's own defaults (PyTorch's:
/// SGD momentum 0.9 here, weight decay 0; Adam betas 0.9 and 0.999, eps 1e-8, weight decay 0).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<OptimizerKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta2: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
}

impl OptimizerConfig {
    pub fn kind(&self) -> OptimizerKind {
        match self {
            OptimizerConfig::Sgd { .. } => OptimizerKind::Sgd,
            OptimizerConfig::Adam { .. } => OptimizerKind::Adam,
        }
    }

    /// `kind` with its own defaults (PyTorch's, with SGD momentum 0.9: the value every FCN and
    /// adaptation paper uses, where PyTorch's default is 0).
    pub fn fresh(kind: OptimizerKind) -> Self {
        match kind {
            OptimizerKind::Sgd => OptimizerConfig::Sgd {
                momentum: 0.9,
                weight_decay: 0.0,
            },
            OptimizerKind::Adam => OptimizerConfig::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
        }
    }

    /// This optimiser with `patch`'s fields written over it (from [`OptimizerConfig::fresh`]
    /// when the patch names another kind). A field the resulting kind does not have is an
    /// error naming it.
    pub fn amended(&self, patch: &OptimizerPatch) -> std::result::Result<Self, String> {
        let kind = patch.kind.unwrap_or(self.kind());
        let mut out = if kind == self.kind() {
            self.clone()
        } else {
            Self::fresh(kind)
        };
        let (foreign, has): (&[(&str, Option<f64>)], &str) = match kind {
            OptimizerKind::Sgd => (
                &[("beta1", patch.beta1), ("beta2", patch.beta2), ("eps", patch.eps)],
                "momentum, weight_decay",
            ),
            OptimizerKind::Adam => (&[("momentum", patch.momentum)], "beta1, beta2, eps, weight_decay"),
        };
        if let Some((name, _)) = foreign.iter().find(|(_, v)| v.is_some()) {
            return Err(format!("`{name}` is not a setting of {} (it has: {has})", kind.name()));
        }
        match &mut out {
            OptimizerConfig::Sgd { momentum, weight_decay } => {
                *momentum = patch.momentum.unwrap_or(*momentum);
                *weight_decay = patch.weight_decay.unwrap_or(*weight_decay);
            }
            OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                *beta1 = patch.beta1.unwrap_or(*beta1);
                *beta2 = patch.beta2.unwrap_or(*beta2);
                *eps = patch.eps.unwrap_or(*eps);
                *weight_decay = patch.weight_decay.unwrap_or(*weight_decay);
            }
        }
        Ok(out)
    }
}

impl From<&OptimizerConfig> for OptimizerPatch {
    /// The whole optimiser as a table: every field of its kind written.
    fn from(c: &OptimizerConfig) -> Self {
        match *c {
            OptimizerConfig::Sgd { momentum, weight_decay } => OptimizerPatch {
                kind: Some(OptimizerKind::Sgd),
                momentum: Some(momentum),
                weight_decay: Some(weight_decay),
                ..OptimizerPatch::default()
            },
            OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => OptimizerPatch {
                kind: Some(OptimizerKind::Adam),
                beta1: Some(beta1),
                beta2: Some(beta2),
                eps: Some(eps),
                weight_decay: Some(weight_decay),
                momentum: None,
            },
        }
    }
}

/// An optimiser over a fixed set of named parameters.
pub trait Optimizer: Send {
    /// One update with learning rate `lr` (times each parameter's multiplier). Parameters
    /// without a gradient are left alone.
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()>;
    /// Named state tensors for checkpoints.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores state saved by [`Optimizer::state`]; a missing entry is an error.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
}

fn zeros_var(v: &Var) -> Result<Var> {
    Var::from_tensor(&v.as_tensor().zeros_like()?)
}

fn load_into(state: &HashMap<String, Tensor>, key: &str, var: &Var) -> Result<()> {
    let t = state
        .get(key)
        .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state `{key}` missing")))?;
    if t.dims() != var.dims() {
        candle_core::bail!(
            "optimizer state `{key}` has shape {:?}, its variable {:?}",
            t.dims(),
            var.dims()
        );
    }
    var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)
}

/// SGD with momentum and weight decay (PyTorch: `g += wd p; b = m b + g; p -= lr b`).
pub struct Sgd {
    params: Vec<(String, Var, f64)>,
    bufs: Vec<Var>,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    pub fn new(params: Vec<(String, Var, f64)>, momentum: f64, weight_decay: f64) -> Result<Self> {
        let bufs = params.iter().map(|(_, v, _)| zeros_var(v)).collect::<Result<_>>()?;
        Ok(Self {
            params,
            bufs,
            momentum,
            weight_decay,
        })
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for ((_, p, mult), buf) in self.params.iter().zip(&self.bufs) {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            if inplace::applies(&[p.as_tensor(), buf.as_tensor(), g], inplace::CUDA_SGD) {
                let (m, wd, lr) = (self.momentum as f32, self.weight_decay as f32, (lr * mult) as f32);
                if p.device().is_cuda() {
                    p.inplace_op3(buf.as_tensor(), g, &inplace::SgdStep { m, wd, lr })?;
                } else {
                    buf.inplace_op3(g, p.as_tensor(), &inplace::Momentum { m, wd })?;
                    p.inplace_op2(buf.as_tensor(), &inplace::Descend { lr })?;
                }
                continue;
            }
            let g = if self.weight_decay != 0.0 {
                (g + (p.as_tensor() * self.weight_decay)?)?
            } else {
                g.clone()
            };
            let b = if self.momentum != 0.0 {
                ((buf.as_tensor() * self.momentum)? + g)?
            } else {
                g
            };
            p.set(&(p.as_tensor() - (&b * (lr * mult))?)?)?;
            buf.set(&b)?;
        }
        Ok(())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.bufs)
            .map(|((n, _, _), b)| (format!("{n}.momentum"), b.as_tensor().clone()))
            .collect()
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for ((n, _, _), b) in self.params.iter().zip(&self.bufs) {
            load_into(state, &format!("{n}.momentum"), b)?;
        }
        Ok(())
    }
}

/// Adam (with optional L2 weight decay added to the gradient, as `torch.optim.Adam`).
pub struct Adam {
    params: Vec<(String, Var, f64)>,
    m: Vec<Var>,
    v: Vec<Var>,
    t: Var,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl Adam {
    pub fn new(params: Vec<(String, Var, f64)>, beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Result<Self> {
        let m = params.iter().map(|(_, v, _)| zeros_var(v)).collect::<Result<_>>()?;
        let v = params.iter().map(|(_, v, _)| zeros_var(v)).collect::<Result<_>>()?;
        let t = Var::from_tensor(&Tensor::zeros(1, candle_core::DType::F32, &candle_core::Device::Cpu)?)?;
        Ok(Self {
            params,
            m,
            v,
            t,
            beta1,
            beta2,
            eps,
            weight_decay,
        })
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let t = self.t.as_tensor().to_vec1::<f32>()?[0] as f64 + 1.0;
        self.t.set(&Tensor::new(&[t as f32], &candle_core::Device::Cpu)?)?;
        let (bc1, bc2) = (1.0 - self.beta1.powf(t), 1.0 - self.beta2.powf(t));
        for (((_, p, mult), m), v) in self.params.iter().zip(&self.m).zip(&self.v) {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            if inplace::applies(&[p.as_tensor(), m.as_tensor(), v.as_tensor(), g], false) {
                let wd = self.weight_decay as f32;
                let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
                m.inplace_op3(
                    g,
                    p.as_tensor(),
                    &inplace::Moment {
                        beta: b1,
                        rest: (1.0 - self.beta1) as f32,
                        wd,
                        square: false,
                    },
                )?;
                v.inplace_op3(
                    g,
                    p.as_tensor(),
                    &inplace::Moment {
                        beta: b2,
                        rest: (1.0 - self.beta2) as f32,
                        wd,
                        square: true,
                    },
                )?;
                let step = inplace::AdamStep {
                    lr: (lr * mult) as f32,
                    bc1: bc1 as f32,
                    bc2: bc2 as f32,
                    eps: self.eps as f32,
                };
                p.inplace_op3(m.as_tensor(), v.as_tensor(), &step)?;
                continue;
            }
            let g = if self.weight_decay != 0.0 {
                (g + (p.as_tensor() * self.weight_decay)?)?
            } else {
                g.clone()
            };
            let m_new = ((m.as_tensor() * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v_new = ((v.as_tensor() * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((&v_new / bc2)?.sqrt()? + self.eps)?;
            let update = ((&m_new / bc1)? / denom)?;
            p.set(&(p.as_tensor() - (update * (lr * mult))?)?)?;
            m.set(&m_new)?;
            v.set(&v_new)?;
        }
        Ok(())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("adam.t".to_string(), self.t.as_tensor().clone())];
        for (((n, _, _), m), v) in self.params.iter().zip(&self.m).zip(&self.v) {
            out.push((format!("{n}.adam_m"), m.as_tensor().clone()));
            out.push((format!("{n}.adam_v"), v.as_tensor().clone()));
        }
        out
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        load_into(state, "adam.t", &self.t)?;
        for (((n, _, _), m), v) in self.params.iter().zip(&self.m).zip(&self.v) {
            load_into(state, &format!("{n}.adam_m"), m)?;
            load_into(state, &format!("{n}.adam_v"), v)?;
        }
        Ok(())
    }
}

/// The in-place CPU updates: the tensor path's formulas in one pass over f32 memory.
pub mod inplace {
    use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
    use seg_kernels::update;

    /// Whether SGD's updates have CUDA kernels (`seg_cuda::nvrtc`); Adam's run on the CPU
    /// only.
    pub const CUDA_SGD: bool = cfg!(feature = "cuda");

    /// All f32, contiguous, of one shape, and all on the CPU (or all on CUDA, where `cuda`
    /// says the ops have a CUDA side).
    pub fn applies(ts: &[&Tensor], cuda: bool) -> bool {
        let on = |t: &&Tensor| t.device().is_cpu() || (cuda && t.device().is_cuda());
        ts.iter().all(|t| on(t) && t.dtype() == DType::F32 && t.is_contiguous())
            && ts
                .windows(2)
                .all(|w| w[0].shape() == w[1].shape() && w[0].device().same_device(w[1].device()))
    }

    fn read<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
        match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
            _ => candle_core::bail!("in-place optimizer step: contiguous f32 expected"),
        }
    }

    fn write<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
        match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
            _ => candle_core::bail!("in-place optimizer step: contiguous f32 expected"),
        }
    }

    /// The three operands of an in-place update as slices (the first written), of one length.
    fn operands<'a>(
        (s1, l1): (&'a mut CpuStorage, &Layout),
        (s2, l2): (&'a CpuStorage, &Layout),
        (s3, l3): (&'a CpuStorage, &Layout),
    ) -> Result<(&'a mut [f32], &'a [f32], &'a [f32])> {
        let (a, b, c) = (write(s1, l1)?, read(s2, l2)?, read(s3, l3)?);
        if a.len() != b.len() || a.len() != c.len() {
            candle_core::bail!(
                "in-place optimizer step: operands of {}, {} and {} values",
                a.len(),
                b.len(),
                c.len()
            );
        }
        Ok((a, b, c))
    }

    /// `buf = m·buf + (g + wd·p)` (SGD's momentum buffer; with m = 0 it is the step).
    pub struct Momentum {
        pub m: f32,
        pub wd: f32,
    }

    impl InplaceOp3 for Momentum {
        fn name(&self) -> &'static str {
            "sgd-momentum"
        }

        fn cpu_fwd(
            &self,
            s1: &mut CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<()> {
            let (buf, g, p) = operands((s1, l1), (s2, l2), (s3, l3))?;
            update::momentum(buf, g, p, self.m, self.wd);
            Ok(())
        }
    }

    /// `p = p − lr·buf`.
    pub struct Descend {
        pub lr: f32,
    }

    impl InplaceOp2 for Descend {
        fn name(&self) -> &'static str {
            "sgd-descend"
        }

        fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
            let (p, b) = (write(s1, l1)?, read(s2, l2)?);
            if p.len() != b.len() {
                candle_core::bail!(
                    "in-place optimizer step: operands of {} and {} values",
                    p.len(),
                    b.len()
                );
            }
            update::descend(p, b, self.lr);
            Ok(())
        }
    }

    /// SGD's whole step on CUDA in one kernel (`seg_cuda::nvrtc::sgd_step`): `p` in place,
    /// the momentum buffer written alongside. The CPU runs [`Momentum`] then [`Descend`].
    pub struct SgdStep {
        pub m: f32,
        pub wd: f32,
        pub lr: f32,
    }

    impl InplaceOp3 for SgdStep {
        fn name(&self) -> &'static str {
            "sgd-step"
        }

        fn cpu_fwd(
            &self,
            _: &mut CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<()> {
            candle_core::bail!("sgd-step runs on CUDA only; the CPU uses sgd-momentum and sgd-descend")
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            p: &mut candle_core::CudaStorage,
            lp: &Layout,
            buf: &candle_core::CudaStorage,
            lb: &Layout,
            g: &candle_core::CudaStorage,
            lg: &Layout,
        ) -> Result<()> {
            seg_cuda::nvrtc::sgd_step(p, lp, buf, lb, g, lg, (self.m, self.wd, self.lr))
        }
    }

    /// Adam's moment: `mom = β·mom + (1−β)·h` with `h = g'` or `g'²`, `g' = g + wd·p`;
    /// `rest` is `1 − β` computed in f64, as the tensor path does.
    pub struct Moment {
        pub beta: f32,
        pub rest: f32,
        pub wd: f32,
        pub square: bool,
    }

    impl InplaceOp3 for Moment {
        fn name(&self) -> &'static str {
            "adam-moment"
        }

        fn cpu_fwd(
            &self,
            s1: &mut CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<()> {
            let (mom, g, p) = operands((s1, l1), (s2, l2), (s3, l3))?;
            update::moment(mom, g, p, self.beta, self.rest, self.wd, self.square);
            Ok(())
        }
    }

    /// `p = p − lr · (m / bc1) / (sqrt(v / bc2) + eps)`.
    pub struct AdamStep {
        pub lr: f32,
        pub bc1: f32,
        pub bc2: f32,
        pub eps: f32,
    }

    impl InplaceOp3 for AdamStep {
        fn name(&self) -> &'static str {
            "adam-step"
        }

        fn cpu_fwd(
            &self,
            s1: &mut CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<()> {
            let (p, m, v) = operands((s1, l1), (s2, l2), (s3, l3))?;
            update::adam_step(p, m, v, self.lr, self.bc1, self.bc2, self.eps);
            Ok(())
        }
    }
}
