//! What a resumed run continues with, for every task's run config: the config its checkpoint
//! was trained with, amended by the settings a resume may change ([`Resumable`]). Segmentation
//! (`seg-adapt`'s `RunConfig`) and detection (`seg-ssd`'s `DetRunConfig`) share these rules; each
//! says which of its settings are free.

use std::path::Path;

use crate::checkpoint::{self, CheckpointMeta};
use crate::error::TrainError;

/// A run config as a resume sees it.
pub trait Resumable: Clone + serde::Serialize + Sized {
    /// This config with the settings a resumed run may change taken from `other`: the step
    /// count and those that do not change what is trained, and where the data and starting
    /// weights are.
    fn with_free_settings_of(&self, other: &Self) -> Self;

    /// Two configs written alike for comparing them (two spellings of one setting made equal);
    /// by default as they are.
    fn comparable(a: Self, b: Self) -> (Self, Self) {
        (a, b)
    }

    /// The key that names a difference as a whole (`method.kind` for another method, rather
    /// than the first of its settings that differs); by default none.
    fn whole_difference(_a: &Self, _b: &Self) -> Option<String> {
        None
    }
}

/// The first dotted key at which `asked` changes more of `trained` (a checkpoint's config) than
/// a resume may change ([`Resumable::with_free_settings_of`]); `None` when it does not.
pub fn resume_difference<C: Resumable>(trained: &C, asked: &C) -> Option<String> {
    let (a, b) = C::comparable(trained.with_free_settings_of(asked), asked.clone());
    let (ta, tb) = (toml::Value::try_from(&a).ok(), toml::Value::try_from(&b).ok());
    if ta.is_some() && ta == tb {
        return None;
    }
    let key = C::whole_difference(&a, &b).or_else(|| {
        ta.zip(tb)
            .and_then(|(ta, tb)| crate::config::first_difference(&ta, &tb))
    });
    Some(key.unwrap_or_else(|| "a setting".into()))
}

/// The config `--resume` without CONFIG continues the run in `out` with: the one its checkpoint
/// was trained with (`stored` takes it from the checkpoint's metadata, or refuses the
/// checkpoint), taking from the folder's `config.toml` (`parse` reads its text) the settings a
/// resume may change. An edited, lost or unreadable `config.toml` does not change it, and is
/// named in a warning. `None` when the folder has no checkpoint.
pub fn checkpoint_config<C: Resumable, E: From<TrainError>>(
    out: &Path,
    stored: impl FnOnce(&Path, &CheckpointMeta) -> Result<C, E>,
    parse: impl FnOnce(&str) -> Result<C, String>,
) -> Result<Option<C>, E> {
    let ckpt = out.join(checkpoint::FILE);
    if !ckpt.is_file() {
        return Ok(None);
    }
    let meta = checkpoint::read_meta(&ckpt)?;
    let trained = stored(&ckpt, &meta)?;
    let path = out.join("config.toml");
    let file = match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("missing".to_string()),
        Err(e) => Err(format!("cannot be read ({e})")),
        Ok(text) => parse(&text).map_err(|e| format!("invalid config ({e})")),
    };
    let cfg = match file {
        Ok(file) => {
            if let Some(key) = resume_difference(&trained, &file) {
                tracing::warn!(
                    "{}: differs from the config the checkpoint was trained with (`{key}`): the checkpoint's is used",
                    path.display()
                );
            }
            trained.with_free_settings_of(&file)
        }
        Err(why) => {
            tracing::warn!(
                "{}: {why}: the config the checkpoint was trained with is used",
                path.display()
            );
            trained
        }
    };
    Ok(Some(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with one free setting (`steps`) and two fixed ones.
    #[derive(Clone, serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Cfg {
        steps: usize,
        lr: f64,
        method: Method,
    }

    #[derive(Clone, serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Method {
        kind: String,
        weight: f64,
    }

    impl Resumable for Cfg {
        fn with_free_settings_of(&self, other: &Self) -> Self {
            Self {
                steps: other.steps,
                ..self.clone()
            }
        }

        fn whole_difference(a: &Self, b: &Self) -> Option<String> {
            (a.method.kind != b.method.kind).then(|| "method.kind".into())
        }
    }

    fn cfg(steps: usize, lr: f64, kind: &str, weight: f64) -> Cfg {
        Cfg {
            steps,
            lr,
            method: Method {
                kind: kind.into(),
                weight,
            },
        }
    }

    #[test]
    fn a_free_setting_may_change_and_the_first_fixed_one_is_named() {
        let trained = cfg(100, 0.01, "dann", 0.1);
        assert_eq!(resume_difference(&trained, &cfg(500, 0.01, "dann", 0.1)), None);
        assert_eq!(
            resume_difference(&trained, &cfg(500, 0.02, "dann", 0.1)).as_deref(),
            Some("lr")
        );
        assert_eq!(
            resume_difference(&trained, &cfg(100, 0.01, "dann", 0.5)).as_deref(),
            Some("method.weight")
        );
        // Another method is named as such, not by the first of its settings.
        assert_eq!(
            resume_difference(&trained, &cfg(100, 0.01, "san", 0.5)).as_deref(),
            Some("method.kind")
        );
    }

    fn folder(config_toml: Option<&str>, trained: &Cfg) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let meta = CheckpointMeta {
            step: 10,
            source_loader: None,
            target_loader: None,
            config: toml::to_string(trained).unwrap(),
            methods_version: seg_core::METHODS_VERSION,
        };
        let w = candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        checkpoint::save(&dir.path().join(checkpoint::FILE), &[("model.w".into(), w)], &meta).unwrap();
        if let Some(text) = config_toml {
            std::fs::write(dir.path().join("config.toml"), text).unwrap();
        }
        dir
    }

    fn resumed(dir: &Path) -> Option<Cfg> {
        checkpoint_config::<Cfg, TrainError>(
            dir,
            |_, meta| Ok(toml::from_str(&meta.config).unwrap()),
            |text| toml::from_str(text).map_err(|e| e.message().to_string()),
        )
        .unwrap()
    }

    #[test]
    fn the_checkpoints_config_with_the_free_settings_of_config_toml() {
        let trained = cfg(100, 0.01, "dann", 0.1);
        // config.toml extends the run and edits a fixed setting: only the extension is taken.
        let edited = toml::to_string(&cfg(300, 0.5, "dann", 0.1)).unwrap();
        let dir = folder(Some(&edited), &trained);
        assert_eq!(resumed(dir.path()), Some(cfg(300, 0.01, "dann", 0.1)));
        // Missing, or not a config: the checkpoint's as it is.
        let dir = folder(None, &trained);
        assert_eq!(resumed(dir.path()), Some(trained.clone()));
        let dir = folder(Some("steps = \"many\""), &trained);
        assert_eq!(resumed(dir.path()), Some(trained));
        // No checkpoint: nothing to continue.
        std::fs::remove_file(dir.path().join(checkpoint::FILE)).unwrap();
        assert_eq!(resumed(dir.path()), None);
    }
}
