//! The traits that connect models, adaptation heads and the trainer.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};

/// A named point in the backbone where a head can read features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureTap {
    Conv1,
    Pool3,
    Pool4,
    Conv5,
    Fc7,
    Logits,
}

impl FeatureTap {
    pub fn name(self) -> &'static str {
        match self {
            FeatureTap::Conv1 => "conv1",
            FeatureTap::Pool3 => "pool3",
            FeatureTap::Pool4 => "pool4",
            FeatureTap::Conv5 => "conv5",
            FeatureTap::Fc7 => "fc7",
            FeatureTap::Logits => "logits",
        }
    }
}

/// The feature maps of one forward pass, by tap. `Logits` is always present and has the input's
/// spatial size.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub maps: BTreeMap<FeatureTap, Tensor>,
}

impl Features {
    pub fn get(&self, tap: FeatureTap) -> Result<&Tensor> {
        self.maps
            .get(&tap)
            .ok_or_else(|| candle_core::Error::Msg(format!("feature tap `{}` was not computed", tap.name())))
    }

    pub fn logits(&self) -> Result<&Tensor> {
        self.get(FeatureTap::Logits)
    }
}

/// A parameter group: the name under which an optimiser, its learning rate and its checkpointed
/// state are kept (`[trainer.groups.<name>]` in the config), and the name a loss term gives to
/// say which parameters it trains. The set is open: a method may name its own groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub &'static str);

impl GroupId {
    /// The segmentation network (backbone and classifier).
    pub const SEGMENTER: GroupId = GroupId("segmenter");
    /// Domain discriminators.
    pub const DISCRIMINATOR: GroupId = GroupId("discriminator");
    /// Feature generators (SAN).
    pub const GENERATOR: GroupId = GroupId("generator");
    /// Parameters no optimiser moves (a frozen copy of a network); they are still checkpointed.
    pub const FROZEN: GroupId = GroupId("frozen");

    pub fn name(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// One named loss term and the loss group it belongs to: the sum of a group's terms is
/// differentiated on its own, and gives their gradient to the parameter sets that name that
/// loss group ([`crate::ParamSet::loss`]).
#[derive(Debug, Clone)]
pub struct LossTerm {
    pub name: &'static str,
    pub value: Tensor,
    pub group: GroupId,
}

impl LossTerm {
    pub fn new(name: &'static str, value: Tensor, group: GroupId) -> Self {
        Self { name, value, group }
    }
}

/// A segmentation backbone: image batch in, feature taps and full-resolution logits out.
pub trait Backbone: Send + Sync {
    /// Forward pass; `train` switches dropout and batch norm to training mode. The result
    /// holds `Logits` (at the input's size) and at least the requested taps, those two in f32
    /// even under bf16 mixed precision (`seg_nn::precision::leave`).
    fn forward_taps(&self, images: &Tensor, train: bool, taps: &[FeatureTap]) -> Result<Features>;
    /// Recomputes the logits from `tap` onward with that tap's map replaced by `replaced`
    /// (same shape), reusing the other maps of `feats` where the network has skips. SAN adds
    /// its generated residual to conv5 this way. The logits are f32, as from `forward_taps`.
    fn forward_from(&self, feats: &Features, tap: FeatureTap, replaced: &Tensor, train: bool) -> Result<Tensor>;
    /// Output stride of the deepest features relative to the input; input sizes must be
    /// multiples of it.
    fn stride(&self) -> usize;
    /// The taps this model can provide.
    fn taps(&self) -> &'static [FeatureTap];
    /// Channels of the feature map at a tap, if the model has that tap.
    fn tap_channels(&self, tap: FeatureTap) -> Option<usize>;
    /// Stride of the feature map at a tap relative to the input (1 for `Logits`), if the model
    /// has that tap.
    fn tap_stride(&self, tap: FeatureTap) -> Option<usize>;
    /// Number of output classes.
    fn num_classes(&self) -> usize;
    /// Whether the model has batch norm (AdaBN needs it).
    fn has_batch_norm(&self) -> bool;
    /// Sets the running-statistics momentum of every batch-norm layer (`None` = the pooled
    /// statistics of every batch since the reset, used to re-estimate them), and optionally
    /// resets them.
    fn set_bn_momentum(&self, momentum: Option<f64>, reset: bool) -> Result<()>;
}

/// `n step` or `n steps`, for messages.
pub fn steps(n: usize) -> String {
    format!("{n} step{}", if n == 1 { "" } else { "s" })
}

/// Where training is, for schedules inside heads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    pub step: usize,
    pub total_steps: usize,
}

impl StepInfo {
    /// Training progress in `[0, 1]`.
    pub fn progress(&self) -> f64 {
        if self.total_steps == 0 {
            1.0
        } else {
            (self.step as f64 / self.total_steps as f64).clamp(0.0, 1.0)
        }
    }
}

/// Everything a head sees in one training step.
pub struct HeadInput<'a> {
    pub backbone: &'a dyn Backbone,
    /// The batches' images (`N×3×H×W`), for heads that look at pixels (DSN's reconstruction).
    pub source_images: &'a Tensor,
    pub target_images: &'a Tensor,
    /// Source features (with the head's taps and logits) and labels (`N×H×W` u32).
    pub source: &'a Features,
    pub source_labels: &'a Tensor,
    /// Target features (with the head's taps and logits); never target labels.
    pub target: &'a Features,
    pub step: StepInfo,
}

/// A part of a head's parameters: the variables created below `prefix` (a builder path the head
/// was given), the optimiser group that moves them, the loss group that gives them their
/// gradient (usually the same), and a learning-rate multiplier.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadParams {
    pub prefix: String,
    pub group: GroupId,
    pub loss: GroupId,
    pub lr_mult: f64,
}

impl HeadParams {
    /// Parameters trained by the terms of their own group.
    pub fn new(prefix: String, group: GroupId, lr_mult: f64) -> Self {
        Self {
            prefix,
            group,
            loss: group,
            lr_mult,
        }
    }
}

/// A feature-level adaptation head, run by [`crate::method`]'s feature-alignment step: reads
/// feature taps (and images) of a source and a target batch and returns named loss terms, each
/// tagged with the loss group it trains.
pub trait AdaptationHead: Send + Sync {
    fn name(&self) -> &'static str;
    /// Taps the head needs on both domains.
    fn taps(&self) -> Vec<FeatureTap>;
    /// The head's parameters, by the builder prefixes it created them under.
    fn param_groups(&self) -> Vec<HeadParams>;
    /// Loss terms for one step. Terms of the discriminator group must see detached features.
    fn losses(&self, input: &HeadInput<'_>) -> Result<Vec<LossTerm>>;
    /// Weight of the trainer's plain source cross-entropy (`seg`) while this head trains; a head
    /// that takes part of the task loss itself (SAN, on generated features) lowers it so that
    /// the segmenter sees one source cross-entropy in all. Default 1.
    fn source_task_weight(&self) -> f64 {
        1.0
    }
}
