//! The one evaluation path shared by prediction folders and (later) model checkpoints: an
//! [`Evaluator`] accumulates per-image train-id maps and keeps a few samples, [`Evaluator::finish`]
//! turns it into a [`Report`], and [`Report::write`] writes `report.json`, `report.md`,
//! `confusion.csv` and `pictures/`.
//!
//! `report.json` keys (fractions in `0..=1`, `null` where the official evaluator has NaN):
//! * `miou`: mean IoU over the protocol's classes that have a score;
//! * `class_iou`: the protocol's classes only, keyed by official name, in train-id order (so
//!   the mean of its non-null values is `miou`); `class_iou_all` has all 19;
//! * `class_accuracy` (protocol's classes), `pixel_accuracy` (over all 19 classes' pixels),
//!   `mean_class_accuracy` (protocol's classes present in the ground truth);
//! * `category_iou` (the 7 evaluated categories, flat to vehicle) and `mean_category_iou`;
//! * `class_iiou` (the protocol's classes with instances, person to bicycle), `mean_iiou`,
//!   `category_iiou` (human, vehicle) and `mean_category_iiou`: the official instance-level
//!   scores, `null` unless every image's `*_gtFine_instanceIds.png` was read; `instances`, the
//!   ground-truth instances they weigh;
//! * `protocol` (`"19"`, `"16"` or `"13"`), `images`, `pixels` (evaluated pixels),
//!   `missing_counted_wrong`, `source`, `warnings`, `pictures` (paths relative to the report).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use seg_labels::{png_io, Protocol, RgbImage, NUM_CLASSES, TRAIN_CLASS_NAMES};
use serde::{Deserialize, Serialize};

use crate::confusion::{mean, ConfusionMatrix, MetricsError, COLUMNS, VOID_COLUMN};
use crate::instances::{self, InstanceStats, CATEGORIES, INSTANCE_CATEGORIES};
use crate::pictures;

/// Width of one tile in `pictures/sheet.png`.
pub const SHEET_TILE_WIDTH: u32 = 512;
/// Blend factor of prediction colours over the camera image.
pub const OVERLAY_ALPHA: f32 = 0.5;

/// Errors while writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The reason is in the message (not also a `source`, which would print it twice).
    #[error("{path}: cannot write: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error(transparent)]
    Png(#[from] png_io::PngError),
    #[error("cannot serialise the report: {0}")]
    Json(#[from] serde_json::Error),
}

/// One image kept for pictures: train ids of ground truth and prediction, and the camera
/// image when one is at hand (same size, or it is dropped with a warning).
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub gt: Vec<u8>,
    pub pred: Vec<u8>,
    pub image: Option<RgbImage>,
}

/// Accumulates a whole evaluation; see the module docs.
#[derive(Debug, Clone)]
pub struct Evaluator {
    confusion: ConfusionMatrix,
    images: usize,
    keep: usize,
    samples: Vec<Sample>,
    missing: Vec<String>,
    warnings: Vec<String>,
    instances: InstanceStats,
    /// Images whose instances were added.
    instance_images: usize,
    /// Why an image's instanceIds could not be read, by image name.
    no_instances: Vec<(String, String)>,
}

impl Evaluator {
    /// An empty evaluation that keeps the `keep_samples` first images by name for pictures.
    pub fn new(keep_samples: usize) -> Self {
        Self {
            confusion: ConfusionMatrix::new(),
            images: 0,
            keep: keep_samples,
            samples: Vec::new(),
            missing: Vec::new(),
            warnings: Vec::new(),
            instances: InstanceStats::default(),
            instance_images: 0,
            no_instances: Vec::new(),
        }
    }

    /// Adds the ground-truth instances of an image [`Self::add`]ed (its `*_gtFine_instanceIds.png`,
    /// the ground truth and prediction in train ids, and the prediction's instance categories,
    /// all of one length) for the instance-level scores; see [`instances`].
    pub fn add_instances(
        &mut self,
        instance_ids: &[u16],
        gt_train_ids: &[u8],
        pred_train_ids: &[u8],
        pred_category: &[u8],
    ) {
        self.instances
            .add(instance_ids, gt_train_ids, pred_train_ids, pred_category);
        self.instance_images += 1;
    }

    /// Records an image whose instanceIds could not be had (`why`): the report then has no
    /// instance-level scores, and says why when other images had theirs.
    pub fn no_instances(&mut self, name: &str, why: String) {
        self.no_instances.push((name.to_string(), why));
    }

    /// Counts one image (train ids, same length; see [`ConfusionMatrix::add`]).
    pub fn add(&mut self, gt_train_ids: &[u8], pred_train_ids: &[u8]) -> Result<(), MetricsError> {
        self.confusion.add(gt_train_ids, pred_train_ids)?;
        self.images += 1;
        Ok(())
    }

    /// Counts one image that has no prediction as all wrong (every pixel predicted void) and
    /// records its name in the report.
    pub fn add_missing(&mut self, name: &str, gt_train_ids: &[u8]) -> Result<(), MetricsError> {
        self.confusion.add_all_wrong(gt_train_ids)?;
        self.images += 1;
        self.missing.push(name.to_string());
        Ok(())
    }

    /// Whether a sample with this name would be kept (lets callers skip loading its image).
    pub fn wants_sample(&self, name: &str) -> bool {
        self.samples.len() < self.keep || self.samples.last().is_some_and(|s| name < s.name.as_str())
    }

    /// Offers a sample for the pictures; the `keep_samples` smallest names are kept.
    pub fn keep_sample(&mut self, sample: Sample) {
        if !self.wants_sample(&sample.name) {
            return;
        }
        let at = self.samples.partition_point(|s| s.name < sample.name);
        self.samples.insert(at, sample);
        self.samples.truncate(self.keep);
    }

    /// Adds a warning that the report will carry.
    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    /// Combines two partial evaluations (e.g. from parallel workers).
    pub fn merge(&mut self, other: Evaluator) {
        self.confusion.merge(&other.confusion);
        self.images += other.images;
        self.keep = self.keep.max(other.keep);
        for s in other.samples {
            self.keep_sample(s);
        }
        self.missing.extend(other.missing);
        self.warnings.extend(other.warnings);
        self.instances.merge(&other.instances);
        self.instance_images += other.instance_images;
        self.no_instances.extend(other.no_instances);
    }

    pub fn confusion(&self) -> &ConfusionMatrix {
        &self.confusion
    }

    /// [`seg_labels::cityscapes::train_ids_look_warning`] of the ground truth added so far,
    /// from its pixels per class and ignored: for ground truth read as label ids.
    pub fn train_ids_look_warning(&self) -> Option<String> {
        let cm = &self.confusion;
        let per_class: [u64; NUM_CLASSES] = std::array::from_fn(|c| cm.gt_pixels(c));
        seg_labels::cityscapes::train_ids_look_warning(&per_class, cm.ignored())
    }

    pub fn images(&self) -> usize {
        self.images
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The scores under `protocol`, with the kept samples ready for [`Report::write`].
    pub fn finish(self, protocol: Protocol) -> Report {
        let cm = self.confusion;
        let iou = cm.class_iou();
        let acc = cm.class_accuracy();
        let in_protocol = |v: &[Option<f64>; NUM_CLASSES]| {
            ClassScores(
                protocol
                    .train_ids()
                    .iter()
                    .map(|&t| (TRAIN_CLASS_NAMES[t as usize].to_string(), v[t as usize]))
                    .collect(),
            )
        };
        let mut warnings = self.warnings;
        let mut missing = self.missing;
        missing.sort();
        if let Some(first) = missing.first() {
            warnings.push(format!(
                "{} ground-truth image(s) without a prediction counted as all wrong (--missing-as-wrong; the first: {first})",
                missing.len()
            ));
        }
        if cm.total() == 0 {
            warnings.push(
                "no ground-truth pixel of a train class was evaluated (every pixel is ignored, or there were no images): \
                 the scores are n/a"
                    .to_string(),
            );
        }
        // The instance-level scores need every image's instances, as the official evaluator
        // (which stops without them) has them.
        let mut no_instances = self.no_instances;
        no_instances.sort();
        let with_instances = self.images > 0 && self.instance_images == self.images && no_instances.is_empty();
        if let Some((name, why)) = no_instances.first().filter(|_| self.instance_images > 0) {
            warnings.push(format!(
                "iIoU n/a: {} of {} image(s) have no usable `*_gtFine_instanceIds.png` (the first, {name}: {why})",
                no_instances.len(),
                self.images
            ));
        }
        let iiou = with_instances.then(|| self.instances.class_iiou(&cm));
        let category_iiou = with_instances.then(|| self.instances.category_iiou(&cm));
        let instance_classes: Vec<usize> = protocol
            .train_ids()
            .iter()
            .map(|&t| t as usize)
            .filter(|t| instances::instance_train_ids().contains(t))
            .collect();
        let class_iiou = ClassScores(
            instance_classes
                .iter()
                .map(|&t| (TRAIN_CLASS_NAMES[t].to_string(), iiou.and_then(|v| v[t])))
                .collect(),
        );
        let category_iou = instances::category_iou(&cm);
        let mut samples = self.samples;
        for s in &mut samples {
            if let Some(img) = &s.image {
                if (img.width, img.height) != (s.width, s.height) {
                    warnings.push(format!(
                        "{}: camera image is {}x{} but the labels are {}x{}; overlay skipped",
                        s.name, img.width, img.height, s.width, s.height
                    ));
                    s.image = None;
                }
            }
        }
        let mut pictures = Vec::new();
        if !samples.is_empty() {
            pictures.push("pictures/sheet.png".to_string());
        }
        for s in &samples {
            let stem = file_stem(&s.name);
            pictures.push(format!("pictures/{stem}_gt.png"));
            pictures.push(format!("pictures/{stem}_pred.png"));
            if s.image.is_some() {
                pictures.push(format!("pictures/{stem}_overlay.png"));
            }
        }
        Report {
            protocol,
            miou: cm.miou(protocol),
            class_iou: in_protocol(&iou),
            class_iou_all: ClassScores(
                TRAIN_CLASS_NAMES
                    .iter()
                    .zip(iou)
                    .map(|(n, v)| (n.to_string(), v))
                    .collect(),
            ),
            class_accuracy: in_protocol(&acc),
            pixel_accuracy: cm.pixel_accuracy(),
            mean_class_accuracy: cm.mean_class_accuracy(protocol),
            mean_category_iou: mean(category_iou.iter().flatten().copied()),
            category_iou: ClassScores(
                CATEGORIES
                    .iter()
                    .zip(category_iou)
                    .map(|(n, v)| (n.to_string(), v))
                    .collect(),
            ),
            mean_iiou: mean(class_iiou.0.iter().filter_map(|(_, v)| *v)),
            class_iiou,
            mean_category_iiou: category_iiou.and_then(|v| mean(v.iter().flatten().copied())),
            category_iiou: ClassScores(
                INSTANCE_CATEGORIES
                    .iter()
                    .enumerate()
                    .map(|(k, n)| (n.to_string(), category_iiou.and_then(|v| v[k])))
                    .collect(),
            ),
            instances: with_instances.then_some(self.instances.instances),
            images: self.images,
            pixels: cm.total(),
            missing_counted_wrong: missing,
            source: None,
            warnings,
            pictures,
            confusion: cm,
            samples,
        }
    }
}

/// Scores keyed by official class name, in train-id order (a JSON object; `null` = no score).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassScores(pub Vec<(String, Option<f64>)>);

impl ClassScores {
    pub fn get(&self, name: &str) -> Option<Option<f64>> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

impl Serialize for ClassScores {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for ClassScores {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ClassScores;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map from class name to score or null")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<ClassScores, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, Option<f64>>()? {
                    out.push((k, v));
                }
                Ok(ClassScores(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The result of an evaluation; see the module docs for the JSON keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub protocol: Protocol,
    pub miou: Option<f64>,
    pub class_iou: ClassScores,
    pub class_iou_all: ClassScores,
    pub class_accuracy: ClassScores,
    pub pixel_accuracy: Option<f64>,
    pub mean_class_accuracy: Option<f64>,
    #[serde(default)]
    pub category_iou: ClassScores,
    #[serde(default)]
    pub mean_category_iou: Option<f64>,
    #[serde(default)]
    pub class_iiou: ClassScores,
    #[serde(default)]
    pub mean_iiou: Option<f64>,
    #[serde(default)]
    pub category_iiou: ClassScores,
    #[serde(default)]
    pub mean_category_iiou: Option<f64>,
    /// Ground-truth instances the iIoU weighs (`None`: no instance-level scores).
    #[serde(default)]
    pub instances: Option<usize>,
    pub images: usize,
    pub pixels: u64,
    /// Images without a prediction, counted as all wrong.
    pub missing_counted_wrong: Vec<String>,
    /// What was evaluated, in words (set by the caller).
    pub source: Option<String>,
    pub warnings: Vec<String>,
    pub pictures: Vec<String>,
    #[serde(skip)]
    pub confusion: ConfusionMatrix,
    #[serde(skip)]
    samples: Vec<Sample>,
}

/// A percentage without its unit (for columns headed `%`), or `n/a`.
fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{:.2}", 100.0 * v))
}

/// A percentage with its unit, or `n/a` alone.
fn pct_unit(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{:.2} %", 100.0 * v))
}

/// Keeps names safe as file names.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Report {
    /// Per-class table in percent, for a terminal.
    pub fn text_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{:<15} {:>8} {:>8}", "class", "IoU %", "acc %");
        let _ = writeln!(s, "{}", "-".repeat(33));
        for ((name, iou), (_, acc)) in self.class_iou.0.iter().zip(&self.class_accuracy.0) {
            let _ = writeln!(s, "{:<15} {:>8} {:>8}", name, pct(*iou), pct(*acc));
        }
        let _ = writeln!(s, "{}", "-".repeat(33));
        let _ = writeln!(
            s,
            "{:<15} {:>8} {:>8}",
            format!("mIoU ({})", self.protocol.name()),
            pct(self.miou),
            pct(self.mean_class_accuracy)
        );
        let _ = writeln!(
            s,
            "pixel accuracy {}, {} images, {} pixels",
            pct_unit(self.pixel_accuracy),
            self.images,
            self.pixels
        );
        let _ = writeln!(
            s,
            "categories mIoU {}; iIoU {} (classes), {} (categories)",
            pct_unit(self.mean_category_iou),
            pct_unit(self.mean_iiou),
            pct_unit(self.mean_category_iiou)
        );
        s
    }

    /// The iIoU of a class by name, for tables: `-` for a class without instances.
    fn iiou_cell(&self, name: &str) -> String {
        self.class_iiou.get(name).map_or_else(|| "-".to_string(), pct)
    }

    /// `report.md`: summary, per-class table in percent, pictures, warnings.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Evaluation report\n");
        if let Some(src) = &self.source {
            let _ = writeln!(s, "{src}\n");
        }
        let n = self.protocol.num_classes();
        let _ = writeln!(s, "* **mIoU ({n} classes): {}**", pct_unit(self.miou));
        let _ = writeln!(
            s,
            "* pixel accuracy: {} (all 19 classes' pixels)",
            pct_unit(self.pixel_accuracy)
        );
        let _ = writeln!(s, "* mean class accuracy: {}", pct_unit(self.mean_class_accuracy));
        let _ = writeln!(
            s,
            "* categories: mIoU {}; instance-level iIoU: {} over classes, {} over categories{}",
            pct_unit(self.mean_category_iou),
            pct_unit(self.mean_iiou),
            pct_unit(self.mean_category_iiou),
            match self.instances {
                Some(n) => format!(" ({n} ground-truth instances)"),
                None => " (n/a: not every image has its `*_gtFine_instanceIds.png`)".to_string(),
            }
        );
        let _ = writeln!(s, "* images: {}, evaluated pixels: {}", self.images, self.pixels);
        if !self.missing_counted_wrong.is_empty() {
            let _ = writeln!(
                s,
                "* {} images had no prediction and count as all wrong: {}",
                self.missing_counted_wrong.len(),
                self.missing_counted_wrong.join(", ")
            );
        }
        let _ = writeln!(s, "\nIoU follows the official Cityscapes evaluator: false positives count only on non-ignored ground truth; n/a = no pixel in ground truth or prediction (left out of the mean).\n");
        let _ = writeln!(s, "| class | IoU % | iIoU % | accuracy % | GT pixels |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for ((name, iou), (_, acc)) in self.class_iou.0.iter().zip(&self.class_accuracy.0) {
            let gt = TRAIN_CLASS_NAMES
                .iter()
                .position(|n| n == name)
                .map_or(0, |c| self.confusion.gt_pixels(c));
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {gt} |",
                pct(*iou),
                self.iiou_cell(name),
                pct(*acc)
            );
        }
        let _ = writeln!(
            s,
            "| **mean** | **{}** | **{}** | **{}** | |",
            pct(self.miou),
            pct(self.mean_iiou),
            pct(self.mean_class_accuracy)
        );
        if !self.category_iou.0.is_empty() {
            let _ = writeln!(s, "\n| category | IoU % | iIoU % |\n|---|---:|---:|");
            for (name, iou) in &self.category_iou.0 {
                let iiou = self.category_iiou.get(name).map_or_else(|| "-".to_string(), pct);
                let _ = writeln!(s, "| {name} | {} | {iiou} |", pct(*iou));
            }
            let _ = writeln!(
                s,
                "| **mean** | **{}** | **{}** |",
                pct(self.mean_category_iou),
                pct(self.mean_category_iiou)
            );
            let _ = writeln!(
                s,
                "\niIoU weighs each ground-truth instance by its class's average size over its own (the official evaluator's nIoU); `-`: a class or category without instances."
            );
        }
        if !self.pictures.is_empty() {
            let _ = writeln!(s, "\n## Pictures\n");
            let _ = writeln!(
                s,
                "Each row: image | ground truth | prediction | errors (black: ignored, gray: correct, red: wrong).\n"
            );
            let _ = writeln!(s, "![sheet](pictures/sheet.png)\n");
            for smp in &self.samples {
                let stem = file_stem(&smp.name);
                let _ = write!(
                    s,
                    "* {}: [ground truth](pictures/{stem}_gt.png), [prediction](pictures/{stem}_pred.png)",
                    smp.name
                );
                if smp.image.is_some() {
                    let _ = write!(s, ", [overlay](pictures/{stem}_overlay.png)");
                }
                let _ = writeln!(s);
            }
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(s, "\n## Warnings\n");
            for w in &self.warnings {
                let _ = writeln!(s, "* {w}");
            }
        }
        let _ = writeln!(
            s,
            "\nConfusion matrix (pixels, rows = ground truth, columns = prediction): [confusion.csv](confusion.csv)"
        );
        s
    }

    /// `confusion.csv`: a header row, then 19 rows (ground truth) × 20 columns (19 classes and
    /// `void` = predicted an ignored id).
    pub fn confusion_csv(&self) -> String {
        let mut s = String::from("gt\\pred");
        for n in TRAIN_CLASS_NAMES {
            let _ = write!(s, ",{n}");
        }
        s.push_str(",void\n");
        for (name, row) in TRAIN_CLASS_NAMES.iter().zip(self.confusion.counts()) {
            s.push_str(name);
            for v in row.iter().take(COLUMNS) {
                let _ = write!(s, ",{v}");
            }
            s.push('\n');
        }
        debug_assert_eq!(VOID_COLUMN + 1, COLUMNS);
        s
    }

    /// Writes `report.json`, `report.md`, `confusion.csv` and `pictures/` under `out_dir`,
    /// each file atomically.
    pub fn write(&self, out_dir: &Path) -> Result<(), ReportError> {
        let put = |name: &str, bytes: &[u8]| {
            let path = out_dir.join(name);
            seg_labels::fsutil::write_atomic(&path, bytes).map_err(|cause| ReportError::Io { path, cause })
        };
        let stale = pictures::stale(out_dir, &self.pictures);
        let mut json = serde_json::to_string_pretty(self)?;
        json.push('\n');
        put("report.json", json.as_bytes())?;
        put("report.md", self.markdown().as_bytes())?;
        put("confusion.csv", self.confusion_csv().as_bytes())?;
        let dir = out_dir.join("pictures");
        self.write_pictures(&dir)?;
        pictures::remove(&stale).map_err(|cause| ReportError::Io { path: dir, cause })
    }

    fn write_pictures(&self, dir: &Path) -> Result<(), ReportError> {
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::new();
        for s in &self.samples {
            let stem = file_stem(&s.name);
            let gt = pictures::colorize(s.width, s.height, &s.gt);
            let pred = pictures::colorize(s.width, s.height, &s.pred);
            png_io::write_rgb(&dir.join(format!("{stem}_gt.png")), &gt)?;
            png_io::write_rgb(&dir.join(format!("{stem}_pred.png")), &pred)?;
            if let Some(img) = &s.image {
                let o = pictures::overlay(img, &s.pred, OVERLAY_ALPHA);
                png_io::write_rgb(&dir.join(format!("{stem}_overlay.png")), &o)?;
            }
            let errors = pictures::error_map(s.width, s.height, &s.gt, &s.pred);
            rows.push(pictures::SheetRow {
                image: s.image.clone(),
                gt,
                pred,
                errors,
            });
        }
        let tile = SHEET_TILE_WIDTH.min(self.samples.iter().map(|s| s.width).max().unwrap_or(SHEET_TILE_WIDTH));
        png_io::write_rgb(&dir.join("sheet.png"), &pictures::sheet(&rows, tile))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Sample {
        Sample {
            name: name.into(),
            width: 2,
            height: 1,
            gt: vec![0, 1],
            pred: vec![0, 0],
            image: None,
        }
    }

    #[test]
    fn keeps_the_first_samples_by_name_across_merges() {
        let mut a = Evaluator::new(2);
        let mut b = Evaluator::new(2);
        for n in ["d", "b", "e"] {
            a.keep_sample(sample(n));
        }
        for n in ["c", "a"] {
            b.keep_sample(sample(n));
        }
        assert!(!a.wants_sample("z") && a.wants_sample("a"));
        a.merge(b);
        let names: Vec<_> = a.samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn report_json_has_protocol_classes_and_nulls() {
        let mut ev = Evaluator::new(0);
        // terrain (9) predicted as road: road IoU 0, terrain IoU 0; car never seen: null.
        ev.add(&[0, 0, 9], &[0, 0, 0]).unwrap();
        let r = ev.finish(Protocol::Classes16);
        let json = serde_json::to_string(&r).unwrap();
        // Train-id order survives in the file.
        assert!(json.find("\"road\"").unwrap() < json.find("\"bicycle\"").unwrap());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["protocol"], "16");
        assert_eq!(v["images"], 1);
        let ci = v["class_iou"].as_object().unwrap();
        assert_eq!(ci.len(), 16);
        assert!(!ci.contains_key("terrain"));
        assert!(ci["car"].is_null());
        assert!((ci["road"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(v["class_iou_all"]["terrain"], 0.0);
        // The 16-class mean is over road only: terrain is out of the protocol.
        assert!((v["miou"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.class_iou, r.class_iou);
        let csv = r.confusion_csv();
        assert_eq!(csv.lines().count(), 20);
        assert!(csv.lines().all(|l| l.split(',').count() == 21));
        assert!(csv.lines().nth(1).unwrap().starts_with("road,2,0,"));
        assert!(r.text_table().contains("mIoU (16)"));
    }
}
