//! The `[data]` section of a segmentation run's config, and the four datasets a run opens from
//! it ([`Role`]).

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, DatasetOptions, ErrorPolicy, SizePolicy};
use crate::error::DataError;
use crate::readers::{open_dataset, DatasetName};

/// Where a run's source and target are, and what to do with samples that cannot be used.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub source_dataset: DatasetName,
    pub source_root: PathBuf,
    pub target_dataset: DatasetName,
    pub target_root: PathBuf,
    #[serde(default = "train_split")]
    pub target_train_split: String,
    #[serde(default = "val_split")]
    pub target_val_split: String,
    /// Split list file for the source (instead of a directory scan).
    #[serde(default)]
    pub source_list: Option<PathBuf>,
    /// Split list file for the target's training split (AdaptSegNet's `cityscapes_list/train.txt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_train_list: Option<PathBuf>,
    /// Split list file for the target's validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_val_list: Option<PathBuf>,
    #[serde(default)]
    pub size_policy: SizePolicy,
    #[serde(default)]
    pub error_policy: ErrorPolicy,
}

fn train_split() -> String {
    "train".into()
}
fn val_split() -> String {
    "val".into()
}

/// One of a run's datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The labelled synthetic source (a Cityscapes source: its train split).
    Source,
    /// The target's training split, images only (what adaptation sees).
    TargetTrain,
    /// The target's training split with its labels (the oracle's training data).
    TargetTrainLabelled,
    /// The target's validation split, with labels (evaluation).
    Val,
}

impl Role {
    /// The name used in messages and in `skipped.json`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::TargetTrain => "target-train",
            Role::TargetTrainLabelled => "target-train-labelled",
            Role::Val => "val",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl DataConfig {
    /// Source and target with the default splits, no lists and the default policies.
    pub fn new(
        source_dataset: DatasetName,
        source_root: PathBuf,
        target_dataset: DatasetName,
        target_root: PathBuf,
    ) -> Self {
        Self {
            source_dataset,
            source_root,
            target_dataset,
            target_root,
            target_train_split: train_split(),
            target_val_split: val_split(),
            source_list: None,
            target_train_list: None,
            target_val_list: None,
            size_policy: SizePolicy::default(),
            error_policy: ErrorPolicy::default(),
        }
    }

    /// This section with the folders and list files of `other` (a run's data moved).
    pub fn with_places_of(&self, other: &Self) -> Self {
        Self {
            source_root: other.source_root.clone(),
            target_root: other.target_root.clone(),
            source_list: other.source_list.clone(),
            target_train_list: other.target_train_list.clone(),
            target_val_list: other.target_val_list.clone(),
            ..self.clone()
        }
    }

    /// The format, folder, split and list file of one of the run's datasets.
    pub fn place(&self, role: Role) -> (DatasetName, &Path, &str, Option<&Path>) {
        match role {
            Role::Source => (
                self.source_dataset,
                &self.source_root,
                "train",
                self.source_list.as_deref(),
            ),
            Role::TargetTrain | Role::TargetTrainLabelled => (
                self.target_dataset,
                &self.target_root,
                &self.target_train_split,
                self.target_train_list.as_deref(),
            ),
            Role::Val => (
                self.target_dataset,
                &self.target_root,
                &self.target_val_split,
                self.target_val_list.as_deref(),
            ),
        }
    }

    /// Opens one of the run's datasets as it is on disk (nothing left out yet): labels are
    /// required everywhere but in the target's unlabelled training split, which is opened
    /// without them.
    pub fn open(&self, role: Role) -> Result<Dataset, DataError> {
        let (name, root, split, list) = self.place(role);
        let options = DatasetOptions {
            size_policy: self.size_policy,
            error_policy: self.error_policy,
            require_labels: role != Role::TargetTrain,
            list: list.map(Path::to_path_buf),
            ..Default::default()
        };
        let mut ds = open_dataset(name, root, split, options)?;
        if role == Role::TargetTrain {
            // Unlabelled target training reads images only: label files that happen to be there
            // (Cityscapes' gtFine/train) are neither read nor checked, so none of them stops the
            // run or leaves its image out.
            for e in &mut ds.entries {
                e.label = None;
            }
        }
        Ok(ds)
    }
}
