//! The segmentation methods as the trainer runs them: the one list of methods
//! ([`MethodConfig`], [`METHOD_NAMES`]), each built into a `seg_core::SegMethod` from its
//! config and the model ([`MethodParts`]). [`FeatureAlignment`] is the step most methods share
//! (one backbone on both batches, a `seg-heads` head on its taps); [`Curriculum`] (curriculum
//! DA: label-distribution regressors first, then the segmenter) and [`TwoStream`] (a source and
//! a target stream tied by a weight regulariser) are methods of their own. Built only on the
//! shared vocabulary (`seg-core`), the layers (`seg-nn`) and the heads (`seg-heads`), never on a
//! concrete model crate: the composition root supplies the model.

pub mod config;
pub mod curriculum;
pub mod feature_alignment;
pub mod two_stream;

pub use config::{parse_method, MethodConfig, MethodParts, PartSeeds, METHOD_NAMES};
pub use curriculum::{Curriculum, CurriculumConfig};
pub use feature_alignment::FeatureAlignment;
pub use two_stream::{TwoStream, TwoStreamConfig};
