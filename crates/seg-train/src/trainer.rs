//! The training loop over a [`Method`]'s stages: its pretraining steps (source batches only),
//! the training steps (a source batch and, when the method asks, a target batch, through
//! [`crate::step::Stepper`]), and the final batch-norm re-estimation. Loss values are read back
//! only after the optimisers have stepped. Checkpoints are atomic; `metrics.jsonl` never holds
//! entries past the checkpoint a resumed run restarts from.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use candle_nn::VarMap;
use seg_core::{Backbone, SegMethod, Stage, StepCx, StepInfo};
use seg_data::{Dataset, Loader};

use crate::checkpoint::{self, CheckpointMeta};
use crate::config::{BnStats, TrainerConfig};
use crate::error::TrainError;
use crate::infer::{evaluate, EvalSetup};
use crate::step::{read_terms, LrAt, Stepper};

/// Everything a run needs, built by the composition root.
pub struct TrainSetup {
    pub run_dir: PathBuf,
    pub config: TrainerConfig,
    /// The resolved run configuration (TOML) stored in checkpoints.
    pub config_toml: String,
    pub vars: VarMap,
    /// The method: its networks, modules, stages and step.
    pub method: Box<dyn SegMethod>,
    pub source: Loader,
    pub target: Option<Loader>,
    /// Target validation split and how to evaluate on it.
    pub eval: Option<(Dataset, EvalSetup, seg_labels::Protocol)>,
    pub device: Device,
    pub resume: bool,
    pub progress: bool,
    /// The target batches of the [`Stage::ReestimateBn`] stage (AdaBN's procedure,
    /// [`crate::reestimate_bn`]), run after the last step before the final checkpoint and
    /// evaluation; the stage is skipped without them (`eval.adabn_batches = 0`).
    pub final_bn: Option<(Loader, usize)>,
    /// Samples left out before the run started, counted per dataset role (the run folder's
    /// `skipped.json` names them); logged to `metrics.jsonl` at step 0.
    pub left_out: BTreeMap<String, usize>,
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The step this run ended at, and the one it started from (0, or a resumed checkpoint's).
    pub steps: usize,
    pub first_step: usize,
    pub final_miou: Option<f64>,
    pub checkpoint: PathBuf,
    pub seconds: f64,
}

pub struct Trainer {
    s: TrainSetup,
    stepper: Stepper,
    /// Steps of the method's pretraining stage, before the trainer's `steps`.
    pretrain: usize,
    step: usize,
    /// On resume, the config the checkpoint stores (TOML): what a finished run keeps in its
    /// `config.toml`, and its `trainer.eval_every` (a resume may change it) says whether the
    /// checkpoint's step had an evaluation due.
    config_then: Option<String>,
    /// The evaluation warnings already logged: each is said once per run, not at every
    /// evaluation.
    warned: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Trainer {
    /// Builds one optimiser per parameter group of the method.
    pub fn new(s: TrainSetup) -> Result<Self, TrainError> {
        s.config.validate().map_err(TrainError::Setup)?;
        let stepper = Stepper::new(s.method.as_ref(), &s.vars, &s.config)?;
        let stages = s.method.stages();
        let pretrain = stages
            .iter()
            .map(|st| match st {
                Stage::Pretrain { steps } => *steps,
                _ => 0,
            })
            .sum();
        Ok(Self {
            s,
            stepper,
            pretrain,
            step: 0,
            config_then: None,
            warned: Default::default(),
        })
    }

    /// The trainable parameters by group and the memory they take with their optimiser state
    /// ([`Stepper::summary`]).
    pub fn parameter_summary(&self) -> String {
        self.stepper.summary()
    }

    /// Steps of the whole run: the method's pretraining plus the trainer's `steps`.
    pub fn total_steps(&self) -> usize {
        self.pretrain + self.s.config.steps
    }

    /// The stage of global step `step` and the position within it.
    fn stage_at(&self, step: usize) -> (Stage, StepInfo) {
        if step < self.pretrain {
            (
                Stage::Pretrain { steps: self.pretrain },
                StepInfo {
                    step,
                    total_steps: self.pretrain,
                },
            )
        } else {
            (
                Stage::Train,
                StepInfo {
                    step: step - self.pretrain,
                    total_steps: self.s.config.steps,
                },
            )
        }
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.s.run_dir.join(crate::checkpoint::FILE)
    }

    fn metrics_path(&self) -> PathBuf {
        self.s.run_dir.join("metrics.jsonl")
    }

    /// Restores variables, optimiser state, step and loader positions from the run's checkpoint,
    /// and drops `metrics.jsonl` lines written after it.
    fn resume(&mut self) -> Result<(), TrainError> {
        let ck = checkpoint::load(&self.checkpoint_path(), &self.s.device)?;
        if let Some(warning) = ck.meta.other_methods_warning(&ck.path) {
            tracing::warn!("{warning}");
        }
        // Writes killed midway leave `.NAME.PID.tmp` files; nothing reads them.
        match seg_labels::fsutil::remove_stale_temps(&self.s.run_dir) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} temporary file(s) left by an interrupted write"),
            Err(e) => tracing::warn!("{}: cannot clear temporary files: {e}", self.s.run_dir.display()),
        }
        ck.restore_vars(&self.s.vars)?;
        for g in &mut self.stepper.groups {
            let state = ck.optimizer_state(g.id.name());
            g.optimizer.load_state(&state).map_err(|e| TrainError::Checkpoint {
                path: ck.path.clone(),
                reason: format!("optimizer state of `{}`: {e}", g.id),
            })?;
        }
        let refused = |reason: String| TrainError::Checkpoint {
            path: ck.path.clone(),
            reason,
        };
        if let Some(st) = ck.meta.source_loader {
            self.s.source.resume(st, "training").map_err(refused)?;
        }
        if let (Some(t), Some(st)) = (self.s.target.as_mut(), ck.meta.target_loader) {
            t.resume(st, "target training").map_err(refused)?;
        }
        self.step = ck.meta.step;
        self.config_then = Some(ck.meta.config.clone());
        crate::checkpoint::trim_metrics(&self.metrics_path(), self.step)?;
        self.warn_of_another_val_set();
        tracing::info!("resumed from step {} ({})", self.step, ck.path.display());
        Ok(())
    }

    fn save_checkpoint(&self) -> Result<(), TrainError> {
        let mut tensors = crate::checkpoint::var_tensors(&self.s.vars)?;
        for g in &self.stepper.groups {
            for (n, t) in g.optimizer.state() {
                tensors.push((format!("optim.{}.{n}", g.id), t));
            }
        }
        let meta = CheckpointMeta {
            step: self.step,
            source_loader: Some(self.s.source.state()),
            target_loader: self.s.target.as_ref().map(|t| t.state()),
            config: self.s.config_toml.clone(),
            methods_version: seg_core::METHODS_VERSION,
        };
        checkpoint::save(&self.checkpoint_path(), &tensors, &meta)
    }

    fn log(&self, value: serde_json::Value) -> Result<(), TrainError> {
        let path = self.metrics_path();
        seg_labels::fsutil::append_line(&path, &value.to_string()).map_err(|cause| TrainError::Write { path, cause })
    }

    /// The mIoU `metrics.jsonl` logged for `step`'s evaluation, if any.
    fn logged_miou(&self, step: usize) -> Option<f64> {
        crate::checkpoint::logged_eval(&self.metrics_path(), step)?["miou"].as_f64()
    }

    /// Warns when the val images differ from those the run's evaluations so far were on (a list
    /// or the split's folder changed between sessions): its curve would mix two image sets.
    /// Training is not affected, so the run goes on.
    fn warn_of_another_val_set(&self) {
        let Some((ds, _, _)) = &self.s.eval else {
            return;
        };
        let logged = checkpoint::metric_lines(&self.metrics_path())
            .into_iter()
            .rev()
            .find_map(|v| v.get("eval")?.get("val").cloned());
        let now = val_identity(ds);
        if let Some(then) = logged.filter(|then| *then != now) {
            tracing::warn!(
                "the target val split now holds {} images where the run's evaluations so far had {} (or other ones): \
                 its curve will mix two sets of images (data.target_val_list or the split's folder changed)",
                now["images"],
                then["images"]
            );
        }
    }

    /// The run's page, `report.html`: training curves, per-class IoU and predictions, from what
    /// is on disk.
    fn write_page(&self) -> Result<(), TrainError> {
        let title = format!(
            "seg-adapt run: {} ({})",
            self.s.method.name(),
            seg_core::steps(self.step)
        );
        seg_metrics::html::write_run_page(&self.s.run_dir, &title).map_err(|cause| TrainError::Write {
            path: self.s.run_dir.join("report.html"),
            cause,
        })?;
        Ok(())
    }

    /// Evaluates on the target val split and writes `eval/step_N/`.
    pub fn evaluate_now(&self) -> Result<Option<f64>, TrainError> {
        let Some((ds, setup, protocol)) = &self.s.eval else {
            return Ok(None);
        };
        let report = evaluate(self.s.method.deployed(), ds, setup)?.finish(*protocol);
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        crate::infer::log_new_warnings(&report.warnings, ds, &mut warned);
        drop(warned);
        // The folder is named relative to the run's, which may move; the images evaluated by
        // their count and a digest of their names, so that a resume can tell another val set.
        let rel = crate::checkpoint::eval_dir(self.step);
        report.write(&self.s.run_dir.join(&rel))?;
        let val = val_identity(ds);
        self.log(serde_json::json!({"step": self.step, "eval": {"miou": report.miou, "dir": rel, "val": val}}))?;
        Ok(report.miou)
    }

    fn one_step(&mut self) -> Result<BTreeMap<String, f32>, TrainError> {
        let (stage, info) = self.stage_at(self.step);
        let src = self.s.source.next_batch()?;
        let tgt = match (stage, self.s.target.as_mut()) {
            (Stage::Train, Some(t)) if self.s.method.needs_target() => Some(t.next_batch()?),
            _ => None,
        };
        let cx = StepCx {
            source: &src,
            target: tgt.as_ref(),
            stage,
            step: info,
            target_bn_only: self.s.config.bn_stats == BnStats::Target,
        };
        let at = LrAt {
            step: info.step,
            total: info.total_steps,
            power: self.s.config.lr_power,
        };
        let terms = self.stepper.step(self.s.method.as_ref(), &cx, at)?;
        match read_terms(&terms)? {
            Ok(values) => Ok(values),
            Err(crate::step::NonFiniteTerm { name: term, value }) => {
                let last = if self.checkpoint_path().exists() {
                    self.checkpoint_path().display().to_string()
                } else {
                    "none written yet".to_string()
                };
                // Steps count from 1, as in `metrics.jsonl`.
                Err(TrainError::NonFinite {
                    term,
                    value,
                    step: self.step + 1,
                    last,
                })
            }
        }
    }

    /// Runs (or resumes) training to `config.steps`, checkpointing and evaluating as configured.
    pub fn run(self) -> Result<TrainOutcome, TrainError> {
        let steps = self.total_steps();
        self.run_until(steps)
    }

    /// Like [`Trainer::run`], but stops after step `stop` (checkpointing there) as if the run
    /// had been interrupted (`stop` counts the method's pretraining steps too); the learning-rate
    /// schedule still follows the stages.
    pub fn run_until(mut self, stop: usize) -> Result<TrainOutcome, TrainError> {
        std::fs::create_dir_all(&self.s.run_dir).map_err(|cause| TrainError::Write {
            path: self.s.run_dir.clone(),
            cause,
        })?;
        if self.s.resume {
            self.resume()?;
        } else {
            self.s.method.start()?;
            let _ = std::fs::remove_file(self.metrics_path());
            if !self.s.left_out.is_empty() {
                self.log(serde_json::json!({"step": 0, "left_out": self.s.left_out}))?;
            }
        }
        let total = self.total_steps();
        let first_step = self.step;
        let start = Instant::now();
        let bar = if self.s.progress {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_position(self.step as u64);
            crate::progress::Shown::new(b)
        } else {
            crate::progress::Shown::new(indicatif::ProgressBar::hidden())
        };
        let per_step = self.s.config.batch_size
            + if self.s.method.needs_target() {
                self.s.config.target_batch_size.unwrap_or(self.s.config.batch_size)
            } else {
                0
            };
        // A finished run resumed has nothing left to do: its checkpoint and evaluation stand
        // (they were written again, and the evaluation logged twice). One killed after its last
        // checkpoint but before its evaluation was logged still evaluates.
        let logged = if self.s.resume && self.step >= total {
            self.logged_miou(self.step)
        } else {
            None
        };
        let finished = self.s.resume && self.step >= total && (self.s.eval.is_none() || logged.is_some());
        // `config.toml` says what the checkpoint holds, written once the run is known to go on
        // (a refused resume leaves it as it was): this run's config, or a finished run's own when
        // nothing is left to do (so that a changed free setting is not recorded for nothing).
        let config = match (&self.config_then, finished) {
            (Some(then), true) => then.clone(),
            _ => self.s.config_toml.clone(),
        };
        let config_path = self.s.run_dir.join("config.toml");
        seg_labels::fsutil::write_atomic(&config_path, config.as_bytes()).map_err(|cause| TrainError::Write {
            path: config_path,
            cause,
        })?;
        let mut last_eval = None;
        // The checkpoint of a step that also evaluates is written first: a run killed during
        // that evaluation has no result logged for the step, and evaluates again.
        // Due under the interval of the run that wrote the checkpoint, or under this one's.
        let due = |every: usize| every > 0 && self.step.is_multiple_of(every);
        let every_then = self
            .config_then
            .as_deref()
            .and_then(|text| toml::from_str::<toml::Value>(text).ok())
            .and_then(|c| c.get("trainer")?.get("eval_every")?.as_integer())
            .and_then(|n| usize::try_from(n).ok());
        if self.s.resume
            && self.s.eval.is_some()
            && self.step > 0
            && self.step < total
            && (due(self.s.config.eval_every) || every_then.is_some_and(due))
            && crate::checkpoint::logged_eval(&self.metrics_path(), self.step).is_none()
        {
            tracing::info!(
                "evaluating step {}: the run stopped before its evaluation was logged",
                self.step
            );
            last_eval = self.evaluate_now()?;
        }
        let stop = stop.min(total);
        // A signal from here on ends the step under way, then the run, with a checkpoint.
        let catch = crate::interrupt::catch();
        while self.step < stop {
            let t0 = Instant::now();
            let losses = self.one_step()?;
            self.step += 1;
            let ips = per_step as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            let cfg = &self.s.config;
            if cfg.log_every > 0 && (self.step.is_multiple_of(cfg.log_every) || self.step == total) {
                let (stage, info) = self.stage_at(self.step - 1);
                let lr = match stage {
                    Stage::Train => seg_nn::poly_lr(cfg.lr, info.step, info.total_steps, cfg.lr_power),
                    _ => 0.0,
                };
                self.log(serde_json::json!({"step": self.step, "lr": lr, "losses": losses, "images_per_sec": ips}))?;
                if self.s.progress && bar.is_hidden() {
                    // No terminal to draw the bar on (a log file, a job queue): a line per log step.
                    let msg: Vec<String> = losses.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
                    tracing::info!(
                        "step {}/{total}: {} | lr {lr:.3e} | {ips:.1} img/s",
                        self.step,
                        msg.join(", ")
                    );
                }
            }
            let msg: Vec<String> = losses.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
            bar.set_message(format!("{} | {ips:.1} img/s", msg.join(" ")));
            bar.set_position(self.step as u64);
            let cfg = &self.s.config;
            let saved = cfg.checkpoint_every > 0 && self.step.is_multiple_of(cfg.checkpoint_every) && self.step < total;
            if saved {
                self.save_checkpoint()?;
            }
            // Stopped by a signal: this step's checkpoint, before an evaluation due now (a
            // resume evaluates a due step whose result was not logged).
            if self.step < stop && crate::interrupt::take() {
                bar.finish_and_clear();
                return Err(self.stop_here(saved)?);
            }
            let cfg = &self.s.config;
            if cfg.eval_every > 0 && self.step.is_multiple_of(cfg.eval_every) && self.step < total {
                last_eval = self.evaluate_now()?;
                if let (true, Some(m)) = (self.s.progress, last_eval) {
                    let line = format!("step {}: target val mIoU {:.2} %", self.step, 100.0 * m);
                    match bar.is_hidden() {
                        true => tracing::info!("{line}"),
                        false => bar.println(line),
                    }
                }
                // The run's page follows its evaluations, so a stopped run has one too.
                self.write_page()?;
                // A signal during the evaluation: stopped here, not after one more step.
                if self.step < stop && crate::interrupt::take() {
                    bar.finish_and_clear();
                    return Err(self.stop_here(saved)?);
                }
            }
        }
        bar.finish_and_clear();
        if finished {
            last_eval = logged;
        } else {
            if self.step == total && self.s.method.stages().contains(&Stage::ReestimateBn) {
                if let Some((loader, batches)) = self.s.final_bn.as_mut() {
                    crate::infer::reestimate_bn(self.s.method.deployed(), loader, *batches)?;
                }
            }
            self.save_checkpoint()?;
            // Signals are caught until the final checkpoint is written (through the last step
            // and the re-estimation of batch-norm statistics); one caught by then ends the run
            // here, and a resume evaluates the checkpoint (as one of a run killed during that
            // evaluation).
            drop(catch);
            if crate::interrupt::take() {
                return Err(self.stop_here(true)?);
            }
            if self.s.eval.is_some() && self.step == total {
                last_eval = self.evaluate_now()?;
            }
        }
        self.write_page()?;
        Ok(TrainOutcome {
            steps: self.step,
            first_step,
            final_miou: last_eval,
            checkpoint: self.checkpoint_path(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The end of a run stopped by a signal after step `self.step`: its checkpoint (unless
    /// `saved` already) and page, and the error that says so.
    fn stop_here(&mut self, saved: bool) -> Result<TrainError, TrainError> {
        if !saved {
            self.save_checkpoint()?;
        }
        self.write_page()?;
        Ok(TrainError::Interrupted {
            step: self.step,
            checkpoint: self.checkpoint_path(),
        })
    }

    /// Seconds per training step at the steady rate, for an estimate of a run's time: `warmup`
    /// steps untimed (the first builds the convolution plans and fills the allocator's and the
    /// loaders' caches), then `n` timed, each ending with its losses read back (so the device has
    /// finished it); no checkpoint, evaluation, log or report is written. The steps are the
    /// run's first, so a method's stage before training is timed as such.
    pub fn time_steps(mut self, warmup: usize, n: usize) -> Result<f64, TrainError> {
        self.s.method.start()?;
        let stop = (warmup + n).min(self.total_steps());
        while self.step < stop.min(warmup) {
            self.one_step()?;
            self.step += 1;
        }
        let start = Instant::now();
        let first = self.step;
        while self.step < stop {
            self.one_step()?;
            self.step += 1;
        }
        Ok(start.elapsed().as_secs_f64() / (self.step - first).max(1) as f64)
    }

    /// The deployed network (for evaluation after training).
    pub fn backbone(&self) -> &dyn Backbone {
        self.s.method.deployed()
    }
}

/// The images an evaluation is on: their count and a digest of their names.
fn val_identity(ds: &Dataset) -> serde_json::Value {
    let id = seg_data::loader::DatasetIdentity::of(ds.entries().iter().map(|e| e.name.as_str()));
    serde_json::json!({"images": id.samples, "digest": format!("{:016x}", id.names_digest)})
}
