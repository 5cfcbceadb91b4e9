//! Detection commands: `train-detector` (one run from a TOML config), the detection demo
//! (`demo --task detection`), and the detection halves of `eval` and `inspect`. The work is
//! `seg_ssd`'s and `seg_detect`'s; this wires flags, the demo's protocol and its report.
//!
//! The demo, per seed: source-only, the adaptation arms (`da-image`, `da-maps`) and the oracle
//! (target train boxes) each train the small batch-norm SSD from the same seeded initial
//! weights on the same source batch order; AdaBN is the source-only detector with its
//! batch-norm statistics re-estimated on target train. Every run is evaluated on target val
//! (last checkpoint only); the report gives car AP50 mean ± std over seeds and paired per-seed
//! differences to source-only and AdaBN.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use seg_data::toy::{self, Preset};
use seg_detect::report::DetReport;
use seg_detect::{ClassSet, DetDataset, DetFormat};
use seg_ssd::method::DET_METHOD_NAMES;
use seg_ssd::train::{DetMethodConfigField, DetRunConfig};
use seg_ssd::{DetMethodConfig, SsdConfig};

use super::demo::{method_list, Phase, Phases, PRETRAIN};
use super::demo_run::{Ledger, Stamp};
use seg_metrics::compare::{arm_curves_html, comparisons, results_markdown, summarise, with_ci, Comparison};
use seg_metrics::seeds::Summary;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Detection run config (TOML: [model], [method], [data], [trainer], init_weights or
    /// init_from). Optional with `--resume`, which continues with the config its checkpoint was
    /// trained with (config.toml gives the settings a resume may change; without a checkpoint,
    /// config.toml is the config).
    #[arg(value_name = "CONFIG", required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Run folder: config.toml, metrics.jsonl, checkpoint.safetensors, eval/step_NNNNNN/ (each
    /// evaluation's report, pictures and detections.json), and skipped.json when samples are left
    /// out.
    #[arg(long)]
    pub out: PathBuf,
    /// Override one config key (repeatable), e.g. `--set trainer.steps=200` or
    /// `--set method.kind=da-maps`; an unknown key or a wrong type is an error naming it.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = super::setting())]
    pub set: Vec<String>,
    /// Continue the run in `--out` from its last checkpoint, with the config it was trained with
    /// (`trainer.steps`, the log and checkpoint intervals and where the data and weights are may
    /// change; anything else is refused naming the key).
    #[arg(long)]
    pub resume: bool,
    /// Start from another detection run's detector (a run folder or its checkpoint file):
    /// weights and batch-norm statistics are copied, domain branches and optimiser state start
    /// fresh, and the preset's ImageNet weights are not loaded; its `[model]` must be this
    /// run's (`init_from`).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
}

/// Whether a detection config's parse error is about a key only segmentation configs have: the
/// file is a segmentation config.
fn names_a_segmentation_key(message: &str) -> bool {
    message.contains("unknown field `augment`") || message.contains("unknown field `source_dataset`")
}

/// The first of `sets`, applied in turn to the file's tree `file_raw`, after which `fails` (given
/// the tree and its text) says the config fails: the flag to name in the error.
fn first_set_after_which<'a>(
    file_raw: &toml::Value,
    sets: &'a [String],
    fails: impl Fn(&toml::Value, &str) -> bool,
) -> Option<&'a String> {
    let mut tree = file_raw.clone();
    sets.iter().find(|s| {
        seg_train::config::set_key(&mut tree, s).is_ok() && toml::to_string(&tree).is_ok_and(|t| fails(&tree, &t))
    })
}

/// Reads a detection config file and applies `--set` overrides. Naming a starting detector
/// there (`--set init_from=RUN`) replaces the file's ImageNet weights.
pub fn load_config(path: &Path, sets: &[String]) -> anyhow::Result<DetRunConfig> {
    let text =
        seg_labels::fsutil::read_text(path).with_context(|| format!("{}: cannot read config", path.display()))?;
    config_of(path, &text, sets)
}

/// [`load_config`] of a config's `text`; `path` names it in errors.
fn config_of(path: &Path, text: &str, sets: &[String]) -> anyhow::Result<DetRunConfig> {
    let file_raw: toml::Value = toml::from_str(text).with_context(|| format!("{}: not TOML", path.display()))?;
    // The file alone first, so that its errors give the file's own line numbers.
    let file_cfg: DetRunConfig = match toml::from_str(text) {
        Ok(cfg) => cfg,
        Err(e) => match seg_train::config::bad_key_of_kind_section::<seg_ssd::DetMethodConfig>(&file_raw, "method") {
            Some((key, why)) => anyhow::bail!("{}: invalid detection config: {key}: {why}", path.display()),
            None if names_a_segmentation_key(e.message()) => {
                anyhow::bail!(
                    "{}: a segmentation config, which `seg-adapt train` takes (a detection config names data.source_format): {}",
                    path.display(),
                    e.to_string().trim_end()
                )
            }
            None => anyhow::bail!(
                "{}: invalid detection config: {}",
                path.display(),
                seg_train::config::plain_types(e.to_string().trim_end())
            ),
        },
    };
    let mut root = file_raw.clone();
    let (from_file, weights_file) = (root.get("init_from").cloned(), root.get("init_weights").cloned());
    for s in sets {
        seg_train::config::set_key_of::<DetRunConfig>(&mut root, s).map_err(anyhow::Error::msg)?;
    }
    // The file's ImageNet weights give way to a starting detector named on the command line;
    // weights named there too are refused by `validate`.
    let new_from = root.get("init_from").is_some() && root.get("init_from") != from_file.as_ref();
    if new_from && weights_file.is_some() && root.get("init_weights") == weights_file.as_ref() {
        if let Some(t) = root.as_table_mut() {
            t.remove("init_weights");
            tracing::info!("starting from the detector of init_from: the config's init_weights are not loaded");
        }
    }
    let flags = sets.iter().map(|s| format!("--set {s}")).collect::<Vec<_>>().join(" ");
    let parsed: Result<DetRunConfig, _> = toml::from_str(&toml::to_string(&root)?);
    let cfg = match parsed {
        Ok(cfg) => cfg,
        Err(e) => {
            // The first --set after which the config no longer reads is the one to name.
            let culprit = first_set_after_which(&file_raw, sets, |_, t| toml::from_str::<DetRunConfig>(t).is_err())
                .map_or_else(|| format!("{}: {flags}", path.display()), |s| format!("--set {s}"));
            let hint = match e.message() {
                m if m.contains("unknown field `init_weights`") || m.contains("unknown field `init_from`") => {
                    " (in a detection config, init_weights and init_from are top-level keys)"
                }
                m if names_a_segmentation_key(m) => " (a segmentation config, which `seg-adapt train` takes)",
                _ => "",
            };
            anyhow::bail!(
                "{culprit}: {}{hint}",
                seg_train::config::plain_types(e.message().trim_end())
            );
        }
    };
    // Array lengths as written, then the values.
    let checked = |raw: &toml::Value, cfg: &DetRunConfig| -> anyhow::Result<()> {
        let typed = toml::Value::try_from(cfg).context("cannot serialise the config")?;
        if let Some((key, n, m)) = seg_train::config::first_array_length_mismatch(raw, &typed) {
            anyhow::bail!("{key} has {n} values where {m} are expected");
        }
        if let Some((key, kind)) = seg_train::config::key_of_a_kind_without_settings(raw, &typed) {
            anyhow::bail!("{key}: unknown key: method `{kind}` has no settings");
        }
        Ok(cfg.validate()?)
    };
    if let Err(e) = checked(&root, &cfg) {
        // The file's when the file alone fails it too, else the first --set after which the
        // config fails (all of them when only their combination does).
        let culprit = if sets.is_empty() || checked(&file_raw, &file_cfg).is_err() {
            path.display().to_string()
        } else {
            first_set_after_which(&file_raw, sets, |tree, t| {
                toml::from_str::<DetRunConfig>(t).is_ok_and(|c| checked(tree, &c).is_err())
            })
            .map_or(flags, |s| format!("--set {s}"))
        };
        return Err(e.context(culprit));
    }
    Ok(cfg)
}

/// `seg-adapt check` of a detection config: reads every image and annotation of the source,
/// target train and val splits (in parallel, with a progress bar), lists each problem with its
/// file, and times a few training steps for an estimate of the run's duration. A sample that
/// does not read fails the check under `data.error_policy = "fail"` (the run would stop when
/// it is drawn); under `"skip"` it is counted as left out, and only a split with nothing left
/// fails the check.
pub fn check(
    config: &Path,
    sets: &[String],
    time_steps: usize,
    device_name: &crate::run::DeviceName,
) -> anyhow::Result<()> {
    let cfg = load_config(config, sets)?;
    // The ImageNet weights' file is refused before the long read of every file.
    if let Some(w) = &cfg.init_weights {
        seg_fcn::weights::weights_file_exists(w).context("the run would stop before its first step")?;
    }
    let device = crate::run::device(device_name)?;
    // So is a starting run that is missing or of another detector, as `train-detector` refuses it.
    if let Some(from) = &cfg.init_from {
        seg_ssd::train::init_checkpoint(&cfg, from, &device).context("the run would stop before its first step")?;
    }
    let text = cfg.to_toml();
    println!("# resolved config ({})\n{text}", config.display());
    let implied = [("data.error_policy", toml::Value::try_from(cfg.data.error_policy))];
    let notes = seg_train::config::unwritten_defaults(&text, &implied);
    if !notes.is_empty() {
        println!("{notes}");
    }
    let d = &cfg.data;
    let classes = cfg.model.classes;
    let source = if cfg.method.0.trains_on_target_labels() {
        d.open_target(true, true, classes)?
    } else {
        cfg.open_source()?
    };
    // The splits the run reads: target train only for the methods that read it.
    let mut splits = vec![("source", source)];
    if cfg.method.0.reads_target_train() {
        let ds = d.open_target(true, false, classes)?;
        splits.push(("target-train", ds));
    }
    splits.push(("val", d.open_target(false, true, classes)?));
    let mut blocking = Vec::new();
    let mut left_out = 0;
    for (role, ds) in &splits {
        let start = std::time::Instant::now();
        let bar = seg_train::progress::Shown::new(indicatif::ProgressBar::new(ds.len() as u64));
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar.set_message(format!("reading every file of the {role} dataset"));
        let r = seg_detect::inspect::inspect(ds, &|| bar.inc(1));
        bar.finish_and_clear();
        let list = match *role {
            "val" => d.target_val_list.as_ref(),
            "target-train" => d.target_train_list.as_ref(),
            _ if cfg.method.0.trains_on_target_labels() => d.target_train_list.as_ref(),
            _ => d.source_list.as_ref(),
        }
        .map_or(String::new(), |l| format!(" (list {})", l.display()));
        println!(
            "{role}: {} {}{list}: {}, {} usable, {} ({:.1}s)",
            r.dataset,
            r.split,
            super::count(r.samples, "sample"),
            r.usable,
            super::count(r.problems.len(), "problem"),
            start.elapsed().as_secs_f64()
        );
        for p in &r.problems {
            use seg_detect::inspect::Effect;
            let verdict = match (p.effect, d.error_policy) {
                (Effect::Kept, _) => "kept",
                (Effect::NeverRead, _) => "never read",
                (Effect::Unusable, seg_data::ErrorPolicy::Skip) => "left out (error_policy = \"skip\")",
                (Effect::Unusable, seg_data::ErrorPolicy::Fail) => "STOPS THE RUN (error_policy = \"fail\")",
            };
            println!("  {}: {} [{verdict}]", p.file, p.reason);
        }
        let unusable = r.samples - r.usable;
        match d.error_policy {
            _ if unusable == 0 => {}
            seg_data::ErrorPolicy::Skip if r.usable > 0 => {
                left_out += unusable;
                println!("  {unusable} sample(s) left out of the run (error_policy = \"skip\")")
            }
            seg_data::ErrorPolicy::Skip => blocking.push(format!("{role}: all {} samples", r.samples)),
            seg_data::ErrorPolicy::Fail => blocking.push(format!("{role}: {unusable} of {} samples", r.samples)),
        }
    }
    if time_steps == 0 && blocking.is_empty() {
        // Without timing the run is still set up once (data, detector, weights, init_from) and
        // dropped, so that what `train-detector` refuses before its first step is refused here.
        seg_ssd::train::set_up_only(&cfg, &device, left_out == 0)
            .context("the run would stop before its first step")?;
    }
    if time_steps > 0 && blocking.is_empty() {
        let dir = super::check_scratch_dir();
        let warmup = 2.min(cfg.trainer.steps.saturating_sub(1));
        let n = time_steps.min(cfg.trainer.steps - warmup);
        let mut timed = cfg.clone();
        timed.trainer.log_every = 1;
        // Every sample was loaded above: when none failed, the run's own pass over them under
        // "skip" would find nothing, and is left out.
        if left_out == 0 {
            timed.data.error_policy = seg_data::ErrorPolicy::Fail;
        }
        let mut at = Vec::new();
        let control = seg_ssd::train::RunControl {
            resume: false,
            stop_after: Some(warmup + n),
        };
        let t0 = std::time::Instant::now();
        let result = seg_ssd::train::run(
            &timed,
            &dir,
            &device,
            &mut |_, _, _| at.push(std::time::Instant::now()),
            control,
        );
        let _ = std::fs::remove_dir_all(&dir);
        result.context("timing training steps")?;
        // Each step's end is logged: the timed steps are those after the warm-up's last (with no
        // warm-up, setting up counts too).
        let from = warmup.checked_sub(1).and_then(|i| at.get(i).copied()).unwrap_or(t0);
        let secs = at.last().map_or(0.0, |b| b.duration_since(from).as_secs_f64());
        let per = secs / n.max(1) as f64;
        println!(
            "timing: {} on {device_name} in {secs:.1}s ({per:.2} s/step, after {}); {}: about {}, evaluation and checkpoints not included",
            seg_core::steps(n).replace("step", "training step"),
            seg_core::steps(warmup).replace("step", "untimed warm-up step"),
            seg_core::steps(cfg.trainer.steps),
            super::check::hours_minutes(per * cfg.trainer.steps as f64)
        );
    }
    anyhow::ensure!(
        blocking.is_empty(),
        "{}",
        match d.error_policy {
            seg_data::ErrorPolicy::Fail => format!(
                "samples that do not read would stop the detection run ({}); fix or remove them, or set data.error_policy = \"skip\" to leave them out",
                blocking.join("; ")
            ),
            seg_data::ErrorPolicy::Skip => format!(
                "no sample of a split reads ({}): the run would have nothing left of it",
                blocking.join("; ")
            ),
        }
    );
    println!("check passed: {}", config.display());
    Ok(())
}

pub fn train(args: TrainArgs, device_name: &crate::run::DeviceName) -> anyhow::Result<()> {
    super::refuse_inside_evaluations(&args.out, "run")?;
    let mut sets = args.set.clone();
    if let Some(from) = &args.init_from {
        let quoted = toml::Value::String(from.display().to_string()).to_string();
        sets.insert(0, format!("init_from={quoted}"));
    }
    let saved = args.out.join("config.toml");
    if args.resume {
        crate::config::refuse_other_tasks_folder(&args.out, true)?;
    }
    // Without CONFIG a resume continues with the config its checkpoint was trained with (an
    // edited or lost config.toml is named; the run writes it back, under its folder's lock).
    let resumed = match args.resume && args.config.is_none() {
        true => seg_ssd::train::resume_config(&args.out)?,
        false => None,
    };
    let cfg = match (&args.config, resumed) {
        (Some(c), _) => load_config(c, &sets)?,
        (None, Some(trained)) => config_of(&saved, &trained.to_toml(), &sets)?,
        (None, None) if saved.is_file() => load_config(&saved, &sets)?,
        (None, None) if !args.out.exists() => anyhow::bail!(
            "--resume: nothing to resume: {} does not exist (without --resume, a CONFIG starts a run there)",
            args.out.display()
        ),
        (None, None) => anyhow::bail!(
            "{}: no saved config to resume from; name a CONFIG (a preset of `configs/detection/`)",
            saved.display()
        ),
    };
    let device = crate::run::device(device_name)?;
    let control = seg_ssd::train::RunControl {
        resume: args.resume,
        stop_after: None,
    };
    let out = seg_ssd::train::run(
        &cfg,
        &args.out,
        &device,
        &mut |step, total, losses| {
            let l: Vec<String> = losses.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            eprintln!("step {step}/{total}: {}", l.join(", "));
        },
        control,
    )?
    .context("the run stopped before its last step")?;
    print!("{}", out.report.text_table());
    println!("run written to {}", args.out.display());
    Ok(())
}

/// The demo's config for one run: the shared pretraining (`Phase::Pretrain`, source-only from
/// the seeded initial weights) or one arm continuing from the pretrained detector in `init`
/// (the AdaBN arm is derived from source-only's run).
pub fn demo_config(
    data: &Path,
    preset: Preset,
    method: &str,
    seed: u64,
    phases: Phases,
    phase: Phase,
    init: &Path,
) -> anyhow::Result<DetRunConfig> {
    let s = preset.sizes();
    let mut method = DetMethodConfig::parse(method).map_err(|e| anyhow::anyhow!(e))?;
    // Ours, for both arms: the domain branches start from zero in each arm and must tell the
    // domains apart within it. Each scene's photometrics are drawn per image and every domain's
    // batch is normalised by its own statistics, so what is left to tell apart is subtle:
    // at DA-Faster's learning rate the branches stayed at chance (BCE ≈ 0.69) and the reversed
    // gradient carried nothing. Chosen on data seed 0 only (docs/demo-history.md).
    // The weight and rate are shared by the method's sites (one classifier each, each with its
    // own loss): per site, the totals divided by their number.
    let model = SsdConfig {
        input: [s.width as usize, s.height as usize],
        classes: ClassSet::Car,
        ..Default::default()
    };
    let per_site = |sites: usize| (DET_DOMAIN_WEIGHT / sites as f64, DET_DOMAIN_LR_MULT / sites as f64);
    match &mut method {
        DetMethodConfig::DaImage(c) => {
            // The small SSD's maps have 48 and 64 channels; DA-Faster's 512 hidden channels
            // (for conv5_3's 512) would cost five times the detector itself.
            c.hidden = 64;
            (c.weight, c.disc_lr_mult) = per_site(c.maps.len());
        }
        DetMethodConfig::DaMaps(c) => (c.weight, c.disc_lr_mult) = per_site(model.prior_spec().maps.len()),
        _ => {}
    }
    let (steps, lr, init_from) = match phase {
        Phase::Pretrain => (phases.pretrain, DET_LR, None),
        Phase::Arm => (phases.adapt, DET_ARM_LR, Some(init.to_path_buf())),
    };
    Ok(DetRunConfig {
        model,
        method: DetMethodConfigField(method),
        data: seg_ssd::train::DetDataConfig {
            source_format: DetFormat::Sim10k,
            source_root: toy::sim10k_path(data),
            source_list: None,
            source_split: "train".into(),
            target_root: toy::paths(data).2,
            error_policy: seg_data::ErrorPolicy::Fail,
            ..Default::default()
        },
        trainer: seg_ssd::train::DetTrainerConfig {
            steps,
            batch_size: 8,
            lr,
            lr_power: 0.9,
            momentum: 0.9,
            weight_decay: 5e-4,
            head_lr: DET_LR,
            seed,
            hflip: true,
            log_every: 10,
            checkpoint_every: 100,
        },
        init_weights: None,
        init_from,
    })
}

/// The pretraining's learning rate (SGD, poly 0.9), and the domain branches' base rate.
const DET_LR: f64 = 0.02;
/// The arms' learning rate for the detector, continuing from the pretrained one.
const DET_ARM_LR: f64 = 0.01;
/// The demo's gradient-reversal weight, shared by the sites (DA-Faster's default: 0.1 for its
/// one site).
const DET_DOMAIN_WEIGHT: f64 = 1.0;
/// The domain branches' learning-rate multiplier on [`DET_LR`], shared by the sites likewise
/// (0.4 in all, poly-decayed: 0.2 for each of da-image's two classifiers, 0.1 for each of
/// da-maps' four branches).
const DET_DOMAIN_LR_MULT: f64 = 20.0;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct DetResult {
    method: String,
    seed: u64,
    /// Car AP50 (VOC07 11-point, all-point, COCO).
    voc07: Option<f64>,
    all_point: Option<f64>,
    coco: Option<f64>,
    seconds: f64,
    /// The benchmark instance the run trained on.
    #[serde(default)]
    data_seed: u64,
    /// Digest of the checkpoint the run started from (`init_from`, or source-only's for AdaBN);
    /// a finished run is reused only when it is unchanged.
    #[serde(default)]
    init_digest: Option<String>,
    /// Reused from an earlier invocation of the demo in the same folder (`seconds` is then
    /// what its training took in that one).
    #[serde(default)]
    reused: bool,
}

fn result(method: &str, seed: u64, r: &DetReport, seconds: f64) -> DetResult {
    let car = r.ap50.get("car").copied().flatten();
    DetResult {
        method: method.into(),
        seed,
        voc07: car.map(|a| a.voc07),
        all_point: car.map(|a| a.all_point),
        coco: car.map(|a| a.coco),
        seconds,
        data_seed: 0,
        init_digest: None,
        reused: false,
    }
}

/// Trains (or reuses) one run of `cfg` into `runs/<name>/seed<seed>`: a finished run is reused,
/// and one killed midway resumes, while its config, benchmark instance and starting checkpoint
/// are unchanged ([`Stamp`]).
fn run_arm(
    out: &Path,
    name: &str,
    cfg: &DetRunConfig,
    data_seed: u64,
    device: &candle_core::Device,
) -> anyhow::Result<DetResult> {
    let seed = cfg.trainer.seed;
    let dir = out.join("runs").join(name).join(format!("seed{seed}"));
    let stamp = Stamp::new(cfg.to_toml(), data_seed, cfg.init_from.as_deref())?;
    if let Some(r) = stamp.finished::<DetResult>(&dir) {
        return Ok(DetResult { reused: true, ..r });
    }
    let t = std::time::Instant::now();
    let control = seg_ssd::train::RunControl {
        resume: stamp.start(&dir)?,
        stop_after: None,
    };
    let o = seg_ssd::train::run(cfg, &dir, device, &mut |_, _, _| {}, control)?
        .context("the run stopped before its last step")?;
    let r = DetResult {
        data_seed,
        init_digest: stamp.init_digest(),
        ..result(name, seed, &o.report, t.elapsed().as_secs_f64())
    };
    stamp.finish(&dir, &r)?;
    Ok(r)
}

/// AdaBN from the source-only run of `seed`; a finished one is reused while the source-only
/// checkpoint and the benchmark instance are unchanged ([`Stamp`]).
fn run_adabn(out: &Path, seed: u64, data_seed: u64, device: &candle_core::Device) -> anyhow::Result<DetResult> {
    let t = std::time::Instant::now();
    let from = out.join("runs/source-only").join(format!("seed{seed}"));
    let loaded = seg_ssd::train::load_detector(&from, device)?;
    let cfg = &loaded.cfg;
    // Kept as the run of method `adabn` it is (source-only training, then the re-estimation),
    // for `eval --task detection --checkpoint`.
    let adabn = DetRunConfig {
        method: DetMethodConfigField(DetMethodConfig::Adabn),
        ..cfg.clone()
    };
    let dir = out.join("runs/adabn").join(format!("seed{seed}"));
    let stamp = Stamp::new(adabn.to_toml(), data_seed, Some(&from))?;
    if let Some(r) = stamp.finished::<DetResult>(&dir) {
        return Ok(DetResult { reused: true, ..r });
    }
    stamp.start(&dir)?;
    let ssd = loaded.method.detector();
    let ds = cfg.data.open_target(true, false, cfg.model.classes)?;
    seg_ssd::train::reestimate_bn(ssd, &ds, cfg.model.input_size(), cfg.trainer.batch_size, device)?;
    let val = cfg.data.open_target(false, true, cfg.model.classes)?;
    let eval_to = dir.join(seg_train::checkpoint::eval_dir(loaded.step));
    seg_ssd::train::save_detector(&loaded, &adabn, &dir)?;
    let report = seg_ssd::train::evaluate_detector(
        ssd,
        &val,
        8,
        device,
        seg_ssd::train::ReportTo {
            dir: &eval_to,
            detections: Some(&eval_to.join("detections.json")),
            pictures: 4,
            source: format!(
            "Cityscapes `{}` split under `{}`; the source-only detector of `{}` with its batch-norm statistics re-estimated on `{}`.",
            cfg.data.target_val,
            cfg.data.target_root.display(),
            from.display(),
            cfg.data.target_train
        ),
        },
    )?;
    let r = DetResult {
        data_seed,
        init_digest: stamp.init_digest(),
        ..result("adabn", seed, &report, t.elapsed().as_secs_f64())
    };
    stamp.finish(&dir, &r)?;
    Ok(r)
}

/// `seg-adapt demo --task detection`.
pub fn demo(args: &super::demo::Args, out: &Path, device: &crate::run::DeviceName) -> anyhow::Result<()> {
    let super::demo::Args {
        out: _,
        quick,
        seeds,
        pretrain_steps,
        steps,
        data_seed,
        methods,
        task: _,
    } = args;
    let (quick, data_seed, methods) = (*quick, *data_seed, methods.clone());
    let start = std::time::Instant::now();
    let device = crate::run::device(device)?;
    let preset = if quick { Preset::Quick } else { Preset::Default };
    // Five seeds: car AP on 100 val images moves by several points between seeds.
    let seeds = seeds.unwrap_or(if quick { 2 } else { 5 });
    let lengths = if quick {
        Phases::DETECTION_QUICK
    } else {
        Phases::DETECTION
    };
    let phases = Phases {
        pretrain: pretrain_steps.unwrap_or(lengths.pretrain),
        adapt: steps.unwrap_or(lengths.adapt),
    };
    anyhow::ensure!(
        seeds > 0 && phases.pretrain > 0 && phases.adapt > 0,
        "--seeds, --pretrain-steps and --steps must be at least 1"
    );
    let methods: Vec<String> = match methods {
        Some(list) => {
            let list = method_list(list)?;
            for m in &list {
                DetMethodConfig::parse(m).map_err(|e| anyhow::anyhow!(e))?;
            }
            list
        }
        None => DET_METHOD_NAMES.iter().map(|s| s.to_string()).collect(),
    };
    // Only once every argument is known good is the folder claimed (and locked for the run).
    let _claim = super::demo::claim_out(out, super::Task::Detection)?;
    let data = out.join("data");
    // The benchmark too: a `gen-toy --out` of this data/ would remove its datasets under the runs.
    let _data = seg_labels::fsutil::lock_dir(&data)?;
    if let Some(why) = toy::stale(&data, data_seed, preset) {
        eprintln!(
            "writing the embedded benchmark ({preset:?}, seed {}) in {}: {why}",
            data_seed,
            data.display()
        );
        toy::generate(&data, data_seed, preset)?;
    }
    let mut runs: Vec<DetResult> = Vec::new();
    let mut ledger = Ledger::default();
    for seed in 0..seeds as u64 {
        let init = out.join("runs").join(PRETRAIN).join(format!("seed{seed}"));
        {
            let cfg = demo_config(&data, preset, "source-only", seed, phases, Phase::Pretrain, &init)?;
            eprintln!(
                "[{:>5.0}s] detection source-only pretraining seed {seed} ({} steps)",
                start.elapsed().as_secs_f64(),
                phases.pretrain
            );
            let r = run_arm(out, PRETRAIN, &cfg, data_seed, &device)
                .with_context(|| format!("detection demo pretraining seed {seed}"))?;
            ledger.note(r.reused, r.seconds);
            eprintln!(
                "         car AP50 {}",
                r.voc07.map_or("n/a".into(), |v| format!("{:.2} %", 100.0 * v))
            );
        }
        for m in &methods {
            eprintln!("[{:>5.0}s] detection {m} seed {seed}", start.elapsed().as_secs_f64());
            let r = if m == "adabn" {
                run_adabn(out, seed, data_seed, &device)
            } else {
                let cfg = demo_config(&data, preset, m, seed, phases, Phase::Arm, &init)?;
                run_arm(out, m, &cfg, data_seed, &device)
            }
            .with_context(|| format!("detection demo run {m} seed {seed}"))?;
            ledger.note(r.reused, r.seconds);
            eprintln!(
                "         car AP50 {}",
                r.voc07.map_or("n/a".into(), |v| format!("{:.2} %", 100.0 * v))
            );
            runs.push(r);
        }
    }
    let scores = |m: &str| -> Vec<(u64, f64)> {
        runs.iter()
            .filter(|r| r.method == m)
            .filter_map(|r| r.voc07.map(|v| (r.seed, v)))
            .collect()
    };
    let summary = summarise(&methods, scores);
    let vs = comparisons(&methods, scores);
    let s = preset.sizes();
    let last_seed = seeds.saturating_sub(1);
    let meta = format!(
        "Embedded benchmark `{preset:?}`, generator version {}, data seed {data_seed}: source {} Sim10k-layout images (JPEG, VOC XML), target Cityscapes train {} (unlabelled) / val {}, {}x{}. Small batch-norm SSD at {}x{}, car only, batch 8 (+8 target), SGD poly 0.9. Per seed: {} source-only steps at lr {DET_LR} shared by every arm, then {} steps per arm from that detector at lr {DET_ARM_LR} (domain branches: reversal weight {DET_DOMAIN_WEIGHT} and lr {DET_LR} × {DET_DOMAIN_LR_MULT}, each divided among the branches; da-image's classifiers with 64 hidden channels); AdaBN = the source-only arm with its statistics re-estimated on target train; the adaptation arms end with the same re-estimation; the oracle continues on target train boxes. Seeds 0 to {last_seed} ({seeds} in all). Last checkpoint only. {}",
        toy::GENERATOR_VERSION,
        s.sim10k,
        s.target_train,
        s.target_val,
        s.width,
        s.height,
        s.width,
        s.height,
        phases.pretrain,
        phases.adapt,
        ledger.describe(start.elapsed().as_secs_f64())
    );
    let mut md = String::from("# seg-adapt demo: detection, synthetic (Sim10k-format) → real (Cityscapes-format)\n\n");
    md += &meta;
    md += "\n\nCar AP at IoU 0.5 on target val (VOC07 11-point; all-point and COCO AP50 in report.json), mean ± sample std over seeds; paired columns: mean per-seed difference ± half-width of its 95% interval, in points.\n\n";
    md += &results_markdown("car AP50 %", &methods, &summary, &vs);
    md += "\nPictures (seed 0, first val images; ground truth green, detections ≥ 0.3 red): `runs/<method>/seed0/eval/step_NNNNNN/pictures/detections.png`.\n";
    let page = html_page(out, &methods, &summary, &vs, &meta);
    let json = serde_json::json!({
        "task": "detection",
        "runs": runs,
        "summary": summary,
        "paired": vs,
        "pretrain_steps": phases.pretrain,
        "steps": phases.adapt,
        "seeds": seeds,
        "preset": preset,
        "data_seed": data_seed,
        "generator_version": toy::GENERATOR_VERSION,
        "seconds": start.elapsed().as_secs_f64(),
        "reused_runs": ledger.reused,
        "reused_runs_seconds": ledger.reused_seconds,
    });
    super::demo_run::write_reports(out, &json, &md, &page, &[])
}

fn html_page(
    out: &Path,
    methods: &[String],
    summary: &BTreeMap<String, Summary>,
    vs: &BTreeMap<String, Comparison>,
    meta: &str,
) -> String {
    use seg_metrics::html;
    let mut b = format!("<p>{}</p>\n<h2>Results</h2><table><tr><th>method</th><th>car AP50 %</th><th>±</th><th>seeds</th><th>vs source-only</th><th>vs AdaBN</th><th>seeds above AdaBN</th></tr>", html::escape(meta));
    let mut bars = Vec::new();
    for m in methods {
        let (Some(x), Some(c)) = (summary.get(m), vs.get(m)) else {
            continue;
        };
        let (so, ab) = (&c.vs_source_only, &c.vs_adabn);
        b += &format!(
            "<tr><td>{}</td><td>{:.2} %</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html::escape(m),
            100.0 * x.mean,
            x.spread(),
            x.n,
            so.as_ref().map_or(String::new(), with_ci),
            ab.as_ref().map_or(String::new(), with_ci),
            ab.as_ref().map_or(String::new(), |p| format!("{}/{}", p.positive, p.n)),
        );
        // The chart takes fractions, as for per-class IoU.
        bars.push((m.clone(), Some(x.mean)));
    }
    b += "</table>";
    b += &html::bar_chart("Car AP50 % (VOC07), mean over seeds", &bars);
    b += &arm_curves_html(
        out,
        methods,
        "det_conf",
        "Source classification loss of each arm (seed 0)",
    );
    b += "<h2>Detections on target val (seed 0)</h2>";
    for m in methods {
        let last = html::last_eval_dir(&out.join("runs").join(m).join("seed0"));
        if let Some(img) = last.and_then(|d| html::png_img(&d.join("pictures/detections.png"), m)) {
            b += &format!("<h3>{}</h3>{img}", html::escape(m));
        }
    }
    html::page("seg-adapt demo: detection", &b)
}

/// `eval --task detection`: AP of a detections file or a trained detector on a Cityscapes split.
pub fn eval(args: &super::eval::Args, device: &crate::run::DeviceName) -> anyhow::Result<()> {
    let (root, split, out) = (&args.root, &args.split, &args.out);
    let (pred, checkpoint) = (args.pred.as_deref(), args.checkpoint.as_deref());
    // A detections file is scored against the whole split, as the official evaluations do.
    if pred.is_some() {
        super::refuse_unused(&[("--list", args.list.is_some())], "a trained detector (--checkpoint)")?;
    }
    // A trained detector is evaluated on its own classes unless --classes says otherwise.
    let loaded = match (pred, checkpoint) {
        (None, Some(run_dir)) => {
            let device = crate::run::device(device)?;
            Some((run_dir, seg_ssd::train::load_detector(run_dir, &device)?, device))
        }
        _ => None,
    };
    let classes = args
        .classes
        .or(loaded.as_ref().map(|(_, l, _)| l.cfg.model.classes))
        .unwrap_or(ClassSet::All);
    let mut ds = DetDataset::open_cityscapes(root, split, true, classes)?;
    if let Some(l) = &args.list {
        ds.keep_listed(l)?;
    }
    let report = match (pred, loaded) {
        (Some(p), _) => {
            let note = match seg_ssd::train::left_out_by_the_run_of(p, &ds) {
                Some(w) => {
                    eprintln!("warning: {w}");
                    format!(" {w}")
                }
                None => String::new(),
            };
            let source = format!(
                "Cityscapes `{split}` split under `{}`; detections from `{}`.{note}",
                root.display(),
                p.display()
            );
            seg_detect::report::evaluate_file(&ds, p, classes, args.samples, out, source)?
        }
        (None, Some((run_dir, loaded, device))) => {
            let has = loaded.cfg.model.classes;
            anyhow::ensure!(
                classes.indices().into_iter().all(|c| has.contains(c)),
                "the detector's class set is `{has}` ({}); evaluate it with --classes {has}",
                has.indices()
                    .iter()
                    .map(|&c| seg_detect::DET_CLASSES[c].name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            // The run's error policy: under "skip", what does not load is left out and named,
            // as in the run's own evaluation, which the two then agree with.
            let note = seg_ssd::train::leave_out_as_the_run_did(&mut ds, loaded.cfg.data.error_policy)?;
            let list = args
                .list
                .as_ref()
                .map_or(String::new(), |l| format!(", the images {} names", l.display()));
            let source = format!(
                "Cityscapes `{split}` split under `{}`{list}; detector from `{}` (step {}).{note}",
                root.display(),
                run_dir.display(),
                loaded.step
            );
            seg_ssd::train::evaluate_detector(
                loaded.method.detector(),
                &ds,
                8,
                &device,
                seg_ssd::train::ReportTo {
                    dir: out,
                    detections: Some(&out.join("detections.json")),
                    pictures: args.samples,
                    source,
                },
            )?
        }
        (None, None) => anyhow::bail!("give --pred DETS.json or --checkpoint RUN_DIR"),
    };
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", report.text_table());
    println!("report written to {}", out.join("report.json").display());
    Ok(())
}

/// `predict` with a detector (a run folder or its checkpoint file): its detections on every
/// image of `inputs` (at the detector's score threshold and per-image cap), one
/// `out/detections.json`; two inputs with one name are refused before anything is written.
pub fn predict(checkpoint: &Path, inputs: &[PathBuf], out: &Path, device: &candle_core::Device) -> anyhow::Result<()> {
    let loaded = seg_ssd::train::load_detector(checkpoint, device)?;
    let mut named: BTreeMap<String, &PathBuf> = BTreeMap::new();
    let mut entries = Vec::with_capacity(inputs.len());
    for path in inputs {
        let name = super::image_name(path);
        if let Some(first) = named.insert(name.clone(), path) {
            anyhow::bail!(
                "{} and {} are both image `{name}` of the detections: rename one",
                first.display(),
                path.display()
            );
        }
        entries.push(seg_detect::dataset::DetEntry {
            name,
            image: path.clone(),
            annotation: None,
            listed_by: None,
        });
    }
    let ds = DetDataset {
        format: DetFormat::Cityscapes,
        root: out.to_path_buf(),
        split: "predict".into(),
        classes: loaded.cfg.model.classes,
        entries,
    };
    let found = seg_ssd::train::detect(
        loaded.method.detector(),
        &ds,
        loaded.cfg.trainer.batch_size.max(1),
        device,
    )?;
    let records = seg_ssd::train::detection_records(&ds, &found);
    let file = out.join("detections.json");
    seg_detect::dets::write_detections(&file, &records)?;
    println!(
        "wrote {} of {} to {}",
        super::count(records.len(), "detection"),
        super::count(inputs.len(), "image"),
        file.display()
    );
    Ok(())
}

/// `inspect` of a detection dataset.
pub fn inspect(ds: &DetDataset, json: bool) -> anyhow::Result<()> {
    let bar = seg_train::progress::Shown::new(indicatif::ProgressBar::new(ds.len() as u64));
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let r = seg_detect::inspect::inspect(ds, &|| bar.inc(1));
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!("{} {}: {} samples, {} usable", r.dataset, r.split, r.samples, r.usable);
    for (size, n) in &r.image_sizes {
        println!("  image size {size}: {n}");
    }
    for (class, n) in &r.boxes {
        println!("  {class:<12} {n:>8} boxes");
    }
    super::inspect::print_problems(r.problems.iter().map(|p| (p.file.as_str(), p.reason.as_str())));
    Ok(())
}
