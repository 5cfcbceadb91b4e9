//! Feature- and model-level domain adaptation heads for segmentation, built only on the shared
//! vocabulary (`seg-core`) and layers (`seg-nn`), never on a concrete model crate.
//!
//! A head reads feature taps of a source and a target batch and returns named loss terms, each
//! tagged with the parameter group it trains; the trainer steps one optimiser per group with
//! that group's terms only. Invariants:
//! - every term tagged `Discriminator` is computed on detached features, so it gives the
//!   backbone no gradient;
//! - a head's variables live under the prefixes it reports in `param_groups`, below the builder
//!   it was given (the trainer passes `vb.pp("head")`);
//! - a method is validated against the model (taps, channels, classes) before training starts.
//!
//! Code map: [`grl`] (gradient reversal, ramp), [`discriminator`] (per-cell and class-wise
//! discriminators), [`size`] (source size statistics), [`dann`], [`fcn_wild`], [`cross_city`],
//! [`san`], [`dsn`], [`output_adv`] (AdaptSegNet, AdvEnt), [`entropy`] (MinEnt): the heads;
//! [`ops`] (shared tensor helpers), [`error`]. The methods that run them, and the list of
//! methods, are `seg-methods`.

pub mod cross_city;
pub mod dann;
pub mod discriminator;
pub mod dsn;
pub mod entropy;
pub mod error;
pub mod fcn_wild;
pub mod grl;
pub mod ops;
pub mod output_adv;
pub mod san;
pub mod size;

pub use cross_city::{CrossCityConfig, CrossCityHead};
pub use dann::{DannConfig, DannHead};
pub use discriminator::{CellDiscriminator, ClassDiscriminatorBank, DiscriminatorSpec};
pub use dsn::{DsnConfig, DsnHead};
pub use entropy::{MinEntConfig, MinEntHead};
pub use error::HeadError;
pub use fcn_wild::{FcnWildConfig, FcnWildHead};
pub use grl::{grad_reverse, ramp, GradReverse};
pub use ops::Presence;
pub use output_adv::{OutputAdvConfig, OutputAdvHead, OutputMap};
pub use san::{SanConfig, SanGenerator, SanHead, SanPool};
pub use size::{SizeConstraints, SizePenalty};
