//! `inspect` for detection datasets: every image decoded and every annotation read (in
//! parallel), boxes counted per class, problems listed per file.

use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::classes::DET_CLASSES;
use crate::dataset::{decode_image, DetDataset};

/// One problem, with the file it is about and what a run does with its sample.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DetProblem {
    pub file: String,
    pub reason: String,
    pub effect: Effect,
}

/// What a run does with the sample a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// The sample does not read: the run stops on it (`error_policy = "fail"`) or leaves it
    /// out (`"skip"`).
    Unusable,
    /// The sample is trained and evaluated as the reason says (a box clipped, an object of
    /// another class left out, an image without boxes).
    Kept,
    /// The file is no sample's (an image without an annotation).
    NeverRead,
}

/// Counts and problems of one detection split.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DetInspectReport {
    pub dataset: String,
    pub split: String,
    pub samples: usize,
    /// Samples whose image and annotation both read.
    pub usable: usize,
    pub image_sizes: BTreeMap<String, usize>,
    /// Boxes of the dataset's class set in usable samples, by class name (every class listed,
    /// zeros included).
    pub boxes: BTreeMap<String, usize>,
    pub problems: Vec<DetProblem>,
}

struct One {
    size: Option<(u32, u32)>,
    boxes: Vec<usize>,
    problems: Vec<DetProblem>,
    usable: bool,
}

/// Reads every sample of `ds`; `progress` is called once per sample read.
pub fn inspect(ds: &DetDataset, progress: &(dyn Fn() + Sync)) -> DetInspectReport {
    let ones: Vec<One> = (0..ds.len())
        .into_par_iter()
        .map(|i| {
            let e = &ds.entries[i];
            let mut one = One {
                size: None,
                boxes: Vec::new(),
                problems: Vec::new(),
                usable: true,
            };
            match decode_image(&e.image) {
                Ok(img) => one.size = Some((img.width, img.height)),
                Err(err) => {
                    one.usable = false;
                    one.problems.push(DetProblem {
                        file: e.image.display().to_string(),
                        reason: err.reason(),
                        effect: Effect::Unusable,
                    });
                }
            }
            if let Some(ann) = &e.annotation {
                let file = ann.display().to_string();
                match ds.truth(i) {
                    Ok(t) => {
                        if let Some(s) = one.size {
                            if s != (t.width, t.height) {
                                one.usable = false;
                                one.problems.push(DetProblem {
                                    file: file.clone(),
                                    reason: format!(
                                        "annotation says {}x{} but the image is {}x{}",
                                        t.width, t.height, s.0, s.1
                                    ),
                                    effect: Effect::Unusable,
                                });
                            }
                        }
                        for p in t.problems {
                            one.problems.push(DetProblem {
                                file: file.clone(),
                                reason: p,
                                effect: Effect::Kept,
                            });
                        }
                        one.boxes = t.boxes.iter().map(|b| b.class).collect();
                    }
                    Err(err) => {
                        one.usable = false;
                        one.problems.push(DetProblem {
                            file,
                            reason: err.reason(),
                            effect: Effect::Unusable,
                        });
                    }
                }
            }
            progress();
            one
        })
        .collect();
    let mut r = DetInspectReport {
        dataset: ds.format.as_str().to_string(),
        split: ds.split.clone(),
        samples: ds.len(),
        usable: 0,
        image_sizes: BTreeMap::new(),
        boxes: ds
            .classes
            .indices()
            .into_iter()
            .map(|c| (DET_CLASSES[c].name.to_string(), 0))
            .collect(),
        problems: Vec::new(),
    };
    for one in ones {
        r.usable += one.usable as usize;
        if let Some((w, h)) = one.size {
            *r.image_sizes.entry(format!("{w}x{h}")).or_insert(0) += 1;
        }
        for c in one.boxes.into_iter().filter(|_| one.usable) {
            *r.boxes.entry(DET_CLASSES[c].name.to_string()).or_insert(0) += 1;
        }
        r.problems.extend(one.problems);
    }
    r.problems.extend(unannotated_images(ds));
    r
}

/// Sim10k JPEGs without an annotation file beside them (`Annotations/<id>.xml`): never read by
/// a run, listed as a label without its image is for segmentation. An image a split list leaves
/// out is not one.
fn unannotated_images(ds: &DetDataset) -> Vec<DetProblem> {
    let Some(images) = ds.entries.first().and_then(|e| e.image.parent()) else {
        return Vec::new();
    };
    if ds.format != crate::dataset::DetFormat::Sim10k {
        return Vec::new();
    }
    let annotations = images.with_file_name("Annotations");
    // A sample (named by the split list) whose annotation is missing is listed already, as a
    // sample that does not load.
    let samples: std::collections::HashSet<&std::path::Path> = ds.entries.iter().map(|e| e.image.as_path()).collect();
    crate::dataset::read_dir_sorted(images)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("jpg")))
        .filter(|p| !samples.contains(p.as_path()))
        .filter(|p| {
            let stem = p.file_stem().unwrap_or_default().to_string_lossy();
            !annotations.join(format!("{stem}.xml")).exists()
        })
        .map(|p| DetProblem {
            file: p.display().to_string(),
            reason: "image with no annotation file (never read)".into(),
            effect: Effect::NeverRead,
        })
        .collect()
}
