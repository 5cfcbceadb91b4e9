//! Semantic-segmentation metrics that agree with the official Cityscapes evaluator: a streaming
//! confusion matrix over the 19 train classes, IoU and accuracies under the 19/16/13-class
//! protocols, reports (`report.json`, `report.md`, `confusion.csv`, pictures, and self-contained
//! HTML pages with SVG charts: [`html`]), and the evaluation of a folder of prediction PNGs. Pure Rust: no candle, no tensors.
//!
//! The one evaluation path: build an [`Evaluator`], call [`Evaluator::add`] per image with
//! ground-truth and predicted train ids (and [`Evaluator::keep_sample`] for pictures), then
//! [`Evaluator::finish`] and [`Report::write`]. [`folder::evaluate_folder`] is that path fed
//! from PNG files. With `*_gtFine_instanceIds.png` at hand ([`Evaluator::add_instances`]), the
//! report has the official instance-level iIoU too ([`instances`]); category IoU always.

pub mod compare;
pub mod confusion;
pub mod demo_report;
pub mod folder;
pub mod html;
pub mod instances;
pub mod pictures;
pub mod report;
pub mod seeds;

pub use confusion::{ConfusionMatrix, MetricsError, COLUMNS, VOID_COLUMN};
pub use folder::{evaluate_folder, FolderError, FolderOptions, PredFormat};
pub use report::{ClassScores, Evaluator, Report, ReportError, Sample};
