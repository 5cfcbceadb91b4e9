//! Dataset inspection: sample count, image sizes, per-class pixel counts over the 19 train
//! classes (of the samples training would use), ignored pixels, and every problem sample.

use std::collections::BTreeMap;

use rayon::prelude::*;
use seg_labels::{IGNORE, NUM_CLASSES};

use crate::dataset::Dataset;
use crate::error::DataError;

/// A sample that training would not use, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub file: String,
    pub reason: String,
    pub kind: ProblemKind,
}

/// What kind of problem, which decides what a run does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// A file that cannot be read or decoded, or a missing label: stops a run under
    /// `error_policy = "fail"`, left out under `"skip"`.
    Unreadable,
    /// Image and label sizes differ: left out under `size_policy = "skip"`.
    SizeMismatch,
    /// A label with no image: never read by a run.
    OrphanLabel,
}

/// What `inspect` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InspectReport {
    pub dataset: String,
    pub split: String,
    /// Samples found (usable or not).
    pub samples: usize,
    /// Samples training would use.
    pub usable: usize,
    /// Usable samples that have a label (all of them where labels are required).
    pub labelled: usize,
    /// Image sizes as `WxH` → count.
    pub image_sizes: BTreeMap<String, usize>,
    /// Label pixels per train class, in train-id order.
    pub class_pixels: [u64; NUM_CLASSES],
    pub ignored_pixels: u64,
    /// Label pixels whose raw value was outside the dataset's table (counted in `ignored_pixels`).
    pub outside_table_pixels: u64,
    pub problems: Vec<Problem>,
    /// [`Dataset::train_ids_only_warning`].
    #[serde(skip)]
    pub train_ids_only: Option<String>,
}

impl InspectReport {
    /// Every warning about the split's labels: [`Self::train_ids_warning`], and ground truth
    /// read from labelTrainIds (an evaluation of the split would not be the official one).
    pub fn warnings(&self) -> Vec<String> {
        self.train_ids_warning()
            .into_iter()
            .chain(self.train_ids_only.clone())
            .collect()
    }

    /// [`seg_labels::cityscapes::train_ids_look_warning`] for labels read as Cityscapes label
    /// ids (GTA5, Cityscapes `labelIds`).
    pub fn train_ids_warning(&self) -> Option<String> {
        if self.labelled == 0 || !reads_label_ids(&self.dataset) {
            return None;
        }
        seg_labels::cityscapes::train_ids_look_warning(&self.class_pixels, self.ignored_pixels)
    }
}

/// Whether a dataset of this name reads its labels as Cityscapes label ids (GTA5, Cityscapes
/// `labelIds`), which labels already converted to train ids would be mistaken for.
pub fn reads_label_ids(dataset: &str) -> bool {
    matches!(dataset, "gta5" | "cityscapes")
}

struct One {
    size: Option<(u32, u32)>,
    counts: Option<([u64; NUM_CLASSES], u64, u64)>,
    problem: Option<Problem>,
}

/// Decodes every sample (in parallel) and reports counts and problems. Never fails on a bad
/// sample: it becomes a problem entry.
pub fn inspect(ds: &Dataset) -> InspectReport {
    inspect_with_progress(ds, &|| {})
}

/// [`inspect`], calling `done` once per sample read (from the reading threads, in any order),
/// for a progress bar.
pub fn inspect_with_progress(ds: &Dataset, done: &(dyn Fn() + Sync)) -> InspectReport {
    let results: Vec<One> = (0..ds.len())
        .into_par_iter()
        .map(|i| {
            let one = inspect_one(ds, i);
            done();
            one
        })
        .collect();
    summarise(ds, results)
}

fn inspect_one(ds: &Dataset, i: usize) -> One {
    let entry = &ds.entries()[i];
    if let Some(missing) = ds.listed_but_missing(entry) {
        // As the run says it (`leave_out_unusable`), with the list that names it.
        return One {
            size: None,
            counts: None,
            problem: Some(problem_of(&missing, &entry.image)),
        };
    }
    match ds.get(i) {
        Ok(s) => {
            let counts = s.label.as_ref().map(|l| {
                let mut c = [0u64; NUM_CLASSES];
                let mut ign = 0;
                for &v in l {
                    if v == IGNORE {
                        ign += 1;
                    } else {
                        c[v as usize] += 1;
                    }
                }
                (c, ign, s.outside_ids)
            });
            One {
                size: Some((s.image.width, s.image.height)),
                counts,
                problem: None,
            }
        }
        Err(e) => One {
            size: None,
            counts: None,
            problem: Some(problem_of(&e, &ds.entries()[i].image)),
        },
    }
}

fn summarise(ds: &Dataset, results: Vec<One>) -> InspectReport {
    let mut report = InspectReport {
        dataset: ds.name().to_string(),
        split: ds.split().to_string(),
        samples: ds.len(),
        usable: 0,
        labelled: 0,
        image_sizes: BTreeMap::new(),
        class_pixels: [0; NUM_CLASSES],
        ignored_pixels: 0,
        outside_table_pixels: 0,
        problems: Vec::new(),
        train_ids_only: ds.train_ids_only_warning(),
    };
    for r in results {
        if let Some(p) = r.problem {
            report.problems.push(p);
            continue;
        }
        report.usable += 1;
        if let Some((w, h)) = r.size {
            *report.image_sizes.entry(format!("{w}x{h}")).or_default() += 1;
        }
        if let Some((c, ign, outside)) = r.counts {
            report.labelled += 1;
            for (a, b) in report.class_pixels.iter_mut().zip(c) {
                *a += b;
            }
            report.ignored_pixels += ign;
            report.outside_table_pixels += outside;
        }
    }
    for orphan in crate::readers::orphan_labels(ds) {
        report.problems.push(Problem {
            file: orphan.label.display().to_string(),
            reason: orphan.reason(),
            kind: ProblemKind::OrphanLabel,
        });
    }
    report
}

/// Turns a decoding error into a problem entry naming the file.
pub fn problem_of(e: &DataError, fallback: &std::path::Path) -> Problem {
    let file = e.file().unwrap_or(fallback).display().to_string();
    let full = e.to_string();
    let reason = full
        .strip_prefix(&format!("{file}: "))
        .map(String::from)
        .unwrap_or(full);
    let kind = match e {
        DataError::SizeMismatch { .. } => ProblemKind::SizeMismatch,
        _ => ProblemKind::Unreadable,
    };
    Problem { file, reason, kind }
}
