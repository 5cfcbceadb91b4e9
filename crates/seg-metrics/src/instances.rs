//! The official evaluator's other two scores: category IoU, from the confusion matrix alone,
//! and the instance-weighted iIoU (printed `nIoU` by `evalPixelLevelSemanticLabeling.py`), which
//! also reads `*_gtFine_instanceIds.png`.
//!
//! iIoU weighs each ground-truth instance's pixels by `average size of its class / its size`,
//! so that a small pedestrian counts as much as a large one: per instance, TP = its pixels
//! predicted as its class and FN = the rest, both times the weight; FP = the class's false
//! positive pixels, unweighted, as for IoU. The average sizes are the official script's
//! constants. For the `human` and `vehicle` categories, TP is the instance's pixels predicted as
//! any class of the category (with the instance's class weight). Instances are the values
//! above 1000 of an instanceIds map (`label id × 1000 + k`) whose label is evaluated and has
//! instances (person to bicycle; caravan and trailer are ignored in evaluation).
//!
//! The official category masks read predicted label ids, in which caravan and trailer (ignored
//! label ids 29, 30) count as vehicle: a prediction's categories are taken from its raw ids
//! ([`pred_category_of_label_id`]) and such pixels, void in the confusion matrix, are counted
//! apart. Predictions in train ids (a model's, or `--pred-format trainids`) cannot hold them.

use std::collections::HashMap;
use std::path::Path;

use seg_labels::png_io::{self, LabelEncoding};

use seg_labels::cityscapes::{label_by_id, LABELS};
use seg_labels::{IGNORE, NUM_CLASSES};

use crate::confusion::{ConfusionMatrix, COLUMNS};

/// `args.avgClassSize` of the official script, by train id (person to bicycle).
const AVG_CLASS_SIZE: [(usize, f64); 8] = [
    (11, 3462.4756337644),
    (12, 3930.4788056518),
    (13, 12794.0202738185),
    (14, 27855.1264367816),
    (15, 35732.1511111111),
    (16, 67583.7075812274),
    (17, 6298.7200839748),
    (18, 4672.3249222261),
];

/// The evaluated categories in the official order (`void` has no evaluated class).
pub const CATEGORIES: [&str; 7] = ["flat", "construction", "object", "nature", "sky", "human", "vehicle"];

/// The categories whose classes all have instances: the ones with an iIoU.
pub const INSTANCE_CATEGORIES: [&str; 2] = ["human", "vehicle"];

/// The train ids of a category's evaluated classes.
pub fn category_train_ids(category: &str) -> Vec<usize> {
    let mut ids: Vec<usize> = LABELS
        .iter()
        .filter(|l| l.category == category && !l.ignore_in_eval && l.id >= 0)
        .filter_map(|l| usize::try_from(l.train_id).ok().filter(|&t| t < NUM_CLASSES))
        .collect();
    ids.sort_unstable();
    ids
}

/// The train ids whose classes have an iIoU (person to bicycle).
pub fn instance_train_ids() -> [usize; 8] {
    AVG_CLASS_SIZE.map(|(t, _)| t)
}

fn avg_size(train_id: usize) -> Option<f64> {
    AVG_CLASS_SIZE.iter().find(|(t, _)| *t == train_id).map(|(_, s)| *s)
}

/// Weighted true positives and false negatives.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Weighted {
    tp: f64,
    fn_: f64,
}

/// Instance statistics of an evaluation, accumulated image by image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceStats {
    classes: [Weighted; NUM_CLASSES],
    /// In the order of [`INSTANCE_CATEGORIES`].
    categories: [Weighted; 2],
    /// Pixels of other evaluated ground truth predicted as an ignored class of a category
    /// (caravan, trailer: void in the confusion matrix), in the order of [`INSTANCE_CATEGORIES`].
    void_category_fp: [u64; 2],
    /// Ground-truth instances counted.
    pub instances: usize,
}

impl InstanceStats {
    /// Adds one image: its instanceIds map, its ground truth and prediction in train ids, and
    /// the prediction's instance category per pixel ([`pred_category_of_label_id`] or
    /// [`pred_category_of_train_id`]), all of one length (the caller checks the sizes). Values
    /// outside the table (`65535`) are no instance.
    pub fn add(&mut self, instance_ids: &[u16], gt_train_ids: &[u8], pred_train_ids: &[u8], pred_category: &[u8]) {
        // Per instance: its id, train id and category, and its pixels, those predicted as its
        // class and those predicted as its category; found through `slot`, the last instance
        // tried first, as its pixels come in runs.
        struct Instance {
            id: u16,
            train: usize,
            category: usize,
            size: u64,
            tp: u64,
            cat_tp: u64,
        }
        let mut per: Vec<Instance> = Vec::new();
        let mut slot: HashMap<u16, usize> = HashMap::new();
        let mut last: Option<(u16, usize)> = None;
        for (((&v, &g), &p), &pc) in instance_ids
            .iter()
            .zip(gt_train_ids)
            .zip(pred_train_ids)
            .zip(pred_category)
        {
            // A prediction of caravan or trailer (void here, a vehicle id for the official
            // category masks) on other evaluated ground truth: a false positive of `vehicle`.
            if p == IGNORE
                && pc != NO_CATEGORY
                && g != IGNORE
                && category_of_train(usize::from(g)) != Some(usize::from(pc - 1))
            {
                self.void_category_fp[usize::from(pc - 1)] += 1;
            }
            if v <= 1000 {
                continue;
            }
            let k = match last {
                Some((id, k)) if id == v => k,
                _ => {
                    let Some((train, category)) = instance_class(v) else {
                        continue;
                    };
                    let k = *slot.entry(v).or_insert_with(|| {
                        per.push(Instance {
                            id: v,
                            train,
                            category,
                            size: 0,
                            tp: 0,
                            cat_tp: 0,
                        });
                        per.len() - 1
                    });
                    last = Some((v, k));
                    k
                }
            };
            let e = &mut per[k];
            e.size += 1;
            e.tp += u64::from(usize::from(p) == e.train);
            e.cat_tp += u64::from(usize::from(pc) == e.category + 1);
        }
        // In ascending id order, as the official `np.unique`, for the same float sums.
        per.sort_unstable_by_key(|e| e.id);
        for e in per {
            let Some(avg) = avg_size(e.train) else {
                continue;
            };
            let weight = avg / e.size as f64;
            let c = &mut self.classes[e.train];
            c.tp += e.tp as f64 * weight;
            c.fn_ += (e.size - e.tp) as f64 * weight;
            let k = &mut self.categories[e.category];
            k.tp += e.cat_tp as f64 * weight;
            k.fn_ += (e.size - e.cat_tp) as f64 * weight;
            self.instances += 1;
        }
    }

    /// Adds another image set's statistics.
    pub fn merge(&mut self, other: &InstanceStats) {
        for (a, b) in self.classes.iter_mut().zip(&other.classes) {
            a.tp += b.tp;
            a.fn_ += b.fn_;
        }
        for (a, b) in self.categories.iter_mut().zip(&other.categories) {
            a.tp += b.tp;
            a.fn_ += b.fn_;
        }
        for (a, b) in self.void_category_fp.iter_mut().zip(&other.void_category_fp) {
            *a += b;
        }
        self.instances += other.instances;
    }

    /// iIoU of each class with instances (`None` elsewhere, and where TP + FP + FN = 0).
    pub fn class_iiou(&self, cm: &ConfusionMatrix) -> [Option<f64>; NUM_CLASSES] {
        std::array::from_fn(|c| {
            avg_size(c)?;
            let w = self.classes[c];
            let denom = w.tp + cm.false_positives(c) as f64 + w.fn_;
            (denom > 0.0).then(|| w.tp / denom)
        })
    }

    /// iIoU of `human` and `vehicle`, in the order of [`INSTANCE_CATEGORIES`].
    pub fn category_iiou(&self, cm: &ConfusionMatrix) -> [Option<f64>; 2] {
        std::array::from_fn(|k| {
            let w = self.categories[k];
            let fp =
                category_false_positives(cm, &category_train_ids(INSTANCE_CATEGORIES[k])) + self.void_category_fp[k];
            let denom = w.tp + fp as f64 + w.fn_;
            (denom > 0.0).then(|| w.tp / denom)
        })
    }
}

/// The train id and instance category (index into [`INSTANCE_CATEGORIES`]) of an instance id.
fn instance_class(v: u16) -> Option<(usize, usize)> {
    let label = label_by_id(u8::try_from(v / 1000).ok()?)?;
    if label.ignore_in_eval || !label.has_instances {
        return None;
    }
    let train = usize::try_from(label.train_id).ok()?;
    let category = INSTANCE_CATEGORIES.iter().position(|c| *c == label.category)?;
    Some((train, category))
}

/// No instance category, in a prediction's category map.
pub const NO_CATEGORY: u8 = 0;

/// The instance category of a predicted label id as the official category masks take it:
/// `1 + index into` [`INSTANCE_CATEGORIES`] for every label of `human` or `vehicle` with
/// instances (caravan and trailer too, though ignored), else [`NO_CATEGORY`].
pub fn pred_category_of_label_id(id: u16) -> u8 {
    u8::try_from(id)
        .ok()
        .and_then(label_by_id)
        .filter(|l| l.has_instances)
        .and_then(|l| INSTANCE_CATEGORIES.iter().position(|c| *c == l.category))
        .map_or(NO_CATEGORY, |k| k as u8 + 1)
}

/// The instance category of a predicted train id (255: none).
pub fn pred_category_of_train_id(train: u8) -> u8 {
    category_of_train(usize::from(train)).map_or(NO_CATEGORY, |k| k as u8 + 1)
}

fn category_of_train(train: usize) -> Option<usize> {
    match train {
        11 | 12 => Some(0),
        13..=18 => Some(1),
        _ => None,
    }
}

/// Pixels predicted as one of `ids` whose ground truth is an evaluated class outside them.
fn category_false_positives(cm: &ConfusionMatrix, ids: &[usize]) -> u64 {
    (0..NUM_CLASSES)
        .filter(|r| !ids.contains(r))
        .map(|r| ids.iter().map(|&c| cm.counts()[r][c]).sum::<u64>())
        .sum()
}

/// IoU of each category of [`CATEGORIES`], as the official `getIouScoreForCategory`: TP = the
/// category's ground truth predicted as any class of it, FN = the rest of its ground truth
/// (void predictions included), FP = other evaluated ground truth predicted as it.
pub fn category_iou(cm: &ConfusionMatrix) -> [Option<f64>; 7] {
    std::array::from_fn(|k| {
        let ids = category_train_ids(CATEGORIES[k]);
        let counts = cm.counts();
        let tp: u64 = ids
            .iter()
            .map(|&r| ids.iter().map(|&c| counts[r][c]).sum::<u64>())
            .sum();
        let all: u64 = ids.iter().map(|&r| counts[r][..COLUMNS].iter().sum::<u64>()).sum();
        let denom = all + category_false_positives(cm, &ids);
        (denom > 0).then(|| tp as f64 / denom as f64)
    })
}

/// The `*_gtFine_instanceIds.png` beside a Cityscapes ground-truth file (`*_gtFine_labelIds.png`,
/// as the official evaluator's `replace("labelIds", "instanceIds")`, or `*_gtFine_labelTrainIds.png`),
/// read, or why not. The caller compares its size with the labels'.
pub fn read_beside(gt: &Path) -> Result<png_io::LabelImage, String> {
    let file = gt
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(stem) = ["_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))
    else {
        return Err(format!("{} is no Cityscapes ground-truth file name", gt.display()));
    };
    let path = gt.with_file_name(format!("{stem}_gtFine_instanceIds.png"));
    if !path.is_file() {
        return Err(format!("{} not found", path.display()));
    }
    png_io::read_label(&path, LabelEncoding::Instance16).map_err(|e| e.to_string())
}

/// [`read_beside`], of the ground truth's size (`width`×`height`), or why not.
pub fn read_beside_of_size(gt: &Path, width: u32, height: u32) -> Result<Vec<u16>, String> {
    let img = read_beside(gt)?;
    if (img.width, img.height) != (width, height) {
        return Err(format!(
            "its `*_gtFine_instanceIds.png` is {}x{} but the labels are {width}x{height}",
            img.width, img.height
        ));
    }
    Ok(img.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_hold_the_official_classes() {
        assert_eq!(category_train_ids("flat"), [0, 1]);
        assert_eq!(category_train_ids("construction"), [2, 3, 4]);
        assert_eq!(category_train_ids("object"), [5, 6, 7]);
        assert_eq!(category_train_ids("nature"), [8, 9]);
        assert_eq!(category_train_ids("sky"), [10]);
        assert_eq!(category_train_ids("human"), [11, 12]);
        assert_eq!(category_train_ids("vehicle"), [13, 14, 15, 16, 17, 18]);
        assert!(category_train_ids("void").is_empty());
        for t in 0..NUM_CLASSES {
            assert_eq!(
                category_of_train(t),
                INSTANCE_CATEGORIES
                    .iter()
                    .position(|c| category_train_ids(c).contains(&t))
            );
        }
    }

    #[test]
    fn hand_computed_iiou_and_category_iou() {
        // Two cars (26001: 4 pixels, 3 predicted car, 1 truck; 26002: 2 pixels, predicted
        // sky), a person (24000) with 1 of 2 pixels right and 1 predicted rider, one road
        // pixel predicted car (a false positive of car and of vehicle), one caravan instance
        // (ignored) and one out-of-table value.
        let inst: Vec<u16> = vec![26001, 26001, 26001, 26001, 26002, 26002, 24000, 24000, 7, 29000, 65535];
        let pred: Vec<u8> = vec![13, 13, 13, 14, 10, 10, 11, 12, 13, 13, 0];
        let gt: Vec<u8> = vec![13, 13, 13, 13, 13, 13, 11, 11, 0, 255, 255];
        let mut cm = ConfusionMatrix::new();
        cm.add(&gt, &pred).unwrap();
        let cats: Vec<u8> = pred.iter().map(|&p| pred_category_of_train_id(p)).collect();
        let mut st = InstanceStats::default();
        st.add(&inst, &gt, &pred, &cats);
        assert_eq!(st.instances, 3);
        let car = 12794.0202738185;
        let (w1, w2) = (car / 4.0, car / 2.0);
        let (tp, fn_) = (3.0 * w1, 1.0 * w1 + 2.0 * w2);
        let iiou = st.class_iiou(&cm);
        assert!((iiou[13].unwrap() - tp / (tp + 1.0 + fn_)).abs() < 1e-12);
        let person = 3462.4756337644 / 2.0;
        assert!((iiou[11].unwrap() - person / (person + 0.0 + person)).abs() < 1e-12);
        assert_eq!(iiou[0], None, "road has no instances");
        assert_eq!(iiou[12], Some(0.0), "rider: no instance, one false positive");
        assert_eq!(iiou[14], Some(0.0), "truck: no instance, one false positive");
        assert_eq!(iiou[15], None, "bus: no instance, no false positive");
        // Vehicle: the truck pixel counts as vehicle; human: the rider pixel counts as human.
        let cat = st.category_iiou(&cm);
        let (vtp, vfn) = (4.0 * w1 - 0.0, 2.0 * w2);
        assert!((cat[1].unwrap() - vtp / (vtp + 1.0 + vfn)).abs() < 1e-12);
        assert!((cat[0].unwrap() - 1.0).abs() < 1e-12);
        // Category IoU: vehicle TP 4 (3 car + 1 truck), FN 2 (sky), FP 1 (road as car).
        let ciou = category_iou(&cm);
        assert!((ciou[6].unwrap() - 4.0 / 7.0).abs() < 1e-12);
        assert!((ciou[5].unwrap() - 1.0).abs() < 1e-12, "both person pixels are human");
        // Flat: one road pixel, predicted car.
        assert_eq!(ciou[0], Some(0.0));
        // Sky: two false positives, no ground truth.
        assert_eq!(ciou[4], Some(0.0));
        assert_eq!(ciou[1], None);
        // Merging two halves gives the whole.
        let mut a = InstanceStats::default();
        a.add(&inst[..6], &gt[..6], &pred[..6], &cats[..6]);
        let mut b = InstanceStats::default();
        b.add(&inst[6..], &gt[6..], &pred[6..], &cats[6..]);
        a.merge(&b);
        assert_eq!(a, st);
    }

    #[test]
    fn a_predicted_caravan_counts_as_vehicle_as_in_the_official_masks() {
        assert_eq!(pred_category_of_label_id(29), 2);
        assert_eq!(pred_category_of_label_id(30), 2);
        assert_eq!(pred_category_of_label_id(24), 1);
        assert_eq!(pred_category_of_label_id(7), NO_CATEGORY);
        assert_eq!(pred_category_of_label_id(300), NO_CATEGORY);
        // A car instance of two pixels predicted caravan (void) and car; a road pixel predicted
        // caravan: a vehicle false positive the confusion matrix holds as void.
        let inst: Vec<u16> = vec![26000, 26000, 7];
        let gt: Vec<u8> = vec![13, 13, 0];
        let pred: Vec<u8> = vec![255, 13, 255];
        let cats = vec![2, 2, 2];
        let mut cm = ConfusionMatrix::new();
        cm.add(&gt, &pred).unwrap();
        let mut st = InstanceStats::default();
        st.add(&inst, &gt, &pred, &cats);
        let w = 12794.0202738185 / 2.0;
        // Vehicle: both instance pixels are vehicle (tp 2w), one false positive.
        assert!((st.category_iiou(&cm)[1].unwrap() - 2.0 * w / (2.0 * w + 1.0)).abs() < 1e-12);
        // Car: one pixel right.
        assert!((st.class_iiou(&cm)[13].unwrap() - 0.5).abs() < 1e-12);
    }
}
