//! `seg-adapt train`: one training run from a config file and/or flags (flags win).

use std::path::PathBuf;

use anyhow::Context;
use seg_data::DatasetName;
use seg_fcn::ModelName;
use seg_heads::MethodConfig;

use crate::config::{parse_crop, DataConfig, ModelConfig, RunConfig};

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// A TOML run configuration (a preset of `configs/`, or a run's `config.toml`); flags and
    /// `--set` override its values.
    #[arg(value_name = "CONFIG", conflicts_with = "config")]
    pub config_file: Option<PathBuf>,
    /// The same as the positional CONFIG.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one config value, `key=value` with a dotted key (`trainer.lr=0.001`,
    /// `method.adv_weight=0.01`, `trainer.groups.discriminator.lr=1e-4`); repeatable, applied
    /// after the other flags. An unknown key or a wrong type is an error naming the key.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Source dataset format: gta5, synthia or cityscapes.
    #[arg(long)]
    pub source_dataset: Option<DatasetName>,
    /// Source dataset root folder.
    #[arg(long)]
    pub source_root: Option<PathBuf>,
    /// Target dataset format (default cityscapes).
    #[arg(long)]
    pub target_dataset: Option<DatasetName>,
    /// Target dataset root folder (its train split unlabelled, its val split for evaluation).
    #[arg(long)]
    pub target_root: Option<PathBuf>,
    /// source-only, oracle, adabn, dann, fcn-wild, cross-city, san, dsn, curriculum, two-stream,
    /// adaptsegnet, advent-minent or advent (default hyperparameters; a config's `[method]`
    /// section or `--set method.FIELD=VALUE` sets them).
    #[arg(long)]
    pub method: Option<MethodConfig>,
    /// vgg16-fcn8s, vgg16-fcn8s-reduced or small.
    #[arg(long)]
    pub model: Option<ModelName>,
    /// ImageNet weights with torchvision's VGG16 keys: torchvision's `.pth` as it downloads,
    /// or safetensors.
    #[arg(long)]
    pub init_weights: Option<PathBuf>,
    /// Start from another run's trained model (a run folder or its checkpoint file): weights and
    /// batch-norm statistics are copied, heads and optimiser state start fresh. The model must
    /// match.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Training steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Source images per step (and target images, unless the config sets them apart).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Crop size `WxH` (after `--scale`); a multiple of the network's stride.
    #[arg(long, value_parser = parse_crop)]
    pub crop: Option<[u32; 2]>,
    /// Resize factor applied to every image before cropping (and at evaluation).
    #[arg(long)]
    pub scale: Option<f32>,
    /// Segmenter learning rate at step 0 (poly decay).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of initialisation, sampling, augmentation and the methods' random draws.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write a checkpoint every N steps (and always at the end).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Evaluate on the target val split every N steps (and always at the end).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Run folder: config.toml, checkpoint.safetensors, metrics.jsonl, eval/.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the run folder's checkpoint (with its saved config).
    #[arg(long)]
    pub resume: bool,
    /// `cpu`, `cuda` (GPU 0) or `cuda:N` (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: crate::run::DeviceName,
}

/// Merges a config file (or the saved config, on resume) with flags.
pub fn resolve(args: &Args) -> anyhow::Result<RunConfig> {
    let saved = args.out.join("config.toml");
    let file = args.config_file.as_ref().or(args.config.as_ref());
    let base = match (file, args.resume && saved.exists()) {
        (_, true) => Some(RunConfig::load(&saved)?),
        (Some(path), false) => Some(RunConfig::load(path)?),
        (None, false) => None,
    };
    let mut cfg = match base {
        Some(c) => c,
        None => {
            let need = |what: &str| anyhow::anyhow!("--{what} is required without --config");
            RunConfig {
                data: DataConfig::new(
                    args.source_dataset.ok_or_else(|| need("source-dataset"))?,
                    args.source_root.clone().ok_or_else(|| need("source-root"))?,
                    args.target_dataset.unwrap_or(DatasetName::Cityscapes),
                    args.target_root.clone().ok_or_else(|| need("target-root"))?,
                ),
                model: ModelConfig {
                    name: args.model.unwrap_or(ModelName::Small),
                    init_weights: None,
                    init_from: None,
                },
                method: MethodConfig::SourceOnly,
                augment: Default::default(),
                trainer: Default::default(),
                eval: Default::default(),
            }
        }
    };
    if let Some(v) = args.source_dataset {
        cfg.data.source_dataset = v;
    }
    if let Some(v) = &args.source_root {
        cfg.data.source_root = v.clone();
    }
    if let Some(v) = args.target_dataset {
        cfg.data.target_dataset = v;
    }
    if let Some(v) = &args.target_root {
        cfg.data.target_root = v.clone();
    }
    if let Some(m) = &args.method {
        cfg.method = m.clone();
    }
    if let Some(v) = args.model {
        cfg.model.name = v;
    }
    if let Some(v) = &args.init_weights {
        cfg.model.init_weights = Some(v.clone());
    }
    if let Some(v) = &args.init_from {
        cfg.model.init_from = Some(v.clone());
    }
    if let Some(v) = args.steps {
        cfg.trainer.steps = v;
    }
    if let Some(v) = args.batch_size {
        cfg.trainer.batch_size = v;
    }
    if let Some(v) = args.crop {
        cfg.augment.crop = Some(v);
    }
    if let Some(v) = args.scale {
        cfg.augment.base_scale = v;
    }
    if let Some(v) = args.lr {
        cfg.trainer.lr = v;
    }
    if let Some(v) = args.seed {
        cfg.trainer.seed = v;
    }
    if let Some(v) = args.checkpoint_every {
        cfg.trainer.checkpoint_every = v;
    }
    if let Some(v) = args.eval_every {
        cfg.trainer.eval_every = v;
    }
    for kv in &args.set {
        cfg = cfg.with_set(kv)?;
    }
    Ok(cfg)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = resolve(&args)?;
    let device = crate::run::device(&args.device)?;
    let outcome = crate::run::train(&cfg, &args.out, &device, args.resume, true)
        .with_context(|| format!("training run {}", args.out.display()))?;
    println!(
        "run {}: {} steps in {:.1}s, checkpoint {}, target val mIoU {}",
        args.out.display(),
        outcome.steps,
        outcome.seconds,
        outcome.checkpoint.display(),
        outcome
            .final_miou
            .map_or("n/a".into(), |m| format!("{:.2} %", 100.0 * m))
    );
    Ok(())
}
