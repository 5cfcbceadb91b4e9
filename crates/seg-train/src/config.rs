//! The trainer's typed configuration (one section of the run's TOML file).

use std::collections::BTreeMap;

use seg_nn::{OptimizerConfig, OptimizerPatch, Precision};

/// Which domain's images set the batch-norm running statistics during adaptation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BnStats {
    /// Source and target passes use their own batch statistics; only target passes update the
    /// running statistics used at test time (when there is a target batch).
    #[default]
    Target,
    /// Every forward pass updates the running statistics.
    Mixed,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// Training iterations.
    pub steps: usize,
    /// Source images per step.
    pub batch_size: usize,
    /// Target images per step (defaults to `batch_size`).
    pub target_batch_size: Option<usize>,
    /// Segmenter learning rate at step 0 (poly decay to 0).
    pub lr: f64,
    /// Poly decay power.
    pub lr_power: f64,
    /// The segmenter's optimiser. A table in the file amends the default: a field left out
    /// keeps the default's value ([`OptimizerConfig::amended`]).
    #[serde(deserialize_with = "segmenter_optimizer")]
    pub optimizer: OptimizerConfig,
    /// Learning rate of the head's groups (discriminators, generators), before multipliers.
    pub head_lr: f64,
    /// Every other group's optimiser, amended by a table in the file as `optimizer` is.
    #[serde(deserialize_with = "head_optimizer")]
    pub head_optimizer: OptimizerConfig,
    /// Per parameter group (`segmenter`, `discriminator`, `generator`, or a group a method
    /// names: `dsn`, `curriculum`, `two-stream`), an optimiser table amending and a learning
    /// rate replacing the defaults above (`optimizer`/`lr` for the segmenter, `head_optimizer`/`head_lr` for every
    /// other group). In TOML: `[trainer.groups.discriminator] lr = 1e-4`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, GroupSettings>,
    pub seed: u64,
    /// Write a checkpoint every N steps (and always at the end); 0 = only at the end.
    pub checkpoint_every: usize,
    /// Evaluate on the target val split every N steps; 0 = only at the end.
    pub eval_every: usize,
    /// Append a `metrics.jsonl` line every N steps.
    pub log_every: usize,
    pub bn_stats: BnStats,
    /// Keep decoded images in memory (small datasets).
    pub cache_images: bool,
    /// Batches each training loader decodes and augments ahead, in the background on the CPU's
    /// threads, while the device trains on the current one (PyTorch's `DataLoader` workers;
    /// 0: each batch when it is needed). The batches are the same either way.
    #[serde(skip_serializing_if = "is_default_prefetch")]
    pub prefetch: usize,
    /// `f32` (the default) or `bf16`: mixed precision as PyTorch's bfloat16 autocast, bf16
    /// convolutions with f32 master weights, optimiser state, batch norm and losses
    /// ([`seg_nn::precision`]). Evaluation runs in f32.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl TrainerConfig {
    /// Takes from `other` the settings a resumed run may change: the step count, and those that
    /// do not change what is trained (how often to checkpoint, evaluate and log; the images
    /// cached and the batches decoded ahead). What remains must be equal for a resume.
    pub fn with_free_settings_of(&self, other: &Self) -> Self {
        Self {
            steps: other.steps,
            checkpoint_every: other.checkpoint_every,
            eval_every: other.eval_every,
            log_every: other.log_every,
            cache_images: other.cache_images,
            prefetch: other.prefetch,
            ..self.clone()
        }
    }
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 8,
            target_batch_size: None,
            lr: 0.01,
            lr_power: 0.9,
            optimizer: OptimizerConfig::Sgd {
                momentum: 0.9,
                weight_decay: 5e-4,
            },
            head_lr: 1e-3,
            head_optimizer: OptimizerConfig::Adam {
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            groups: BTreeMap::new(),
            seed: 0,
            checkpoint_every: 0,
            eval_every: 0,
            log_every: 10,
            bn_stats: BnStats::Target,
            cache_images: true,
            prefetch: DEFAULT_PREFETCH,
            precision: Precision::F32,
        }
    }
}

/// Batches decoded ahead by default: enough that a GPU step of tens of milliseconds does not
/// wait on full-size PNGs (tens of milliseconds each to decode and augment on one core: the
/// pipeline benchmark in docs/perf.md).
const DEFAULT_PREFETCH: usize = 4;

fn is_default_prefetch(n: &usize) -> bool {
    *n == DEFAULT_PREFETCH
}

fn segmenter_optimizer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OptimizerConfig, D::Error> {
    amend(d, TrainerConfig::default().optimizer, "trainer.optimizer")
}

fn head_optimizer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OptimizerConfig, D::Error> {
    amend(d, TrainerConfig::default().head_optimizer, "trainer.head_optimizer")
}

fn amend<'de, D: serde::Deserializer<'de>>(
    d: D,
    base: OptimizerConfig,
    key: &str,
) -> Result<OptimizerConfig, D::Error> {
    let patch = <OptimizerPatch as serde::Deserialize>::deserialize(d)?;
    base.amended(&patch)
        .map_err(|e| serde::de::Error::custom(format!("{key}: {e}")))
}

/// One parameter group's optimiser settings; a field left out keeps the default. The optimiser
/// table amends the group's default (`trainer.optimizer` for the segmenter,
/// `trainer.head_optimizer` for the others) field by field.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerPatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
}

/// The most batches a loader may decode ahead (`trainer.prefetch`): each holds a whole batch of
/// decoded, augmented images in memory.
pub const MAX_PREFETCH: usize = 64;

/// `key` under `section` (`section.key`), or `key` alone at the top.
fn dotted(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else if key.is_empty() {
        section.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// The dotted key of the first number in a config tree that is not finite (TOML allows `nan`
/// and `inf`; no setting of a run takes them).
pub fn first_non_finite(v: &toml::Value) -> Option<(String, f64)> {
    match v {
        toml::Value::Float(f) if !f.is_finite() => Some((String::new(), *f)),
        toml::Value::Table(t) => t
            .iter()
            .find_map(|(k, v)| first_non_finite(v).map(|(key, f)| (dotted(k, &key), f))),
        toml::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_non_finite(v).map(|(key, f)| (format!("[{i}]{key}"), f))),
        _ => None,
    }
}

/// The first array of a config as written (`raw`) whose parsed value (`typed`, serialised back)
/// has another length: `(dotted key, written, kept)`. The TOML reader fills a fixed-length
/// array (`crop = [W, H]`) from the first elements and drops the rest without a word.
pub fn first_array_length_mismatch(raw: &toml::Value, typed: &toml::Value) -> Option<(String, usize, usize)> {
    match (raw, typed) {
        (toml::Value::Array(a), toml::Value::Array(b)) if a.len() != b.len() => Some((String::new(), a.len(), b.len())),
        (toml::Value::Table(a), toml::Value::Table(b)) => a
            .iter()
            .find_map(|(k, v)| first_array_length_mismatch(v, b.get(k)?).map(|(key, n, m)| (dotted(k, &key), n, m))),
        _ => None,
    }
}

/// A key written in `[method]` (`raw`) for a kind that has no settings (`source-only`,
/// `oracle`, `adabn`: `typed`, serialised back, holds only `kind`): `(dotted key, kind)`. The
/// TOML reader refuses another kind's unknown keys but passes over these without a word.
pub fn key_of_a_kind_without_settings(raw: &toml::Value, typed: &toml::Value) -> Option<(String, String)> {
    let (raw, typed) = (raw.get("method")?.as_table()?, typed.get("method")?.as_table()?);
    if typed.keys().any(|k| k != "kind") {
        return None;
    }
    let kind = typed.get("kind")?.as_str()?.to_string();
    raw.keys().find(|k| *k != "kind").map(|k| (format!("method.{k}"), kind))
}

/// The key of a section read by its `kind` (`[method]`) whose value does not read, with the
/// reason: `(dotted key, reason)`. The TOML reader reports such a value (`hidden = 2.5`) at
/// the section's header, without its key; each key is read here alone beside `kind`.
pub fn bad_key_of_kind_section<T: serde::de::DeserializeOwned>(
    raw: &toml::Value,
    section: &str,
) -> Option<(String, String)> {
    let table = raw.get(section)?.as_table()?;
    let kind = table.get("kind")?;
    // A kind that does not read is the reader's own error to give (and the other task's hints).
    let alone = toml::Table::from_iter([("kind".to_string(), kind.clone())]);
    if toml::Value::Table(alone).try_into::<T>().is_err() {
        return None;
    }
    table.iter().filter(|(k, _)| *k != "kind").find_map(|(k, v)| {
        let probe = toml::Table::from_iter([("kind".to_string(), kind.clone()), (k.clone(), v.clone())]);
        let message = toml::Value::Table(probe).try_into::<T>().err()?.to_string();
        (!message.contains("missing field")).then(|| (format!("{section}.{k}"), plain_types(message.trim_end())))
    })
}

/// A TOML or serde message in a config's words rather than Rust's: `expected usize` becomes
/// `expected a whole number of at least 0`, `expected f64` `expected a number`, `expected struct
/// TrainerConfig` `expected a table`.
pub fn plain_types(message: &str) -> String {
    let mut out = message.to_string();
    // An integer beyond 64 bits reaches serde as a 128-bit one from a file, and as a word from
    // `--set` (TOML has no such integer, so the value was taken as a string): out of range,
    // not of another type.
    for wide in ["` as i128", "` as u128"] {
        if let Some(at) = out.find(wide) {
            let negative = out[..at]
                .rfind('`')
                .is_some_and(|tick| out[tick + 1..at].starts_with('-'));
            out = out
                .replace(wide, &format!("` {}", out_of_range(negative)))
                .replace("invalid type: integer", "invalid value: integer");
        }
    }
    let word = "invalid type: string \"";
    if let Some(at) = out.find(word) {
        let rest = &out[at + word.len()..];
        if let Some(end) = rest.find('"') {
            let digits = &rest[..end];
            let unsigned = digits.strip_prefix(['-', '+']).unwrap_or(digits);
            let integer =
                !unsigned.is_empty() && !unsigned.starts_with('0') && unsigned.bytes().all(|b| b.is_ascii_digit());
            if integer && digits.parse::<i64>().is_err() && rest[end..].starts_with("\", expected ") {
                let replaced = format!(
                    "invalid value: integer `{digits}` {}",
                    out_of_range(digits.starts_with('-'))
                );
                out.replace_range(at..at + word.len() + end + 1, &replaced);
            }
        }
    }
    for (rust, plain) in [
        ("usize", "a whole number of at least 0"),
        ("u64", "a whole number of at least 0"),
        ("u32", "a whole number of at least 0"),
        ("u16", "a whole number from 0 to 65535"),
        ("u8", "a whole number from 0 to 255"),
        ("i64", "a whole number"),
        ("i32", "a whole number"),
        ("f64", "a number"),
        ("f32", "a number"),
    ] {
        for end in [",", ")", "\n", " "] {
            out = out.replace(&format!("expected {rust}{end}"), &format!("expected {plain}{end}"));
        }
        if let Some(head) = out.strip_suffix(&format!("expected {rust}")) {
            out = format!("{head}expected {plain}");
        }
    }
    while let Some(at) = out.find("expected struct ") {
        let name_end = out[at + 16..]
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .map_or(out.len(), |n| at + 16 + n);
        out.replace_range(at..name_end, "expected a table");
    }
    out
}

/// What a config's integers hold (TOML's are 64-bit and signed), for a value beyond them.
fn out_of_range(negative: bool) -> String {
    if negative {
        format!("(out of range: a config's whole numbers go down to {})", i64::MIN)
    } else {
        format!("(out of range: a config's whole numbers go up to {})", i64::MAX)
    }
}

/// The first dotted key (`trainer.lr`) whose value differs between two config trees.
pub fn first_difference(a: &toml::Value, b: &toml::Value) -> Option<String> {
    fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    flatten(&dotted(prefix, k), v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten("", a, &mut fa);
    flatten("", b, &mut fb);
    fa.keys().chain(fb.keys()).find(|k| fa.get(*k) != fb.get(*k)).cloned()
}

/// The largest batch a run may ask for (`trainer.batch_size`, `target_batch_size`): the papers
/// train with 1 to 32; a typo of 100,000,000 would ask for terabytes.
pub const MAX_BATCH: usize = 1024;

/// The largest size (a width, a hidden layer, a pool) a `[model]` or `[method]` section may ask
/// for: the models' widest layer is VGG's 4096; a layer of 8192 × 8192 3×3 weights is 2.4 GB.
pub const MAX_SIZE: i64 = 8192;

/// A whole run config (serialised) refused, naming the key, when a number in it is not finite.
pub fn refuse_non_finite(tree: &toml::Value) -> Result<(), String> {
    match first_non_finite(tree) {
        Some((key, v)) => Err(format!("{key} = {v}: every number in a config must be finite")),
        None => Ok(()),
    }
}

/// A whole run config (serialised) refused, naming the key, when its `[model]` or `[method]`
/// asks for a size above [`MAX_SIZE`] ([`first_oversized`]).
pub fn refuse_oversized(tree: &toml::Value) -> Result<(), String> {
    for section in ["model", "method"] {
        if let Some((key, n)) = tree.get(section).and_then(|v| first_oversized(section, v)) {
            return Err(format!("{key} = {n}: sizes in [{section}] are at most {MAX_SIZE}"));
        }
    }
    Ok(())
}

/// The dotted key and value of the first integer in a `[model]` or `[method]` section (`section`
/// names it) above [`MAX_SIZE`], seeds and step counts (`*steps`) aside: the sizes of layers,
/// whose weights are allocated from them before any check a layer could make.
pub fn first_oversized(section: &str, v: &toml::Value) -> Option<(String, i64)> {
    match v {
        toml::Value::Integer(n) if *n > MAX_SIZE => Some((section.to_string(), *n)),
        toml::Value::Table(t) => t
            .iter()
            .filter(|(k, _)| *k != "seed" && !k.ends_with("steps"))
            .find_map(|(k, v)| first_oversized(&dotted(section, k), v)),
        toml::Value::Array(a) => a.iter().find_map(|v| first_oversized(section, v)),
        _ => None,
    }
}

impl TrainerConfig {
    /// Checks what a run could not train with; the message names the key (`trainer.*`).
    pub fn validate(&self) -> Result<(), String> {
        if self.steps == 0 {
            return Err("trainer.steps must be at least 1".into());
        }
        for (key, n) in [
            ("batch_size", Some(self.batch_size)),
            ("target_batch_size", self.target_batch_size),
        ] {
            if let Some(n) = n.filter(|n| !(1..=MAX_BATCH).contains(n)) {
                return Err(format!("trainer.{key} = {n}: must be from 1 to {MAX_BATCH}"));
            }
        }
        let rates = [("lr", self.lr), ("head_lr", self.head_lr), ("lr_power", self.lr_power)]
            .into_iter()
            .map(|(k, v)| (format!("trainer.{k}"), v))
            .chain(
                self.groups
                    .iter()
                    .filter_map(|(g, s)| s.lr.map(|lr| (format!("trainer.groups.{g}.lr"), lr))),
            );
        for (key, v) in rates {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{key} = {v}: must be finite and ≥ 0"));
            }
        }
        self.optimizer.validate("trainer.optimizer")?;
        self.head_optimizer.validate("trainer.head_optimizer")?;
        for g in self.groups.keys() {
            self.group_settings(g)?
                .0
                .validate(&format!("trainer.groups.{g}.optimizer"))?;
        }
        if self.prefetch > MAX_PREFETCH {
            return Err(format!(
                "trainer.prefetch = {}: at most {MAX_PREFETCH} batches are decoded ahead",
                self.prefetch
            ));
        }
        Ok(())
    }

    /// For `check`: what each group's optimiser table (written as the amendment it is) comes
    /// to, as comment lines; empty when no group has one.
    pub fn groups_resolved(&self) -> String {
        let mut out = String::new();
        for (g, s) in &self.groups {
            if s.optimizer.is_none() {
                continue;
            }
            if let Ok((opt, _)) = self.group_settings(g) {
                let table = toml::Value::try_from(&opt).map(|v| v.to_string()).unwrap_or_default();
                out += &format!("# trainer.groups.{g}.optimizer comes to {}\n", table.trim_end());
            }
        }
        out
    }

    /// Two configs with their groups in one spelling, for comparing them (as a resume compares
    /// its config with the saved one): every group that either names is written out on both
    /// sides as it resolves, its optimiser table whole and its rate, so that two spellings of
    /// one setting agree and a change is named by its own key (`….optimizer.weight_decay`). A
    /// group that does not resolve is kept as written.
    pub fn groups_resolved_together(a: &Self, b: &Self) -> (Self, Self) {
        let names: std::collections::BTreeSet<&String> = a.groups.keys().chain(b.groups.keys()).collect();
        let spelt = |c: &Self| {
            let mut out = c.clone();
            for name in &names {
                match c.group_settings(name) {
                    Ok((opt, lr)) => {
                        out.groups.insert(
                            (*name).clone(),
                            GroupSettings {
                                optimizer: Some(OptimizerPatch::from(&opt)),
                                lr: Some(lr),
                            },
                        );
                    }
                    Err(_) => continue,
                }
            }
            out
        };
        (spelt(a), spelt(b))
    }

    /// The optimiser and base learning rate of group `name`; an error names a group's optimiser
    /// table that sets a field its kind does not have.
    pub fn group_settings(&self, name: &str) -> Result<(OptimizerConfig, f64), String> {
        let (opt, lr) = if name == "segmenter" {
            (self.optimizer.clone(), self.lr)
        } else {
            (self.head_optimizer.clone(), self.head_lr)
        };
        let Some(g) = self.groups.get(name) else {
            return Ok((opt, lr));
        };
        let opt = match &g.optimizer {
            Some(patch) => opt
                .amended(patch)
                .map_err(|e| format!("trainer.groups.{name}.optimizer: {e}"))?,
            None => opt,
        };
        Ok((opt, g.lr.unwrap_or(lr)))
    }
}

/// The settings of `settings` (dotted key, value) that a config's text leaves out at their
/// defaults (so that configs written before they existed read the same), as a comment line
/// to print under it; empty when every one is written.
pub fn unwritten_defaults(text: &str, settings: &[(&str, Result<toml::Value, toml::ser::Error>)]) -> String {
    let missing: Vec<String> = settings
        .iter()
        .filter_map(|(key, value)| {
            let name = key.rsplit('.').next().unwrap_or(key);
            let written = text.lines().any(|l| l.starts_with(&format!("{name} =")));
            let value = value.as_ref().ok()?;
            (!written).then(|| format!("{key} = {value}"))
        })
        .collect();
    if missing.is_empty() {
        String::new()
    } else {
        format!("# not written above, at their defaults: {}\n", missing.join(", "))
    }
}

/// [`set_key`] for a config of type `T`: a key taken out (`KEY=`) must name one of `T`'s
/// settings, as a key given a value must (the parse names that one): a typo taken out would
/// otherwise pass without a word.
pub fn set_key_of<T: serde::de::DeserializeOwned>(
    root: &mut toml::Value,
    assignment: &str,
) -> Result<(String, String), String> {
    let (key, value) = set_key(root, assignment)?;
    if value.is_empty() {
        let mut probe = root.clone();
        set_key(&mut probe, &format!("{key}=0"))?;
        if let Err(e) = probe.try_into::<T>() {
            let message = e.to_string();
            if message.contains("unknown field") {
                return Err(format!("--set {key}=: {}", message.trim_end()));
            }
        }
    }
    Ok((key, value))
}

/// Applies one `--set key=value` to a config as a TOML tree: the value is read as TOML (a
/// number, boolean, array...) or else taken as a string; an empty value takes the key out (its
/// default applies); `method.kind = X` replaces the whole `[method]` section (another method's
/// settings would not fit). Returns the key and value for messages; the caller re-parses the
/// tree, which names an unknown key or a wrong type.
pub fn set_key(root: &mut toml::Value, assignment: &str) -> Result<(String, String), String> {
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| format!("--set `{assignment}`: expected key=value"))?;
    let key = key.trim();
    let value = value.trim();
    let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(value.to_string())),
        Err(_) => toml::Value::String(value.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("--set `{assignment}`: `{key}` is not a dotted key"));
    }
    let table = root
        .as_table_mut()
        .ok_or_else(|| "the config is not a table".to_string())?;
    if value.is_empty() {
        // `KEY=` with nothing after it takes the key out: its default applies (no ImageNet
        // weights for `model.init_weights=`), or the parse names it when it is required.
        if parts == ["method", "kind"] {
            return Err(format!("--set `{assignment}`: a run needs a method"));
        }
        let (last, path) = parts.split_last().unwrap_or((&"", &[]));
        let mut node = Some(table);
        for part in path {
            node = node.and_then(|t| t.get_mut(*part)).and_then(toml::Value::as_table_mut);
        }
        if let Some(t) = node {
            t.remove(*last);
        }
        return Ok((key.to_string(), value.to_string()));
    }
    // Another kind of method or optimiser than the table's starts from that kind's settings:
    // the table's other keys (the old kind's) go.
    let n = parts.len();
    let kind_key =
        n >= 2 && parts[n - 1] == "kind" && (parts[n - 2] == "method" || parts[n - 2].ends_with("optimizer"));
    let mut node = table;
    for (i, part) in parts.iter().enumerate() {
        let other_kind = || {
            node.get(*part)
                .and_then(|t| t.get("kind"))
                .is_some_and(|k| *k != parsed)
        };
        if kind_key && i + 2 == n && (parts[0] == "method" || other_kind()) {
            let mut t = toml::Table::new();
            t.insert("kind".into(), parsed);
            node.insert(part.to_string(), toml::Value::Table(t));
            break;
        }
        if i + 1 == n {
            node.insert(part.to_string(), parsed);
            break;
        }
        node = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("--set {key}: `{}` is not a section", parts[..=i].join(".")))?;
    }
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trainer(text: &str) -> Result<TrainerConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn messages_name_types_in_a_configs_words() {
        assert_eq!(
            plain_types("invalid value: integer `-5`, expected usize"),
            "invalid value: integer `-5`, expected a whole number of at least 0"
        );
        assert_eq!(
            plain_types("invalid type: integer `5`, expected struct TrainerConfig\n"),
            "invalid type: integer `5`, expected a table\n"
        );
        assert_eq!(
            plain_types("invalid type: string \"x\", expected f64"),
            "invalid type: string \"x\", expected a number"
        );
        // Beyond 64 bits: from a file (as i128), and from `--set` (taken as a word).
        let wide = "invalid value: integer `99999999999999999999` (out of range: a config's whole numbers go up to \
                    9223372036854775807), expected a whole number of at least 0";
        assert_eq!(
            plain_types("invalid type: integer `99999999999999999999` as i128, expected usize"),
            wide
        );
        assert_eq!(
            plain_types("invalid type: string \"99999999999999999999\", expected usize"),
            wide
        );
        assert_eq!(
            plain_types("invalid type: string \"-99999999999999999999\", expected i64"),
            "invalid value: integer `-99999999999999999999` (out of range: a config's whole numbers go down to \
             -9223372036854775808), expected a whole number"
        );
        // A word of digits that a 64-bit integer holds, or with a leading zero, stays a word.
        for word in ["\"0100\"", "\"12\"", "\"1_000\""] {
            let message = format!("invalid type: string {word}, expected usize");
            assert!(plain_types(&message).starts_with("invalid type: string"), "{word}");
        }
        // A word that only starts like a type name is left alone.
        assert_eq!(plain_types("expected u8bit"), "expected u8bit");
    }

    #[test]
    fn groups_resolved_together_make_two_spellings_of_one_setting_equal() {
        let same = |a: &TrainerConfig, b: &TrainerConfig| {
            let (a, b) = TrainerConfig::groups_resolved_together(a, b);
            a == b
        };
        let differ = |a: &TrainerConfig, b: &TrainerConfig| {
            let (a, b) = TrainerConfig::groups_resolved_together(a, b);
            let tree = |t: &TrainerConfig| toml::Value::try_from(t).unwrap();
            first_difference(&tree(&a), &tree(&b))
        };
        let plain = trainer("").unwrap();
        // A group written as its default, and tables that restate the default's fields.
        let restated = trainer(
            "[groups.discriminator.optimizer]\nbeta2 = 0.99\n[groups.segmenter]\nlr = 0.01\n[groups.generator.optimizer]\nkind = \"adam\"\n",
        )
        .unwrap();
        assert_ne!(plain, restated);
        assert!(same(&plain, &restated));
        // A kind written out, or a field left to the default it amends, is the same table.
        let a = trainer("[groups.discriminator.optimizer]\nbeta1 = 0.5\n").unwrap();
        let b = trainer("[groups.discriminator.optimizer]\nkind = \"adam\"\nbeta1 = 0.5\neps = 1e-8\n").unwrap();
        assert!(same(&a, &b));
        // A real change is named by its own key, whichever side leaves the group out.
        let c = trainer("[groups.discriminator.optimizer]\nbeta1 = 0.6\n").unwrap();
        assert_eq!(differ(&a, &c).as_deref(), Some("groups.discriminator.optimizer.beta1"));
        let wd = trainer("[groups.discriminator.optimizer]\nweight_decay = 0.01\n").unwrap();
        assert_eq!(
            differ(&plain, &wd).as_deref(),
            Some("groups.discriminator.optimizer.weight_decay")
        );
        assert_eq!(
            differ(&wd, &plain).as_deref(),
            Some("groups.discriminator.optimizer.weight_decay")
        );
        let seg = trainer("[groups.segmenter.optimizer]\nweight_decay = 1e-3\n").unwrap();
        assert_eq!(
            differ(&plain, &seg).as_deref(),
            Some("groups.segmenter.optimizer.weight_decay")
        );
        let lr = trainer("[groups.generator]\nlr = 0.5\n").unwrap();
        assert_eq!(differ(&plain, &lr).as_deref(), Some("groups.generator.lr"));
    }

    #[test]
    fn an_optimizer_table_amends_the_default_field_by_field() {
        let t =
            trainer("[optimizer]\nmomentum = 0.95\n[head_optimizer]\nkind = \"adam\"\nweight_decay = 1e-4\n").unwrap();
        // The fields left out keep the trainer's defaults (weight decay 5e-4, beta2 0.99), not
        // the optimiser kind's.
        let expect_sgd = OptimizerConfig::Sgd {
            momentum: 0.95,
            weight_decay: 5e-4,
        };
        assert_eq!(t.optimizer, expect_sgd);
        let expect_adam = OptimizerConfig::Adam {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 1e-4,
        };
        assert_eq!(t.head_optimizer, expect_adam);
        // The same kind alone is the default.
        let t = trainer("[optimizer]\nkind = \"sgd\"\n[head_optimizer]\nkind = \"adam\"\n").unwrap();
        assert_eq!(t, TrainerConfig::default());
        // Another kind starts from its own defaults.
        let t = trainer("[optimizer]\nkind = \"adam\"\n").unwrap();
        assert_eq!(t.optimizer, OptimizerConfig::fresh(seg_nn::OptimizerKind::Adam));
        // The resolved config, written out and read back, is the same.
        let t = trainer("[optimizer]\nmomentum = 0.5\n[groups.discriminator.optimizer]\nbeta2 = 0.9\n").unwrap();
        assert_eq!(trainer(&toml::to_string(&t).unwrap()).unwrap(), t);
    }

    #[test]
    fn a_groups_optimizer_amends_its_groups_default() {
        let t = trainer(
            "[optimizer]\nweight_decay = 1e-3\n[groups.segmenter.optimizer]\nmomentum = 0.8\n[groups.discriminator.optimizer]\nbeta1 = 0.5\n",
        )
        .unwrap();
        t.validate().unwrap();
        let expect_segmenter = OptimizerConfig::Sgd {
            momentum: 0.8,
            weight_decay: 1e-3,
        };
        assert_eq!(t.group_settings("segmenter").unwrap(), (expect_segmenter, 0.01));
        let expect_discriminator = OptimizerConfig::Adam {
            beta1: 0.5,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        assert_eq!(t.group_settings("discriminator").unwrap(), (expect_discriminator, 1e-3));
        assert_eq!(t.group_settings("generator").unwrap().0, t.head_optimizer);
    }

    #[test]
    fn setting_an_optimizers_kind_starts_from_that_kinds_settings() {
        let trainer = toml::Value::try_from(TrainerConfig::default()).unwrap();
        let mut root = toml::Value::Table(toml::Table::from_iter([("trainer".to_string(), trainer)]));
        // The same kind keeps the table's settings.
        set_key(&mut root, "trainer.optimizer.momentum=0.5").unwrap();
        set_key(&mut root, "trainer.optimizer.kind=sgd").unwrap();
        let t: TrainerConfig = root["trainer"].clone().try_into().unwrap();
        assert!(matches!(
            t.optimizer,
            OptimizerConfig::Sgd {
                momentum: 0.5,
                weight_decay: 5e-4
            }
        ));
        set_key(&mut root, "trainer.optimizer.kind=adam").unwrap();
        set_key(&mut root, "trainer.groups.discriminator.optimizer.kind=sgd").unwrap();
        set_key(&mut root, "trainer.head_optimizer.beta2=0.9").unwrap();
        let t: TrainerConfig = root["trainer"].clone().try_into().unwrap();
        assert_eq!(t.optimizer, OptimizerConfig::fresh(seg_nn::OptimizerKind::Adam));
        let (disc, _) = t.group_settings("discriminator").unwrap();
        assert_eq!(disc, OptimizerConfig::fresh(seg_nn::OptimizerKind::Sgd));
        let OptimizerConfig::Adam {
            beta2, weight_decay, ..
        } = t.head_optimizer
        else {
            panic!("{:?}", t.head_optimizer)
        };
        assert_eq!((beta2, weight_decay), (0.9, 0.0));
    }

    #[test]
    fn check_notes_say_what_a_groups_table_comes_to_and_which_defaults_are_unwritten() {
        let t = trainer("[groups.discriminator.optimizer]\nbeta1 = 0.5\n[groups.generator]\nlr = 0.1\n").unwrap();
        assert_eq!(
            t.groups_resolved(),
            "# trainer.groups.discriminator.optimizer comes to { beta1 = 0.5, beta2 = 0.99, eps = 0.00000001, kind = \"adam\", weight_decay = 0.0 }\n"
        );
        assert_eq!(TrainerConfig::default().groups_resolved(), "");
        let text = toml::to_string(&t).unwrap();
        let settings = [
            ("trainer.prefetch", toml::Value::try_from(t.prefetch)),
            ("trainer.seed", toml::Value::try_from(t.seed)),
        ];
        assert_eq!(
            unwritten_defaults(&text, &settings),
            "# not written above, at their defaults: trainer.prefetch = 4\n"
        );
        assert_eq!(unwritten_defaults(&text, &settings[1..]), "");
    }

    #[test]
    fn a_setting_of_the_other_kind_is_named() {
        let e = trainer("[optimizer]\nbeta2 = 0.9\n").unwrap_err();
        assert!(
            e.contains("trainer.optimizer: `beta2` is not a setting of sgd") && e.contains("momentum, weight_decay"),
            "{e}"
        );
        let e = trainer("[head_optimizer]\nkind = \"adam\"\nmomentum = 0.9\n").unwrap_err();
        assert!(e.contains("`momentum` is not a setting of adam"), "{e}");
        let e = trainer("[optimizer]\nmomentom = 0.9\n").unwrap_err();
        assert!(e.contains("momentom"), "{e}");
        let t = trainer("[groups.discriminator.optimizer]\nmomentum = 0.9\n").unwrap();
        let e = t.validate().unwrap_err();
        assert!(
            e.contains("trainer.groups.discriminator.optimizer: `momentum` is not a setting of adam"),
            "{e}"
        );
        let t = trainer("[groups.segmenter.optimizer]\nmomentum = 1.5\n").unwrap();
        let e = t.validate().unwrap_err();
        assert!(e.contains("trainer.groups.segmenter.optimizer.momentum = 1.5"), "{e}");
    }
}
