//! Evaluation of a folder of prediction PNGs against Cityscapes ground truth, matched the way
//! the official evaluator does it: ground truth is `ROOT/gtFine/SPLIT/*/*_gtFine_labelIds.png`
//! (`*_gtFine_labelTrainIds.png` where an image has no labelIds file, with a warning: the
//! official evaluator would not count it), and each `{city}_{seq}_{frame}` needs exactly one `.png` anywhere under the prediction folder
//! (walked recursively without following symlinked folders, as `os.walk` does) whose file name
//! starts with it. Images are decoded in parallel; counts go through [`Evaluator`].

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use seg_labels::cityscapes::{id_to_train_id, NUM_LABEL_IDS};
use seg_labels::png_io::{self, LabelEncoding, PngError};
use seg_labels::{DatasetKind, LabelMap, IGNORE, NUM_CLASSES};

use crate::confusion::MetricsError;
use crate::instances;
use crate::report::{Evaluator, Sample};

const GT_SUFFIX: &str = "_gtFine_labelIds.png";
const GT_TRAIN_SUFFIX: &str = "_gtFine_labelTrainIds.png";

/// How prediction PNGs encode classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PredFormat {
    /// Cityscapes label ids 0..=33, what the official evaluator reads.
    #[default]
    LabelIds,
    /// Train ids 0..=18, and 255 for "no class".
    TrainIds,
}

impl PredFormat {
    fn range(self) -> &'static str {
        match self {
            PredFormat::LabelIds => LABEL_IDS_RANGE,
            PredFormat::TrainIds => TRAIN_IDS_RANGE,
        }
    }
}

impl std::fmt::Display for PredFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PredFormat::LabelIds => "labelids",
            PredFormat::TrainIds => "trainids",
        })
    }
}

impl std::str::FromStr for PredFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "labelids" => Ok(PredFormat::LabelIds),
            "trainids" => Ok(PredFormat::TrainIds),
            other => Err(format!(
                "unknown prediction format `{other}`: expected labelids or trainids"
            )),
        }
    }
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct FolderOptions {
    /// Cityscapes root (holding `gtFine/` and, for overlays, `leftImg8bit/`).
    pub root: PathBuf,
    /// Split folder name, e.g. `val`.
    pub split: String,
    /// Folder searched recursively for predictions.
    pub pred_dir: PathBuf,
    pub pred_format: PredFormat,
    /// Count ground-truth images without a prediction as all wrong instead of failing.
    pub missing_as_wrong: bool,
    /// How many images (the first by name) to keep for pictures.
    pub samples: usize,
}

/// Why a folder could not be evaluated. Every variant names the files involved.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("{}", seg_labels::fsutil::missing_folder(&format!("{what} folder"), path))]
    MissingDir { what: &'static str, path: PathBuf },
    #[error("no ground truth found: nothing matches {pattern}")]
    NoGroundTruth { pattern: String },
    // The reasons are in the messages, not also `source`s (which would print them twice).
    #[error("{path}: cannot read folder: {cause}")]
    ReadDir { path: PathBuf, cause: std::io::Error },
    #[error(
        "{} ground-truth image(s) have no prediction under {} (each needs one `<city>_<seq>_<frame>*.png`): {}{}",
        names.len(), pred_dir.display(), list_names(names),
        match linked_folders.first() {
            Some(first) => format!(
                "\n(linked folders are not searched, as the official evaluator's os.walk does not: {} of them, such as {})",
                linked_folders.len(),
                first.display()
            ),
            None => String::new(),
        }
    )]
    Missing {
        pred_dir: PathBuf,
        names: Vec<String>,
        /// Symlinked folders under the prediction folder, which were not entered.
        linked_folders: Vec<PathBuf>,
    },
    #[error("several predictions for {name}: {}", list_paths(candidates))]
    Ambiguous { name: String, candidates: Vec<PathBuf> },
    #[error("{pred}: prediction is {pred_width}x{pred_height} but the ground truth {gt} is {gt_width}x{gt_height}")]
    SizeMismatch {
        pred: PathBuf,
        pred_width: u32,
        pred_height: u32,
        gt: PathBuf,
        gt_width: u32,
        gt_height: u32,
    },
    #[error("{path}: value {value} is outside the range of {} (prediction format {format})", format.range())]
    ValueOutOfRange {
        path: PathBuf,
        value: u16,
        format: PredFormat,
    },
    #[error(transparent)]
    Png(#[from] PngError),
    #[error("{path}: {cause}")]
    Metrics { path: PathBuf, cause: MetricsError },
}

fn list_names(names: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut s = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" … and {} more", names.len() - SHOWN));
    }
    s
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One ground-truth image and its prediction (if any).
#[derive(Debug, Clone)]
struct Pair {
    /// `{city}_{seq}_{frame}`.
    name: String,
    city: String,
    gt: PathBuf,
    /// Ground truth in `_gtFine_labelTrainIds.png` (no labelIds file beside it).
    train_ids: bool,
    pred: Option<PathBuf>,
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<std::fs::DirEntry>, FolderError> {
    let err = |cause| FolderError::ReadDir {
        path: dir.to_path_buf(),
        cause,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// `ROOT/gtFine/SPLIT/*/*_gtFine_labelIds.png` (or `_labelTrainIds.png` where an image has no
/// labelIds), sorted by name; as the official evaluator's `glob`, `*` matches no hidden name (`.trash/`, macOS's `._*` companions).
fn find_ground_truth(root: &Path, split: &str) -> Result<Vec<Pair>, FolderError> {
    if !root.is_dir() {
        return Err(FolderError::MissingDir {
            what: "dataset root",
            path: root.to_path_buf(),
        });
    }
    let gt_dir = root.join("gtFine").join(split);
    if !gt_dir.is_dir() {
        return Err(FolderError::MissingDir {
            what: "ground-truth split",
            path: gt_dir,
        });
    }
    let mut pairs = Vec::new();
    let hidden = |e: &std::fs::DirEntry| seg_labels::fsutil::is_hidden(&e.file_name());
    for city in read_dir_sorted(&gt_dir)? {
        let city_path = city.path();
        if !city_path.is_dir() || hidden(&city) {
            continue;
        }
        for f in read_dir_sorted(&city_path)? {
            if hidden(&f) {
                continue;
            }
            let file = f.file_name().to_string_lossy().into_owned();
            let (name, train_ids) = match (file.strip_suffix(GT_SUFFIX), file.strip_suffix(GT_TRAIN_SUFFIX)) {
                (Some(name), _) => (name, false),
                // labelTrainIds stand in only where the labelIds file is absent.
                (None, Some(name)) if !city_path.join(format!("{name}{GT_SUFFIX}")).exists() => (name, true),
                _ => continue,
            };
            pairs.push(Pair {
                name: name.to_string(),
                city: city.file_name().to_string_lossy().into_owned(),
                gt: f.path(),
                train_ids,
                pred: None,
            });
        }
    }
    if pairs.is_empty() {
        return Err(FolderError::NoGroundTruth {
            pattern: gt_dir.join("*").join(format!("*{GT_SUFFIX}")).display().to_string(),
        });
    }
    pairs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pairs)
}

/// Every `*.png` under `dir` as (file name, path), sorted by name, and the symlinked folders,
/// which are not entered (as `os.walk` does not; links cannot loop); symlinked files count.
type Found = (Vec<(String, PathBuf)>, Vec<PathBuf>);

fn find_predictions(dir: &Path) -> Result<Found, FolderError> {
    if !dir.is_dir() {
        return Err(FolderError::MissingDir {
            what: "prediction",
            path: dir.to_path_buf(),
        });
    }
    let (mut out, mut linked) = (Vec::new(), Vec::new());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in read_dir_sorted(&d)? {
            let path = e.path();
            let ft = e.file_type().map_err(|cause| FolderError::ReadDir {
                path: path.clone(),
                cause,
            })?;
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            if ft.is_symlink() && path.is_dir() {
                linked.push(path);
                continue;
            }
            let is_file = ft.is_file() || (ft.is_symlink() && path.is_file());
            let name = e.file_name().to_string_lossy().into_owned();
            if is_file && name.ends_with(".png") {
                out.push((name, path));
            }
        }
    }
    out.sort();
    linked.sort();
    Ok((out, linked))
}

/// Matches each ground truth to the predictions whose name starts with it.
fn match_predictions(pairs: &mut [Pair], preds: &[(String, PathBuf)]) -> Result<Vec<String>, FolderError> {
    let mut missing = Vec::new();
    for p in pairs.iter_mut() {
        let start = preds.partition_point(|(n, _)| n.as_str() < p.name.as_str());
        let found: Vec<&PathBuf> = preds[start..]
            .iter()
            .take_while(|(n, _)| n.starts_with(&p.name))
            .map(|(_, path)| path)
            .collect();
        match found.as_slice() {
            [] => missing.push(p.name.clone()),
            [one] => p.pred = Some((*one).clone()),
            many => {
                return Err(FolderError::Ambiguous {
                    name: p.name.clone(),
                    candidates: many.iter().map(|p| (*p).clone()).collect(),
                })
            }
        }
    }
    Ok(missing)
}

/// Label id → train id, for every byte value (ids above 33 are rejected before this is used).
fn label_to_train() -> [u8; 256] {
    std::array::from_fn(|i| {
        if i < NUM_LABEL_IDS {
            id_to_train_id(i as u8)
        } else {
            IGNORE
        }
    })
}

/// A prediction's or a ground truth's ids: 8-bit (or fewer) grayscale or palette, or one 16-bit
/// gray channel (`cv2.imwrite` or PIL's `fromarray` of a uint16 array), which the official
/// evaluator's PIL reads as the same ids.
fn read_ids(path: &Path) -> Result<png_io::LabelImage, png_io::PngError> {
    png_io::read_label(path, LabelEncoding::AnyIds)
}

/// One prediction: train ids, the instance category of each pixel as the official category
/// masks read the raw ids ([`crate::instances`]), and which raw values it holds (bit `v` for
/// value `v` < 63, bit 63 for any larger).
struct Prediction {
    width: u32,
    height: u32,
    ids: Vec<u8>,
    categories: Vec<u8>,
    seen: u64,
}

/// Reads one prediction.
fn read_prediction(path: &Path, format: PredFormat) -> Result<Prediction, FolderError> {
    let img = read_ids(path)?;
    let valid = |v: u16| match format {
        PredFormat::LabelIds => (v as usize) < NUM_LABEL_IDS,
        PredFormat::TrainIds => v < NUM_CLASSES as u16 || v == IGNORE as u16,
    };
    if let Some(&value) = img.data.iter().find(|&&v| !valid(v)) {
        return Err(FolderError::ValueOutOfRange {
            path: path.to_path_buf(),
            value,
            format,
        });
    }
    let seen = img.data.iter().fold(0u64, |m, &v| m | 1 << v.min(63));
    let ids = match format {
        PredFormat::LabelIds => {
            let table = label_to_train();
            img.data.iter().map(|&v| table[v as usize & 0xff]).collect()
        }
        PredFormat::TrainIds => img.data.iter().map(|&v| v as u8).collect(),
    };
    let categories = match format {
        PredFormat::LabelIds => img
            .data
            .iter()
            .map(|&v| instances::pred_category_of_label_id(v))
            .collect(),
        PredFormat::TrainIds => img
            .data
            .iter()
            .map(|&v| instances::pred_category_of_train_id(v as u8))
            .collect(),
    };
    Ok(Prediction {
        width: img.width,
        height: img.height,
        ids,
        categories,
        seen,
    })
}

/// The values label ids, and train ids, may take (in messages about predictions and ground
/// truth).
const LABEL_IDS_RANGE: &str = "label ids 0..=33";
const TRAIN_IDS_RANGE: &str = "train ids 0..=18 or 255";

/// Partial result of one worker: the evaluation and the largest prediction value seen.
struct Partial {
    ev: Evaluator,
    /// The raw values the predictions hold, as [`read_prediction`] gives them.
    seen: u64,
    /// Pixels of the ground truth read from labelIds, per train id, and ignored ones (counted
    /// here rather than taken from the confusion matrix, which holds labelTrainIds ground
    /// truth too: only labelIds can look like train ids).
    gt_pixels: [u64; NUM_CLASSES],
    gt_ignored: u64,
    /// Ground truth with values outside its encoding's range: (pair index, pixels, range).
    outside: Vec<(usize, u64, &'static str)>,
}

fn evaluate_pair(
    opts: &FolderOptions,
    maps: &[LabelMap; 2],
    (index, pair): (usize, &Pair),
    keep: bool,
    acc: &mut Partial,
) -> Result<(), FolderError> {
    let gt_img = read_ids(&pair.gt)?;
    let (map, range) = if pair.train_ids {
        (&maps[1], TRAIN_IDS_RANGE)
    } else {
        (&maps[0], LABEL_IDS_RANGE)
    };
    let (gt, outside) = map.map_all(&gt_img.data);
    if !pair.train_ids {
        for &v in &gt {
            match acc.gt_pixels.get_mut(v as usize) {
                Some(c) => *c += 1,
                None => acc.gt_ignored += 1,
            }
        }
    }
    if outside > 0 {
        acc.outside.push((index, outside, range));
    }
    let metrics_err = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| FolderError::Metrics { path, cause }
    };
    let (pred, categories) = match &pair.pred {
        Some(path) => {
            let p = read_prediction(path, opts.pred_format)?;
            if (p.width, p.height) != (gt_img.width, gt_img.height) {
                return Err(FolderError::SizeMismatch {
                    pred: path.clone(),
                    pred_width: p.width,
                    pred_height: p.height,
                    gt: pair.gt.clone(),
                    gt_width: gt_img.width,
                    gt_height: gt_img.height,
                });
            }
            acc.seen |= p.seen;
            acc.ev.add(&gt, &p.ids).map_err(metrics_err(path))?;
            (p.ids, p.categories)
        }
        None => {
            acc.ev.add_missing(&pair.name, &gt).map_err(metrics_err(&pair.gt))?;
            (vec![IGNORE; gt.len()], vec![instances::NO_CATEGORY; gt.len()])
        }
    };
    match instances::read_beside_of_size(&pair.gt, gt_img.width, gt_img.height) {
        Ok(inst) => acc.ev.add_instances(&inst, &gt, &pred, &categories),
        Err(why) => acc.ev.no_instances(&pair.name, why),
    }
    if keep {
        let image_path = opts
            .root
            .join("leftImg8bit")
            .join(&opts.split)
            .join(&pair.city)
            .join(format!("{}_leftImg8bit.png", pair.name));
        let image = if image_path.is_file() {
            match png_io::read_rgb(&image_path) {
                Ok(img) => Some(img),
                Err(e) => {
                    acc.ev.warn(format!("{e}; overlay skipped"));
                    None
                }
            }
        } else {
            acc.ev.warn(format!(
                "{}: camera image not found; overlay skipped",
                image_path.display()
            ));
            None
        };
        acc.ev.keep_sample(Sample {
            name: pair.name.clone(),
            width: gt_img.width,
            height: gt_img.height,
            gt,
            pred,
            image,
        });
    }
    Ok(())
}

/// Evaluates every ground-truth image of `ROOT/gtFine/SPLIT` against the prediction folder.
/// Warnings (trainIds-looking label ids, missing camera images, …) are in the returned
/// evaluator's [`Evaluator::warnings`].
pub fn evaluate_folder(opts: &FolderOptions) -> Result<Evaluator, FolderError> {
    let mut pairs = find_ground_truth(&opts.root, &opts.split)?;
    let (preds, linked_folders) = find_predictions(&opts.pred_dir)?;
    let missing = match_predictions(&mut pairs, &preds)?;
    if !missing.is_empty() && !opts.missing_as_wrong {
        return Err(FolderError::Missing {
            pred_dir: opts.pred_dir.clone(),
            names: missing,
            linked_folders,
        });
    }
    let maps = [
        LabelMap::new(DatasetKind::Cityscapes),
        LabelMap::new(DatasetKind::CityscapesTrainIds),
    ];
    let new_partial = || Partial {
        ev: Evaluator::new(opts.samples),
        seen: 0,
        gt_pixels: [0; NUM_CLASSES],
        gt_ignored: 0,
        outside: Vec::new(),
    };
    let result = pairs
        .par_iter()
        .enumerate()
        .try_fold(new_partial, |mut acc, (i, pair)| {
            evaluate_pair(opts, &maps, (i, pair), i < opts.samples, &mut acc)?;
            Ok::<_, FolderError>(acc)
        })
        .try_reduce(new_partial, |mut a, b| {
            a.ev.merge(b.ev);
            a.seen |= b.seen;
            for (x, y) in a.gt_pixels.iter_mut().zip(b.gt_pixels) {
                *x += y;
            }
            a.gt_ignored += b.gt_ignored;
            a.outside.extend(b.outside);
            Ok(a)
        })?;
    let mut ev = result.ev;
    // One line (per encoding) for the ground-truth files with values outside its range, not
    // one per file: the first in file order is named.
    let mut outside = result.outside;
    outside.sort_unstable();
    for range in [LABEL_IDS_RANGE, TRAIN_IDS_RANGE] {
        let these: Vec<_> = outside.iter().filter(|o| o.2 == range).collect();
        if let Some(&&(first, pixels, _)) = these.first() {
            let total: u64 = these.iter().map(|o| o.1).sum();
            ev.warn(format!(
                "{} ground-truth file(s) hold {total} pixels of values outside {range}, which are ignored (the first: {}, {pixels} pixels)",
                these.len(),
                pairs[first].gt.display()
            ));
        }
    }
    if let Some(w) = seg_labels::cityscapes::train_ids_look_warning(&result.gt_pixels, result.gt_ignored) {
        ev.warn(format!("ground truth `*_gtFine_labelIds.png`: {w}"));
    }
    let from_train_ids: Vec<&Pair> = pairs.iter().filter(|p| p.train_ids).collect();
    if let Some(first) = from_train_ids.first() {
        ev.warn(seg_labels::cityscapes::train_ids_only_warning(
            from_train_ids.len(),
            &first.gt,
        ));
    }
    if opts.pred_format == PredFormat::LabelIds {
        // Train ids are 0..=18; so are the label ids of road, sidewalk, building, wall, fence
        // and pole (7, 8, 11, 12, 13, 17). Predictions of those classes alone are label ids as
        // they should be; any other value below 19 (void or an unused label id) is a train id.
        let seen = result.seen;
        let below_19 = seen != 0 && seen >> NUM_CLASSES == 0;
        let not_a_class_id = (0..NUM_CLASSES as u8).any(|v| seen >> v & 1 == 1 && id_to_train_id(v) == IGNORE);
        if below_19 && not_a_class_id {
            let max = 63 - seen.leading_zeros();
            ev.warn(format!(
                "every prediction holds only values 0..={max}: these look like trainIds, not label ids; \
                 if so, evaluate them with the trainids prediction format (`--pred-format trainids`)"
            ));
        }
    }
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_to_train_table_is_the_official_map() {
        for id in 0..=255u8 {
            let want = if (id as usize) < NUM_LABEL_IDS {
                id_to_train_id(id)
            } else {
                IGNORE
            };
            assert_eq!(label_to_train()[id as usize], want, "id {id}");
        }
    }

    #[test]
    fn prefix_matching_follows_the_official_rule() {
        let mk = |n: &str| Pair {
            name: n.into(),
            city: "c".into(),
            train_ids: false,
            gt: PathBuf::new(),
            pred: None,
        };
        let mut pairs = vec![mk("c_000001_000019"), mk("c_000002_000019"), mk("c_000003_000019")];
        let preds: Vec<(String, PathBuf)> = [
            "c_000001_000019_pred.png",
            "c_000001_000019x.png",
            "c_000002_000019.png",
            "c_000010.png",
        ]
        .iter()
        .map(|n| (n.to_string(), PathBuf::from(n)))
        .collect();
        let mut sorted = preds.clone();
        sorted.sort();
        let e = match_predictions(&mut pairs, &sorted).unwrap_err();
        assert!(
            matches!(&e, FolderError::Ambiguous { name, candidates } if name == "c_000001_000019" && candidates.len() == 2),
            "{e}"
        );
        let mut pairs = vec![mk("c_000002_000019"), mk("c_000003_000019")];
        let missing = match_predictions(&mut pairs, &sorted).unwrap();
        assert_eq!(missing, ["c_000003_000019"]);
        assert_eq!(pairs[0].pred.as_deref(), Some(Path::new("c_000002_000019.png")));
    }
}
