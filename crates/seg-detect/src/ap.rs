//! Average precision at IoU 0.5, per class, in the three flavours detection-adaptation papers
//! report, each following its reference implementation step for step:
//!
//! - **`voc07`** and **`all_point`**: py-faster-rcnn's `voc_eval.py` (`use_07_metric` true /
//!   false). Detections of a class over all images in descending score; each is compared with
//!   every ground-truth box of its image (IoU with the +1 pixel convention) and takes the one of
//!   highest IoU: a true positive if that IoU is `> 0.5` and the box is not yet taken, else a
//!   false positive (a duplicate stays a false positive even if another box was free). VOC07
//!   averages the best precision at recall ≥ 0, 0.1, …, 1; all-point integrates the precision
//!   envelope over recall (VOC2010+). Every detection counts.
//! - **`coco`**: pycocotools' `COCOeval` for boxes at IoU 0.5, area `all`, `maxDets` 100: per
//!   image and class the 100 highest-scoring detections, each matched to the best **unmatched**
//!   ground-truth box with IoU `≥ 0.5`; precision made monotone and read at 101 recall points
//!   `0, 0.01, …, 1` (the first point at or after each; 0 past the last recall), then averaged.
//!
//! A class without ground-truth boxes has no AP (`None`), as in pycocotools (`voc_eval.py`
//! divides by zero there). Ties in score: for VOC they keep the detections file's order; for COCO
//! they keep it within an image and come in image order across images (the split's images by
//! name), as pycocotools' stable sort over its per-image lists does. `voc_eval.py` sorts with numpy's default, unstable
//! `argsort`, whose order among tied scores depends on numpy's version and the processor
//! (beyond 16 detections); with a stable sort it gives exactly these numbers, and without ties
//! any sort does.

use crate::boxes::{GtBox, PixelBox};

/// One detection: image index, class index, box, score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApInput {
    pub image: usize,
    pub class: usize,
    pub bbox: PixelBox,
    pub score: f64,
}

/// AP at IoU 0.5 of one class, as fractions.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ap3 {
    pub voc07: f64,
    pub all_point: f64,
    pub coco: f64,
}

/// AP of `class` over images whose ground truth is `gt[image]`.
pub fn evaluate(gt: &[Vec<GtBox>], dets: &[ApInput], class: usize) -> Option<Ap3> {
    let per_image: Vec<Vec<PixelBox>> = gt
        .iter()
        .map(|g| g.iter().filter(|b| b.class == class).map(|b| b.bbox).collect())
        .collect();
    let npos: usize = per_image.iter().map(Vec::len).sum();
    if npos == 0 {
        return None;
    }
    let mine: Vec<&ApInput> = dets.iter().filter(|d| d.class == class && d.image < gt.len()).collect();
    let (rec, prec) = voc_curve(&per_image, &mine, npos);
    Some(Ap3 {
        voc07: voc_ap(&rec, &prec, true),
        all_point: voc_ap(&rec, &prec, false),
        coco: coco_ap50(&per_image, &mine, npos),
    })
}

/// Descending score, stable.
fn by_score(dets: &[&ApInput]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..dets.len()).collect();
    order.sort_by(|&a, &b| dets[b].score.total_cmp(&dets[a].score));
    order
}

fn voc_curve(gt: &[Vec<PixelBox>], dets: &[&ApInput], npos: usize) -> (Vec<f64>, Vec<f64>) {
    let mut taken: Vec<Vec<bool>> = gt.iter().map(|g| vec![false; g.len()]).collect();
    let (mut tp, mut fp) = (0.0f64, 0.0f64);
    let mut rec = Vec::with_capacity(dets.len());
    let mut prec = Vec::with_capacity(dets.len());
    for i in by_score(dets) {
        let d = dets[i];
        let mut best: Option<(usize, f64)> = None;
        for (j, g) in gt[d.image].iter().enumerate() {
            let o = d.bbox.iou(g);
            if best.is_none_or(|(_, b)| o > b) {
                best = Some((j, o));
            }
        }
        match best {
            Some((j, o)) if o > 0.5 && !taken[d.image][j] => {
                taken[d.image][j] = true;
                tp += 1.0;
            }
            _ => fp += 1.0,
        }
        rec.push(tp / npos as f64);
        prec.push(tp / (tp + fp).max(f64::EPSILON));
    }
    (rec, prec)
}

fn voc_ap(rec: &[f64], prec: &[f64], use_07: bool) -> f64 {
    if use_07 {
        let mut ap = 0.0;
        for k in 0..11 {
            let t = k as f64 * 0.1;
            let p = rec
                .iter()
                .zip(prec)
                .filter(|(r, _)| **r >= t)
                .map(|(_, p)| *p)
                .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))))
                .unwrap_or(0.0);
            ap += p / 11.0;
        }
        return ap;
    }
    let mut mrec = Vec::with_capacity(rec.len() + 2);
    mrec.push(0.0);
    mrec.extend_from_slice(rec);
    mrec.push(1.0);
    let mut mpre = Vec::with_capacity(prec.len() + 2);
    mpre.push(0.0);
    mpre.extend_from_slice(prec);
    mpre.push(0.0);
    for i in (1..mpre.len()).rev() {
        mpre[i - 1] = mpre[i - 1].max(mpre[i]);
    }
    let mut ap = 0.0;
    for i in 0..mrec.len() - 1 {
        if mrec[i + 1] != mrec[i] {
            ap += (mrec[i + 1] - mrec[i]) * mpre[i + 1];
        }
    }
    ap
}

/// pycocotools' 101 recall thresholds, computed as `numpy.linspace(0, 1, 101)` does.
fn recall_thresholds() -> [f64; 101] {
    let mut t = [0.0; 101];
    let step = 1.0 / 100.0;
    for (i, v) in t.iter_mut().enumerate() {
        *v = i as f64 * step;
    }
    t[100] = 1.0;
    t
}

fn coco_ap50(gt: &[Vec<PixelBox>], dets: &[&ApInput], npos: usize) -> f64 {
    const MAX_DETS: usize = 100;
    const THR: f64 = 0.5;
    // Per image: its detections by score, the first 100, matched greedily.
    let mut scored: Vec<(f64, bool)> = Vec::new();
    for (img, g) in gt.iter().enumerate() {
        let mine: Vec<&ApInput> = dets.iter().copied().filter(|d| d.image == img).collect();
        let order = by_score(&mine);
        let mut matched = vec![false; g.len()];
        for &i in order.iter().take(MAX_DETS) {
            let d = mine[i];
            let mut iou = THR.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for (j, gb) in g.iter().enumerate() {
                if matched[j] {
                    continue;
                }
                let o = d.bbox.iou(gb);
                if o < iou {
                    continue;
                }
                iou = o;
                m = Some(j);
            }
            if let Some(j) = m {
                matched[j] = true;
            }
            scored.push((d.score, m.is_some()));
        }
    }
    // Over all images: stable sort by descending score, cumulative counts.
    let mut order: Vec<usize> = (0..scored.len()).collect();
    order.sort_by(|&a, &b| scored[b].0.total_cmp(&scored[a].0));
    let (mut tp, mut fp) = (0.0f64, 0.0f64);
    let mut rc = Vec::with_capacity(order.len());
    let mut pr = Vec::with_capacity(order.len());
    for i in order {
        if scored[i].1 {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        rc.push(tp / npos as f64);
        pr.push(tp / (fp + tp + f64::EPSILON));
    }
    for i in (1..pr.len()).rev() {
        if pr[i] > pr[i - 1] {
            pr[i - 1] = pr[i];
        }
    }
    let mut sum = 0.0;
    for t in recall_thresholds() {
        // numpy.searchsorted(rc, t, side='left'): the first index with rc[i] >= t.
        let k = rc.partition_point(|&r| r < t);
        if k < pr.len() {
            sum += pr[k];
        }
    }
    sum / 101.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(b: [f64; 4]) -> GtBox {
        GtBox {
            class: 2,
            bbox: PixelBox::new(b[0], b[1], b[2], b[3]),
        }
    }

    fn det(image: usize, b: [f64; 4], score: f64) -> ApInput {
        ApInput {
            image,
            class: 2,
            bbox: PixelBox::new(b[0], b[1], b[2], b[3]),
            score,
        }
    }

    /// Two images, three ground-truth boxes, four detections: a hit, a false positive, a
    /// duplicate, a hit. By hand: in score order TP, FP, FP(dup), TP: recall 1/3, 1/3, 1/3,
    /// 2/3; precision 1, 1/2, 1/3, 1/2.
    #[test]
    fn hand_computed_case() {
        let g = vec![
            vec![gt([0.0, 0.0, 9.0, 9.0]), gt([20.0, 20.0, 29.0, 29.0])],
            vec![gt([0.0, 0.0, 9.0, 9.0])],
        ];
        let d = vec![
            det(0, [0.0, 0.0, 9.0, 9.0], 0.9),
            det(1, [50.0, 50.0, 59.0, 59.0], 0.8),
            det(0, [1.0, 0.0, 9.0, 9.0], 0.7),
            det(1, [0.0, 0.0, 9.0, 8.0], 0.6),
        ];
        let ap = evaluate(&g, &d, 2).unwrap();
        // VOC07: t=0..0.3 -> max prec with rec>=t = 1 (4 points); t=0.4..0.6 -> 1/2 (3 points);
        // t=0.7..1 -> 0 (4 points).
        assert!((ap.voc07 - (4.0 + 1.5) / 11.0).abs() < 1e-12, "{ap:?}");
        // All-point: envelope 1 on (0, 1/3], 1/2 on (1/3, 2/3].
        assert!((ap.all_point - (1.0 / 3.0 + 0.5 / 3.0)).abs() < 1e-12);
        // COCO: recall thresholds 0..0.33 (34 points) -> 1, 0.34..0.66 (33 points) -> 1/2.
        assert!((ap.coco - (34.0 + 16.5) / 101.0).abs() < 1e-12);
        assert_eq!(evaluate(&g, &d, 0), None);
    }

    #[test]
    fn duplicate_rules_differ_between_voc_and_coco() {
        // Two overlapping boxes; the second detection's best IoU is with the box the first took.
        let g = vec![vec![gt([0.0, 0.0, 9.0, 9.0]), gt([3.0, 0.0, 12.0, 9.0])]];
        let d = vec![det(0, [0.0, 0.0, 9.0, 9.0], 0.9), det(0, [1.0, 0.0, 10.0, 9.0], 0.8)];
        let ap = evaluate(&g, &d, 2).unwrap();
        assert!(
            (ap.all_point - 0.5).abs() < 1e-12,
            "voc: the duplicate is a false positive"
        );
        assert!((ap.coco - 1.0).abs() < 1e-12, "coco: it takes the free box");
    }

    #[test]
    fn no_detections_is_zero_and_strict_half_iou() {
        let g = vec![vec![gt([0.0, 0.0, 9.0, 9.0])]];
        assert_eq!(
            evaluate(&g, &[], 2).unwrap(),
            Ap3 {
                voc07: 0.0,
                all_point: 0.0,
                coco: 0.0
            }
        );
        // IoU exactly 0.5: 10×10 box against a 10×20 one containing it.
        let d = vec![det(0, [0.0, 0.0, 9.0, 19.0], 0.5)];
        let ap = evaluate(&g, &d, 2).unwrap();
        assert_eq!(ap.voc07, 0.0, "voc_eval needs IoU > 0.5");
        assert!((ap.coco - 1.0).abs() < 1e-12, "pycocotools takes IoU >= 0.5");
    }
}
