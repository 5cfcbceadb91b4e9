//! Errors of the training core, each naming the file, step or key concerned.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// The reason is in the message (not also a `source`, which would print it twice).
    #[error("{path}: cannot write: {cause}")]
    Write { path: PathBuf, cause: std::io::Error },
    #[error("loss `{term}` became {value} at step {step}; stopped. The last good checkpoint ({last}) is kept")]
    NonFinite {
        term: String,
        value: f32,
        step: usize,
        last: String,
    },
    #[error(
        "the device ran out of memory in a training step on {batches}: lower the batch or the input \
         size (segmentation: trainer.batch_size, trainer.target_batch_size, augment.crop, or \
         trainer.precision = \"bf16\"; detection: trainer.batch_size, model.input) ({cause})"
    )]
    OutOfMemory { batches: String, cause: String },
    /// A signal stopped the training loop ([`crate::interrupt`]) after the checkpoint of `step`.
    #[error("interrupted at step {step}: its checkpoint {checkpoint} is written")]
    Interrupted { step: usize, checkpoint: PathBuf },
    #[error("invalid setup: {0}")]
    Setup(String),
    #[error(transparent)]
    Data(#[from] seg_data::DataError),
    #[error(transparent)]
    Metrics(#[from] seg_metrics::confusion::MetricsError),
    #[error(transparent)]
    Report(#[from] seg_metrics::report::ReportError),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}
