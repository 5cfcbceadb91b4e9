//! Checkpoints: one safetensors file holding every variable (model, head, batch-norm
//! statistics) and every optimiser's state, with the step, the loaders' positions and the
//! resolved run configuration in its metadata. Written to a temporary file and renamed, so a
//! crash leaves the previous checkpoint intact; a truncated or foreign file is refused before
//! anything is overwritten. Also what a run folder must hold to start or resume a run
//! ([`check_run_folder`]), for segmentation and detection runs alike.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use seg_data::loader::LoaderState;

use crate::error::TrainError;

/// Marker that identifies our checkpoints.
pub const FORMAT: &str = "seg-adapt-checkpoint";
pub const VERSION: &str = "1";
/// The checkpoint's file name in a run folder (segmentation and detection runs alike).
pub const FILE: &str = "checkpoint.safetensors";

/// A run's evaluation folder at `step`, relative to the run's: `eval/step_NNNNNN` (the step in
/// six digits), for segmentation and detection runs alike (`metrics.jsonl`'s `dir`).
pub fn eval_dir(step: usize) -> String {
    format!("eval/step_{step:06}")
}

/// The files of a run that training from step 0 would replace.
pub const RUN_FILES: [&str; 3] = [FILE, "config.toml", "metrics.jsonl"];

/// Files that may be in a run's folder before its `config.toml` (a run killed in its set-up
/// leaves them), no obstacle to a run from step 0: the run's `skipped.json`, and the demo's
/// stamp and result.
pub const COMPANIONS: [&str; 3] = [SKIPPED, "started.txt", "result.json"];

/// Whether `dir` fits a run that starts from step 0 (`resume` false) or resumes: a run from
/// step 0 takes a new or empty folder, and names a run's files (or a user's `config.toml`) there; resuming needs a
/// run there, a checkpoint or the `config.toml` of a run stopped before its first checkpoint.
/// `Ok(true)` when there is a checkpoint to resume from.
pub fn check_run_folder(dir: &Path, resume: bool) -> Result<bool, String> {
    let has_checkpoint = dir.join(FILE).is_file();
    if !resume {
        return match RUN_FILES.iter().find(|f| dir.join(f).exists()) {
            Some(&f) if f == FILE => Err(format!(
                "{} already holds a run ({f}): pass --resume to continue it, or choose another --out",
                dir.display()
            )),
            Some(f) => Err(format!(
                "{} already holds {f}: a run stopped before its first checkpoint starts over with --resume; a file of yours stays if you choose another --out",
                dir.display()
            )),
            // Anything else the run would write beside, or replace (a report.html of yours):
            // a run from step 0 takes a new or empty folder (hidden files aside).
            None => match std::fs::read_dir(dir).ok().and_then(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name())
                    .find(|n| !seg_labels::fsutil::is_hidden(n) && !COMPANIONS.iter().any(|c| n == c))
            }) {
                Some(other) => Err(format!(
                    "{} holds no run but other files (`{}`): a run starts in a new or empty folder; choose another --out",
                    dir.display(),
                    other.to_string_lossy()
                )),
                None => Ok(false),
            },
        };
    }
    if !has_checkpoint && !dir.join("config.toml").is_file() {
        return Err(format!(
            "{}: nothing to resume (no checkpoint.safetensors or config.toml); leave out --resume to start the run",
            dir.display()
        ));
    }
    Ok(has_checkpoint)
}

/// Takes the folder of a run from step 0 or of a resume ([`check_run_folder`]) for this
/// process: checked before its lock is taken (a refused run leaves no `.lock` in a folder not its
/// own), locked (one process at a time writes a run folder), and checked again under the lock.
/// A resume with no checkpoint yet starts over from step 0, its killed writes' temporary files
/// cleared. Returns the lock and whether there is a checkpoint to resume from.
pub fn take_run_folder(dir: &Path, resume: bool) -> Result<(seg_labels::fsutil::DirLock, bool), String> {
    if dir.is_dir() {
        // What another process's run is writing in its set-up is named as that process's.
        check_run_folder(dir, resume)
            .map_err(|e| seg_labels::fsutil::held_by_another(dir).map_or(e, |busy| busy.to_string()))?;
    }
    let lock = seg_labels::fsutil::lock_dir(dir).map_err(|e| e.to_string())?;
    let has_checkpoint = check_run_folder(dir, resume)?;
    if resume && !has_checkpoint {
        tracing::info!(
            "{}: no checkpoint to resume from (the run stopped before its first, or it was removed), so the run starts from step 0",
            dir.display()
        );
    }
    // A run from step 0 starts clear of what a write killed midway (in a set-up stopped
    // before) left; a resume clears them once its checkpoint is known good.
    if !has_checkpoint {
        if let Err(e) = seg_labels::fsutil::remove_stale_temps(dir) {
            tracing::warn!("{}: cannot clear temporary files: {e}", dir.display());
        }
    }
    Ok((lock, has_checkpoint))
}

/// A run folder's record of the samples left out before training, per dataset role.
pub const SKIPPED: &str = "skipped.json";

/// The samples a run leaves out, by dataset role (`source`, `target-train`, `val`, ...).
pub type LeftOutByRole = std::collections::BTreeMap<String, Vec<seg_labels::LeftOut>>;

/// Writes [`SKIPPED`] into `run_dir` when anything was left out (each sample's name, image file
/// and reason, per role); removes a stale one otherwise.
pub fn write_left_out(run_dir: &Path, left_out: &LeftOutByRole) -> std::io::Result<()> {
    let path = run_dir.join(SKIPPED);
    if left_out.values().all(Vec::is_empty) {
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    let json = serde_json::to_string_pretty(left_out).map_err(std::io::Error::other)?;
    seg_labels::fsutil::write_atomic(&path, json.as_bytes())
}

/// The run folder a file a run wrote lies in (the folder itself, or up to three levels above it,
/// as `eval/step_000200/detections.json`), with what its [`SKIPPED`] records; `None` outside a
/// run folder or when the run left nothing out (an unreadable record reads as nothing).
pub fn left_out_of_run_holding(file: &Path) -> Option<(PathBuf, LeftOutByRole)> {
    let run_dir = file
        .ancestors()
        .skip(1)
        .take(4)
        .find(|dir| RUN_FILES.iter().any(|f| dir.join(f).is_file()))?;
    let text = std::fs::read_to_string(run_dir.join(SKIPPED)).ok()?;
    let recorded: LeftOutByRole = serde_json::from_str(&text).ok()?;
    Some((run_dir.to_path_buf(), recorded))
}

/// Refuses to resume the run in `run_dir` when what its training roles (all but `evaluated`)
/// leave out now differs from what its [`SKIPPED`] recorded when it started (a file mended or
/// broken since): the loaders' saved positions index the datasets as they were, so the run
/// would go on, without a word, on other data than it started with. The evaluated split is
/// only read at evaluation, on what reads then.
pub fn same_left_out_as_recorded(run_dir: &Path, left_out: &LeftOutByRole, evaluated: &str) -> Result<(), String> {
    let path = run_dir.join(SKIPPED);
    let recorded: LeftOutByRole = match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => LeftOutByRole::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| format!("{}: not the run's record of left-out samples: {e}", path.display()))?,
    };
    let names = |by_role: &LeftOutByRole| -> std::collections::BTreeSet<(String, String)> {
        by_role
            .iter()
            .filter(|(role, _)| *role != evaluated)
            .flat_map(|(role, v)| v.iter().map(move |l| (role.clone(), l.name.clone())))
            .collect()
    };
    let (then, now) = (names(&recorded), names(left_out));
    if then == now {
        return Ok(());
    }
    let say = |set: Vec<&(String, String)>| match set.len() {
        0 => "none".to_string(),
        n => {
            let mut named: Vec<String> = set.iter().take(3).map(|(r, s)| format!("{r} `{s}`")).collect();
            if n > 3 {
                named.push(format!("and {} more", n - 3));
            }
            named.join(", ")
        }
    };
    Err(format!(
        "{}: the samples left out now are not those the run left out when it started (now also: {}; no longer: {}): \
         resumed, it would train on other data than it started with; restore the files as they were, or start the run over without --resume",
        run_dir.display(),
        say(now.difference(&then).collect()),
        say(then.difference(&now).collect()),
    ))
}

/// The checkpoint file a path names: a run folder's [`FILE`], or the path itself.
pub fn file_of(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(FILE)
    } else {
        path.to_path_buf()
    }
}

/// Everything in a checkpoint besides tensors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMeta {
    pub step: usize,
    pub source_loader: Option<LoaderState>,
    pub target_loader: Option<LoaderState>,
    /// The resolved run configuration (TOML), so a checkpoint file alone can rebuild its model.
    pub config: String,
    /// `seg_core::METHODS_VERSION` of the build that wrote it (1: written before the version
    /// was recorded): a resume under another version is warned of.
    #[serde(default = "first_methods_version")]
    pub methods_version: u32,
}

fn first_methods_version() -> u32 {
    1
}

impl CheckpointMeta {
    /// A warning when the checkpoint at `path` was written by a build whose methods computed
    /// otherwise than this one's (`seg_core::METHODS_VERSION`).
    pub fn other_methods_warning(&self, path: &Path) -> Option<String> {
        (self.methods_version != seg_core::METHODS_VERSION).then(|| {
            format!(
                "{}: written by a build whose methods compute otherwise (methods version {}, this build {}): the resumed run goes on with this build's, so it is not the run an unbroken one of either build would give",
                path.display(),
                self.methods_version,
                seg_core::METHODS_VERSION
            )
        })
    }
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub tensors: HashMap<String, Tensor>,
    pub path: PathBuf,
}

fn bad(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Rewrites a serialised file's header with its metadata keys sorted: safetensors writes them
/// in a `HashMap`'s (per-process random) order, and the same run must give the same bytes.
/// Reordering keeps the header's length, so the tensor offsets stay valid.
fn sorted_metadata(mut bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .filter(|&n| n + 8 <= bytes.len())
        .ok_or("short header")?;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| e.to_string())?;
    if let Some(serde_json::Value::Object(meta)) = header.get_mut("__metadata__") {
        let mut entries: Vec<_> = std::mem::take(meta).into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        meta.extend(entries);
    }
    let text = serde_json::to_string(&header).map_err(|e| e.to_string())?;
    if text.len() > n {
        return Err(format!("header grew from {n} to {} bytes", text.len()));
    }
    bytes[8..8 + text.len()].copy_from_slice(text.as_bytes());
    bytes[8 + text.len()..8 + n].fill(b' ');
    Ok(bytes)
}

/// Serialises tensors + metadata and writes them atomically. Weights or optimiser state holding
/// a NaN or an infinity are refused (the checkpoint already at `path` is kept): a resumed run
/// could not recover from them.
pub fn save(path: &Path, tensors: &[(String, Tensor)], meta: &CheckpointMeta) -> Result<(), TrainError> {
    if let Some(name) = seg_nn::vars::first_non_finite(tensors.iter().map(|(n, t)| (n.as_str(), t)))? {
        return Err(bad(
            path,
            format!(
                "not written: `{name}` holds a NaN or an infinity at step {}; stopped (the checkpoint already there, if any, is kept)",
                meta.step
            ),
        ));
    }
    let mut info = HashMap::new();
    info.insert("format".to_string(), FORMAT.to_string());
    info.insert("version".to_string(), VERSION.to_string());
    info.insert(
        "meta".to_string(),
        serde_json::to_string(meta).map_err(|e| bad(path, e.to_string()))?,
    );
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?)))
        .collect::<candle_core::Result<_>>()?;
    let bytes = safetensors::serialize(cpu.iter().map(|(n, t)| (n.as_str(), t)), Some(info))
        .map_err(|e| bad(path, format!("cannot serialise checkpoint: {e}")))?;
    let bytes = sorted_metadata(bytes).map_err(|e| bad(path, format!("cannot serialise checkpoint: {e}")))?;
    seg_labels::fsutil::write_atomic(path, &bytes).map_err(|cause| TrainError::Write {
        path: path.to_path_buf(),
        cause,
    })
}

/// Reads and validates a checkpoint.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint, TrainError> {
    let bytes =
        seg_labels::fsutil::read_regular(path).map_err(|e| bad(path, format!("cannot read checkpoint: {e}")))?;
    from_bytes(path, &bytes, device)
}

/// A checkpoint's metadata alone, from its header (the tensors are not read).
pub fn read_meta(path: &Path) -> Result<CheckpointMeta, TrainError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| bad(path, format!("cannot read checkpoint: {e}")))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| bad(path, format!("not a safetensors file or truncated ({e})")))?;
    if let Some(what) = looks_like(&len) {
        return Err(bad(path, what));
    }
    let n = u64::from_le_bytes(len);
    // safetensors' own bound on a header.
    if n > 100_000_000 {
        return Err(bad(path, "not a safetensors file or truncated (header too large)"));
    }
    let mut head = vec![0u8; 8 + n as usize];
    head[..8].copy_from_slice(&len);
    file.read_exact(&mut head[8..])
        .map_err(|e| bad(path, format!("not a safetensors file or truncated ({e})")))?;
    let header: serde_json::Value =
        serde_json::from_slice(&head[8..]).map_err(|e| bad(path, format!("not a safetensors file ({e})")))?;
    let info: HashMap<String, String> = serde_json::from_value(header["__metadata__"].clone()).unwrap_or_default();
    meta_of(path, &info)
}

/// The metadata of a checkpoint from its safetensors `__metadata__`: ours (format and version),
/// and whole.
fn meta_of(path: &Path, info: &HashMap<String, String>) -> Result<CheckpointMeta, TrainError> {
    if info.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(
            path,
            "not a seg-adapt checkpoint (no `format: seg-adapt-checkpoint` in its metadata)",
        ));
    }
    if info.get("version").map(String::as_str) != Some(VERSION) {
        return Err(bad(
            path,
            format!("unsupported checkpoint version {:?}", info.get("version")),
        ));
    }
    serde_json::from_str(info.get("meta").map(String::as_str).unwrap_or(""))
        .map_err(|e| bad(path, format!("corrupt checkpoint metadata: {e}")))
}

/// A safetensors error in a user's words: what is wrong with the file, not the variant's name.
fn in_words(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            "its size is not the one its header gives: cut short, or bytes added after it".into()
        }
        E::HeaderTooSmall | E::InvalidHeaderLength => "it ends inside its header".into(),
        other => other.to_string(),
    }
}

/// What a file that is no checkpoint looks like, from its first bytes, for the message.
fn looks_like(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
        Some("a PyTorch file (.pth), not a seg-adapt checkpoint: ImageNet weights go to model.init_weights")
    } else {
        None
    }
}

/// Validates and decodes checkpoint `bytes` (read from `path`, which errors name).
pub fn from_bytes(path: &Path, bytes: &[u8], device: &Device) -> Result<Checkpoint, TrainError> {
    if let Some(what) = looks_like(bytes) {
        return Err(bad(path, what));
    }
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(path, format!("not a safetensors file or truncated ({})", in_words(&e))))?;
    let meta = meta_of(path, &header.metadata().clone().unwrap_or_default())?;
    // Validates every tensor's extent against the file size (a truncated body is refused here).
    safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(path, format!("truncated or corrupt checkpoint ({})", in_words(&e))))?;
    let tensors = candle_core::safetensors::load_buffer(bytes, device).map_err(|e| bad(path, e.to_string()))?;
    Ok(Checkpoint {
        meta,
        tensors,
        path: path.to_path_buf(),
    })
}

/// Every variable of `vars` by name (weights and batch-norm statistics), to save: the inverse
/// of [`Checkpoint::restore_vars`].
pub fn var_tensors(vars: &candle_nn::VarMap) -> Result<Vec<(String, Tensor)>, TrainError> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| TrainError::Setup("poisoned var map".into()))?;
    Ok(data.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect())
}

impl Checkpoint {
    /// Copies the stored values into `vars`, refusing missing names and wrong shapes before
    /// changing anything.
    pub fn restore_vars(&self, vars: &candle_nn::VarMap) -> Result<(), TrainError> {
        self.restore_where(vars, |_| true, "another model or method")
            .map(|_| ())
    }

    /// Copies the stored values of the variables of `vars` whose names start with `prefix.`
    /// (e.g. the model's weights and batch-norm statistics, without a head or optimiser state),
    /// refusing missing names and wrong shapes before changing anything. Returns how many were
    /// copied.
    pub fn restore_prefix(&self, vars: &candle_nn::VarMap, prefix: &str) -> Result<usize, TrainError> {
        let dotted = format!("{prefix}.");
        self.restore_where(vars, |name| name.starts_with(&dotted), "another model")
    }

    /// Checks every selected variable (present, same shape), then copies them all.
    fn restore_where(
        &self,
        vars: &candle_nn::VarMap,
        select: impl Fn(&str) -> bool,
        mismatch: &str,
    ) -> Result<usize, TrainError> {
        let data = vars.data().lock().map_err(|_| bad(&self.path, "poisoned var map"))?;
        let mine: Vec<(&String, &candle_core::Var)> = data.iter().filter(|(n, _)| select(n)).collect();
        for (name, var) in &mine {
            let t = self.tensors.get(*name).ok_or_else(|| {
                bad(
                    &self.path,
                    format!("variable `{name}` missing: the checkpoint is for {mismatch}"),
                )
            })?;
            if t.dims() != var.dims() {
                return Err(bad(
                    &self.path,
                    format!(
                        "variable `{name}` has shape {:?}, the model expects {:?}",
                        t.dims(),
                        var.dims()
                    ),
                ));
            }
        }
        // In the variables' dtype: an f32 value beyond f16's range is an infinity there.
        let values = mine
            .iter()
            .map(|(name, var)| self.tensors[*name].to_dtype(var.dtype()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let selected = mine.iter().zip(&values).map(|((name, _), t)| (name.as_str(), t));
        if let Some(name) = seg_nn::vars::first_non_finite(selected)? {
            return Err(bad(
                &self.path,
                format!("variable `{name}` holds a NaN or an infinity: these weights cannot be used"),
            ));
        }
        for ((_, var), t) in mine.iter().zip(&values) {
            var.set(t)?;
        }
        Ok(mine.len())
    }

    /// Optimiser state of one group (keys with the group prefix stripped).
    pub fn optimizer_state(&self, group: &str) -> HashMap<String, Tensor> {
        let prefix = format!("optim.{group}.");
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())))
            .collect()
    }
}

/// Takes back what a run from step 0 wrote into `dir` when it stopped with nothing to show for
/// it: no checkpoint, no evaluation and no training step in `metrics.jsonl` (a file that does not
/// decode in its first batches, say). Its `config.toml`, `metrics.jsonl`, `report.html` and
/// `skipped.json` go, so that the same command, without `--resume`, runs again once the data is
/// mended. For a run from step 0 without `--resume` (whose folder [`take_run_folder`] found
/// without a run's files), called under its lock.
pub fn forget_untrained(dir: &Path) {
    let trained = metric_lines(&dir.join("metrics.jsonl"))
        .iter()
        .any(|v| v["step"].as_u64().is_some_and(|s| s > 0));
    if trained || dir.join(FILE).exists() || dir.join("eval").exists() {
        return;
    }
    for f in ["config.toml", "metrics.jsonl", "report.html", SKIPPED] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// The lines of a run's `metrics.jsonl`, in order (those that parse; none when it cannot be
/// read).
pub fn metric_lines(path: &Path) -> Vec<serde_json::Value> {
    seg_labels::fsutil::read_log_lossy(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The `eval` object `metrics.jsonl` logged last for `step`'s evaluation, if any (both tasks
/// log one line `{"step", "eval": {...}}` per evaluation).
pub fn logged_eval(path: &Path, step: usize) -> Option<serde_json::Value> {
    metric_lines(path)
        .into_iter()
        .rev()
        .filter(|v| v["step"].as_u64() == Some(step as u64))
        .find_map(|mut v| v.get_mut("eval").map(serde_json::Value::take))
}

/// Keeps the lines of a run's `metrics.jsonl` whose `step` is at most `step` (a resumed run
/// writes the rest again); a missing file is left missing.
pub fn trim_metrics(path: &Path, step: usize) -> Result<(), TrainError> {
    let text = match seg_labels::fsutil::read_log_lossy(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(cause) => {
            return Err(TrainError::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("cannot read: {cause}"),
            })
        }
    };
    let mut unreadable = 0;
    let kept: String = text
        .lines()
        .filter(|l| {
            let at = serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()));
            unreadable += usize::from(at.is_none() && !l.trim().is_empty());
            at.is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if unreadable > 0 {
        // A line cut by a crash is the last one; any other was written by something else.
        tracing::warn!(
            "{}: dropped {unreadable} line(s) that are not a run's JSON (a line cut by a crash, or an edit)",
            path.display()
        );
    }
    seg_labels::fsutil::write_atomic(path, kept.as_bytes()).map_err(|cause| TrainError::Write {
        path: path.to_path_buf(),
        cause,
    })
}
