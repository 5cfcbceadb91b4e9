//! Loading ImageNet initialisation weights with torchvision's VGG16 keys, from safetensors or
//! from the PyTorch `.pth` archive torchvision downloads (`vgg16-397923af.pth`, read directly:
//! a zip of a pickled `state_dict` and raw tensor storages; anything in it that is not a tensor
//! is refused by name).
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
    #[error("{path}: entry `{key}` is not a tensor ({what}): only a state_dict of tensors can be loaded")]
    NotTensor { path: String, key: String, what: String },
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
    let tensors = if is_pth(path) {
        read_pth(path)?
    } else {
        candle_core::safetensors::load(path, &Device::Cpu).map_err(read)?
    };
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

/// A PyTorch archive (by extension, or by the zip signature where the name says nothing).
fn is_pth(path: &Path) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("pth" | "pt" | "bin" | "ckpt") => true,
        Some("safetensors") => false,
        _ => {
            use std::io::Read;
            let mut head = [0u8; 4];
            std::fs::File::open(path)
                .and_then(|mut f| f.read_exact(&mut head))
                .is_ok_and(|_| head == *b"PK\x03\x04")
        }
    }
}

/// Every tensor of a `torch.save(state_dict)` archive, refusing entries that are not tensors.
fn read_pth(path: &Path) -> Result<std::collections::HashMap<String, Tensor>, WeightsError> {
    use candle_core::pickle::{Object, PthTensors, Stack};
    let p = path.display().to_string();
    let read = |reason: String| WeightsError::Read {
        path: p.clone(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| read(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| read(format!("not a PyTorch archive (zip): {e}")))?;
    let pkl = zip
        .file_names()
        .filter_map(Result::ok)
        .find(|n| n.ends_with("data.pkl"))
        .map(|n| n.into_owned())
        .ok_or_else(|| read("not a PyTorch archive: no data.pkl inside".into()))?;
    let obj = {
        let entry = zip.by_name(&pkl).map_err(|e| read(e.to_string()))?;
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut std::io::BufReader::new(entry))
            .map_err(|e| read(format!("{pkl}: {e}")))?;
        stack.finalize().map_err(|e| read(format!("{pkl}: {e}")))?
    };
    let Object::Dict(entries) = obj else {
        return Err(read(format!(
            "{pkl} holds {} where a state_dict (a dict of tensors) is expected",
            describe(&obj)
        )));
    };
    let dir = std::path::PathBuf::from(pkl.trim_end_matches(".pkl"));
    let mut names = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let Object::Unicode(name) = &key else {
            return Err(WeightsError::NotTensor {
                path: p.clone(),
                key: format!("{key:?}"),
                what: "a key that is not a string".into(),
            });
        };
        let what = describe(&value);
        match value.into_tensor_info(key.clone(), &dir) {
            Ok(Some(_)) => names.push(name.clone()),
            _ => {
                return Err(WeightsError::NotTensor {
                    path: p.clone(),
                    key: name.clone(),
                    what,
                })
            }
        }
    }
    let pth = PthTensors::new(path, None).map_err(|e| read(e.to_string()))?;
    let mut out = std::collections::HashMap::with_capacity(names.len());
    for name in names {
        let t = pth
            .get(&name)
            .map_err(|e| read(format!("tensor `{name}`: {e}")))?
            .ok_or_else(|| read(format!("tensor `{name}` could not be read")))?;
        out.insert(name, t);
    }
    Ok(out)
}

/// A few words on what a pickled value is, for error messages.
fn describe(obj: &candle_core::pickle::Object) -> String {
    use candle_core::pickle::Object;
    match obj {
        Object::Class {
            module_name,
            class_name,
        } => format!("the class {module_name}.{class_name}"),
        Object::Int(v) => format!("the integer {v}"),
        Object::Long(v) => format!("the integer {v}"),
        Object::Float(v) => format!("the number {v}"),
        Object::Unicode(s) => format!("the string {s:?}"),
        Object::Bool(b) => format!("the boolean {b}"),
        Object::None => "None".into(),
        Object::Tuple(_) => "a tuple".into(),
        Object::List(_) => "a list".into(),
        Object::Dict(_) => "a dict".into(),
        Object::Mark => "a pickle mark".into(),
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => match callable.as_ref() {
            Object::Class {
                module_name,
                class_name,
            } => format!("an object of {module_name}.{class_name}"),
            Object::Reduce { callable, .. } => describe(callable),
            _ => "an object".into(),
        },
        Object::PersistentLoad(_) => "a storage reference".into(),
    }
}
