//! Loading ImageNet initialisation weights with torchvision's VGG16 keys, from safetensors or
//! from the PyTorch `.pth` archive torchvision downloads (`vgg16-397923af.pth`, read directly:
//! a zip of a pickled `state_dict` and raw tensor storages; anything in it that is not a tensor
//! is refused by name).
//! `features.N.*` load as they are; `classifier.0` / `classifier.3` (the fully connected fc6 and
//! fc7) are reshaped into the convolutional fc6 (7×7) and fc7 (1×1) when the shapes allow, as
//! FCN's "convolutionalisation" does (when the model's fc6/fc7 have other sizes, as SSD300's,
//! they are skipped and trained from scratch). Keys the model does not have are reported, not
//! loaded.

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

/// What an initialisation file contributed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InitReport {
    pub loaded: Vec<String>,
    pub skipped: Vec<String>,
    /// The model's ImageNet-initialised tensors (torchvision's names: its `features.N.*`, and
    /// `classifier.0` / `classifier.3` where fc6/fc7 have VGG16's sizes) that the file lacks:
    /// they keep their random initialisation. torchvision's file has every one; PyTorch's
    /// strict `load_state_dict` would refuse a file without them.
    pub missing: Vec<String>,
    /// Where in the file the tensors were read from, if not its top level (a training
    /// checkpoint's `state_dict` entry).
    pub read_from: Option<String>,
}

impl InitReport {
    /// `loaded N tensors from FILE (M skipped: …)`, naming the first skipped keys and where in
    /// the file the tensors were read from.
    pub fn summary(&self, path: &Path) -> String {
        let shown: Vec<&str> = self.skipped.iter().take(4).map(String::as_str).collect();
        let more = self.skipped.len() - shown.len();
        let skipped = match (shown.is_empty(), more) {
            (true, _) => "0 skipped".to_string(),
            (false, 0) => format!("{} skipped: {}", self.skipped.len(), shown.join(", ")),
            (false, _) => format!("{} skipped: {} and {more} more", self.skipped.len(), shown.join(", ")),
        };
        let from = self.read_from.as_ref().map_or(String::new(), |f| format!("; {f}"));
        format!(
            "loaded {} tensors from {} ({skipped}{from})",
            self.loaded.len(),
            path.display()
        )
    }

    /// A warning for a file that left some of the model's ImageNet layers random, naming the
    /// first few; `None` when it had them all.
    pub fn missing_warning(&self, path: &Path) -> Option<String> {
        if self.missing.is_empty() {
            return None;
        }
        let shown: Vec<&str> = self.missing.iter().take(6).map(String::as_str).collect();
        let more = self.missing.len() - shown.len();
        Some(format!(
            "{}: {} of the model's ImageNet-initialised tensors are not in the file and keep their random \
             initialisation: {}{} (torchvision's vgg16-397923af.pth has every one)",
            path.display(),
            self.missing.len(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: cannot load weights: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: tensor `{key}` has shape {found:?} but the model's `{target}` is {expected:?}")]
    Shape {
        path: String,
        key: String,
        target: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor `{key}` holds a NaN or infinite value: such weights would train to nothing")]
    NonFinite { path: String, key: String },
    #[error("{path}: entry `{key}` is not a tensor ({what}): only a state_dict of tensors can be loaded")]
    NotTensor { path: String, key: String, what: String },
    #[error(
        "{path}: no tensor in the file matches the model (expected torchvision VGG16 keys such as `features.0.weight`){hint}"
    )]
    NothingLoaded { path: String, hint: String },
    #[error(
        "{path}: the model has no layer that takes ImageNet weights (torchvision VGG16's `features.N`): \
         ImageNet weights are for the VGG16 models; leave them out to start from random weights, or \
         start from another run's model with init_from"
    )]
    NoImageNetLayers { path: String },
}

/// VGG16's fully connected layers as torchvision stores them: key, the model's name for it, and
/// its element count (fc6 7×7×512 → 4096, fc7 4096 → 4096).
const VGG_CLASSIFIER: [(&str, &str, usize); 4] = [
    ("classifier.0.weight", "fc6.weight", 4096 * 512 * 7 * 7),
    ("classifier.0.bias", "fc6.bias", 4096),
    ("classifier.3.weight", "fc7.weight", 4096 * 4096),
    ("classifier.3.bias", "fc7.bias", 4096),
];

/// Refuses a weights file that is not there, saying where torchvision's comes from and how to
/// do without (checked before a long read of the datasets, and by the loader).
pub fn weights_file_exists(path: &Path) -> Result<(), WeightsError> {
    if path.is_file() {
        return Ok(());
    }
    if path.is_dir() {
        return Err(WeightsError::Read {
            path: path.display().to_string(),
            reason: "a folder, not a weights file (torchvision's `vgg16-397923af.pth`, or a `.safetensors`)".into(),
        });
    }
    if path.exists() {
        return Err(WeightsError::Read {
            path: path.display().to_string(),
            reason: "not a regular file (a device, FIFO or socket), not a weights file".into(),
        });
    }
    Err(WeightsError::Read {
        path: path.display().to_string(),
        reason: "no such file: torchvision's ImageNet VGG16 is \
                 https://download.pytorch.org/models/vgg16-397923af.pth (loaded as it comes); \
                 without init_weights (`--set model.init_weights=`, or `--set init_weights=` for a \
                 detector) the model starts from random weights"
            .into(),
    })
}

/// Loads `path` into the variables of `vars` under `prefix` (e.g. `model`).
pub fn load_init_weights(vars: &VarMap, prefix: &str, path: &Path) -> Result<InitReport, WeightsError> {
    let p = path.display().to_string();
    weights_file_exists(path)?;
    let read = |e: candle_core::Error| WeightsError::Read {
        path: p.clone(),
        reason: e.to_string(),
    };
    let (tensors, read_from) = if let Some(format) = pth_format(path) {
        // candle's pickle reader indexes into tuples it reads from the file; a crafted file can
        // make it panic, which must not take the process down.
        // The panic is answered by the error below, so the default hook's message (which
        // names candle's source, not the file) is kept off the terminal meanwhile.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let caught = std::panic::catch_unwind(|| match format {
            PthFormat::Zip => read_pth(path),
            PthFormat::Legacy => read_legacy_pth(path),
        });
        std::panic::set_hook(hook);
        caught.map_err(|_| WeightsError::Read {
            path: p.clone(),
            reason: "malformed PyTorch pickle (the reader gave up on its structure)".into(),
        })??
    } else {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| WeightsError::Read {
            path: p.clone(),
            reason: if path.extension().is_some_and(|x| x == "safetensors") {
                format!("not a valid safetensors file: {e}")
            } else {
                format!(
                    "cannot be read as safetensors (it starts with no PyTorch signature): {e}; \
                     expected torchvision's `.pth` or a `.safetensors` of its keys"
                )
            },
        })?;
        (tensors, None)
    };
    // `nn.DataParallel` and DistributedDataParallel save every key under `module.`.
    let tensors: std::collections::HashMap<String, Tensor> =
        if !tensors.is_empty() && tensors.keys().all(|k| k.starts_with("module.")) {
            tensors
                .into_iter()
                .map(|(k, t)| (k["module.".len()..].to_string(), t))
                .collect()
        } else {
            tensors
        };
    let data = vars.data().lock().map_err(|_| WeightsError::Read {
        path: p.clone(),
        reason: "poisoned var map".into(),
    })?;
    // The model's tensors an ImageNet file initialises, by torchvision's names.
    let features = format!("{prefix}.features.");
    let mut expected: std::collections::BTreeSet<String> = data
        .keys()
        .filter_map(|k| k.strip_prefix(&features).map(|rest| (k, rest)))
        .filter(|(_, rest)| rest.ends_with(".weight") || rest.ends_with(".bias"))
        .map(|(k, _)| k[prefix.len() + 1..].to_string())
        .collect();
    if expected.is_empty() {
        return Err(WeightsError::NoImageNetLayers { path: p });
    }
    for (key, ours, n) in VGG_CLASSIFIER {
        if data
            .get(&format!("{prefix}.{ours}"))
            .is_some_and(|v| v.elem_count() == n)
        {
            expected.insert(key.to_string());
        }
    }
    let mut report = InitReport {
        read_from,
        ..Default::default()
    };
    let mut keys: Vec<_> = tensors.keys().cloned().collect();
    keys.sort();
    for key in keys {
        let t = &tensors[&key];
        let target = match VGG_CLASSIFIER.iter().find(|(k, ..)| *k == key) {
            Some((_, ours, _)) => ours.to_string(),
            None => key.clone(),
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
            // A model whose fc6/fc7 are not VGG16's (SSD300's dilated 3×3 fc6 with 1024
            // channels, the reduced FCN's) trains them from scratch; one whose are takes them
            // only in VGG16's shape.
            let not_vgg16 = VGG_CLASSIFIER
                .iter()
                .any(|(k, _, n)| *k == key && *n != var.elem_count());
            if not_vgg16 {
                report.skipped.push(key);
                continue;
            }
            return Err(shape_err());
        }
        // Only torchvision's fully connected fc6/fc7 change shape (into convolutions); any other
        // tensor must have the model's shape, not merely its element count.
        let t: Tensor = if t.dims() == want.as_slice() {
            t.clone()
        } else if key.starts_with("classifier.") && t.rank() <= 2 {
            t.reshape(want.as_slice()).map_err(|_| shape_err())?
        } else {
            return Err(shape_err());
        };
        if seg_nn::vars::first_non_finite([(key.as_str(), &t)])
            .map_err(read)?
            .is_some()
        {
            return Err(WeightsError::NonFinite { path: p, key });
        }
        let t = t
            .to_dtype(var.dtype())
            .and_then(|t| t.to_device(var.device()))
            .map_err(read)?;
        var.set(&t).map_err(read)?;
        report.loaded.push(key);
    }
    if report.loaded.is_empty() {
        let hint = if report.skipped.iter().any(|k| k.starts_with("model.")) {
            "; its keys start with `model.`, as a seg-adapt checkpoint's do: start from another run's model with init_from (`model.init_from` in a segmentation config, top-level `init_from` in a detection one)"
        } else {
            ""
        };
        return Err(WeightsError::NothingLoaded {
            path: p,
            hint: hint.into(),
        });
    }
    report.missing = expected.into_iter().filter(|k| !report.loaded.contains(k)).collect();
    Ok(report)
}

/// The two formats `torch.save` has written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PthFormat {
    /// A zip archive (PyTorch 1.6 and later).
    Zip,
    /// Pickles followed by raw storages (before 1.6).
    Legacy,
}

/// The PyTorch format of a file, from its first bytes; a `.pth`-like name that matches neither
/// counts as a zip archive (whose reader then says what is wrong); `None` for safetensors (its
/// bytes, whatever the name; a `.safetensors` name; or a file of another name that is no
/// PyTorch file).
fn pth_format(path: &Path) -> Option<PthFormat> {
    use std::io::Read;
    // The bytes decide before the name: a `.pth` renamed `.safetensors` is still a `.pth`, and
    // a safetensors file renamed `.pth` still a safetensors file.
    let ext = path.extension().and_then(|e| e.to_str());
    let mut head = Vec::with_capacity(16);
    let _ = std::fs::File::open(path).and_then(|f| f.take(16).read_to_end(&mut head));
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    // The magic number pickled with any protocol: 2 (PyTorch's default), 3, or 4 and later
    // (a FRAME first), which the legacy reader names.
    let legacy =
        pickled_magic(&head) || (head.first() == Some(&0x80) && head.get(1) >= Some(&4) && head.get(2) == Some(&0x95));
    // safetensors: an 8-byte little-endian header length, then the JSON header.
    let safetensors = head.get(8) == Some(&b'{')
        && head
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .is_some_and(|n| u64::from_le_bytes(n).saturating_add(8) <= size);
    if legacy {
        Some(PthFormat::Legacy)
    } else if head.starts_with(b"PK\x03\x04") {
        Some(PthFormat::Zip)
    } else if safetensors || ext == Some("safetensors") {
        None
    } else if head.starts_with(&LEGACY_MAGIC[..4]) || matches!(ext, Some("pth" | "pt" | "bin" | "ckpt")) {
        Some(PthFormat::Zip)
    } else {
        None
    }
}

/// The first bytes of PyTorch's legacy (pre-1.6, not zip) serialisation: protocol-2 pickle of
/// the magic number 0x1950a86a20f9469cfc6c. torchvision's `vgg16-397923af.pth` is one.
const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
];

/// Whether `bytes` start with [`LEGACY_MAGIC`] pickled with any protocol up to 3 (the same bytes
/// but the protocol's).
fn pickled_magic(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x80) && bytes.get(2..15) == Some(&LEGACY_MAGIC[2..])
}

/// Largest `data.pkl` read from a zip archive.
const MAX_PICKLE: u64 = 256 << 20;

/// Every tensor of a `torch.save(state_dict)` zip archive, refusing entries that are not tensors.
fn read_pth(path: &Path) -> Result<PthTensors, WeightsError> {
    use candle_core::pickle::Stack;
    use std::io::Read as _;
    let p = path.display().to_string();
    let read = |reason: String| WeightsError::Read {
        path: p.clone(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| read(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        let mut head = [0u8; 4];
        let zipped = std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok_and(|()| head == *b"PK\x03\x04");
        read(if zipped {
            format!("a zip archive, cut short or damaged ({e}): download or copy the file again")
        } else {
            format!("not a PyTorch file: neither a zip archive ({e}) nor the older pickle format, by its first bytes")
        })
    })?;
    let pkl = zip
        .file_names()
        .filter_map(Result::ok)
        .find(|n| n.ends_with("data.pkl"))
        .map(|n| n.into_owned())
        .ok_or_else(|| read("not a PyTorch archive: no data.pkl inside".into()))?;
    let obj = {
        let entry = zip.by_name(&pkl).map_err(|e| read(e.to_string()))?;
        // A state_dict's pickle is kilobytes (its tensors are in other entries).
        let mut bytes = Vec::new();
        entry
            .take(MAX_PICKLE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| read(format!("{pkl}: {e}")))?;
        if bytes.len() as u64 > MAX_PICKLE {
            return Err(read(format!(
                "{pkl} is over {} MiB: not a state_dict's pickle",
                MAX_PICKLE >> 20
            )));
        }
        crate::pickle_scan::check(&mut bytes, 0).map_err(|e| read(format!("{pkl}: {e}")))?;
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut std::io::Cursor::new(&bytes))
            .map_err(|e| read(format!("{pkl}: {e}")))?;
        stack.finalize().map_err(|e| read(format!("{pkl}: {e}")))?
    };
    let dir = std::path::PathBuf::from(pkl.trim_end_matches(".pkl"));
    // `torch.save` records the byte order of the storages beside data.pkl (absent: little).
    let order = dir.parent().map(|d| d.join("byteorder").to_string_lossy().into_owned());
    if let Some(mut entry) = order.and_then(|o| zip.by_name(&o).ok()) {
        let mut text = String::new();
        let _ = (&mut entry).take(16).read_to_string(&mut text);
        if text.trim() == "big" {
            return Err(read(
                "its storages are big-endian (`byteorder` = big); save the weights on a little-endian machine".into(),
            ));
        }
    }
    let (infos, note) = tensor_entries(path, obj, &dir)?;
    let mut out = std::collections::HashMap::with_capacity(infos.len());
    for (name, info) in infos {
        // Only the bytes the tensor reaches are read: a storage whose entry claims more (a
        // corrupt or crafted archive) is never allocated whole.
        let needed = byte_extent(&info).unwrap_or(u64::MAX);
        let mut entry = zip
            .by_name(&info.path)
            .map_err(|e| read(format!("tensor `{name}`: storage `{}`: {e}", info.path)))?;
        let stored = entry.size();
        if needed > stored {
            return Err(read(format!(
                "tensor `{name}` of shape {:?} runs past its storage `{}` ({stored} bytes)",
                info.layout.dims(),
                info.path
            )));
        }
        let mut bytes = Vec::new();
        (&mut entry)
            .take(needed)
            .read_to_end(&mut bytes)
            .map_err(|e| read(format!("tensor `{name}`: storage `{}`: {e}", info.path)))?;
        if (bytes.len() as u64) < needed {
            return Err(read(format!("tensor `{name}`: storage `{}` is truncated", info.path)));
        }
        let t = tensor_from_storage(&info, &bytes).map_err(|e| read(format!("tensor `{name}`: {e}")))?;
        out.insert(name, t);
    }
    Ok((out, note))
}

/// The tensor `info` describes, from the bytes of its storage (up to its last element): any
/// offset and strides (a view, channels-last weights), little-endian.
fn tensor_from_storage(info: &candle_core::pickle::TensorInfo, bytes: &[u8]) -> candle_core::Result<Tensor> {
    let layout = &info.layout;
    let size = info.dtype.size_in_bytes();
    if layout.is_contiguous() {
        let first = layout.start_offset();
        let last = first + layout.shape().elem_count() * size;
        return Tensor::from_raw_buffer(&bytes[first..last], info.dtype, layout.dims(), &Device::Cpu);
    }
    // A strided view: the storage's elements, then each element's index in it, row-major.
    if bytes.len() / size > u32::MAX as usize {
        candle_core::bail!("a strided view into a storage of over 2^32 elements is not read");
    }
    let storage = Tensor::from_raw_buffer(
        &bytes[..bytes.len() / size * size],
        info.dtype,
        &[bytes.len() / size],
        &Device::Cpu,
    )?;
    let mut index = vec![(layout.start_offset() / size) as u32];
    for (&d, &st) in layout.dims().iter().zip(layout.stride()) {
        index = index
            .iter()
            .flat_map(|&base| (0..d).map(move |i| base + (i * st) as u32))
            .collect();
    }
    let index = Tensor::from_vec(index, &[layout.shape().elem_count()], &Device::Cpu)?;
    storage.index_select(&index, 0)?.reshape(layout.dims())
}

/// The `(name, tensor info)` of every entry of a pickled state_dict, refusing anything else.
fn tensor_entries(
    path: &Path,
    obj: candle_core::pickle::Object,
    dir: &Path,
) -> Result<(NamedInfos, Option<String>), WeightsError> {
    use candle_core::pickle::Object;
    let p = path.display().to_string();
    let Object::Dict(entries) = obj else {
        return Err(WeightsError::Read {
            path: p,
            reason: format!(
                "it holds {} where a state_dict (a dict of tensors) is expected",
                describe(&obj)
            ),
        });
    };
    let (entries, note) = inner_state_dict(entries);
    let mut out = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let Object::Unicode(name) = &key else {
            return Err(WeightsError::NotTensor {
                path: p.clone(),
                key: format!("{key:?}"),
                what: "a key that is not a string".into(),
            });
        };
        // `torch.save(model.state_dict())` keeps each module's version in `_metadata`.
        if name == "_metadata" && matches!(value, Object::Dict(_)) {
            continue;
        }
        let what = describe(&value);
        let value = upgrade_rebuild(value);
        if let Some(offset) = storage_offset(&value).filter(|o| !(0..=1 << 40).contains(o)) {
            return Err(WeightsError::Read {
                path: p.clone(),
                reason: format!("tensor `{name}` has storage offset {offset}"),
            });
        }
        let rebuilt = rebuild_call(&value).is_some_and(|(name, _)| name == "_rebuild_tensor_v2");
        match value.into_tensor_info(key.clone(), dir) {
            Ok(Some(info)) => out.push((name.clone(), info)),
            // A tensor's rebuild call whose arguments candle cannot take: what is wrong with it.
            Err(e) if rebuilt => {
                let e = e.to_string();
                let reason = if e.contains("unsupported storage type") {
                    format!("tensor `{name}`: {e} (float, double, half, bfloat16, uint8 and int64 storages are read)")
                } else {
                    format!("tensor `{name}`: its size, stride or storage cannot be read ({e})")
                };
                return Err(WeightsError::Read {
                    path: p.clone(),
                    reason,
                });
            }
            _ => {
                return Err(WeightsError::NotTensor {
                    path: p.clone(),
                    key: name.clone(),
                    what,
                })
            }
        }
    }
    Ok((out, note))
}

/// The state_dict inside a training checkpoint (`{"epoch": …, "state_dict": {…}, "optimizer":
/// {…}}`, as most training scripts and mmcv save it; `"model"` in others): the entries of the
/// dict under `state_dict`, else under `model`, else `entries` themselves (a state_dict's values
/// are tensors, never a dict under those names).
/// Also says where they were read from, and whether the other name held a dict too.
fn inner_state_dict(
    entries: Vec<(candle_core::pickle::Object, candle_core::pickle::Object)>,
) -> (Entries, Option<String>) {
    use candle_core::pickle::Object;
    let under = |name: &str| {
        entries
            .iter()
            .position(|(k, v)| matches!((k, v), (Object::Unicode(k), Object::Dict(_)) if k == name))
    };
    let (state_dict, model) = (under("state_dict"), under("model"));
    let Some(i) = state_dict.or(model) else {
        return (entries, None);
    };
    let note = match (state_dict, model) {
        (Some(_), Some(_)) => "read from its `state_dict` entry (it also holds a `model` dict, not read)",
        (Some(_), None) => "read from its `state_dict` entry",
        _ => "read from its `model` entry",
    };
    let mut entries = entries;
    match entries.swap_remove(i).1 {
        Object::Dict(inner) => (inner, Some(note.into())),
        _ => (Vec::new(), None),
    }
}

/// Each tensor's name and where its storage is.
type NamedInfos = Vec<(String, candle_core::pickle::TensorInfo)>;

/// A pickled dict's entries.
type Entries = Vec<(candle_core::pickle::Object, candle_core::pickle::Object)>;

/// The tensors of a `.pth` file by name, and where in the file they were read from (a training
/// checkpoint's entry), if not its top level.
type PthTensors = (std::collections::HashMap<String, Tensor>, Option<String>);

/// PyTorch before 0.4 pickled a tensor as `torch._utils._rebuild_tensor(storage, offset, size,
/// stride)` (torchvision's VGG16 file among them); its arguments are the first four of
/// `_rebuild_tensor_v2`, which candle's reader takes.
fn upgrade_rebuild(value: candle_core::pickle::Object) -> candle_core::pickle::Object {
    use candle_core::pickle::Object;
    match value {
        Object::Reduce { callable, args } => {
            let callable = match *callable {
                Object::Class {
                    module_name,
                    class_name,
                } if module_name == "torch._utils" && class_name == "_rebuild_tensor" => Object::Class {
                    module_name,
                    class_name: "_rebuild_tensor_v2".into(),
                },
                other => other,
            };
            Object::Reduce {
                callable: Box::new(callable),
                args,
            }
        }
        other => other,
    }
}

/// The storage offset (in elements) a `_rebuild_tensor_v2` call gives, when it has one.
fn storage_offset(value: &candle_core::pickle::Object) -> Option<i64> {
    use candle_core::pickle::Object;
    match rebuild_call(value)? {
        ("_rebuild_tensor_v2", [_, Object::Int(o), ..]) => Some(*o as i64),
        ("_rebuild_tensor_v2", [_, Object::Long(o), ..]) => Some(*o),
        _ => None,
    }
}

/// The rebuild function and arguments of a pickled tensor, through the wrappers candle's reader
/// looks through (`_rebuild_parameter` for an `nn.Parameter`, `_rebuild_from_type_v2` for a
/// tensor subclass).
fn rebuild_call(value: &candle_core::pickle::Object) -> Option<(&str, &[candle_core::pickle::Object])> {
    use candle_core::pickle::Object;
    let Object::Reduce { callable, args } = value else {
        return None;
    };
    let (Object::Class { class_name, .. }, Object::Tuple(args)) = (callable.as_ref(), args.as_ref()) else {
        return None;
    };
    match (class_name.as_str(), args.as_slice()) {
        ("_rebuild_parameter", [inner, ..]) => rebuild_call(inner),
        ("_rebuild_from_type_v2", [Object::Class { class_name, .. }, _, Object::Tuple(inner), ..]) => {
            Some((class_name.as_str(), inner.as_slice()))
        }
        (name, args) => Some((name, args)),
    }
}

/// PyTorch's legacy serialisation: pickles of the magic number, the protocol version and the
/// system info, the pickled state_dict (storages as persistent ids), the pickled list of storage
/// keys, then each storage in that order as a little-endian `i64` element count and raw bytes.
fn read_legacy_pth(path: &Path) -> Result<PthTensors, WeightsError> {
    use candle_core::pickle::{Object, Stack};
    let p = path.display().to_string();
    let read = |reason: String| WeightsError::Read {
        path: p.clone(),
        reason,
    };
    let mut bytes = std::fs::read(path).map_err(|e| read(e.to_string()))?;
    // The magic number, pickled with protocol 2 or 3; a later protocol's opcodes are named.
    let start = if pickled_magic(&bytes) {
        LEGACY_MAGIC.len()
    } else {
        return Err(read(match crate::pickle_scan::check(&mut bytes, 0) {
            Err(e) => format!("legacy PyTorch file, magic number: {e}"),
            Ok(_) => "it does not start with PyTorch's magic number".into(),
        }));
    };
    // The four pickles, each dry-run (and mended) before candle's reader is given any.
    const PICKLES: [&str; 4] = ["protocol version", "system info", "state_dict", "storage keys"];
    let mut at = start;
    for what in PICKLES {
        let rest = bytes.get_mut(at..).unwrap_or_default();
        at += crate::pickle_scan::check(rest, at).map_err(|e| read(format!("legacy PyTorch file, {what}: {e}")))?;
    }
    let mut cur = std::io::Cursor::new(&bytes[start..]);
    let mut pickle = |what: &str| -> Result<Object, WeightsError> {
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut cur)
            .and_then(|_| stack.finalize())
            .map_err(|e| read(format!("legacy PyTorch file, {what}: {e}")))
    };
    // PyTorch's legacy format has one version, 1001, and `torch.load` refuses any other.
    match pickle(PICKLES[0])? {
        Object::Int(1001) | Object::Long(1001) => {}
        other => {
            return Err(read(format!(
                "legacy PyTorch file of protocol version {} (PyTorch's is 1001)",
                describe(&other)
            )))
        }
    }
    let sys_info = pickle(PICKLES[1])?;
    if let Object::Dict(entries) = &sys_info {
        let big = entries
            .iter()
            .any(|(k, v)| matches!((k, v), (Object::Unicode(k), Object::Bool(false)) if k == "little_endian"));
        if big {
            return Err(read(
                "its storages are big-endian (`little_endian` = False); save the weights on a little-endian machine"
                    .into(),
            ));
        }
    }
    let obj = pickle(PICKLES[2])?;
    let keys = match pickle(PICKLES[3])? {
        Object::List(keys) => keys
            .into_iter()
            .map(|k| match k {
                Object::Unicode(k) => Ok(k),
                other => Err(read(format!("storage key {other:?} is not a string"))),
            })
            .collect::<Result<Vec<String>, _>>()?,
        other => return Err(read(format!("storage keys: {} instead of a list", describe(&other)))),
    };
    let (infos, note) = tensor_entries(path, obj, Path::new(""))?;
    let key_of = |info: &candle_core::pickle::TensorInfo| info.path.rsplit('/').next().unwrap_or("").to_string();
    // Each storage's element size, from the tensors that use it.
    let mut elem = std::collections::HashMap::new();
    for (_, info) in &infos {
        elem.insert(key_of(info), info.dtype.size_in_bytes());
    }
    let mut pos = start + cur.position() as usize;
    let mut storages = std::collections::HashMap::new();
    for key in keys {
        let count = bytes
            .get(pos..pos + 8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
            .filter(|&n| n >= 0)
            .ok_or_else(|| read(format!("storage `{key}`: truncated before its size")))? as usize;
        let size = elem.get(&key).copied().unwrap_or(4);
        let start = pos + 8;
        let end = count
            .checked_mul(size)
            .and_then(|n| n.checked_add(start))
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| read(format!("storage `{key}`: truncated ({count} elements declared)")))?;
        storages.insert(key, start..end);
        pos = end;
    }
    let mut out = std::collections::HashMap::with_capacity(infos.len());
    for (name, info) in infos {
        let key = key_of(&info);
        let range = storages
            .get(&key)
            .ok_or_else(|| read(format!("tensor `{name}`: storage `{key}` is not in the file")))?;
        let last = byte_extent(&info)
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| n.checked_add(range.start))
            .filter(|&last| last <= range.end)
            .ok_or_else(|| read(format!("tensor `{name}` runs past its storage `{key}`")))?;
        let t =
            tensor_from_storage(&info, &bytes[range.start..last]).map_err(|e| read(format!("tensor `{name}`: {e}")))?;
        out.insert(name, t);
    }
    Ok((out, note))
}

/// The bytes of its storage a tensor reaches (its offset, in bytes as candle's pickle reader
/// keeps it, up to the end of its last element along its strides); `None` when that overflows.
fn byte_extent(info: &candle_core::pickle::TensorInfo) -> Option<u64> {
    let layout = &info.layout;
    let start = layout.start_offset() as u64;
    if layout.dims().contains(&0) {
        return Some(start);
    }
    let last = layout
        .dims()
        .iter()
        .zip(layout.stride())
        .try_fold(0u64, |n, (&d, &st)| {
            n.checked_add((d as u64 - 1).checked_mul(st as u64)?)
        })?;
    last.checked_add(1)?
        .checked_mul(info.dtype.size_in_bytes() as u64)?
        .checked_add(start)
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
