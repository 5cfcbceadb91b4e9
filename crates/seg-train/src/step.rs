//! The one training step, used by the trainer, the benchmarks and the tests: a method's loss
//! terms are summed per loss group, each sum is differentiated on its own, and only then does
//! every optimiser group step with the gradients of the loss group its parameters name, so no
//! gradient is taken through weights another group already moved. Nothing is read back from
//! the device here: the step returns the terms as tensors, and the caller reads them after the
//! optimisers have stepped.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use seg_core::{GroupId, LossTerm, Method, StepCx};
use seg_nn::Optimizer;

use crate::config::TrainerConfig;
use crate::error::TrainError;

/// One optimiser group.
pub struct Group {
    pub id: GroupId,
    /// The loss group whose gradients move it.
    pub loss: GroupId,
    pub optimizer: Box<dyn Optimizer>,
    /// Learning rate at the start of a stage (before per-parameter multipliers).
    pub lr: f64,
    /// Values in its parameters, and in the optimiser's state for them (momentum; Adam's two
    /// moments).
    pub values: usize,
    pub state_values: usize,
}

/// The optimiser groups of a method, built from its parameter sets.
pub struct Stepper {
    pub groups: Vec<Group>,
    /// The arithmetic of the step's forward pass (`trainer.precision`).
    pub precision: seg_nn::Precision,
}

/// `(name, variable, lr multiplier)` of one optimiser's parameters.
type Members = Vec<(String, Var, f64)>;

/// Loss values by term name, read back from the device.
pub type TermValues = BTreeMap<String, f32>;

/// The first term whose value is not finite.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFiniteTerm {
    pub name: String,
    pub value: f32,
}

/// Where the learning-rate schedule stands: poly decay over the current stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrAt {
    pub step: usize,
    pub total: usize,
    pub power: f64,
}

impl Stepper {
    /// One optimiser per group the method's parameter sets name (none for frozen ones), with
    /// the settings `cfg` gives that group. Every trainable variable of `vars` must belong to
    /// exactly one set.
    pub fn new(method: &dyn Method, vars: &VarMap, cfg: &TrainerConfig) -> Result<Self, TrainError> {
        let mut claimed: BTreeMap<String, GroupId> = BTreeMap::new();
        let mut by_group: BTreeMap<GroupId, (GroupId, Members)> = BTreeMap::new();
        for set in method.parameters() {
            for (name, var) in &set.vars {
                if let Some(g) = claimed.insert(name.clone(), set.group) {
                    return Err(TrainError::Setup(format!(
                        "variable `{name}` is claimed by groups `{g}` and `{}`",
                        set.group
                    )));
                }
                if set.group != GroupId::FROZEN {
                    let e = by_group.entry(set.group).or_insert((set.loss, Vec::new()));
                    if e.0 != set.loss {
                        return Err(TrainError::Setup(format!(
                            "group `{}` is driven by two loss groups (`{}` and `{}`)",
                            set.group, e.0, set.loss
                        )));
                    }
                    e.1.push((name.clone(), var.clone(), set.lr_mult));
                }
            }
        }
        {
            let data = vars
                .data()
                .lock()
                .map_err(|_| TrainError::Setup("poisoned var map".into()))?;
            let mut names: Vec<&String> = data.keys().collect();
            names.sort();
            for name in names {
                if !seg_nn::layers::is_statistic(name) && !claimed.contains_key(name) {
                    return Err(TrainError::Setup(format!(
                        "variable `{name}` belongs to no parameter group of method `{}`",
                        method.name()
                    )));
                }
            }
        }
        let known: BTreeSet<&str> = by_group.keys().map(|g| g.name()).collect();
        if let Some(unknown) = cfg.groups.keys().find(|k| !known.contains(k.as_str())) {
            return Err(TrainError::Setup(format!(
                "trainer.groups.{unknown}: method `{}` has no such parameter group (it has: {})",
                method.name(),
                known.iter().copied().collect::<Vec<_>>().join(", ")
            )));
        }
        let mut groups = Vec::new();
        for (id, (loss, mut params)) in by_group {
            params.sort_by(|a, b| a.0.cmp(&b.0));
            let (opt, lr) = cfg.group_settings(id.name()).map_err(TrainError::Setup)?;
            let values: usize = params.iter().map(|(_, v, _)| v.elem_count()).sum();
            let state_values = match opt {
                seg_nn::OptimizerConfig::Sgd { momentum, .. } => values * usize::from(momentum != 0.0),
                seg_nn::OptimizerConfig::Adam { .. } => 2 * values,
            };
            groups.push(Group {
                id,
                loss,
                optimizer: opt.build(params)?,
                lr,
                values,
                state_values,
            });
        }
        Ok(Self {
            groups,
            precision: cfg.precision,
        })
    }

    /// The trainable parameters by group, and what they and their optimiser state hold in f32:
    /// `segmenter 14.71 M, discriminator 530.4 k: 61 MB, 183 MB with optimiser state`.
    pub fn summary(&self) -> String {
        // Millions of values and megabytes, with a decimal more for the small ones (a small
        // model's discriminator is thousands of values, not "0.00 M").
        let count = |n: usize| match n {
            0..1_000_000 => format!("{:.1} k", n as f64 / 1e3),
            _ => format!("{:.2} M", n as f64 / 1e6),
        };
        let mb = |n: usize| match (n * 4) as f64 / 1e6 {
            m if m < 10.0 => format!("{m:.2} MB"),
            m => format!("{m:.0} MB"),
        };
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|g| format!("{} {}", g.id, count(g.values)))
            .collect();
        let values: usize = self.groups.iter().map(|g| g.values).sum();
        let state: usize = self.groups.iter().map(|g| g.state_values).sum();
        format!(
            "{}: {}, {} with optimiser state",
            groups.join(", "),
            mb(values),
            mb(values + state)
        )
    }

    /// One step: the method's terms for `cx`, one backward per loss group that has terms, then
    /// every optimiser group whose loss group had terms steps at `poly(lr, at)`. Returns the
    /// terms (values still on the device).
    pub fn step(&mut self, method: &dyn Method, cx: &StepCx<'_>, at: LrAt) -> Result<Vec<LossTerm>, TrainError> {
        self.step_unnamed(method, cx, at).map_err(|e| out_of_memory(e, cx))
    }

    fn step_unnamed(&mut self, method: &dyn Method, cx: &StepCx<'_>, at: LrAt) -> Result<Vec<LossTerm>, TrainError> {
        let terms = {
            let _precision = seg_nn::autocast(self.precision);
            method.losses(cx)?
        };
        let mut grads = BTreeMap::new();
        for g in &self.groups {
            if grads.contains_key(&g.loss) {
                continue;
            }
            let mine: Vec<&Tensor> = terms.iter().filter(|t| t.group == g.loss).map(|t| &t.value).collect();
            let Some((first, rest)) = mine.split_first() else {
                continue;
            };
            let mut total = (*first).clone();
            for t in rest {
                total = (total + *t)?;
            }
            grads.insert(g.loss, seg_nn::backward(&total)?);
        }
        for g in &mut self.groups {
            if let Some(grad) = grads.get(&g.loss) {
                let lr = seg_nn::poly_lr(g.lr, at.step, at.total, at.power);
                g.optimizer.step(grad, lr)?;
            }
        }
        Ok(terms)
    }
}

/// A step that ran the device out of memory (CUDA's `CUDA_ERROR_OUT_OF_MEMORY`) is named with
/// its batches and the settings that size them; any other error is returned as it is.
pub fn out_of_memory(e: TrainError, cx: &StepCx<'_>) -> TrainError {
    let TrainError::Tensor(inner) = &e else {
        return e;
    };
    let cause = inner.to_string();
    if !(cause.contains("OUT_OF_MEMORY") || cause.to_ascii_lowercase().contains("out of memory")) {
        return e;
    }
    let mut batches = format!("a source batch of {:?}", cx.source.images.dims());
    if let Some(t) = cx.target {
        batches += &format!(" and a target batch of {:?}", t.images.dims());
    }
    TrainError::OutOfMemory { batches, cause }
}

/// Reads the terms' values back (after the optimisers stepped), summed by name; the first
/// non-finite one is returned as the inner error.
pub fn read_terms(terms: &[LossTerm]) -> Result<Result<TermValues, NonFiniteTerm>, TrainError> {
    let mut values = BTreeMap::new();
    for t in terms {
        let v = t.value.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        if !v.is_finite() {
            return Ok(Err(NonFiniteTerm {
                name: t.name.to_string(),
                value: v,
            }));
        }
        *values.entry(t.name.to_string()).or_insert(0.0) += v;
    }
    Ok(Ok(values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use seg_core::{Batch, Domain, Stage, StepInfo};

    #[test]
    fn a_device_out_of_memory_names_the_batches_and_the_settings() {
        let batch = |n: usize| Batch {
            images: Tensor::zeros((n, 3, 8, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
            labels: None,
            domain: Domain::Source,
            names: Vec::new(),
            det: None,
        };
        let (source, target) = (batch(4), batch(2));
        let cx = StepCx {
            source: &source,
            target: Some(&target),
            stage: Stage::Train,
            step: StepInfo {
                step: 0,
                total_steps: 1,
            },
            target_bn_only: false,
        };
        let oom = candle_core::Error::Msg("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into());
        let e = out_of_memory(TrainError::Tensor(oom), &cx).to_string();
        assert!(
            e.contains("ran out of memory")
                && e.contains("a source batch of [4, 3, 8, 16] and a target batch of [2, 3, 8, 16]")
                && e.contains("trainer.batch_size")
                && e.contains("CUDA_ERROR_OUT_OF_MEMORY"),
            "{e}"
        );
        let other = TrainError::Tensor(candle_core::Error::Msg("shape mismatch".into()));
        assert!(matches!(out_of_memory(other, &cx), TrainError::Tensor(_)));
    }
}
