//! The shared vocabulary of seg-adapt: batches, domains, feature taps, the backbone trait, the
//! method layer (methods, parameter sets, stages, step context) and the adaptation-head trait,
//! named loss terms tagged with the group they train, and the seeded random generator whose
//! state goes into checkpoints. Implementations live in sibling crates that depend on this one
//! and never on each other.

pub mod batch;
pub mod method;
pub mod model;
pub mod rng;

pub use batch::{Batch, DetTargets, Domain};
pub use method::{Method, ParamSet, SegMethod, Stage, StepCx};
pub use model::{
    steps, AdaptationHead, Backbone, FeatureTap, Features, GroupId, HeadInput, HeadParams, LossTerm, StepInfo,
};
pub use rng::Rng;
pub use seg_labels::{IGNORE, NUM_CLASSES};

/// The version of what the methods compute from a config: raised whenever a change makes the
/// same config train other weights (2: AdvEnt's maps over log C, per-image curriculum
/// landmarks, SAN's conv1 through the generator, AdaBN's pooled statistics, detection domain
/// terms summed over sites). The demo reuses a finished run only under the same version.
pub const METHODS_VERSION: u32 = 2;
