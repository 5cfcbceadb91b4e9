//! Detection data and metrics for the synthetic-to-real detection protocol (Sim10k →
//! Cityscapes): the PASCAL VOC XML reader and the Sim10k layout ([`voc`], [`dataset`]),
//! Cityscapes boxes derived from `*_gtFine_instanceIds.png` ([`dataset::boxes_from_instance_ids`]),
//! the detections file of `seg-adapt eval --task detection` ([`dets`]), and average precision at
//! IoU 0.5 in the three flavours the field reports ([`ap`]).
//!
//! Boxes are 0-based inclusive pixel indices everywhere in this crate ([`PixelBox`]), the
//! convention of boxes derived from instance masks; VOC XML's 1-based boxes are shifted on
//! reading.

pub mod ap;
pub mod boxes;
pub mod classes;
pub mod dataset;
pub mod dets;
pub mod error;
pub mod inspect;
pub mod report;
pub mod voc;

pub use ap::{evaluate, Ap3, ApInput};
pub use boxes::{GtBox, PixelBox};
pub use classes::{ClassSet, DET_CLASSES};
pub use dataset::{DetDataset, DetFormat, DetSample};
pub use dets::Detection;
pub use error::DetError;
