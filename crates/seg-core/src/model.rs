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

/// Which optimiser a loss term (and a parameter) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamGroup {
    /// The segmentation network (backbone and classifier).
    Segmenter,
    /// Domain discriminators.
    Discriminator,
    /// Feature generators (SAN).
    Generator,
}

/// One named loss term and the parameter group whose optimiser it drives.
#[derive(Debug, Clone)]
pub struct LossTerm {
    pub name: &'static str,
    pub value: Tensor,
    pub group: ParamGroup,
}

/// A segmentation backbone: image batch in, feature taps and full-resolution logits out.
pub trait Backbone: Send + Sync {
    /// Forward pass; `train` switches dropout and batch norm to training mode.
    fn forward_taps(&self, images: &Tensor, train: bool, taps: &[FeatureTap]) -> Result<Features>;
    /// Output stride of the deepest features relative to the input.
    fn stride(&self) -> usize;
    /// The taps this model can provide.
    fn taps(&self) -> &'static [FeatureTap];
    /// Channels of the feature map at a tap, if the model has that tap.
    fn tap_channels(&self, tap: FeatureTap) -> Option<usize>;
}
