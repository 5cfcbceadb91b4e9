//! The label vocabulary shared by every crate: the official Cityscapes label table, each
//! dataset's map to the 19 train ids, the evaluation protocols, and the PNG files that carry
//! label maps. Pure Rust, no tensors: readers, metrics and the trainer all build on it.

pub mod cityscapes;
pub mod fsutil;
pub mod left_out;
pub mod maps;
pub mod png_io;
pub mod split_list;

pub use cityscapes::{Label, LABELS, NUM_CLASSES, TRAIN_CLASS_NAMES, TRAIN_COLORS};
pub use left_out::LeftOut;
pub use maps::{DatasetKind, LabelMap, Protocol};
pub use png_io::{LabelEncoding, LabelImage, PngError, RgbImage};

/// The train id that marks a pixel to be ignored by losses and metrics.
pub const IGNORE: u8 = 255;
