//! Optimisers with PyTorch semantics: SGD with momentum and (coupled) weight decay, and Adam.
//! State (momentum buffers, moments, step count) is exposed by name so checkpoints store it and
//! a resumed run continues bit for bit. Buffers are variables updated in place.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// Which optimiser a parameter group uses, and its settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OptimizerConfig {
    Sgd {
        #[serde(default = "default_momentum")]
        momentum: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    Adam {
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
}

fn default_momentum() -> f64 {
    0.9
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}

impl OptimizerConfig {
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
