//! A collated batch on a candle device, and the domain it came from.

use candle_core::Tensor;

/// Which side of the adaptation a batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    /// Labelled synthetic data.
    Source,
    /// Unlabelled real data (its labels are read only by the oracle and by evaluation).
    Target,
}

/// Images `N×3×H×W` (f32, normalised) and, where the batch is labelled, train ids `N×H×W`
/// (u32, 255 = ignore).
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Option<Tensor>,
    pub domain: Domain,
    /// Sample names, for messages and pictures.
    pub names: Vec<String>,
    /// Detection targets, for a detector's labelled batches.
    pub det: Option<DetTargets>,
}

/// A detection batch's ground truth, matched to the detector's default boxes on the host
/// (SSD's matching): per image and default box, the class (`N×P` u32, 0 = background, `c + 1`
/// = class `c`) and the encoded offsets of its matched box (`N×P×4` f32).
#[derive(Debug, Clone)]
pub struct DetTargets {
    pub classes: Tensor,
    pub offsets: Tensor,
}
