//! Data loading for seg-adapt: readers for the Cityscapes, GTA5 and SYNTHIA-RAND-CITYSCAPES
//! on-disk formats, dataset inspection, augmentation, a seeded endless sampler, parallel
//! decoding and collation into candle batches, and the embedded procedural benchmark that writes
//! synthetic-source and real-target scenes in those same formats.
//!
//! Readers do no tensor work: a [`Dataset`] is `len()` + `get(i)` over plain buffers; only
//! [`loader`] touches candle.

pub mod config;
pub mod dataset;
pub mod error;
pub mod inspect;
pub mod loader;
pub mod readers;
pub mod toy;
pub mod transform;

pub use config::{DataConfig, Role};
pub use dataset::{Dataset, DatasetOptions, ErrorPolicy, LabelSource, LeftOut, Sample, SampleRef, SizePolicy};
pub use error::DataError;
pub use inspect::{inspect, inspect_with_progress, InspectReport, Problem, ProblemKind};
pub use loader::{Augment, Loader, Sampler};
pub use readers::{open_dataset, DatasetName, Split};
