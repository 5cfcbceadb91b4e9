//! A dataset as plain data: a list of image/label file pairs plus how to decode them.
//! `len()` + `get(i)`, no tensors, so it is testable without candle and decodes in parallel.

use std::path::{Path, PathBuf};

use seg_labels::png_io::{self, LabelEncoding, RgbImage};
use seg_labels::LabelMap;

use crate::error::DataError;

/// One image and, where the dataset has one, its label file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRef {
    /// The name that pairs image and label (e.g. `00001` or `frankfurt_000000_000294`).
    pub name: String,
    pub image: PathBuf,
    pub label: Option<PathBuf>,
}

/// What to do when an image and its label differ in size (real in GTA5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SizePolicy {
    /// Leave the pair out and report it.
    #[default]
    Skip,
    /// Resize the label to the image size with nearest neighbour.
    ResizeLabelNearest,
}

/// What to do with an unreadable or corrupt sample during training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Stop with an error naming the file.
    #[default]
    Fail,
    /// Leave the sample out, say so, and go on.
    Skip,
}

/// Which Cityscapes label file to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelSource {
    /// `*_gtFine_labelIds.png` where present, else `*_gtFine_labelTrainIds.png`.
    #[default]
    Auto,
    LabelIds,
    TrainIds,
}

/// How a reader opens a dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetOptions {
    pub size_policy: SizePolicy,
    pub error_policy: ErrorPolicy,
    pub label_source: LabelSource,
    /// A split list file (one image name or relative path per line) instead of a directory scan.
    pub list: Option<PathBuf>,
    /// Whether every image must have a label (false for unlabelled target training).
    pub require_labels: bool,
}

/// Cityscapes' label files: `<name>` followed by one of these, in `gtFine/<split>/<city>/`.
pub(crate) const CS_LABEL_IDS: &str = "_gtFine_labelIds.png";
pub(crate) const CS_TRAIN_IDS: &str = "_gtFine_labelTrainIds.png";

pub use seg_labels::LeftOut;

/// A decoded sample: RGB pixels and train ids (255 = ignore).
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub image: RgbImage,
    /// Train ids, `width * height`, when the dataset is labelled.
    pub label: Option<Vec<u8>>,
    /// Label pixels whose raw value was outside the dataset's table (now 255).
    pub outside_ids: u64,
}

/// A label decoded to train ids.
#[derive(Debug, Clone)]
pub struct DecodedLabel {
    pub width: u32,
    pub height: u32,
    pub ids: Vec<u8>,
    /// Pixels whose raw value was outside the dataset's table (now 255).
    pub outside: u64,
}

/// A dataset: its samples and how to decode their labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub(crate) name: &'static str,
    pub(crate) split: String,
    pub(crate) root: PathBuf,
    pub(crate) entries: Vec<SampleRef>,
    pub(crate) label_maps: Vec<(String, LabelMap)>,
    pub(crate) encoding: LabelEncoding,
    pub(crate) options: DatasetOptions,
    /// What [`Dataset::leave_out_unusable`] took out, for the reports that must say so.
    pub(crate) left_out: Vec<LeftOut>,
}

impl Dataset {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn split(&self) -> &str {
        &self.split
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[SampleRef] {
        &self.entries
    }

    /// The same dataset with its first `n` samples only (a quick look before a run).
    pub fn head(&self, n: usize) -> Dataset {
        let mut d = self.clone();
        d.entries.truncate(n);
        d
    }

    pub fn options(&self) -> &DatasetOptions {
        &self.options
    }

    /// A warning when Cityscapes ground truth is read from `*_gtFine_labelTrainIds.png` where
    /// an image has no `*_gtFine_labelIds.png`: the official evaluator reads labelIds only, so
    /// an evaluation of this split would count images it does not.
    pub fn train_ids_only_warning(&self) -> Option<String> {
        let from_train_ids: Vec<&Path> = self
            .entries
            .iter()
            .filter_map(|e| e.label.as_deref())
            .filter(|l| l.to_string_lossy().ends_with(CS_TRAIN_IDS))
            .collect();
        from_train_ids
            .first()
            .map(|first| seg_labels::cityscapes::train_ids_only_warning(from_train_ids.len(), first))
    }

    /// The samples [`Dataset::leave_out_unusable`] left out, in entry order.
    pub fn left_out(&self) -> &[LeftOut] {
        &self.left_out
    }

    /// Keeps only the entries for which `keep` is true (used after validation).
    pub fn retain(&mut self, keep: impl FnMut(&SampleRef) -> bool) {
        self.entries.retain(keep);
    }

    /// Leaves out, before any training, the samples that could not be used: under
    /// `size_policy = "skip"` the pairs whose image and label headers declare different sizes;
    /// under `error_policy = "skip"` the samples whose files do not decode (every sample is
    /// decoded once, as training reads it) and, when labels are required, those without a
    /// label. Under `error_policy = "fail"` only the files' first bytes are read, and a file
    /// that cannot be opened as a PNG, or a missing label, is an error naming it (a file corrupt
    /// further in stops the run when it is drawn). In parallel; returns what was left out, in
    /// entry order.
    pub fn leave_out_unusable(&mut self) -> Result<Vec<LeftOut>, DataError> {
        use rayon::prelude::*;
        let opts = self.options.clone();
        let verdicts: Vec<Result<Option<String>, DataError>> = self
            .entries
            .par_iter()
            .enumerate()
            .map(|(i, e)| {
                if let Some(missing) = self.listed_but_missing(e) {
                    return Err(missing);
                }
                let label = match &e.label {
                    Some(l) => Some(l),
                    None if opts.require_labels => {
                        return Err(DataError::NoLabel {
                            path: e.image.clone(),
                            expected: self.expected_label(e),
                        })
                    }
                    None => None,
                };
                let (iw, ih) = png_io::read_size(&e.image)?;
                if let Some(l) = label {
                    let (lw, lh) = png_io::read_size(l)?;
                    if (lw, lh) != (iw, ih) && opts.size_policy == SizePolicy::Skip {
                        return Ok(Some(
                            DataError::SizeMismatch {
                                image: e.image.clone(),
                                label: l.clone(),
                                iw,
                                ih,
                                lw,
                                lh,
                            }
                            .to_string(),
                        ));
                    }
                }
                if opts.error_policy == ErrorPolicy::Skip {
                    // A file cut or corrupt past its header decodes no further than here.
                    self.get(i)?;
                }
                Ok(None)
            })
            .collect();
        let mut left_out = Vec::new();
        let mut keep = Vec::with_capacity(self.entries.len());
        for (entry, verdict) in self.entries.iter().zip(verdicts) {
            let reason = match verdict {
                Ok(None) => {
                    keep.push(true);
                    continue;
                }
                Ok(Some(reason)) => reason,
                Err(e) if opts.error_policy == ErrorPolicy::Skip => e.to_string(),
                Err(e) => return Err(e),
            };
            keep.push(false);
            left_out.push(LeftOut {
                name: entry.name.clone(),
                image: entry.image.clone(),
                reason,
            });
        }
        let mut flags = keep.into_iter();
        self.entries.retain(|_| flags.next().unwrap_or(true));
        self.left_out.extend(left_out.iter().cloned());
        Ok(left_out)
    }

    /// Where the label of a sample without one would be: Cityscapes' `gtFine` file (labelIds,
    /// or labelTrainIds when those are asked for); for the other formats, whose label path does
    /// not depend on the file being there, the sample's name.
    fn expected_label(&self, entry: &SampleRef) -> PathBuf {
        let flat = self
            .name
            .parse::<crate::DatasetName>()
            .ok()
            .map(|n| n.flat_folders(&self.root));
        match flat {
            Some(Some((_, labels))) => return labels.join(entry.image.file_name().unwrap_or_default()),
            Some(None) => {}
            None => return PathBuf::from(format!("a label file for `{}`", entry.name)),
        }
        let city = entry.image.parent().and_then(|p| p.file_name()).unwrap_or_default();
        let suffix = match self.options.label_source {
            LabelSource::TrainIds => CS_TRAIN_IDS,
            _ => CS_LABEL_IDS,
        };
        self.root
            .join("gtFine")
            .join(&self.split)
            .join(city)
            .join(format!("{}{suffix}", entry.name))
    }

    /// The label map for a label file (Cityscapes mixes labelIds and labelTrainIds files).
    fn label_map_for(&self, label: &Path) -> &LabelMap {
        let name = label.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        self.label_maps
            .iter()
            .find(|(suffix, _)| name.ends_with(suffix.as_str()))
            .or_else(|| self.label_maps.first())
            .map(|(_, m)| m)
            .expect("every reader registers at least one label map")
    }

    /// Decodes the label of entry `i` to train ids.
    pub fn load_label(&self, i: usize) -> Result<Option<DecodedLabel>, DataError> {
        let entry = &self.entries[i];
        let Some(path) = &entry.label else { return Ok(None) };
        let raw = png_io::read_label(path, self.encoding)?;
        let (ids, outside) = self.label_map_for(path).map_all(&raw.data);
        Ok(Some(DecodedLabel {
            width: raw.width,
            height: raw.height,
            ids,
            outside,
        }))
    }

    /// The error for a sample whose image a split list names but that is not on disk, naming
    /// the list (a folder scan's dangling link is left to the reader, which gives the OS's
    /// reason); `None` for any other sample.
    pub fn listed_but_missing(&self, e: &SampleRef) -> Option<DataError> {
        let list = self.options.list.as_ref().filter(|_| !e.image.is_file())?;
        Some(DataError::Invalid {
            path: e.image.clone(),
            reason: format!("image named by the split list {} not found", list.display()),
        })
    }

    /// The widest and the tallest image and their sizes, from their headers, in parallel (the
    /// first in entry order on a tie; images whose header does not read are passed over: the
    /// loader names those files). `None` for a dataset without a readable image.
    pub fn largest_image_sizes(&self) -> Option<[(&Path, (u32, u32)); 2]> {
        use rayon::prelude::*;
        let sizes: Vec<(usize, (u32, u32))> = self
            .entries
            .par_iter()
            .enumerate()
            .filter_map(|(i, e)| Some((i, png_io::read_size(&e.image).ok()?)))
            .collect();
        let pick = |key: fn(&(u32, u32)) -> u32| {
            let (i, size) = sizes
                .iter()
                .fold(None, |best: Option<&(usize, (u32, u32))>, s| match best {
                    Some(b) if key(&b.1) >= key(&s.1) => Some(b),
                    _ => Some(s),
                })?;
            Some((self.entries[*i].image.as_path(), *size))
        };
        Some([pick(|s| s.0)?, pick(|s| s.1)?])
    }

    /// Per labelled image, the share of its labelled pixels in each of the 19 classes (images
    /// whose label does not read are passed over); in parallel, in entry order.
    pub fn label_class_fractions(&self) -> Vec<[f32; seg_labels::NUM_CLASSES]> {
        use rayon::prelude::*;
        (0..self.len())
            .into_par_iter()
            .filter_map(|i| self.load_label(i).ok().flatten())
            .map(|label| {
                let mut c = [0u64; seg_labels::NUM_CLASSES];
                let mut n = 0u64;
                for &v in label.ids.iter().filter(|&&v| (v as usize) < seg_labels::NUM_CLASSES) {
                    c[v as usize] += 1;
                    n += 1;
                }
                std::array::from_fn(|k| if n == 0 { 0.0 } else { c[k] as f32 / n as f32 })
            })
            .collect()
    }

    /// Decodes entry `i` fully, applying the size policy to a mismatched label.
    pub fn get(&self, i: usize) -> Result<Sample, DataError> {
        let entry = &self.entries[i];
        let image = png_io::read_rgb(&entry.image)?;
        let mut outside_ids = 0;
        let label = match self.load_label(i)? {
            None if self.options.require_labels => {
                return Err(DataError::NoLabel {
                    path: entry.image.clone(),
                    expected: self.expected_label(entry),
                })
            }
            None => None,
            Some(DecodedLabel {
                width: lw,
                height: lh,
                ids,
                outside,
            }) => {
                outside_ids = outside;
                if (lw, lh) != (image.width, image.height) {
                    match self.options.size_policy {
                        SizePolicy::Skip => {
                            return Err(DataError::SizeMismatch {
                                image: entry.image.clone(),
                                label: entry.label.clone().unwrap_or_default(),
                                iw: image.width,
                                ih: image.height,
                                lw,
                                lh,
                            })
                        }
                        SizePolicy::ResizeLabelNearest => Some(crate::transform::resize_nearest(
                            &ids,
                            lw,
                            lh,
                            image.width,
                            image.height,
                        )),
                    }
                } else {
                    Some(ids)
                }
            }
        };
        Ok(Sample {
            name: entry.name.clone(),
            image,
            label,
            outside_ids,
        })
    }
}
