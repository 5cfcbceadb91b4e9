//! The shared vocabulary of seg-adapt: batches, domains, feature taps, the backbone and
//! adaptation-head traits, named loss terms tagged with the parameter group they train, and the
//! seeded random generator whose state goes into checkpoints. Implementations live in sibling
//! crates that depend on this one and never on each other.

pub mod batch;
pub mod model;
pub mod rng;

pub use batch::{Batch, Domain};
pub use model::{AdaptationHead, Backbone, FeatureTap, Features, HeadInput, LossTerm, ParamGroup, StepInfo};
pub use rng::Rng;
pub use seg_labels::{IGNORE, NUM_CLASSES};
