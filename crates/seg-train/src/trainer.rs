//! The training loop. Per step: a source batch (and, with a head, a target batch) goes through
//! the backbone; the source cross-entropy and the head's terms are grouped by parameter group;
//! each group's sum is differentiated separately, and only then does each group's optimiser
//! step, so no gradient is taken through weights another group already moved. Checkpoints are
//! atomic; `metrics.jsonl` never holds entries past the checkpoint a resumed run restarts from.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use seg_core::{AdaptationHead, Backbone, FeatureTap, HeadInput, LossTerm, ParamGroup, StepInfo};
use seg_data::{Dataset, Loader};
use seg_nn::{cross_entropy_ignore, Optimizer};

use crate::checkpoint::{self, CheckpointMeta};
use crate::config::{BnStats, TrainerConfig};
use crate::error::TrainError;
use crate::infer::{evaluate, EvalSetup};

/// Everything a run needs, built by the composition root.
pub struct TrainSetup {
    pub run_dir: PathBuf,
    pub config: TrainerConfig,
    /// The resolved run configuration (TOML) stored in checkpoints.
    pub config_toml: String,
    pub vars: VarMap,
    pub backbone: Box<dyn Backbone>,
    pub head: Option<Box<dyn AdaptationHead>>,
    pub source: Loader,
    pub target: Option<Loader>,
    /// Target validation split and how to evaluate on it.
    pub eval: Option<(Dataset, EvalSetup, seg_labels::Protocol)>,
    pub device: Device,
    pub resume: bool,
    pub progress: bool,
    /// After the last step, re-estimate the batch-norm statistics over this many batches of
    /// this target loader, exactly as AdaBN does ([`crate::reestimate_bn`]), before the final
    /// checkpoint and evaluation. The adaptation runs use it so that they end with the same
    /// test-time statistics procedure (and the same target batches) as AdaBN.
    pub final_bn: Option<(Loader, usize)>,
    /// Samples left out before the run started, counted per dataset role (the run folder's
    /// `skipped.json` names them); logged to `metrics.jsonl` at step 0.
    pub left_out: BTreeMap<String, usize>,
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub steps: usize,
    pub final_miou: Option<f64>,
    pub checkpoint: PathBuf,
    pub seconds: f64,
}

struct Group {
    group: ParamGroup,
    optimizer: Box<dyn Optimizer>,
    /// Learning rate at step 0 (before per-parameter multipliers).
    lr: f64,
}

pub struct Trainer {
    s: TrainSetup,
    groups: Vec<Group>,
    step: usize,
}

fn group_name(g: ParamGroup) -> &'static str {
    match g {
        ParamGroup::Segmenter => "segmenter",
        ParamGroup::Discriminator => "discriminator",
        ParamGroup::Generator => "generator",
    }
}

impl Trainer {
    /// Sorts variables into parameter groups and builds one optimiser per group.
    pub fn new(s: TrainSetup) -> Result<Self, TrainError> {
        let head_groups = s.head.as_ref().map(|h| h.param_groups()).unwrap_or_default();
        let mut by_group: BTreeMap<ParamGroup, Vec<(String, Var, f64)>> = BTreeMap::new();
        {
            let data = s
                .vars
                .data()
                .lock()
                .map_err(|_| TrainError::Setup("poisoned var map".into()))?;
            let mut names: Vec<&String> = data.keys().collect();
            names.sort();
            for name in names {
                if seg_nn::layers::is_statistic(name) {
                    continue;
                }
                let var = data[name].clone();
                if name.starts_with("model.") {
                    by_group
                        .entry(ParamGroup::Segmenter)
                        .or_default()
                        .push((name.clone(), var, 1.0));
                    continue;
                }
                let best = head_groups
                    .iter()
                    .filter(|(prefix, _, _)| name.starts_with(&format!("{prefix}.")))
                    .max_by_key(|(prefix, _, _)| prefix.len());
                match best {
                    Some((_, g, mult)) => by_group.entry(*g).or_default().push((name.clone(), var, *mult)),
                    None => {
                        return Err(TrainError::Setup(format!(
                            "variable `{name}` belongs to no parameter group"
                        )))
                    }
                }
            }
        }
        let mut groups = Vec::new();
        for (g, params) in by_group {
            let (cfg, lr) = match g {
                ParamGroup::Segmenter => (&s.config.optimizer, s.config.lr),
                _ => (&s.config.head_optimizer, s.config.head_lr),
            };
            groups.push(Group {
                group: g,
                optimizer: cfg.build(params)?,
                lr,
            });
        }
        Ok(Self { s, groups, step: 0 })
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.s.run_dir.join("checkpoint.safetensors")
    }

    fn metrics_path(&self) -> PathBuf {
        self.s.run_dir.join("metrics.jsonl")
    }

    /// Restores variables, optimiser state, step and loader positions from the run's checkpoint,
    /// and drops `metrics.jsonl` lines written after it.
    fn resume(&mut self) -> Result<(), TrainError> {
        let ck = checkpoint::load(&self.checkpoint_path(), &self.s.device)?;
        // Writes killed midway leave `.NAME.PID.tmp` files; nothing reads them.
        match seg_labels::fsutil::remove_stale_temps(&self.s.run_dir) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} temporary file(s) left by an interrupted write"),
            Err(e) => tracing::warn!("{}: cannot clear temporary files: {e}", self.s.run_dir.display()),
        }
        ck.restore_vars(&self.s.vars)?;
        for g in &mut self.groups {
            let state = ck.optimizer_state(group_name(g.group));
            g.optimizer.load_state(&state).map_err(|e| TrainError::Checkpoint {
                path: ck.path.clone(),
                reason: format!("optimizer state of `{}`: {e}", group_name(g.group)),
            })?;
        }
        if let Some(st) = ck.meta.source_loader {
            self.s.source.restore(st);
        }
        if let (Some(t), Some(st)) = (self.s.target.as_mut(), ck.meta.target_loader) {
            t.restore(st);
        }
        self.step = ck.meta.step;
        let path = self.metrics_path();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s as usize <= self.step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            seg_labels::fsutil::write_atomic(&path, kept.as_bytes())
                .map_err(|cause| TrainError::Write { path, cause })?;
        }
        tracing::info!("resumed from step {} ({})", self.step, ck.path.display());
        Ok(())
    }

    fn save_checkpoint(&self) -> Result<(), TrainError> {
        let mut tensors: Vec<(String, Tensor)> = {
            let data = self
                .s
                .vars
                .data()
                .lock()
                .map_err(|_| TrainError::Setup("poisoned var map".into()))?;
            data.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
        };
        for g in &self.groups {
            for (n, t) in g.optimizer.state() {
                tensors.push((format!("optim.{}.{n}", group_name(g.group)), t));
            }
        }
        let meta = CheckpointMeta {
            step: self.step,
            source_loader: Some(self.s.source.state()),
            target_loader: self.s.target.as_ref().map(|t| t.state()),
            config: self.s.config_toml.clone(),
        };
        checkpoint::save(&self.checkpoint_path(), &tensors, &meta)
    }

    fn log(&self, value: serde_json::Value) -> Result<(), TrainError> {
        let path = self.metrics_path();
        seg_labels::fsutil::append_line(&path, &value.to_string()).map_err(|cause| TrainError::Write { path, cause })
    }

    /// Evaluates on the target val split and writes `eval/step_N/`.
    pub fn evaluate_now(&self) -> Result<Option<f64>, TrainError> {
        let Some((ds, setup, protocol)) = &self.s.eval else {
            return Ok(None);
        };
        let report = evaluate(self.s.backbone.as_ref(), ds, setup)?.finish(*protocol);
        let dir = self.s.run_dir.join("eval").join(format!("step_{:06}", self.step));
        report.write(&dir)?;
        self.log(
            serde_json::json!({"step": self.step, "eval": {"miou": report.miou, "dir": dir.display().to_string()}}),
        )?;
        Ok(report.miou)
    }

    fn one_step(&mut self) -> Result<BTreeMap<String, f32>, TrainError> {
        let cfg = &self.s.config;
        let src = self.s.source.next_batch()?;
        let labels = src
            .labels
            .clone()
            .ok_or_else(|| TrainError::Setup("source batch has no labels".into()))?;
        let head_taps: Vec<FeatureTap> = self.s.head.as_ref().map(|h| h.taps()).unwrap_or_default();
        let has_target = self.s.head.is_some();
        let bb = self.s.backbone.as_ref();
        if has_target && cfg.bn_stats == BnStats::Target && bb.has_batch_norm() {
            bb.set_bn_momentum(Some(0.0), false)?;
        }
        let src_f = bb.forward_taps(&src.images, true, &head_taps)?;
        let task_weight = self.s.head.as_ref().map_or(1.0, |h| h.source_task_weight());
        let seg = cross_entropy_ignore(src_f.logits()?, &labels, seg_labels::IGNORE as u32)?;
        let mut terms = vec![LossTerm {
            name: "seg",
            value: if task_weight == 1.0 { seg } else { (seg * task_weight)? },
            group: ParamGroup::Segmenter,
        }];
        if let (Some(head), Some(target)) = (self.s.head.as_ref(), self.s.target.as_mut()) {
            if bb.has_batch_norm() {
                bb.set_bn_momentum(Some(0.1), false)?;
            }
            let tgt = target.next_batch()?;
            let tgt_f = bb.forward_taps(&tgt.images, true, &head_taps)?;
            if cfg.bn_stats == BnStats::Target && bb.has_batch_norm() {
                // Passes a head makes on its own (SAN's generated features through fc7) must
                // not move the target statistics.
                bb.set_bn_momentum(Some(0.0), false)?;
            }
            let input = HeadInput {
                backbone: bb,
                source: &src_f,
                source_labels: &labels,
                target: &tgt_f,
                step: StepInfo {
                    step: self.step,
                    total_steps: cfg.steps,
                },
            };
            terms.extend(head.losses(&input)?);
        } else if bb.has_batch_norm() {
            bb.set_bn_momentum(Some(0.1), false)?;
        }
        let mut values = BTreeMap::new();
        for t in &terms {
            let v = t.value.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
            if !v.is_finite() {
                let last = if self.checkpoint_path().exists() {
                    self.checkpoint_path().display().to_string()
                } else {
                    "none written yet".to_string()
                };
                return Err(TrainError::NonFinite {
                    term: t.name.to_string(),
                    value: v,
                    step: self.step,
                    last,
                });
            }
            *values.entry(t.name.to_string()).or_insert(0.0) += v;
        }
        // Differentiate every group first, then step: no group sees weights another moved.
        let mut grads = Vec::new();
        for g in &self.groups {
            let mine: Vec<&Tensor> = terms.iter().filter(|t| t.group == g.group).map(|t| &t.value).collect();
            if mine.is_empty() {
                grads.push(None);
                continue;
            }
            let mut total = mine[0].clone();
            for t in &mine[1..] {
                total = (total + *t)?;
            }
            grads.push(Some(seg_nn::backward(&total)?));
        }
        let progress_step = self.step;
        for (g, grad) in self.groups.iter_mut().zip(grads) {
            if let Some(grad) = grad {
                let lr = seg_nn::poly_lr(g.lr, progress_step, cfg.steps, cfg.lr_power);
                g.optimizer.step(&grad, lr)?;
            }
        }
        Ok(values)
    }

    /// Runs (or resumes) training to `config.steps`, checkpointing and evaluating as configured.
    pub fn run(self) -> Result<TrainOutcome, TrainError> {
        let steps = self.s.config.steps;
        self.run_until(steps)
    }

    /// Like [`Trainer::run`], but stops after step `stop` (checkpointing there) as if the run
    /// had been interrupted; the learning-rate schedule still follows `config.steps`.
    pub fn run_until(mut self, stop: usize) -> Result<TrainOutcome, TrainError> {
        std::fs::create_dir_all(&self.s.run_dir).map_err(|cause| TrainError::Write {
            path: self.s.run_dir.clone(),
            cause,
        })?;
        if self.s.resume {
            self.resume()?;
        } else {
            let _ = std::fs::remove_file(self.metrics_path());
            if !self.s.left_out.is_empty() {
                self.log(serde_json::json!({"step": 0, "left_out": self.s.left_out}))?;
            }
        }
        let total = self.s.config.steps;
        let start = Instant::now();
        let bar = if self.s.progress {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_position(self.step as u64);
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let per_step = self.s.config.batch_size
            + if self.s.head.is_some() {
                self.s.config.target_batch_size.unwrap_or(self.s.config.batch_size)
            } else {
                0
            };
        let mut last_eval = None;
        let stop = stop.min(total);
        while self.step < stop {
            let t0 = Instant::now();
            let losses = self.one_step()?;
            self.step += 1;
            let ips = per_step as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            let cfg = &self.s.config;
            if cfg.log_every > 0 && (self.step.is_multiple_of(cfg.log_every) || self.step == total) {
                let lr = seg_nn::poly_lr(cfg.lr, self.step - 1, total, cfg.lr_power);
                self.log(serde_json::json!({"step": self.step, "lr": lr, "losses": losses, "images_per_sec": ips}))?;
            }
            let msg: Vec<String> = losses.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
            bar.set_message(format!("{} | {ips:.1} img/s", msg.join(" ")));
            bar.set_position(self.step as u64);
            let cfg = &self.s.config;
            if cfg.checkpoint_every > 0 && self.step.is_multiple_of(cfg.checkpoint_every) && self.step < total {
                self.save_checkpoint()?;
            }
            if cfg.eval_every > 0 && self.step.is_multiple_of(cfg.eval_every) && self.step < total {
                last_eval = self.evaluate_now()?;
            }
        }
        bar.finish_and_clear();
        if self.step == total {
            if let Some((loader, batches)) = self.s.final_bn.as_mut() {
                crate::infer::reestimate_bn(self.s.backbone.as_ref(), loader, *batches)?;
            }
        }
        self.save_checkpoint()?;
        if self.s.eval.is_some() && self.step == total {
            last_eval = self.evaluate_now()?;
        }
        Ok(TrainOutcome {
            steps: self.step,
            final_miou: last_eval,
            checkpoint: self.checkpoint_path(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The backbone (for evaluation after training).
    pub fn backbone(&self) -> &dyn Backbone {
        self.s.backbone.as_ref()
    }
}
