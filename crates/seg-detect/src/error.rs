//! Errors of the detection readers and evaluator; each names the file and the reason.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DetError {
    /// A file exists but its content is unusable.
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// A file or folder could not be read. The reason is in the message (not also a `source`,
    /// which would print it twice).
    #[error("{path}: cannot read: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error(transparent)]
    Png(#[from] seg_labels::PngError),
    /// One entry of a detections file is refused.
    #[error("detections file {path}, entry {index}: {reason}")]
    Detection {
        path: PathBuf,
        index: usize,
        reason: String,
    },
}

impl DetError {
    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        DetError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |cause| DetError::Io { path, cause }
    }

    /// The reason alone, for lists that name the file beside it.
    pub fn reason(&self) -> String {
        match self {
            DetError::Invalid { reason, .. } => reason.clone(),
            DetError::Io { cause, .. } => format!("cannot read: {cause}"),
            // An image error starts with its file, which the problem line names already.
            DetError::Png(e) => e.reason(),
            other => other.to_string(),
        }
    }

    /// The file the error is about.
    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            DetError::Invalid { path, .. } | DetError::Io { path, .. } | DetError::Detection { path, .. } => Some(path),
            DetError::Png(e) => Some(e.path()),
        }
    }
}
