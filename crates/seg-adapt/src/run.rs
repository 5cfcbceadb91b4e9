//! Builds runs from a [`RunConfig`]: datasets, loaders, model, head and trainer; and rebuilds
//! a trained model from a run folder for evaluation and prediction.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use candle_core::{DType, Device};
use candle_nn::VarMap;
use seg_core::{Backbone, Domain, Stage};
use seg_data::{Dataset, LeftOut, Loader, Role};
use seg_heads::SizeConstraints;
use seg_methods::PartSeeds;
use seg_train::{EvalSetup, TrainOutcome, TrainSetup, Trainer};

use crate::config::RunConfig;

pub use seg_nn::device::DeviceName;

/// Opens the device named on the command line.
pub fn device(name: &DeviceName) -> anyhow::Result<Device> {
    match *name {
        DeviceName::Cpu => Ok(Device::Cpu),
        DeviceName::Cuda(n) => {
            seg_nn::cuda_device(n).with_context(|| format!("opening CUDA device {n} (build with `--features cuda`)"))
        }
    }
}

/// The dataset a method trains its segmenter on: the target's labelled training split for the
/// oracle, the source otherwise.
pub fn training_role(cfg: &RunConfig) -> Role {
    if cfg.method.trains_on_target_labels() {
        Role::TargetTrainLabelled
    } else {
        Role::Source
    }
}

/// Opens one of the run's datasets and leaves out the samples its policies say to leave out ([`Dataset::leave_out_unusable`]),
/// naming each once in the log.
fn open(cfg: &RunConfig, which: Role) -> anyhow::Result<(Dataset, Vec<LeftOut>)> {
    let what = || format!("checking the {which} dataset");
    let mut ds = open_all(cfg, which)?;
    let left_out = ds.leave_out_unusable().with_context(what)?;
    for l in &left_out {
        tracing::warn!("{which}: left out `{}`: {}", l.name, l.reason);
    }
    anyhow::ensure!(
        !ds.is_empty(),
        "{}: every sample of the {which} dataset was left out ({} of them; the first: {})",
        ds.root().display(),
        left_out.len(),
        left_out.first().map_or(String::new(), |l| l.reason.clone())
    );
    Ok((ds, left_out))
}

/// Opens one of the run's datasets as it is on disk (nothing left out).
pub fn open_all(cfg: &RunConfig, which: Role) -> anyhow::Result<Dataset> {
    let (name, root, _, _) = cfg.data.place(which);
    cfg.data
        .open(which)
        .with_context(|| format!("opening the {which} dataset ({name} at {})", root.display()))
}

/// Builds the model (and its variables) a config describes.
pub fn build_model(cfg: &RunConfig, device: &Device) -> anyhow::Result<(VarMap, Box<dyn Backbone>)> {
    let vars = VarMap::new();
    let vb = seg_nn::init::seeded_builder(&vars, cfg.trainer.seed, DType::F32, device);
    let model = seg_fcn::build(cfg.model.name, seg_labels::NUM_CLASSES, vb.pp("model"), &vars)
        .with_context(|| format!("building model {}", cfg.model.name))?;
    Ok((vars, model))
}

/// Per-image class fractions of the source labels, for FCNs in the Wild's size constraints.
fn source_fractions(ds: &Dataset) -> anyhow::Result<SizeConstraints> {
    let fractions = ds.label_class_fractions();
    anyhow::ensure!(
        !fractions.is_empty(),
        "no readable source labels to learn size constraints from"
    );
    Ok(SizeConstraints::from_fractions(&fractions))
}

/// The config's method on `backbone` (its heads, second streams and frozen copies).
fn build_method(
    cfg: &RunConfig,
    backbone: Box<dyn Backbone>,
    vars: &VarMap,
    device: &Device,
    stats: Option<&SizeConstraints>,
) -> anyhow::Result<Box<dyn seg_core::SegMethod>> {
    let seeds = PartSeeds {
        head: cfg.trainer.seed ^ 0x4EAD,
        copies: cfg.trainer.seed ^ 0xC0B1,
    };
    // Second streams and frozen copies: the same model, its variables under another prefix.
    let rebuild = |vb: candle_nn::VarBuilder<'_>| seg_fcn::build(cfg.model.name, seg_labels::NUM_CLASSES, vb, vars);
    cfg.method
        .clone()
        .with_seed(cfg.trainer.seed)
        .build_on(backbone, vars, device, seeds, &rebuild, stats)
        .with_context(|| format!("method `{}` with model `{}`", cfg.method.name(), cfg.model.name))
}

/// What `train` refuses once the model is built, refused with no data read (`check` runs it
/// before it decodes every file): an `init_from` run that is missing or of another model, and a
/// method that does not fit the model (a feature tap it lacks). FCNs in the Wild's size
/// constraints, learnt from the source labels in a run, are uniform here.
pub fn refuse_what_the_model_settles(cfg: &RunConfig, device: &Device) -> anyhow::Result<()> {
    if let Some(from) = &cfg.model.init_from {
        init_checkpoint(cfg, from, device)?;
    }
    let (vars, backbone) = build_model(cfg, device)?;
    let uniform = SizeConstraints::from_fractions(&[[1.0 / seg_labels::NUM_CLASSES as f32; seg_labels::NUM_CLASSES]]);
    let stats = cfg.method.needs_source_stats().then_some(&uniform);
    build_method(cfg, backbone, &vars, device, stats).map(drop)
}

/// Everything `train` needs, checked before any work starts.
pub fn build_setup(
    cfg: &RunConfig,
    run_dir: &Path,
    device: &Device,
    resume: bool,
    progress: bool,
) -> anyhow::Result<TrainSetup> {
    // What the config alone settles, before any weights or data are read.
    cfg.validate(cfg.model.name.stride())?;
    // A mismatched --init-from is refused before anything is built; a resumed run takes every
    // weight from its own checkpoint and needs neither its starting run nor ImageNet weights.
    let resuming = resume && seg_train::checkpoint::file_of(run_dir).exists();
    if resuming {
        // A run is resumed only towards a later step than its checkpoint's.
        let file = seg_train::checkpoint::file_of(run_dir);
        let meta = seg_train::checkpoint::read_meta(&file)?;
        let stored = stored_config(&file, &meta.config)?;
        // The starting run may have moved (a resume reads no starting weights), but a run of
        // another model named now would be recorded in config.toml as this run's start.
        if let Some(from) = cfg
            .model
            .init_from
            .as_ref()
            .filter(|f| stored.model.init_from.as_ref() != Some(*f))
        {
            let theirs = seg_train::checkpoint::file_of(from);
            if theirs.is_file() {
                let meta = seg_train::checkpoint::read_meta(&theirs)
                    .with_context(|| format!("model.init_from (--init-from) {}", from.display()))?;
                same_model_as(cfg, from, &theirs, &meta.config)?;
            }
        }
        let at = meta.step;
        let pretrain = cfg.method.pretraining().0;
        let total = pretrain + cfg.trainer.steps;
        let stage = if pretrain > 0 {
            format!(
                " ({pretrain} of the stage before training and {})",
                seg_core::steps(cfg.trainer.steps).replace("step", "training step")
            )
        } else {
            String::new()
        };
        anyhow::ensure!(
            at <= total,
            "{}: the run is at step {at}, past the {} asked for{stage}: resume with --steps (trainer.steps) of at least {}",
            file.display(),
            seg_core::steps(total),
            at - pretrain.min(at)
        );
    }
    let init = match &cfg.model.init_from {
        Some(from) if !resuming => Some(init_checkpoint(cfg, from, device)?),
        _ => None,
    };
    let (vars, backbone) = build_model(cfg, device)?;
    // A tap the model lacks, before the data are opened.
    cfg.method.refuse_on(backbone.as_ref())?;
    let has_bn = backbone.has_batch_norm();
    let mut left_out = seg_train::checkpoint::LeftOutByRole::new();
    let role = training_role(cfg);
    let (source, skipped) = open(cfg, role)?;
    left_out.insert(role.name().into(), skipped);
    // Labels already converted to train ids read as mostly void: said before hours of training
    // on them, from the first labels (`inspect` and `check` look at every one).
    if let Some(w) = seg_data::inspect(&source.head(16)).train_ids_warning() {
        tracing::warn!("{role} dataset at {}: {w}", source.root().display());
    }
    let source = Arc::new(source);
    let crop = cfg.augment.crop.unwrap_or([0, 0]);
    // A crop padded on one side in every sample, even from the widest or tallest image, is a
    // mistake (smaller images are padded with ignore, as documented).
    if let Some(largest) = source.largest_image_sizes() {
        let s = cfg.augment.base_scale * cfg.augment.scale_range[0].min(cfg.augment.scale_range[1]);
        for (axis, (image, (w, h))) in largest.into_iter().enumerate() {
            let (sw, sh) = ((w as f32 * s).round() as u32, (h as f32 * s).round() as u32);
            anyhow::ensure!(
                crop[axis] <= [sw, sh][axis],
                "augment.crop = [{}, {}] is larger than every source image at the smallest scale (the {}, {}, is {w}x{h}, scaled by {s} to {sw}x{sh})",
                crop[0],
                crop[1],
                ["widest", "tallest"][axis],
                image.display()
            );
        }
    }
    if let Some(init) = cfg.model.init_weights.as_ref().filter(|_| !resuming) {
        let r = seg_fcn::weights::load_init_weights(&vars, "model", init)?;
        tracing::info!("{}", r.summary(init));
        if let Some(w) = r.missing_warning(init) {
            tracing::warn!("{w}");
        }
    }
    if let Some(ck) = &init {
        let n = ck.restore_prefix(&vars, "model")?;
        tracing::info!(
            "initialised {n} model tensors from {} (step {})",
            ck.path.display(),
            ck.meta.step
        );
    }
    let stats = if cfg.method.needs_source_stats() {
        Some(source_fractions(&source)?)
    } else {
        None
    };
    if let Some(own) = cfg.method.own_seed().filter(|&s| s != 0 && s != cfg.trainer.seed) {
        tracing::warn!(
            "method.seed = {own} is not used: the method's random draws follow trainer.seed = {}",
            cfg.trainer.seed
        );
    }
    let method = build_method(cfg, backbone, &vars, device, stats.as_ref())?;
    let reestimate = method.stages().contains(&Stage::ReestimateBn);
    let t = &cfg.trainer;
    let src_loader = Loader::new(
        source,
        t.batch_size,
        cfg.augment.clone(),
        t.seed,
        Domain::Source,
        device.clone(),
    )
    .with_cache(t.cache_images)
    .with_lookahead(t.prefetch);
    let target_ds = if method.needs_target() || reestimate {
        let (ds, skipped) = open(cfg, Role::TargetTrain)?;
        left_out.insert(Role::TargetTrain.name().into(), skipped);
        Some(Arc::new(ds))
    } else {
        None
    };
    let target = if let (Some(ds), true) = (&target_ds, method.needs_target()) {
        let n = t.target_batch_size.unwrap_or(t.batch_size);
        Some(
            Loader::new(
                ds.clone(),
                n,
                cfg.augment.clone(),
                t.seed ^ 0x7A6E_7461,
                Domain::Target,
                device.clone(),
            )
            .with_cache(t.cache_images)
            .with_labels(false)
            .with_lookahead(t.prefetch),
        )
    } else {
        None
    };
    // The method's batch-norm re-estimation stage (AdaBN's, over the same target batches for
    // every method that has it).
    let final_bn = match &target_ds {
        Some(ds) if reestimate && has_bn && cfg.eval.adabn_batches > 0 => {
            Some((adabn_loader(cfg, ds.clone(), device), cfg.eval.adabn_batches))
        }
        _ => None,
    };
    // Every run is evaluated on the target val split: one that cannot be opened stops the run
    // here, not after training (`check` says the same).
    let (val, skipped) = open(cfg, Role::Val).context("the target val split, which every run is evaluated on")?;
    left_out.insert(Role::Val.name().into(), skipped);
    let eval = Some((val, eval_setup(cfg, device), cfg.eval.protocol));
    if resuming {
        seg_train::checkpoint::same_left_out_as_recorded(run_dir, &left_out, Role::Val.name())
            .map_err(anyhow::Error::msg)?;
    }
    let skipped = run_dir.join(seg_train::checkpoint::SKIPPED);
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    seg_train::checkpoint::write_left_out(run_dir, &left_out)
        .with_context(|| format!("writing {}", skipped.display()))?;
    Ok(TrainSetup {
        run_dir: run_dir.to_path_buf(),
        config: cfg.trainer.clone(),
        config_toml: cfg.to_toml()?,
        vars,
        method,
        source: src_loader,
        target,
        eval,
        device: device.clone(),
        resume,
        progress,
        final_bn,
        left_out: left_out
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .filter(|(_, n)| *n > 0)
            .collect(),
    })
}

/// The checkpoint of the run at `from` that `cfg` starts from (its model's weights and
/// batch-norm statistics are copied in; heads and optimiser state are not), refusing a run of
/// another model with both names.
fn init_checkpoint(cfg: &RunConfig, from: &Path, device: &Device) -> anyhow::Result<seg_train::checkpoint::Checkpoint> {
    let file = seg_train::checkpoint::file_of(from);
    let ck = seg_train::checkpoint::load(&file, device)
        .with_context(|| format!("model.init_from (--init-from) {}", from.display()))?;
    same_model_as(cfg, from, &file, &ck.meta.config)?;
    Ok(ck)
}

/// Refuses an `init_from` run at `from` (its checkpoint `file`, whose stored config is
/// `stored`) of another model than `cfg`'s, naming both.
fn same_model_as(cfg: &RunConfig, from: &Path, file: &Path, stored: &str) -> anyhow::Result<()> {
    let theirs = stored_config(file, stored)
        .with_context(|| format!("model.init_from (--init-from) {}", from.display()))?
        .model
        .name;
    anyhow::ensure!(
        theirs == cfg.model.name,
        "model.init_from (--init-from) {}: that run trained model `{theirs}`, this run is model `{}`",
        from.display(),
        cfg.model.name
    );
    Ok(())
}

/// The target batches (of the target train split `ds`) AdaBN re-estimates batch-norm statistics
/// over; every adaptation run ends with the same ones.
pub fn adabn_loader(cfg: &RunConfig, ds: Arc<Dataset>, device: &Device) -> Loader {
    Loader::new(
        ds,
        cfg.trainer.batch_size,
        cfg.augment.clone(),
        cfg.trainer.seed ^ 0xADAB,
        Domain::Target,
        device.clone(),
    )
    .with_labels(false)
}

pub fn eval_setup(cfg: &RunConfig, device: &Device) -> EvalSetup {
    EvalSetup {
        augment: cfg.augment.clone(),
        device: device.clone(),
        batch_size: cfg.eval.batch_size,
        keep_samples: cfg.eval.pictures,
    }
}

/// The copy of a source-only run's checkpoint that AdaBN applied to it keeps beside its own.
pub(crate) const BEFORE_ADABN: &str = "checkpoint-before-adabn.safetensors";

/// Trains one run (or resumes it; the trainer writes `config.toml` once the run is set up and a
/// resume restored) through the method's stages (AdaBN's re-estimation is the last stage of `adabn` and of every adaptation method).
pub fn train(
    cfg: &RunConfig,
    run_dir: &Path,
    device: &Device,
    resume: bool,
    progress: bool,
) -> anyhow::Result<TrainOutcome> {
    // A run stopped before its first checkpoint (its config.toml written) resumes from step 0.
    let (_lock, has_checkpoint) =
        seg_train::checkpoint::take_run_folder(run_dir, resume).map_err(anyhow::Error::msg)?;
    if has_checkpoint {
        agrees_with_checkpoint(cfg, run_dir)?;
    }
    // A run from step 0 that stops before it trained anything (a file that does not decode in
    // its first batch) leaves the folder as it found it, so that the same command runs again.
    // Without --resume the folder held no run files (`take_run_folder` refuses them); with it,
    // it held a checkpoint or a stopped run's config.toml, which stay.
    let fresh = !resume;
    let resume = has_checkpoint;
    // The trainer writes config.toml once the run is set up and a resume restored (a config or
    // resume refused before leaves the folder as it was).
    let outcome = build_setup(cfg, run_dir, device, resume, progress).and_then(|setup| Ok(Trainer::new(setup)?.run()?));
    if outcome.is_err() && fresh {
        seg_train::checkpoint::forget_untrained(run_dir);
    }
    outcome
}

/// Refuses to resume the run in `run_dir` with `cfg` when it differs from the config the run's
/// checkpoint was trained with in more than the settings a resume may change. Run under the run
/// folder's lock, so that no other process writes the checkpoint between the check and the run.
pub(crate) fn agrees_with_checkpoint(cfg: &RunConfig, run_dir: &Path) -> anyhow::Result<()> {
    let checkpoint = run_dir.join(seg_train::checkpoint::FILE);
    let meta = seg_train::checkpoint::read_meta(&checkpoint)?;
    let trained = stored_config(&checkpoint, &meta.config)?;
    if let Some(key) = seg_train::resume::resume_difference(&trained, cfg) {
        anyhow::bail!(
            "--resume continues the run in {} with the config its checkpoint was trained with; CONFIG, the flags \
             or an edited config.toml change `{key}` (on resume only trainer.steps may change, and the settings \
             that do not change what is trained: how often to checkpoint, evaluate and log, caching, prefetch, \
             eval.batch_size and eval.pictures, where the data and weights are): start a new run in another folder",
            run_dir.display()
        );
    }
    Ok(())
}

/// A trained model rebuilt from a run folder (or a checkpoint file).
pub struct Trained {
    pub cfg: RunConfig,
    pub vars: VarMap,
    pub backbone: Box<dyn Backbone>,
    pub step: usize,
}

/// The run config a checkpoint stores; a detector's checkpoint (its config has
/// `data.source_format`) is named as such rather than by the first key that does not parse.
pub(crate) fn stored_config(file: &Path, text: &str) -> anyhow::Result<RunConfig> {
    RunConfig::parse(text).map_err(|e| {
        if crate::config::is_detection_config(text) {
            anyhow::anyhow!(
                "{}: a detector's checkpoint, not a segmentation model's (detectors go to `train-detector --init-from`, `eval --task detection` and `predict`)",
                file.display()
            )
        } else {
            e.context(format!("{}: config stored in the checkpoint", file.display()))
        }
    })
}

pub fn load_trained(checkpoint: &Path, device: &Device) -> anyhow::Result<Trained> {
    let file = seg_train::checkpoint::file_of(checkpoint);
    let ck = seg_train::checkpoint::load(&file, device)?;
    let cfg = stored_config(&file, &ck.meta.config)?;
    cfg.augment
        .validate()
        .map_err(|e| anyhow::anyhow!("{}: config stored in the checkpoint: {e}", file.display()))?;
    let (vars, backbone) = build_model(&cfg, device)?;
    // `vars` holds only the model's variables (no head): those are all that inference needs.
    ck.restore_vars(&vars)?;
    Ok(Trained {
        cfg,
        vars,
        backbone,
        step: ck.meta.step,
    })
}

/// AdaBN applied to a finished run: loads the model of `from_dir` (the demo's source-only arm),
/// runs the re-estimation stage on target train images, writes the checkpoint to `run_dir` and
/// evaluates it. The same as training `adabn`, without training the source-only model again.
pub fn adabn_from(cfg: &RunConfig, from_dir: &Path, run_dir: &Path, device: &Device) -> anyhow::Result<TrainOutcome> {
    let start = std::time::Instant::now();
    let trained = load_trained(from_dir, device)?;
    let mut loader = adabn_loader(cfg, Arc::new(open(cfg, Role::TargetTrain)?.0), device);
    seg_train::reestimate_bn(trained.backbone.as_ref(), &mut loader, cfg.eval.adabn_batches)?;
    let tensors = seg_train::checkpoint::var_tensors(&trained.vars)?;
    let meta = seg_train::CheckpointMeta {
        step: trained.step,
        source_loader: None,
        target_loader: None,
        config: cfg.to_toml()?,
        methods_version: seg_core::METHODS_VERSION,
    };
    let ck = run_dir.join(seg_train::checkpoint::FILE);
    let before = run_dir.join(BEFORE_ADABN);
    if ck.exists() && !before.exists() {
        // Keep the trained source-only checkpoint (with its optimiser state) beside the result,
        // once: applied again, AdaBN must not replace that copy with its own output.
        let bytes = std::fs::read(&ck).with_context(|| format!("{}: cannot read", ck.display()))?;
        seg_labels::fsutil::write_atomic(&before, &bytes)
            .with_context(|| format!("keeping a copy of {}", ck.display()))?;
    }
    seg_train::checkpoint::save(&ck, &tensors, &meta)?;
    seg_labels::fsutil::write_atomic(&run_dir.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    let val = open(cfg, Role::Val)?.0;
    let report =
        seg_train::evaluate(trained.backbone.as_ref(), &val, &eval_setup(cfg, device))?.finish(cfg.eval.protocol);
    seg_train::infer::log_new_warnings(&report.warnings, &val, &mut Default::default());
    report.write(&run_dir.join(seg_train::checkpoint::eval_dir(trained.step)))?;
    seg_metrics::html::write_run_page(run_dir, "seg-adapt run: adabn (re-estimated statistics)")
        .with_context(|| format!("writing {}", run_dir.join("report.html").display()))?;
    Ok(TrainOutcome {
        steps: trained.step,
        // Reported as the model's steps, as before the re-estimation.
        first_step: 0,
        final_miou: report.miou,
        checkpoint: ck,
        seconds: start.elapsed().as_secs_f64(),
    })
}
