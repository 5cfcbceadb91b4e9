//! Loading ImageNet initialisation weights saved as safetensors with torchvision's VGG16 keys.
//! `features.N.*` load as they are; `classifier.0` / `classifier.3` (the fully connected fc6 and
//! fc7) are reshaped into the convolutional fc6 (7×7) and fc7 (1×1) when the shapes allow, as
//! FCN's "convolutionalisation" does. Keys the model does not have are reported, not loaded.

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

/// What an initialisation file contributed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InitReport {
    pub loaded: Vec<String>,
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: cannot read safetensors file: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: tensor `{key}` has shape {found:?} but the model's `{target}` is {expected:?}")]
    Shape {
        path: String,
        key: String,
        target: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error(
        "{path}: no tensor in the file matches the model (expected torchvision VGG16 keys such as `features.0.weight`)"
    )]
    NothingLoaded { path: String },
}

/// Loads `path` into the variables of `vars` under `prefix` (e.g. `model`).
pub fn load_init_weights(vars: &VarMap, prefix: &str, path: &Path) -> Result<InitReport, WeightsError> {
    let p = path.display().to_string();
    let read = |e: candle_core::Error| WeightsError::Read {
        path: p.clone(),
        reason: e.to_string(),
    };
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(read)?;
    let data = vars.data().lock().map_err(|_| WeightsError::Read {
        path: p.clone(),
        reason: "poisoned var map".into(),
    })?;
    let mut report = InitReport::default();
    let mut keys: Vec<_> = tensors.keys().cloned().collect();
    keys.sort();
    for key in keys {
        let t = &tensors[&key];
        let target = match key.as_str() {
            "classifier.0.weight" => "fc6.weight".to_string(),
            "classifier.0.bias" => "fc6.bias".to_string(),
            "classifier.3.weight" => "fc7.weight".to_string(),
            "classifier.3.bias" => "fc7.bias".to_string(),
            k => k.to_string(),
        };
        let full = format!("{prefix}.{target}");
        let Some(var) = data.get(&full) else {
            report.skipped.push(key);
            continue;
        };
        let want = var.dims().to_vec();
        let shape_err = || WeightsError::Shape {
            path: p.clone(),
            key: key.clone(),
            target: full.clone(),
            found: t.dims().to_vec(),
            expected: want.clone(),
        };
        if t.elem_count() != var.elem_count() {
            return Err(shape_err());
        }
        let t: Tensor = if t.dims() == want.as_slice() {
            t.clone()
        } else {
            t.reshape(want.as_slice()).map_err(|_| shape_err())?
        };
        let t = t
            .to_dtype(var.dtype())
            .and_then(|t| t.to_device(var.device()))
            .map_err(read)?;
        var.set(&t).map_err(read)?;
        report.loaded.push(key);
    }
    if report.loaded.is_empty() {
        return Err(WeightsError::NothingLoaded { path: p });
    }
    Ok(report)
}
