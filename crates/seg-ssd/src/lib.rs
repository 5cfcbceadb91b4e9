//! SSD detectors and their adaptation from synthetic to real images.
//!
//! - [`priors`]: default boxes (SSD300's 8,732, or any map layout);
//! - [`coding`]: box encoding with variances 0.1/0.2, matching (IoU ≥ 0.5 plus each ground
//!   truth's best prior), greedy NMS;
//! - [`loss`]: the MultiBox loss (softmax cross-entropy with 3:1 hard-negative mining, smooth
//!   L1, both divided by the matched count), all on the device;
//! - [`layers`]: what candle lacks for SSD (per-location L2 normalisation with a learned scale,
//!   padded 3×3/1 and ceil-mode 2×2 max pooling);
//! - [`model`]: SSD300 on the VGG16 trunk (torchvision's `features.*` names, so ImageNet
//!   weights load) and a small batch-norm SSD for the CPU demo;
//! - [`method`]: detection methods through the segmentation side's method layer
//!   (`seg_core::Method`): source-only, oracle, AdaBN, image-level domain classifiers behind
//!   gradient reversal (DA-Faster's reading) and one domain branch per source map (Xu et al.);
//! - [`data`]: batches with matched targets; [`train`]: the run (the same `seg_train::Stepper`
//!   as segmentation), inference and evaluation.

pub mod coding;
pub mod data;
pub mod layers;
pub mod loss;
pub mod method;
pub mod model;
pub mod priors;
pub mod train;

pub use method::{DetMethod, DetMethodConfig};
pub use model::{Ssd, SsdArch, SsdConfig};
pub use priors::PriorSpec;
