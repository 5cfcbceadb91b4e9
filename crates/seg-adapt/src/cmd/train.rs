//! `seg-adapt train CONFIG --out DIR [--resume] [--set key=value ...]`: one training run from a
//! config file, with a few convenience flags and `--set` overrides (as MMSegmentation's
//! `--cfg-options`).

use std::path::PathBuf;

use anyhow::Context;
use seg_methods::MethodConfig;

use crate::config::RunConfig;

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// A TOML run configuration: a preset of `configs/` (`configs/demo/` holds the demo's) or a
    /// run's `config.toml`. Required unless `--resume` finds the run's checkpoint or saved config.
    #[arg(value_name = "CONFIG", required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Run folder: config.toml, checkpoint.safetensors, metrics.jsonl, eval/, report.html, and
    /// skipped.json when samples are left out.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the run folder's checkpoint, with the config it was trained with.
    #[arg(long)]
    pub resume: bool,
    /// Override one config value, `key=value` with a dotted key and a TOML value
    /// (`trainer.lr=0.001`, `data.source_root=/data/gta5`, `method.adv_weight=0.01`,
    /// `trainer.groups.discriminator.lr=1e-4`); repeatable, applied after the flags below. An
    /// unknown key or a wrong type is an error naming the key.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = super::setting())]
    pub set: Vec<String>,
    /// The method, with its default hyperparameters (replaces the config's `[method]`, which is
    /// kept as it is when it names this method already): source-only, oracle, adabn, dann,
    /// fcn-wild, cross-city, san, dsn, curriculum, two-stream, adaptsegnet, advent-minent or advent.
    #[arg(long)]
    pub method: Option<MethodConfig>,
    /// Training steps (`trainer.steps`). A method with a stage before training (the curriculum's
    /// `method.pretrain_steps`, 400 by default) runs that stage first, in addition.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed of initialisation, sampling, augmentation and the methods' random draws
    /// (`trainer.seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Start from another run's trained model (a run folder or its checkpoint file): weights and
    /// batch-norm statistics are copied, heads and optimiser state start fresh; the model must
    /// match (`model.init_from`).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
}

/// The run's configuration: the config file (with `--resume` and no CONFIG, the run folder's
/// checkpoint's config), then the flags, then each `--set`. A resumed run keeps the config its
/// checkpoint was trained with (which an edited or lost `config.toml` does not change): the
/// result may differ from it in `trainer.steps` (to extend a run) and the settings a resume may
/// change (`Resumable::with_free_settings_of` of `RunConfig`), anything else is an error naming the key; a run stopped before its first checkpoint starts over with any config. Starting from another run's model (`--init-from`, or `model.init_from` set on
/// the command line) replaces the preset's ImageNet weights.
pub fn resolve(args: &Args) -> anyhow::Result<RunConfig> {
    let saved_path = args.out.join("config.toml");
    if args.resume && (saved_path.exists() || args.out.join(seg_train::checkpoint::FILE).is_file()) {
        crate::config::refuse_other_tasks_folder(&args.out, false)?;
    }
    // Without CONFIG a resume continues with the config its checkpoint was trained with (which
    // an edited, lost or another run's config.toml does not change), taking from config.toml
    // the settings a resume may change; a run stopped before its first checkpoint, with its
    // config.toml.
    let saved = match args.resume && args.config.is_none() {
        true => {
            let parse = |text: &str| RunConfig::parse(text).map_err(|e| format!("{e:#}"));
            let stored = |file: &std::path::Path, meta: &seg_train::CheckpointMeta| {
                crate::run::stored_config(file, &meta.config)
            };
            match seg_train::resume::checkpoint_config(&args.out, stored, parse)? {
                None if saved_path.exists() => Some(RunConfig::load(&saved_path)?),
                resumed => resumed,
            }
        }
        false => None,
    };
    let mut cfg = match (&args.config, &saved) {
        (Some(path), _) => RunConfig::load(path)?,
        (None, Some(s)) => s.clone(),
        (None, None) if !args.out.exists() => anyhow::bail!(
            "--resume: nothing to resume: {} does not exist (without --resume, a CONFIG starts a run there)",
            args.out.display()
        ),
        (None, None) => anyhow::bail!(
            "{}: no saved config to resume from; name a CONFIG (a preset of `configs/`)",
            saved_path.display()
        ),
    };
    let from_file = cfg.model.init_from.clone();
    if let Some(m) = args.method.as_ref().filter(|m| m.name() != cfg.method.name()) {
        cfg.method = m.clone();
    }
    if let Some(v) = args.steps {
        cfg.trainer.steps = v;
    }
    if let Some(v) = args.seed {
        cfg.trainer.seed = v;
    }
    if let Some(v) = &args.init_from {
        cfg.model.init_from = Some(v.clone());
    }
    for kv in &args.set {
        cfg = cfg.with_set(kv)?;
    }
    if cfg.model.init_from.is_some() && cfg.model.init_from != from_file && cfg.model.init_weights.is_some() {
        tracing::info!("starting from the model of --init-from: the config's init_weights are not loaded");
        cfg.model.init_weights = None;
    }
    // Whether it agrees with the checkpoint's is checked by `run::train`, under the run folder's
    // lock. Without a checkpoint (a run stopped before its first one) there is nothing the config
    // must agree with: `--resume` starts that run over from step 0, with this config.
    Ok(cfg)
}

pub fn run(args: Args, device_name: &crate::run::DeviceName) -> anyhow::Result<()> {
    super::refuse_inside_evaluations(&args.out, "run")?;
    let cfg = resolve(&args)?;
    let device = crate::run::device(device_name)?;
    let outcome = crate::run::train(&cfg, &args.out, &device, args.resume, true)
        .with_context(|| format!("training run {}", args.out.display()))?;
    // A resumed run says what this command trained: `steps 91-150 of 150`.
    let trained = match outcome.first_step {
        0 => seg_core::steps(outcome.steps),
        f if f >= outcome.steps => format!("nothing left to train at step {}", outcome.steps),
        f if f + 1 == outcome.steps => format!("step {f} of {f}", f = outcome.steps),
        f => format!("steps {}-{} of {}", f + 1, outcome.steps, outcome.steps),
    };
    println!(
        "run {}: {trained} in {:.1}s, checkpoint {}, target val mIoU ({} classes) {}",
        args.out.display(),
        outcome.seconds,
        outcome.checkpoint.display(),
        cfg.eval.protocol.num_classes(),
        outcome
            .final_miou
            .map_or("n/a".into(), |m| format!("{:.2} %", 100.0 * m))
    );
    Ok(())
}
