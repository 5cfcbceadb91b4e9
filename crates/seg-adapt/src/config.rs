//! The run configuration: one typed TOML file (unknown keys are errors that name the key),
//! composed of each crate's own section, saved resolved into the run folder before training.

use std::path::{Path, PathBuf};

use anyhow::Context;
use seg_data::Augment;
pub use seg_data::DataConfig;
use seg_fcn::ModelName;
use seg_labels::Protocol;
use seg_methods::MethodConfig;
use seg_train::TrainerConfig;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: ModelName,
    /// ImageNet weights (torchvision VGG16 keys) in safetensors.
    #[serde(default)]
    pub init_weights: Option<PathBuf>,
    /// Start from another run's trained model: a run folder (or its checkpoint file) whose
    /// weights and batch-norm statistics are copied in; heads and optimiser state start fresh.
    /// Its model must be this run's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    pub protocol: Protocol,
    /// Images shown in the report's pictures.
    pub pictures: usize,
    pub batch_size: usize,
    /// AdaBN: target batches used to re-estimate batch-norm statistics.
    pub adabn_batches: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            protocol: Protocol::Classes19,
            pictures: 4,
            batch_size: 4,
            adabn_batches: 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub method: MethodConfig,
    #[serde(default)]
    pub augment: Augment,
    #[serde(default)]
    pub trainer: TrainerConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

impl seg_train::resume::Resumable for RunConfig {
    /// This config with the settings a resumed run may change taken from `other`: the step
    /// count and those that do not change what is trained (how often to checkpoint, evaluate
    /// and log, caching and decoding ahead, the evaluation's batch and pictures), and where the
    /// data, lists and starting weights are (data moved; the loaders and `skipped.json` still
    /// refuse other training samples, and a resume reads no starting weights).
    fn with_free_settings_of(&self, other: &Self) -> Self {
        let mut c = self.clone();
        c.trainer = self.trainer.with_free_settings_of(&other.trainer);
        (c.eval.batch_size, c.eval.pictures) = (other.eval.batch_size, other.eval.pictures);
        c.data = self.data.with_places_of(&other.data);
        (c.model.init_weights, c.model.init_from) = (other.model.init_weights.clone(), other.model.init_from.clone());
        c
    }

    /// The trainer groups of both resolved alike.
    fn comparable(mut a: Self, mut b: Self) -> (Self, Self) {
        (a.trainer, b.trainer) = seg_train::config::TrainerConfig::groups_resolved_together(&a.trainer, &b.trainer);
        (a, b)
    }

    fn whole_difference(a: &Self, b: &Self) -> Option<String> {
        (a.method.name() != b.method.name()).then(|| "method.kind".into())
    }
}

impl RunConfig {
    /// Reads a TOML file; errors name the file and the offending key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            seg_labels::fsutil::read_text(path).with_context(|| format!("{}: cannot read config", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}: invalid config", path.display()))
    }

    /// Parses a config; a number that is not finite (`nan`, `inf`) is refused naming its key.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| {
            let raw = toml::from_str::<toml::Value>(text).ok();
            match raw.and_then(|r| seg_train::config::bad_key_of_kind_section::<MethodConfig>(&r, "method")) {
                Some((key, why)) => anyhow::anyhow!("{key}: {why}"),
                None if is_detection_config(text) => anyhow::anyhow!(
                    "{}\n(a detection config, which `seg-adapt train-detector` takes)",
                    seg_train::config::plain_types(e.to_string().trim_end())
                ),
                None if e.message().contains("missing field `source_dataset`") => anyhow::anyhow!(
                    "{}\n(a segmentation config names data.source_dataset; a detection config names data.source_format, \"sim10k\" or \"cityscapes\", instead)",
                    e.to_string().trim_end()
                ),
                None => anyhow::anyhow!("{}", seg_train::config::plain_types(e.to_string().trim_end())),
            }
        })?;
        let tree = toml::Value::try_from(&cfg).context("cannot serialise the config")?;
        seg_train::config::refuse_non_finite(&tree).map_err(anyhow::Error::msg)?;
        let raw: toml::Value = toml::from_str(text).context("cannot read the config as TOML")?;
        if let Some((key, n, m)) = seg_train::config::first_array_length_mismatch(&raw, &tree) {
            anyhow::bail!("{key} has {n} values where {m} are expected");
        }
        if let Some((key, kind)) = seg_train::config::key_of_a_kind_without_settings(&raw, &tree) {
            anyhow::bail!("{key}: unknown key: method `{kind}` has no settings");
        }
        Ok(cfg)
    }

    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("cannot serialise the config")
    }

    /// The config with one `key=value` override applied (`--set`, as MMSegmentation's
    /// `--cfg-options`): `key` is a dotted path (`trainer.lr`, `method.hidden`,
    /// `trainer.groups.discriminator.lr`), `value` a TOML value (`0.01`, `true`, `[896, 512]`,
    /// or a bare word taken as a string). Setting `method.kind` starts that method from its
    /// defaults. An unknown key or a wrong type is an error that names the key.
    pub fn with_set(&self, assignment: &str) -> anyhow::Result<Self> {
        let mut root = toml::Value::try_from(self).context("cannot serialise the config")?;
        let (key, value) = seg_train::config::set_key_of::<Self>(&mut root, assignment).map_err(anyhow::Error::msg)?;
        let text = toml::to_string(&root).context("cannot serialise the config")?;
        // The reason alone: a line and column would point into this generated text, which the
        // user never wrote.
        if let Err(e) = toml::from_str::<Self>(&text) {
            anyhow::bail!(
                "--set {key}={value}: {}",
                seg_train::config::plain_types(e.message().trim_end())
            );
        }
        Self::parse(&text).map_err(|e| anyhow::anyhow!("--set {key}={value}: {e:#}"))
    }

    /// Checks what can be checked before any work starts.
    pub fn validate(&self, stride: usize) -> anyhow::Result<()> {
        self.trainer.validate().map_err(anyhow::Error::msg)?;
        // The method's own settings (a width of 0, a dropout above 1) settle nothing else.
        self.method.validate()?;
        let d = &self.data;
        let path = |p: &Option<std::path::PathBuf>| p.as_ref().is_some_and(|p| p.as_os_str().is_empty());
        for (key, empty) in [
            ("data.source_root", d.source_root.as_os_str().is_empty()),
            ("data.target_root", d.target_root.as_os_str().is_empty()),
            ("data.target_train_split", d.target_train_split.trim().is_empty()),
            ("data.target_val_split", d.target_val_split.trim().is_empty()),
            ("data.source_list", path(&d.source_list)),
            ("data.target_train_list", path(&d.target_train_list)),
            ("data.target_val_list", path(&d.target_val_list)),
            ("model.init_weights", path(&self.model.init_weights)),
            ("model.init_from", path(&self.model.init_from)),
        ] {
            anyhow::ensure!(
                !empty,
                "{key} = \"\": name a file or folder (or leave the key out, `--set {key}=`, where it is optional)"
            );
        }
        let tree = toml::Value::try_from(self).context("cannot serialise the config")?;
        seg_train::config::refuse_oversized(&tree).map_err(anyhow::Error::msg)?;
        self.augment.validate().map_err(anyhow::Error::msg)?;
        if let Some([w, h]) = self.augment.crop {
            anyhow::ensure!(
                w % stride as u32 == 0 && h % stride as u32 == 0 && w > 0 && h > 0,
                "crop {w}x{h}: width and height must be positive multiples of the network's stride {stride} (model {})",
                self.model.name
            );
            let min = self.method.min_crop_side() as u32;
            anyhow::ensure!(
                w >= min && h >= min,
                "crop {w}x{h}: method `{}` needs at least {min} pixels a side (its discriminator's five stride-2 convolutions)",
                self.method.name()
            );
            // One batch of input floats, before any activation: 1024 × 3 × 512 × 1024 is 6 GiB.
            let target = self.trainer.target_batch_size.unwrap_or(0);
            let (batch, key) = match self.trainer.batch_size.max(target) {
                b if b == self.trainer.batch_size => (b, "trainer.batch_size"),
                b => (b, "trainer.target_batch_size"),
            };
            let floats = batch as u64 * 3 * w as u64 * h as u64;
            anyhow::ensure!(
                floats <= 1 << 30,
                "a batch of {batch} crops of {w}x{h} is {:.1} GiB of input floats alone: lower {key} or augment.crop",
                floats as f64 * 4.0 / (1u64 << 30) as f64
            );
        } else {
            anyhow::bail!("augment.crop is required (`crop = [W, H]` in [augment], or --set augment.crop=[W,H]): batches need one size");
        }
        anyhow::ensure!(
            (1..=1024).contains(&self.eval.batch_size),
            "eval.batch_size = {}: images per evaluation pass must be 1 to 1024",
            self.eval.batch_size
        );
        anyhow::ensure!(
            self.model.init_weights.is_none() || self.model.init_from.is_none(),
            "model.init_weights and model.init_from are both set: a run starts from one of them"
        );
        Ok(())
    }
}

/// Whether a config's TOML is a detection run's ([`seg_ssd::train::is_detection_config`]).
pub fn is_detection_config(text: &str) -> bool {
    seg_ssd::train::is_detection_config(text)
}

/// Refuses `--resume` into `out` when the run folder's saved `config.toml` is the other task's
/// (`detection`: the resuming command is `train-detector`), naming the command that resumes it.
pub fn refuse_other_tasks_folder(out: &std::path::Path, detection: bool) -> anyhow::Result<()> {
    // The checkpoint's config says whose run it is; config.toml may have been replaced.
    let stored = seg_train::checkpoint::read_meta(&out.join(seg_train::checkpoint::FILE)).map(|m| m.config);
    let Some(text) = stored
        .ok()
        .or_else(|| std::fs::read_to_string(out.join("config.toml")).ok())
    else {
        return Ok(());
    };
    let (theirs, resume_with) = match is_detection_config(&text) {
        true => ("detection", "train-detector"),
        false => ("segmentation", "train"),
    };
    let readable = toml::from_str::<toml::Value>(&text).is_ok();
    anyhow::ensure!(
        !readable || is_detection_config(&text) == detection,
        "{} is a {theirs} run's folder: resume it with `{resume_with} --out {} --resume`",
        out.display(),
        out.display()
    );
    Ok(())
}

/// Parses `WxH`.
pub fn parse_crop(s: &str) -> Result<[u32; 2], String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("crop `{s}` is not WxH"))?;
    let w = w
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("crop width `{w}` is not a number"))?;
    let h = h
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("crop height `{h}` is not a number"))?;
    Ok([w, h])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[data]
source_dataset = "gta5"
source_root = "toy/gta5"
target_dataset = "cityscapes"
target_root = "toy/cityscapes"

[model]
name = "small"

[method]
kind = "source-only"

[augment]
crop = [64, 64]
"#;

    #[test]
    fn minimal_config_round_trips() {
        let c = RunConfig::parse(MINIMAL).unwrap();
        assert_eq!(c.model.name, ModelName::Small);
        let again = RunConfig::parse(&c.to_toml().unwrap()).unwrap();
        assert_eq!(c, again);
        c.validate(8).unwrap();
        assert!(c
            .validate(48)
            .unwrap_err()
            .to_string()
            .contains("multiples of the network's stride"));
        // A batch whose input floats alone would not fit in memory.
        let big = RunConfig::parse(&format!(
            "{}\n[trainer]\nbatch_size = 1024\n",
            MINIMAL.replace("crop = [64, 64]", "crop = [1024, 512]")
        ))
        .unwrap();
        let e = big.validate(8).unwrap_err().to_string();
        assert!(e.contains("1024 crops of 1024x512") && e.contains("GiB"), "{e}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let e = RunConfig::parse(&MINIMAL.replace("[model]", "[model]\nwidth = 3"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("width"), "{e}");
        let e = RunConfig::parse(&format!("{MINIMAL}\n[trainer]\nsteps = \"many\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("steps"), "{e}");
        let e = RunConfig::parse(&MINIMAL.replace("source-only", "magic"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("magic"), "{e}");
        assert_eq!(parse_crop("64x32").unwrap(), [64, 32]);
        assert!(parse_crop("64").is_err());
    }
}
