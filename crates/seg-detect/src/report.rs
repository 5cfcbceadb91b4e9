//! The detection report: `report.json` (AP at IoU 0.5 per class in the three flavours, as
//! fractions; `null` for a class without ground truth), `report.md` (percentages) and
//! `pictures/detections.png` (ground truth in green, detections with score ≥
//! [`PICTURE_MIN_SCORE`] in red, over the first images of the split).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use seg_labels::RgbImage;

use crate::ap::{evaluate, Ap3, ApInput};
use crate::boxes::{GtBox, PixelBox};
use crate::classes::{ClassSet, DET_CLASSES};
use crate::error::DetError;

/// Detections drawn in the pictures score at least this.
pub const PICTURE_MIN_SCORE: f64 = 0.3;
/// Width of one picture tile.
pub const TILE_WIDTH: u32 = 512;

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DetReport {
    pub ap50: BTreeMap<String, Option<Ap3>>,
    pub images: usize,
    /// Detections of the evaluated classes.
    pub detections: usize,
    /// Ground-truth boxes per class.
    pub gt_boxes: BTreeMap<String, usize>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub pictures: Vec<String>,
    /// What a reader should know of the evaluation (images missing beside their ground truth).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl DetReport {
    /// AP of every class of `classes` over the split's ground truth `gt` (one list per image).
    pub fn compute(gt: &[Vec<GtBox>], dets: &[ApInput], classes: ClassSet) -> Self {
        let mut ap50 = BTreeMap::new();
        let mut gt_boxes = BTreeMap::new();
        for c in classes.indices() {
            let name = DET_CLASSES[c].name.to_string();
            ap50.insert(name.clone(), evaluate(gt, dets, c));
            gt_boxes.insert(name, gt.iter().flatten().filter(|b| b.class == c).count());
        }
        Self {
            ap50,
            images: gt.len(),
            detections: dets.iter().filter(|d| classes.contains(d.class)).count(),
            gt_boxes,
            source: None,
            pictures: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Car AP50 in the VOC07 flavour (the table's headline), if cars have ground truth.
    pub fn car_voc07(&self) -> Option<f64> {
        self.ap50.get("car").copied().flatten().map(|a| a.voc07)
    }

    /// The per-class table, in percent.
    pub fn text_table(&self) -> String {
        let mut s = format!(
            "{:<12} {:>6} {:>10} {:>10} {:>10}\n",
            "class", "boxes", "AP50 VOC07", "all-point", "COCO"
        );
        for (name, ap) in &self.ap50 {
            let n = self.gt_boxes.get(name).copied().unwrap_or(0);
            match ap {
                Some(a) => {
                    let _ = writeln!(
                        s,
                        "{name:<12} {n:>6} {:>9.2}% {:>9.2}% {:>9.2}%",
                        100.0 * a.voc07,
                        100.0 * a.all_point,
                        100.0 * a.coco
                    );
                }
                None => {
                    let _ = writeln!(s, "{name:<12} {n:>6} {:>10} {:>10} {:>10}", "-", "-", "-");
                }
            }
        }
        let _ = writeln!(s, "{} images, {} detections", self.images, self.detections);
        s
    }

    /// Writes `report.json`, `report.md` and, when `pictures` is not empty,
    /// `pictures/detections.png`, each through a temporary file and a rename.
    pub fn write(&mut self, out: &Path, pictures: &[RgbImage]) -> Result<(), DetError> {
        std::fs::create_dir_all(out).map_err(DetError::io(out))?;
        let listed: &[String] = if pictures.is_empty() {
            &[]
        } else {
            &["pictures/detections.png".to_string()]
        };
        let stale = seg_metrics::pictures::stale(out, listed);
        if !pictures.is_empty() {
            let rows: Vec<Vec<RgbImage>> = pictures
                .chunks(2)
                .map(|c| {
                    c.iter()
                        .map(|p| seg_metrics::pictures::resize_to_width(p, TILE_WIDTH))
                        .collect()
                })
                .collect();
            let sheet = seg_metrics::pictures::grid(&rows);
            let path = out.join("pictures/detections.png");
            seg_labels::png_io::write_rgb(&path, &sheet)?;
            self.pictures = vec!["pictures/detections.png".into()];
        } else {
            self.pictures.clear();
        }
        seg_metrics::pictures::remove(&stale).map_err(DetError::io(&out.join("pictures")))?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| DetError::invalid(out, e.to_string()))?;
        let p = out.join("report.json");
        seg_labels::fsutil::write_atomic(&p, &json).map_err(DetError::io(&p))?;
        let mut md = String::from("# Detection: AP at IoU 0.5\n\n");
        if let Some(src) = &self.source {
            let _ = writeln!(md, "{src}\n");
        }
        md += "| class | boxes | AP50 VOC07 % | all-point % | COCO % |\n|---|---:|---:|---:|---:|\n";
        for (name, ap) in &self.ap50 {
            let n = self.gt_boxes.get(name).copied().unwrap_or(0);
            match ap {
                Some(a) => {
                    let _ = writeln!(
                        md,
                        "| {name} | {n} | {:.2} | {:.2} | {:.2} |",
                        100.0 * a.voc07,
                        100.0 * a.all_point,
                        100.0 * a.coco
                    );
                }
                None => {
                    let _ = writeln!(md, "| {name} | {n} | - | - | - |");
                }
            }
        }
        let _ = writeln!(
            md,
            "\n{} images, {} detections. VOC07 = 11-point (`voc_eval.py`, use_07_metric), all-point = VOC2010+, COCO = pycocotools AP50 (101 recall points, 100 detections per image).",
            self.images, self.detections
        );
        if !self.warnings.is_empty() {
            md += "\n## Warnings\n\n";
            for w in &self.warnings {
                let _ = writeln!(md, "- {w}");
            }
        }
        if !self.pictures.is_empty() {
            md += "\n![detections](pictures/detections.png)\n\nGround truth in green, detections scoring at least 0.3 in red.\n";
        }
        let p = out.join("report.md");
        seg_labels::fsutil::write_atomic(&p, md.as_bytes()).map_err(DetError::io(&p))
    }
}

/// Draws a box outline (clipped to the image).
pub fn draw_box(img: &mut RgbImage, b: &PixelBox, color: [u8; 3], thickness: u32) {
    if img.width == 0 || img.height == 0 {
        return;
    }
    let (w, h) = (img.width as i64, img.height as i64);
    let x0 = (b.x_min.round() as i64).clamp(0, w - 1);
    let y0 = (b.y_min.round() as i64).clamp(0, h - 1);
    let x1 = (b.x_max.round() as i64).clamp(0, w - 1);
    let y1 = (b.y_max.round() as i64).clamp(0, h - 1);
    let t = thickness as i64;
    let mut put = |x: i64, y: i64| {
        if x >= 0 && y >= 0 && x < w && y < h {
            let i = 3 * (y * w + x) as usize;
            img.data[i..i + 3].copy_from_slice(&color);
        }
    };
    for k in 0..t {
        for x in x0..=x1 {
            put(x, y0 + k);
            put(x, y1 - k);
        }
        for y in y0..=y1 {
            put(x0 + k, y);
            put(x1 - k, y);
        }
    }
}

/// The picture of one image: ground truth in green, detections scoring at least
/// [`PICTURE_MIN_SCORE`] in red (drawn on a copy upscaled to at least 512 pixels wide, so thin
/// outlines stay visible).
pub fn picture(image: &RgbImage, gt: &[GtBox], dets: &[(PixelBox, f64)]) -> RgbImage {
    let scale = (TILE_WIDTH / image.width.max(1)).max(1);
    let mut img = seg_metrics::pictures::resize_to_width(image, image.width * scale);
    let s = scale as f64;
    let up = |b: &PixelBox| {
        PixelBox::new(
            b.x_min * s,
            b.y_min * s,
            (b.x_max + 1.0) * s - 1.0,
            (b.y_max + 1.0) * s - 1.0,
        )
    };
    for g in gt {
        draw_box(&mut img, &up(&g.bbox), [40, 220, 60], 2);
    }
    for (b, score) in dets {
        if *score >= PICTURE_MIN_SCORE {
            draw_box(&mut img, &up(b), [235, 40, 40], 2);
        }
    }
    img
}

/// Pictures of the first `n` images of `ds` (those whose image decodes): ground truth `gt[i]`
/// and the detections `dets(i)` as `(box, score)`.
pub fn first_pictures(
    ds: &crate::DetDataset,
    gt: &[Vec<GtBox>],
    dets: impl Fn(usize) -> Vec<(PixelBox, f64)>,
    n: usize,
) -> Vec<RgbImage> {
    ds.entries
        .iter()
        .zip(gt)
        .enumerate()
        .take(n)
        .filter_map(|(i, (e, g))| {
            let img = crate::dataset::decode_image(&e.image).ok()?;
            Some(picture(&img, g, &dets(i)))
        })
        .collect()
}

/// `eval --task detection --pred`: the report of the detections file `dets_file` on `ds`
/// (its ground truth of `classes`), written to `out` with pictures of the first `samples`
/// images; `source` says what was evaluated.
pub fn evaluate_file(
    ds: &crate::DetDataset,
    dets_file: &Path,
    classes: ClassSet,
    samples: usize,
    out: &Path,
    source: String,
) -> Result<DetReport, DetError> {
    let gt = ds.all_boxes()?;
    let dets = crate::dets::read_detections(dets_file, &ds.image_index())?;
    let mut r = DetReport::compute(&gt, &dets, classes);
    // The boxes come from the instanceIds files alone; an image missing beside its ground truth
    // is evaluated all the same, and said, as no detector could have seen it here.
    let missing: Vec<&Path> = ds
        .entries
        .iter()
        .map(|e| e.image.as_path())
        .filter(|i| !i.is_file())
        .collect();
    if let Some(first) = missing.first() {
        r.warnings.push(format!(
            "{} image(s) missing beside their ground truth (the first: {}): evaluated from their `*_gtFine_instanceIds.png` all the same",
            missing.len(),
            first.display()
        ));
    }
    let boxes_of = |i: usize| {
        dets.iter()
            .filter(|d| d.image == i && classes.contains(d.class))
            .map(|d| (d.bbox, d.score))
            .collect()
    };
    let pictures = first_pictures(ds, &gt, boxes_of, samples);
    r.source = Some(source);
    r.write(out, &pictures)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boxes::{GtBox, PixelBox};

    #[test]
    fn detections_of_classes_not_evaluated_are_not_counted() {
        let bbox = PixelBox {
            x_min: 0.0,
            y_min: 0.0,
            x_max: 9.0,
            y_max: 9.0,
        };
        let car = crate::classes::CAR;
        let other = (car + 1) % DET_CLASSES.len();
        let gt = vec![vec![GtBox { class: car, bbox }]];
        let det = |class| ApInput {
            image: 0,
            class,
            bbox,
            score: 0.9,
        };
        let r = DetReport::compute(&gt, &[det(other)], ClassSet::Car);
        assert_eq!(r.detections, 0);
        assert_eq!(r.car_voc07(), Some(0.0));
        let r = DetReport::compute(&gt, &[det(other), det(car)], ClassSet::Car);
        assert_eq!(r.detections, 1);
        assert!((r.car_voc07().unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(
            DetReport::compute(&gt, &[det(other), det(car)], ClassSet::All).detections,
            2
        );
    }

    #[test]
    fn an_image_missing_beside_its_ground_truth_is_evaluated_and_said() {
        use seg_labels::png_io;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let at = |top: &str, name: String| root.join(top).join("val/lindau").join(name);
        for (stem, image) in [("lindau_000000_000019", true), ("lindau_000001_000019", false)] {
            let car = [26000u16, 26000, 26000, 26000, 26000, 26000];
            png_io::write_gray16(&at("gtFine", format!("{stem}_gtFine_instanceIds.png")), 3, 2, &car).unwrap();
            if image {
                let rgb = RgbImage {
                    width: 3,
                    height: 2,
                    data: vec![9; 18],
                };
                png_io::write_rgb(&at("leftImg8bit", format!("{stem}_leftImg8bit.png")), &rgb).unwrap();
            }
        }
        let ds = crate::DetDataset::open_cityscapes(root, "val", true, ClassSet::Car).unwrap();
        let dets = root.join("dets.json");
        std::fs::write(&dets, "[]").unwrap();
        let out = root.join("out");
        let r = evaluate_file(&ds, &dets, ClassSet::Car, 0, &out, String::new()).unwrap();
        assert_eq!((r.images, r.gt_boxes["car"]), (2, 2));
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].starts_with("1 image(s) missing beside their ground truth (the first: ")
                && r.warnings[0].contains("lindau_000001_000019_leftImg8bit.png"),
            "{:?}",
            r.warnings
        );
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(md.contains("## Warnings\n\n- 1 image(s) missing"), "{md}");
    }
}
