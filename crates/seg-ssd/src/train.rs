//! A detection run: a config ([`DetRunConfig`], TOML), the training loop (the same
//! `seg_train::Stepper` as segmentation: one backward per loss group, no read-back before the
//! optimisers step), the AdaBN re-estimation stage, checkpoints every `checkpoint_every` steps
//! and at the end (every variable, optimiser state and loader position, through a temporary
//! file and a rename; [`RunControl::resume`] continues one, to the same weights as a run that
//! never stopped), inference (score > 0.01, top 400 per class, per-class NMS 0.45,
//! top 200 per image) and the evaluation on target val (`seg_detect::report`).
//!
//! A run folder holds `config.toml`, `metrics.jsonl`, `checkpoint.safetensors`,
//! and, per evaluation on target val, `eval/step_NNNNNN/` (`report.json`, `report.md`, `pictures/`,
//! `detections.json`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, D};
use candle_nn::VarMap;
use seg_core::{Domain, Stage, StepCx, StepInfo};
use seg_detect::ap::ApInput;
use seg_detect::dets::{write_detections, Detection};
use seg_detect::report::{first_pictures, DetReport};
use seg_detect::{DetDataset, DetError, DetFormat, PixelBox, DET_CLASSES};
use seg_train::step::{read_terms, LrAt, Stepper};
use seg_train::TrainError;

use crate::coding::{decode, nms};
use crate::data::{images_tensor, prepare, DetLoader};
use crate::method::{DetMethod, DetMethodConfig};
use crate::model::{Ssd, SsdConfig};

/// Inference: minimum class score, candidates per class, NMS IoU, detections per image
/// (torchvision's SSD defaults).
pub const SCORE_THRESHOLD: f32 = 0.01;
pub const CANDIDATES_PER_CLASS: usize = 400;
pub const NMS_IOU: f32 = 0.45;
pub const DETECTIONS_PER_IMAGE: usize = 200;

/// Where the data is.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetDataConfig {
    /// Source format: `sim10k` (VOC XML) or `cityscapes` (instance boxes of `source_split`).
    pub source_format: DetFormat,
    pub source_root: PathBuf,
    /// The source's split list: Sim10k ids (default `VOC2012/ImageSets/Main/trainval10k.txt`
    /// when present), or, for a Cityscapes-format source, Cityscapes lines as the target's
    /// lists ([`DetDataset::keep_listed`]).
    pub source_list: Option<PathBuf>,
    /// Cityscapes-format source split.
    pub source_split: String,
    /// Cityscapes root of the target.
    pub target_root: PathBuf,
    pub target_train: String,
    pub target_val: String,
    /// Split lists choosing the target's training and validation images (AdaptSegNet's
    /// `cityscapes_list/{train,val}.txt` lines; [`DetDataset::keep_listed`]); every image of
    /// the split when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_train_list: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_val_list: Option<PathBuf>,
    /// `fail` (the default): a sample that does not load stops the run, naming its file.
    /// `skip`: every sample of every split is read before training (as `seg-adapt check`
    /// reads them) and those that do not load are left out of training and evaluation, each
    /// named once in the log and listed in the run's `skipped.json`.
    // Written only when not the default, so configs (and the demo's stamps) written before the
    // key existed stay the same.
    #[serde(skip_serializing_if = "is_fail")]
    pub error_policy: seg_data::ErrorPolicy,
}

impl Default for DetDataConfig {
    fn default() -> Self {
        Self {
            source_format: DetFormat::Sim10k,
            source_root: PathBuf::new(),
            source_list: None,
            source_split: "train".into(),
            target_root: PathBuf::new(),
            target_train: "train".into(),
            target_val: "val".into(),
            target_train_list: None,
            target_val_list: None,
            error_policy: seg_data::ErrorPolicy::Fail,
        }
    }
}

impl DetDataConfig {
    /// The target's training (`train`) or validation split, with (`annotations`) or without its
    /// boxes, as its split list chooses.
    pub fn open_target(
        &self,
        train: bool,
        annotations: bool,
        classes: seg_detect::ClassSet,
    ) -> Result<DetDataset, DetError> {
        let (split, list) = match train {
            true => (&self.target_train, &self.target_train_list),
            false => (&self.target_val, &self.target_val_list),
        };
        let mut ds = DetDataset::open_cityscapes(&self.target_root, split, annotations, classes)?;
        if let Some(l) = list {
            ds.keep_listed(l)?;
        }
        Ok(ds)
    }
}

/// The optimisation settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetTrainerConfig {
    pub steps: usize,
    pub batch_size: usize,
    /// SGD learning rate of the detector (poly decay with `lr_power`; 0 = constant).
    pub lr: f64,
    pub lr_power: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Learning rate of the domain branches (SGD, same momentum, no weight decay).
    pub head_lr: f64,
    pub seed: u64,
    pub hflip: bool,
    pub log_every: usize,
    /// Write a checkpoint (weights, optimiser state, loader positions) every N steps, and
    /// always at the end; 0 = only at the end. `train-detector --resume` continues from it.
    pub checkpoint_every: usize,
}

impl Default for DetTrainerConfig {
    fn default() -> Self {
        // SSD300's optimiser (Liu et al.): SGD 1e-3, momentum 0.9, weight decay 5e-4, batch 32;
        // 120k iterations as ssd.pytorch's VOC schedule (data/config.py) runs.
        Self {
            steps: 120_000,
            batch_size: 32,
            lr: 1e-3,
            lr_power: 0.0,
            momentum: 0.9,
            weight_decay: 5e-4,
            head_lr: 1e-3,
            seed: 0,
            hflip: true,
            log_every: 10,
            checkpoint_every: 1000,
        }
    }
}

/// A whole detection run.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetRunConfig {
    pub model: SsdConfig,
    pub method: DetMethodConfigField,
    pub data: DetDataConfig,
    pub trainer: DetTrainerConfig,
    /// ImageNet weights for SSD300's VGG16 trunk (torchvision keys; safetensors or `.pth`).
    pub init_weights: Option<PathBuf>,
    /// Start from another detection run's detector: a run folder (or its checkpoint file) whose
    /// weights and batch-norm statistics are copied in; domain branches and optimiser state
    /// start fresh. Its `[model]` must be this run's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

/// `[method]` with a default (source-only).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct DetMethodConfigField(pub DetMethodConfig);

impl Default for DetMethodConfigField {
    fn default() -> Self {
        Self(DetMethodConfig::SourceOnly)
    }
}

/// Errors of a detection run.
#[derive(Debug, thiserror::Error)]
pub enum DetRunError {
    #[error("invalid detection config: {0}")]
    Config(String),
    /// The run folder or a checkpoint does not fit what was asked (the message says how).
    #[error("{0}")]
    Run(String),
    #[error(transparent)]
    Data(#[from] DetError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Weights(#[from] seg_fcn::weights::WeightsError),
}

impl DetRunConfig {
    pub fn validate(&self) -> Result<(), DetRunError> {
        self.model.validate().map_err(DetRunError::Config)?;
        self.method.0.validate(&self.model).map_err(DetRunError::Config)?;
        let tree = toml::Value::try_from(self)
            .map_err(|e| DetRunError::Config(format!("cannot serialise the config: {e}")))?;
        seg_train::config::refuse_non_finite(&tree).map_err(DetRunError::Config)?;
        let t = &self.trainer;
        if t.steps == 0 {
            return Err(DetRunError::Config("trainer.steps must be at least 1".into()));
        }
        if !(1..=seg_train::config::MAX_BATCH).contains(&t.batch_size) {
            return Err(DetRunError::Config(format!(
                "trainer.batch_size = {}: must be from 1 to {}",
                t.batch_size,
                seg_train::config::MAX_BATCH
            )));
        }
        seg_train::config::refuse_oversized(&tree).map_err(DetRunError::Config)?;
        if !(0.0..1.0).contains(&t.momentum) {
            return Err(DetRunError::Config(format!(
                "trainer.momentum = {}: must be in [0, 1)",
                t.momentum
            )));
        }
        for (k, v) in [
            ("lr", t.lr),
            ("lr_power", t.lr_power),
            ("head_lr", t.head_lr),
            ("weight_decay", t.weight_decay),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(DetRunError::Config(format!(
                    "trainer.{k} = {v}: must be finite and ≥ 0"
                )));
            }
        }
        if self.init_weights.is_some() && self.init_from.is_some() {
            return Err(DetRunError::Config(
                "init_weights and init_from are both set: a run starts from one of them".into(),
            ));
        }
        if self.init_weights.is_some() && self.model.arch != crate::SsdArch::Vgg300 {
            return Err(DetRunError::Config(
                "init_weights: only SSD300's VGG16 trunk takes ImageNet weights".into(),
            ));
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The source dataset (with boxes).
    pub fn open_source(&self) -> Result<DetDataset, DetError> {
        let d = &self.data;
        match d.source_format {
            DetFormat::Sim10k => DetDataset::open_sim10k(&d.source_root, d.source_list.as_deref(), self.model.classes),
            DetFormat::Cityscapes => {
                let mut ds = DetDataset::open_cityscapes(&d.source_root, &d.source_split, true, self.model.classes)?;
                if let Some(l) = &d.source_list {
                    ds.keep_listed(l)?;
                }
                Ok(ds)
            }
        }
    }

    fn trainer_config(&self) -> seg_train::TrainerConfig {
        let t = &self.trainer;
        seg_train::TrainerConfig {
            steps: t.steps,
            batch_size: t.batch_size,
            lr: t.lr,
            lr_power: t.lr_power,
            optimizer: seg_nn::OptimizerConfig::Sgd {
                momentum: t.momentum,
                weight_decay: t.weight_decay,
            },
            head_lr: t.head_lr,
            head_optimizer: seg_nn::OptimizerConfig::Sgd {
                momentum: t.momentum,
                weight_decay: 0.0,
            },
            seed: t.seed,
            log_every: t.log_every,
            ..Default::default()
        }
    }
}

/// Called at each logged step with `(step, total, losses)`.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &std::collections::BTreeMap<String, f32>);

/// One image's detections: `(class index, box in the image's pixels, score)`.
pub type ImageDetections = Vec<(usize, PixelBox, f64)>;

/// What a finished run gives back.
pub struct DetOutcome {
    pub report: DetReport,
    /// The last logged loss values.
    pub last_losses: std::collections::BTreeMap<String, f32>,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> DetRunError + '_ {
    move |cause| {
        DetRunError::Train(TrainError::Write {
            path: path.to_path_buf(),
            cause,
        })
    }
}

/// How a run starts and ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunControl {
    /// Continue from `out/checkpoint.safetensors` (its config must be this one). Without it, a
    /// folder that already holds a checkpoint is refused.
    pub resume: bool,
    /// Stop after this many steps (a checkpoint is written there; no evaluation). For tests of
    /// resuming; `Some(0)` sets the run up (data, detector, weights) and stops before its
    /// first step, as `check --time-steps 0` does.
    pub stop_after: Option<usize>,
}

/// Sets a run of `cfg` up in a scratch folder (data, detector, weights, `init_from`) and drops
/// it before its first step, so that what the run would refuse before training is refused now
/// (`check --time-steps 0`). `all_read`: every sample was just read without a failure, so the
/// run's own pass over them under `error_policy = "skip"` is left out.
pub fn set_up_only(cfg: &DetRunConfig, device: &Device, all_read: bool) -> Result<(), DetRunError> {
    let mut cfg = cfg.clone();
    if all_read {
        cfg.data.error_policy = seg_data::ErrorPolicy::Fail;
    }
    let dir = std::env::temp_dir().join(format!("seg-adapt-check-{}", std::process::id()));
    let control = RunControl {
        resume: false,
        stop_after: Some(0),
    };
    let result = run(&cfg, &dir, device, &mut |_, _, _| {}, control);
    let _ = std::fs::remove_dir_all(&dir);
    result.map(drop)
}

/// Trains `cfg` into `out`, evaluates on target val, and returns the report (`None` when
/// `control.stop_after` stopped it first). `progress` gets `(step, total, losses)` at each
/// logged step.
pub fn run(
    cfg: &DetRunConfig,
    out: &Path,
    device: &Device,
    progress: Progress<'_>,
    control: RunControl,
) -> Result<Option<DetOutcome>, DetRunError> {
    cfg.validate()?;
    // A run stopped before its first checkpoint starts over from step 0 under `--resume`, with
    // this config: nothing of it is kept that the config would have to agree with.
    let (_lock, resuming) = seg_train::checkpoint::take_run_folder(out, control.resume).map_err(DetRunError::Run)?;
    // A run from step 0 that stops before it trained anything (a file that does not decode in
    // its first batch) leaves the folder as it found it, so that the same command runs again.
    // Without --resume the folder held no run files (`take_run_folder` refuses them); with it,
    // it held a checkpoint or a stopped run's config.toml, which stay.
    let fresh = !control.resume;
    let outcome = run_locked(cfg, out, device, progress, control, resuming);
    if outcome.is_err() && fresh {
        seg_train::checkpoint::forget_untrained(out);
    }
    outcome
}

/// [`run`] once the run folder is taken.
fn run_locked(
    cfg: &DetRunConfig,
    out: &Path,
    device: &Device,
    progress: Progress<'_>,
    control: RunControl,
    resuming: bool,
) -> Result<Option<DetOutcome>, DetRunError> {
    let ckpt = out.join(seg_train::checkpoint::FILE);
    let method_cfg = &cfg.method.0;
    let classes = cfg.model.classes;
    let d = &cfg.data;
    // A mismatched init_from or weights file is refused before the data is read (under `skip`,
    // every sample decoded) and anything is trained; a resumed run takes every
    // weight from its own checkpoint and needs neither its starting run nor ImageNet weights.
    let init = match &cfg.init_from {
        Some(from) if !resuming => Some(init_checkpoint(cfg, from, device)?),
        _ => None,
    };
    let vars = VarMap::new();
    let method = method_cfg.build(&cfg.model, &vars, device, cfg.trainer.seed)?;
    if let Some(w) = cfg.init_weights.as_ref().filter(|_| !resuming) {
        let r = seg_fcn::weights::load_init_weights(&vars, "model", w)?;
        tracing::info!("{}", r.summary(w));
        if let Some(warning) = r.missing_warning(w) {
            tracing::warn!("{warning}");
        }
    }
    if let Some(ck) = &init {
        ck.restore_prefix(&vars, "model")?;
    }
    // The evaluation split is opened before any training, so a wrong name stops the run now.
    let mut left_out = LeftOut::new(d.error_policy);
    let val = left_out.apply("val", d.open_target(false, true, classes)?)?;
    let source = if method_cfg.trains_on_target_labels() {
        d.open_target(true, true, classes)?
    } else {
        cfg.open_source()?
    };
    let source = left_out.apply("source", source)?;
    let tcfg = cfg.trainer_config();
    let mut stepper = Stepper::new(method.as_ref(), &vars, &tcfg)?;
    let ssd = method.detector();
    let size = cfg.model.input_size();
    let priors = Arc::new(ssd.priors().to_vec());
    let t = &cfg.trainer;
    let mut src = DetLoader::new(
        Arc::new(source),
        t.batch_size,
        size,
        priors.clone(),
        true,
        Domain::Source,
        t.seed,
        device.clone(),
    )
    .with_hflip(t.hflip);
    let needs_target_images = method.needs_target() || method.stages().contains(&Stage::ReestimateBn);
    let target_train = if needs_target_images {
        let ds = d.open_target(true, false, classes)?;
        Some(Arc::new(left_out.apply("target-train", ds)?))
    } else {
        None
    };
    let mut tgt = match (&target_train, method.needs_target()) {
        (Some(ds), true) => Some(
            DetLoader::new(
                ds.clone(),
                t.batch_size,
                size,
                priors.clone(),
                false,
                Domain::Target,
                t.seed ^ 0x7A59,
                device.clone(),
            )
            .with_hflip(t.hflip),
        ),
        _ => None,
    };
    let metrics = out.join("metrics.jsonl");
    let (mut start, mut stored) = (0, None);
    if resuming {
        let ck = seg_train::checkpoint::load(&ckpt, device)?;
        if ck.meta.source_loader.is_none() {
            return Err(evaluate_only(&ckpt));
        }
        if let Some(warning) = ck.meta.other_methods_warning(&ckpt) {
            tracing::warn!("{warning}");
        }
        let theirs =
            stored_config(&ck.meta.config).map_err(|e| DetRunError::Run(format!("{}: {e}", ckpt.display())))?;
        same_but_free_settings(&theirs, cfg).map_err(|e| DetRunError::Run(format!("{}: {e}", ckpt.display())))?;
        seg_train::checkpoint::same_left_out_as_recorded(out, &left_out.by_role, "val").map_err(DetRunError::Run)?;
        if ck.meta.step > cfg.trainer.steps {
            return Err(DetRunError::Run(format!(
                "{}: the run is at step {}, past the {} asked for: resume with trainer.steps of at least {}",
                ckpt.display(),
                ck.meta.step,
                seg_core::steps(cfg.trainer.steps),
                ck.meta.step
            )));
        }
        let _ = seg_labels::fsutil::remove_stale_temps(out);
        tracing::info!(
            "resuming {} at step {} of {}",
            out.display(),
            ck.meta.step,
            cfg.trainer.steps
        );
        ck.restore_vars(&vars)?;
        for g in &mut stepper.groups {
            g.optimizer.load_state(&ck.optimizer_state(g.id.name())).map_err(|e| {
                DetRunError::Train(TrainError::Checkpoint {
                    path: ckpt.clone(),
                    reason: format!("optimizer state of `{}`: {e}", g.id),
                })
            })?;
        }
        let refused = |reason: String| {
            DetRunError::Train(TrainError::Checkpoint {
                path: ckpt.clone(),
                reason,
            })
        };
        if let Some(st) = ck.meta.source_loader {
            src.resume(st, "training").map_err(refused)?;
        }
        if let (Some(l), Some(st)) = (tgt.as_mut(), ck.meta.target_loader) {
            l.resume(st, "target training").map_err(refused)?;
        }
        start = ck.meta.step;
        stored = Some(ck.meta.config.clone());
        seg_train::checkpoint::trim_metrics(&metrics, start)?;
    } else {
        let _ = std::fs::remove_file(&metrics);
    }
    // A finished run resumed has nothing left to do: its checkpoint and evaluation stand. One
    // killed after its last checkpoint but before its evaluation was logged still evaluates.
    let finished = resuming && start >= t.steps && seg_train::checkpoint::logged_eval(&metrics, start).is_some();
    // Written once the checkpoint (if resuming) is known to be this config's: a refused resume
    // leaves the run's own config.toml as it was. Before anything else of the run, so that a
    // run killed now is one `--resume` restarts. A finished run keeps its checkpoint's config
    // (a free setting changed for nothing is not recorded).
    let cfg_path = out.join("config.toml");
    let text = stored.filter(|_| finished).unwrap_or_else(|| cfg.to_toml());
    seg_labels::fsutil::write_atomic(&cfg_path, text.as_bytes()).map_err(write_err(&cfg_path))?;
    let skipped = out.join(seg_train::checkpoint::SKIPPED);
    seg_train::checkpoint::write_left_out(out, &left_out.by_role).map_err(write_err(&skipped))?;
    if let Some(counts) = left_out.counts().filter(|_| !resuming) {
        let line = serde_json::json!({"step": 0, "left_out": counts});
        seg_labels::fsutil::append_line(&metrics, &line.to_string()).map_err(write_err(&metrics))?;
    }
    let save = |step: usize, src: &DetLoader, tgt: Option<&DetLoader>, stepper: &Stepper| -> Result<(), DetRunError> {
        let mut tensors = seg_train::checkpoint::var_tensors(&vars)?;
        for g in &stepper.groups {
            for (n, t) in g.optimizer.state() {
                tensors.push((format!("optim.{}.{n}", g.id), t));
            }
        }
        let meta = seg_train::checkpoint::CheckpointMeta {
            step,
            source_loader: Some(src.state()),
            target_loader: tgt.map(|l| l.state()),
            config: cfg.to_toml(),
            methods_version: seg_core::METHODS_VERSION,
        };
        Ok(seg_train::checkpoint::save(&ckpt, &tensors, &meta)?)
    };
    if finished {
        // Where a run finished before evaluations had a folder per step kept it: `eval/`.
        let path = out.join(seg_train::checkpoint::eval_dir(start)).join("report.json");
        let old = out.join("eval/report.json");
        if let Some(report) = std::fs::read(&path)
            .or_else(|_| std::fs::read(&old))
            .ok()
            .and_then(|b| serde_json::from_slice::<DetReport>(&b).ok())
        {
            return Ok(Some(DetOutcome {
                report,
                last_losses: last_logged_losses(&metrics),
            }));
        }
    }
    if control.stop_after == Some(start) {
        return Ok(None);
    }
    let mut last = std::collections::BTreeMap::new();
    let mut saved_at = start;
    // A signal from here on ends the step under way, then the run, with a checkpoint (not in
    // `check`'s timed steps, which stop by themselves and keep no checkpoint).
    let catch = control.stop_after.is_none().then(seg_train::interrupt::catch);
    for step in start..t.steps {
        let sb = src.next_batch()?;
        let tb = match &mut tgt {
            Some(l) => Some(l.next_batch()?),
            None => None,
        };
        let cx = StepCx {
            source: &sb,
            target: tb.as_ref(),
            stage: Stage::Train,
            step: StepInfo {
                step,
                total_steps: t.steps,
            },
            target_bn_only: false,
        };
        let at = LrAt {
            step,
            total: t.steps,
            power: t.lr_power,
        };
        let t0 = std::time::Instant::now();
        let terms = stepper.step(method.as_ref(), &cx, at)?;
        let logged = t.log_every > 0 && ((step + 1) % t.log_every == 0 || step + 1 == t.steps);
        if logged {
            let values = read_terms(&terms)?.map_err(|bad| TrainError::NonFinite {
                term: bad.name,
                value: bad.value,
                step: step + 1,
                last: if saved_at > 0 {
                    format!("step {saved_at}, {}", ckpt.display())
                } else {
                    "none yet".into()
                },
            })?;
            // As a segmentation run's lines: the detector's rate at this step, and the step's
            // throughput (source and target images).
            let lr = seg_nn::poly_lr(t.lr, step, t.steps, t.lr_power);
            let images = sb.images.dims()[0] + tb.as_ref().map_or(0, |b| b.images.dims()[0]);
            let ips = images as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            let line = serde_json::json!({"step": step + 1, "lr": lr, "losses": values, "images_per_sec": ips});
            seg_labels::fsutil::append_line(&metrics, &line.to_string()).map_err(write_err(&metrics))?;
            progress(step + 1, t.steps, &values);
            last = values;
        }
        let done = step + 1;
        let periodic = t.checkpoint_every > 0 && done % t.checkpoint_every == 0 && done < t.steps;
        if periodic || control.stop_after == Some(done) {
            save(done, &src, tgt.as_ref(), &stepper)?;
            saved_at = done;
        }
        if control.stop_after == Some(done) {
            return Ok(None);
        }
        if done < t.steps && catch.is_some() && seg_train::interrupt::take() {
            if saved_at != done {
                save(done, &src, tgt.as_ref(), &stepper)?;
            }
            return Err(TrainError::Interrupted {
                step: done,
                checkpoint: ckpt.clone(),
            }
            .into());
        }
    }
    if method.stages().contains(&Stage::ReestimateBn) {
        if let Some(ds) = &target_train {
            reestimate_bn(ssd, ds, size, t.batch_size, device)?;
        }
    }
    save(t.steps, &src, tgt.as_ref(), &stepper)?;
    // Signals are caught until the final checkpoint is written (through the last step and the
    // re-estimation of batch-norm statistics); one caught by then ends the run here, and a
    // resume evaluates the checkpoint.
    drop(catch);
    if control.stop_after.is_none() && seg_train::interrupt::take() {
        return Err(TrainError::Interrupted {
            step: t.steps,
            checkpoint: ckpt.clone(),
        }
        .into());
    }
    let source = format!(
        "Cityscapes `{}` split under `{}`; {} ({}) after {} steps.",
        d.target_val,
        d.target_root.display(),
        method.name(),
        match cfg.model.arch {
            crate::SsdArch::Vgg300 => "SSD300, VGG16",
            crate::SsdArch::Small => "small batch-norm SSD",
        },
        t.steps
    ) + &left_out.val_note();
    let rel = seg_train::checkpoint::eval_dir(t.steps);
    let dir = out.join(&rel);
    let report = evaluate_detector(
        ssd,
        &val,
        t.batch_size.max(1),
        device,
        ReportTo {
            dir: &dir,
            detections: Some(&dir.join("detections.json")),
            pictures: 4,
            source,
        },
    )?;
    // As a segmentation run's evaluation line: AP50 per class (fractions, three flavours, null
    // for a class without ground truth) and where the report is.
    // A finished run whose evaluation folder was removed evaluates again; its line stands.
    if seg_train::checkpoint::logged_eval(&metrics, t.steps).is_none() {
        // The images evaluated, by their count and a digest of their names, as a segmentation
        // run's lines say them: a resume on a changed val split is told apart.
        let id = seg_data::loader::DatasetIdentity::of(val.entries.iter().map(|e| e.name.as_str()));
        let images = serde_json::json!({"images": id.samples, "digest": format!("{:016x}", id.names_digest)});
        let line = serde_json::json!({"step": t.steps, "eval": {"ap50": report.ap50, "dir": rel, "val": images}});
        seg_labels::fsutil::append_line(&metrics, &line.to_string()).map_err(write_err(&metrics))?;
    }
    Ok(Some(DetOutcome {
        report,
        last_losses: last,
    }))
}

/// The losses of the last loss line of `metrics.jsonl`.
fn last_logged_losses(path: &Path) -> std::collections::BTreeMap<String, f32> {
    seg_train::checkpoint::metric_lines(path)
        .iter()
        .rev()
        .find_map(|v| serde_json::from_value(v.get("losses")?.clone()).ok())
        .unwrap_or_default()
}

fn is_fail(p: &seg_data::ErrorPolicy) -> bool {
    *p == seg_data::ErrorPolicy::Fail
}

/// Whether a config's TOML is a detection run's rather than a segmentation run's: it has a key
/// only detection configs have (`data.source_format`, `data.target_train`, `data.target_val`,
/// `data.source_split`, `model.arch`, `model.classes`, `model.widths`, `model.input`), or a
/// detection method (`method.kind` `da-image` or `da-maps`). Every key may be left out of a
/// config, so one marker is enough.
pub fn is_detection_config(text: &str) -> bool {
    let Ok(t) = toml::from_str::<toml::Value>(text) else {
        return false;
    };
    let has = |section: &str, keys: &[&str]| {
        t.get(section)
            .and_then(|s| s.as_table())
            .is_some_and(|s| keys.iter().any(|k| s.contains_key(*k)))
    };
    let detection_method = t
        .get("method")
        .and_then(|m| m.get("kind"))
        .and_then(|k| k.as_str())
        .is_some_and(|k| matches!(k, "da-image" | "da-maps"));
    has("data", &["source_format", "target_train", "target_val", "source_split"])
        || has("model", &["arch", "classes", "widths", "input"])
        || detection_method
}

/// Leaves out the samples of `ds` that do not load, each named in the log under `role`; a
/// dataset left with nothing is an error.
fn leave_out_named(role: &str, ds: &mut DetDataset) -> Result<Vec<seg_labels::LeftOut>, DetRunError> {
    let gone = ds.leave_out_unloadable();
    for l in &gone {
        tracing::warn!("{role}: left out `{}`: {}", l.name, l.reason);
    }
    if ds.is_empty() {
        return Err(DetRunError::Run(format!(
            "{}: every sample of the {role} dataset was left out ({} of them; the first: {})",
            ds.root.display(),
            gone.len(),
            gone.first().map_or("", |l| l.reason.as_str())
        )));
    }
    Ok(gone)
}

/// `eval --checkpoint` of a detector on `ds` under its run's `policy`: under `"skip"`, the
/// samples that do not load are left out, each named in the log, as the run's own evaluation
/// left them out (under `"fail"` the evaluation stops on the first, naming it). Returns the
/// report's note on them, empty when none was; a split left with nothing is an error.
pub fn leave_out_as_the_run_did(ds: &mut DetDataset, policy: seg_data::ErrorPolicy) -> Result<String, DetRunError> {
    if policy != seg_data::ErrorPolicy::Skip {
        return Ok(String::new());
    }
    let gone = leave_out_named("val", ds)?;
    Ok(match gone.len() {
        0 => String::new(),
        n => format!(" {n} image(s) that do not load were left out (the run's data.error_policy = \"skip\")."),
    })
}

/// A word on the images of `ds` that the run whose folder holds the detections file `pred` left
/// out of its evaluation (`error_policy = "skip"`): scored here as images without a detection,
/// where the run's own evaluation and `--checkpoint` leave them out.
pub fn left_out_by_the_run_of(pred: &Path, ds: &DetDataset) -> Option<String> {
    let (run_dir, recorded) = seg_train::checkpoint::left_out_of_run_holding(pred)?;
    let names: std::collections::HashSet<&str> = ds.entries.iter().map(|e| e.name.as_str()).collect();
    let gone: Vec<&str> = recorded
        .get("val")?
        .iter()
        .map(|l| l.name.as_str())
        .filter(|n| names.contains(n))
        .collect();
    let first = gone.first()?;
    Some(format!(
        "the run in {} left {} of these images out of its evaluation ({}, first `{first}`): they are \
         scored here as images without a detection; `eval --checkpoint {}` leaves them out as the run did",
        run_dir.display(),
        gone.len(),
        run_dir.join(seg_train::checkpoint::SKIPPED).display(),
        run_dir.display()
    ))
}

/// The samples a run leaves out under `data.error_policy = "skip"`, per dataset role; a run
/// folder's `skipped.json` as `seg_train::checkpoint` writes and checks it for both tasks.
struct LeftOut {
    policy: seg_data::ErrorPolicy,
    by_role: seg_train::checkpoint::LeftOutByRole,
}

impl LeftOut {
    fn new(policy: seg_data::ErrorPolicy) -> Self {
        Self {
            policy,
            by_role: Default::default(),
        }
    }

    /// `ds` with the samples that do not load left out (under `skip`; as it is under `fail`),
    /// each named once in the log; a dataset left with nothing is an error.
    fn apply(&mut self, role: &str, mut ds: DetDataset) -> Result<DetDataset, DetRunError> {
        if self.policy != seg_data::ErrorPolicy::Skip {
            // A missing or unreadable file stops the run now, not when its sample is drawn
            // (for val: after the whole training).
            return match ds.first_missing_or_unreadable() {
                Some(e) => Err(DetRunError::Run(format!(
                    "{role}: {e} (data.error_policy = \"fail\"; `seg-adapt check CONFIG` lists every problem, \"skip\" leaves such samples out)"
                ))),
                None => Ok(ds),
            };
        }
        let gone = leave_out_named(role, &mut ds)?;
        self.by_role.insert(role.to_string(), gone);
        Ok(ds)
    }

    /// The report's word on val images left out, if any were: the AP is over the others.
    fn val_note(&self) -> String {
        match self.by_role.get("val").map_or(0, Vec::len) {
            0 => String::new(),
            n => format!(" {n} val image(s) that do not load were left out of the evaluation (skipped.json)."),
        }
    }

    /// How many samples each role left out, if any was.
    fn counts(&self) -> Option<std::collections::BTreeMap<&str, usize>> {
        let counts: std::collections::BTreeMap<_, _> = self
            .by_role
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(r, v)| (r.as_str(), v.len()))
            .collect();
        (!counts.is_empty()).then_some(counts)
    }
}

/// The checkpoint `init_from` names (a run folder or the file itself), checked against `cfg`'s
/// model.
pub fn init_checkpoint(
    cfg: &DetRunConfig,
    from: &Path,
    device: &Device,
) -> Result<seg_train::checkpoint::Checkpoint, DetRunError> {
    let file = seg_train::checkpoint::file_of(from);
    let ck = seg_train::checkpoint::load(&file, device)?;
    let theirs =
        stored_config(&ck.meta.config).map_err(|e| DetRunError::Run(format!("init_from {}: {e}", file.display())))?;
    if theirs.model != cfg.model {
        // The whole section: the two may differ in any field (the widths too).
        return Err(DetRunError::Run(format!(
            "init_from {}: that run's [model] is not this run's\nthat run's:\n{}this run's:\n{}",
            file.display(),
            toml::to_string(&theirs.model).unwrap_or_default(),
            toml::to_string(&cfg.model).unwrap_or_default(),
        )));
    }
    Ok(ck)
}

/// AdaBN: the detector's batch-norm statistics recomputed as the pooled mean and variance of
/// every target train image (one pass, no gradients), then back to momentum 0.1.
pub fn reestimate_bn(
    ssd: &Ssd,
    ds: &DetDataset,
    size: (usize, usize),
    batch: usize,
    device: &Device,
) -> Result<(), DetRunError> {
    if !ssd.has_batch_norm() {
        return Ok(());
    }
    ssd.set_bn_momentum(None, true)?;
    for chunk in (0..ds.len()).collect::<Vec<_>>().chunks(batch.max(1)) {
        let prepared = chunk
            .iter()
            .map(|&i| prepare(ds, i, size))
            .collect::<Result<Vec<_>, _>>()?;
        let x = images_tensor(&prepared.iter().map(|p| &p.image).collect::<Vec<_>>(), device)?;
        ssd.sources(&x, true)?;
    }
    ssd.set_bn_momentum(Some(0.1), false)?;
    Ok(())
}

/// Detections of one image from its offsets `P×4` and class probabilities `P×C` (background
/// first), as `(class position, unit box, score)`.
pub fn postprocess(loc: &[Vec<f32>], probs: &[Vec<f32>], priors: &[[f32; 4]]) -> Vec<(usize, [f32; 4], f32)> {
    let nc = probs.first().map_or(0, Vec::len);
    let mut out = Vec::new();
    // `c` indexes each prior's class probabilities, not the list of priors.
    #[allow(clippy::needless_range_loop)]
    for c in 1..nc {
        let score = |i: usize| probs[i][c];
        let mut cand: Vec<usize> = (0..priors.len()).filter(|&i| score(i) > SCORE_THRESHOLD).collect();
        cand.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
        cand.truncate(CANDIDATES_PER_CLASS);
        let boxes: Vec<[f32; 4]> = cand
            .iter()
            .map(|&i| {
                let b = decode([loc[i][0], loc[i][1], loc[i][2], loc[i][3]], priors[i]);
                [
                    b[0].clamp(0.0, 1.0),
                    b[1].clamp(0.0, 1.0),
                    b[2].clamp(0.0, 1.0),
                    b[3].clamp(0.0, 1.0),
                ]
            })
            .collect();
        let scores: Vec<f32> = cand.iter().map(|&i| score(i)).collect();
        for k in nms(&boxes, &scores, NMS_IOU, DETECTIONS_PER_IMAGE) {
            if boxes[k][2] > boxes[k][0] && boxes[k][3] > boxes[k][1] {
                out.push((c - 1, boxes[k], scores[k]));
            }
        }
    }
    out.sort_by(|a, b| b.2.total_cmp(&a.2));
    out.truncate(DETECTIONS_PER_IMAGE);
    out
}

/// Runs the detector over every image of `ds`: per image, its detections as
/// `(class index, pixel box in the original image, score)`, for every class the detector has
/// (whatever the dataset's class set).
pub fn detect(ssd: &Ssd, ds: &DetDataset, batch: usize, device: &Device) -> Result<Vec<ImageDetections>, DetRunError> {
    let size = ssd.config().input_size();
    let classes = ssd.config().classes.indices();
    let mut all = Vec::with_capacity(ds.len());
    for chunk in (0..ds.len()).collect::<Vec<_>>().chunks(batch.max(1)) {
        let mut images = Vec::new();
        let mut orig = Vec::new();
        for &i in chunk {
            let img = seg_detect::dataset::decode_image(&ds.entries[i].image)?;
            orig.push((img.width, img.height));
            images.push(if (img.width as usize, img.height as usize) == size {
                img
            } else {
                seg_data::transform::resize_bilinear(&img, size.0 as u32, size.1 as u32)
            });
        }
        let x = images_tensor(&images.iter().collect::<Vec<_>>(), device)?;
        let out = ssd.forward(&x, false)?;
        let probs = candle_nn::ops::softmax(&out.conf, D::Minus1)?.to_vec3::<f32>()?;
        let loc = out.loc.to_vec3::<f32>()?;
        for (k, (l, p)) in loc.iter().zip(&probs).enumerate() {
            let (w, h) = orig[k];
            all.push(
                postprocess(l, p, ssd.priors())
                    .into_iter()
                    .map(|(c, b, s)| (classes[c], PixelBox::from_unit(b, w, h), s as f64))
                    .collect(),
            );
        }
    }
    Ok(all)
}

/// Where [`evaluate_detector`] writes its report.
pub struct ReportTo<'a> {
    /// The report folder.
    pub dir: &'a Path,
    /// The detections file, if one is wanted.
    pub detections: Option<&'a Path>,
    /// Pictures of the first this many images.
    pub pictures: usize,
    /// Where the detections came from, said in the report.
    pub source: String,
}

/// Detects on `ds` (annotated), scores the classes of `ds`'s class set and writes the report
/// (and, if asked, the detections file) as `to` says.
pub fn evaluate_detector(
    ssd: &Ssd,
    ds: &DetDataset,
    batch: usize,
    device: &Device,
    to: ReportTo<'_>,
) -> Result<DetReport, DetRunError> {
    let found = detect(ssd, ds, batch, device)?;
    let gt = ds.all_boxes()?;
    let mut inputs = Vec::new();
    for (i, dets) in found.iter().enumerate() {
        for &(class, bbox, score) in dets {
            inputs.push(ApInput {
                image: i,
                class,
                bbox,
                score,
            });
        }
    }
    if let Some(p) = to.detections {
        write_detections(p, &detection_records(ds, &found))?;
    }
    let mut report = DetReport::compute(&gt, &inputs, ds.classes);
    report.source = Some(to.source);
    let pictures = first_pictures(
        ds,
        &gt,
        |i| found[i].iter().map(|&(_, b, s)| (b, s)).collect(),
        to.pictures,
    );
    report.write(to.dir, &pictures)?;
    Ok(report)
}

/// What [`detect`] found on `ds`, as the records of a detections file (`image` the sample's
/// name, class names, 0-based inclusive boxes), the format `eval --task detection --pred` reads.
pub fn detection_records(ds: &DetDataset, found: &[ImageDetections]) -> Vec<Detection> {
    found
        .iter()
        .enumerate()
        .flat_map(|(i, dets)| {
            dets.iter().map(move |&(class, bbox, score)| Detection {
                image: ds.entries[i].name.clone(),
                class: DET_CLASSES[class].name.to_string(),
                bbox: [bbox.x_min, bbox.y_min, bbox.x_max, bbox.y_max],
                score,
            })
        })
        .collect()
}

/// A trained detector loaded from a run folder (its `config.toml` and checkpoint).
pub struct LoadedDetector {
    pub cfg: DetRunConfig,
    pub method: Box<dyn DetMethod>,
    pub step: usize,
    _vars: VarMap,
}

impl seg_train::resume::Resumable for DetRunConfig {
    /// This config with the settings a resumed run may change taken from `other`: the step
    /// count (checked against the checkpoint's step), how often to log and checkpoint, and where
    /// the data and starting weights are (data moved: the loaders still refuse other training
    /// samples, `skipped.json` other left-out ones, and a resume reads no starting weights).
    fn with_free_settings_of(&self, other: &Self) -> Self {
        let mut c = self.clone();
        let (t, o) = (&mut c.trainer, &other.trainer);
        (t.steps, t.log_every, t.checkpoint_every) = (o.steps, o.log_every, o.checkpoint_every);
        let (d, o) = (&mut c.data, &other.data);
        d.source_root.clone_from(&o.source_root);
        d.source_list.clone_from(&o.source_list);
        d.target_root.clone_from(&o.target_root);
        d.target_train_list.clone_from(&o.target_train_list);
        d.target_val_list.clone_from(&o.target_val_list);
        c.init_weights.clone_from(&other.init_weights);
        c.init_from.clone_from(&other.init_from);
        c
    }

    fn whole_difference(a: &Self, b: &Self) -> Option<String> {
        (a.method.0.name() != b.method.0.name()).then(|| "method.kind".into())
    }
}

fn same_but_free_settings(theirs: &DetRunConfig, cfg: &DetRunConfig) -> Result<(), String> {
    match seg_train::resume::resume_difference(theirs, cfg) {
        None => Ok(()),
        Some(key) => Err(format!(
            "the run was trained with another config (`{key}` differs); resume with the run's own config (only \
             trainer.steps, log_every, checkpoint_every and where the data and weights are may change), or start a \
             new run in another folder"
        )),
    }
}

/// The refusal to resume from `save_detector`'s checkpoint: a detector to evaluate (the demo's
/// AdaBN arm), with no optimiser or sampler state.
fn evaluate_only(ckpt: &Path) -> DetRunError {
    DetRunError::Run(format!(
        "{}: holds a detector to evaluate (no optimiser or sampler state), not a run to resume: evaluate it with `eval --task detection --checkpoint`, or train into another folder",
        ckpt.display()
    ))
}

/// The config `train-detector --resume` without CONFIG continues the run in `out` with: the one
/// its checkpoint was trained with, taking from the folder's `config.toml` the settings a resume
/// may change. An edited, lost or unreadable `config.toml` does not change it, and is named in a
/// warning. `None` when the folder has no checkpoint; refused for `save_detector`'s checkpoint.
pub fn resume_config(out: &Path) -> Result<Option<DetRunConfig>, DetRunError> {
    let stored = |ckpt: &Path, meta: &seg_train::CheckpointMeta| {
        let theirs = stored_config(&meta.config).map_err(|e| DetRunError::Run(format!("{}: {e}", ckpt.display())))?;
        match meta.source_loader {
            Some(_) => Ok(theirs),
            None => Err(evaluate_only(ckpt)),
        }
    };
    let parse = |text: &str| toml::from_str::<DetRunConfig>(text).map_err(|e| e.message().to_string());
    seg_train::resume::checkpoint_config(out, stored, parse)
}

/// The detection config a checkpoint stores; a segmentation run's checkpoint (its config has
/// `data.source_dataset` and `[augment]`) is named as such rather than by the first key that
/// does not parse.
fn stored_config(text: &str) -> Result<DetRunConfig, String> {
    toml::from_str(text).map_err(|e| {
        let tree: Option<toml::Value> = toml::from_str(text).ok();
        let segmentation = tree
            .as_ref()
            .is_some_and(|t| t.get("data").and_then(|d| d.get("source_dataset")).is_some());
        if segmentation {
            "a segmentation run's checkpoint, not a detector's (segmentation checkpoints go to `train`, `eval` and `predict`)".to_string()
        } else {
            format!("not a detection checkpoint: {}", e.to_string().trim_end())
        }
    })
}

/// Loads the detector of a run folder or of its checkpoint file.
pub fn load_detector(run_dir: &Path, device: &Device) -> Result<LoadedDetector, DetRunError> {
    let ckpt_path = seg_train::checkpoint::file_of(run_dir);
    let ckpt = seg_train::checkpoint::load(&ckpt_path, device)?;
    let cfg =
        stored_config(&ckpt.meta.config).map_err(|e| DetRunError::Run(format!("{}: {e}", ckpt_path.display())))?;
    let vars = VarMap::new();
    let method = cfg.method.0.build(&cfg.model, &vars, device, cfg.trainer.seed)?;
    ckpt.restore_prefix(&vars, "model")?;
    Ok(LoadedDetector {
        step: ckpt.meta.step,
        cfg,
        method,
        _vars: vars,
    })
}

/// Writes `loaded`'s detector as it is now (after a batch-norm re-estimation, say) as the run
/// `cfg` at `run_dir`: `checkpoint.safetensors` (no loader or optimiser state: a result to
/// evaluate, not a run to resume) and `config.toml`, each through a temporary file and a rename.
pub fn save_detector(loaded: &LoadedDetector, cfg: &DetRunConfig, run_dir: &Path) -> Result<(), DetRunError> {
    let tensors = seg_train::checkpoint::var_tensors(&loaded._vars)?;
    let meta = seg_train::checkpoint::CheckpointMeta {
        step: loaded.step,
        source_loader: None,
        target_loader: None,
        config: cfg.to_toml(),
        methods_version: seg_core::METHODS_VERSION,
    };
    std::fs::create_dir_all(run_dir).map_err(write_err(run_dir))?;
    seg_train::checkpoint::save(&run_dir.join(seg_train::checkpoint::FILE), &tensors, &meta)?;
    let cfg_path = run_dir.join("config.toml");
    seg_labels::fsutil::write_atomic(&cfg_path, cfg.to_toml().as_bytes()).map_err(write_err(&cfg_path))
}
