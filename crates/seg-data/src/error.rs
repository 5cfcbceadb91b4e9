//! Errors of the data crate: each names the file or folder and the reason.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}", seg_labels::fsutil::missing_folder(what, path))]
    Missing { what: &'static str, path: PathBuf },
    // The reasons are in the messages, not also `source`s (which would print them twice).
    #[error("{path}: cannot list directory: {cause}")]
    ReadDir { path: PathBuf, cause: std::io::Error },
    #[error("{path}: cannot read split list: {cause}")]
    List { path: PathBuf, cause: std::io::Error },
    #[error("{path}: cannot write: {cause}")]
    Write { path: PathBuf, cause: std::io::Error },
    #[error(transparent)]
    Png(#[from] seg_labels::PngError),
    #[error("{image}: image is {iw}x{ih} but its label {label} is {lw}x{lh}")]
    SizeMismatch {
        image: PathBuf,
        label: PathBuf,
        iw: u32,
        ih: u32,
        lw: u32,
        lh: u32,
    },
    #[error("{path}: no label file for this image (expected {expected})")]
    NoLabel { path: PathBuf, expected: PathBuf },
    #[error("{root}: the {dataset} {split} split has no usable samples{detail}")]
    Empty {
        dataset: &'static str,
        split: String,
        root: PathBuf,
        detail: String,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{second}: duplicate sample name `{name}` (also {first}){hint}")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
        hint: String,
    },
    #[error("tensor collation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl DataError {
    /// The file the error is about, where there is one.
    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            DataError::Missing { path, .. }
            | DataError::ReadDir { path, .. }
            | DataError::Write { path, .. }
            | DataError::List { path, .. }
            | DataError::NoLabel { path, .. }
            | DataError::Invalid { path, .. } => Some(path),
            DataError::SizeMismatch { image, .. } => Some(image),
            DataError::Duplicate { second, .. } => Some(second),
            DataError::Empty { root, .. } => Some(root),
            DataError::Png(e) => Some(e.path()),
            DataError::Tensor(_) => None,
        }
    }
}
