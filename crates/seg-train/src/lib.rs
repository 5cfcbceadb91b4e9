//! The training core: an iteration-based loop over a method's stages, one step function
//! ([`step`]) with one optimiser per parameter group, atomic safetensors checkpoints (model, optimiser state,
//! step, loader positions) that resume bit for bit, `metrics.jsonl`, a progress bar, periodic
//! evaluation through `seg-metrics`' single code path, full-resolution inference, and AdaBN's
//! batch-norm re-estimation.

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod infer;
pub mod interrupt;
pub mod progress;
pub mod resume;
pub mod step;
pub mod trainer;

pub use checkpoint::{Checkpoint, CheckpointMeta};
pub use config::{BnStats, GroupSettings, TrainerConfig};
pub use error::TrainError;
pub use infer::{evaluate, predict_train_ids, reestimate_bn, EvalSetup};
pub use step::{read_terms, LrAt, NonFiniteTerm, Stepper, TermValues};
pub use trainer::{TrainOutcome, TrainSetup, Trainer};
