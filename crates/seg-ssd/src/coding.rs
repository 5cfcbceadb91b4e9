//! Box encoding against default boxes, SSD's matching, and greedy non-maximum suppression.
//! Ground-truth and decoded boxes here are `(x_min, y_min, x_max, y_max)` in unit coordinates
//! (continuous extents), default boxes `(cx, cy, w, h)`.

/// Centre and size variances of the box encoding (SSD; torchvision's `BoxCoder` weights
/// `(10, 10, 5, 5)` are their reciprocals).
pub const VARIANCES: [f32; 2] = [0.1, 0.2];

/// `(cx, cy, w, h)` → `(x_min, y_min, x_max, y_max)`.
pub fn point_form(p: [f32; 4]) -> [f32; 4] {
    [
        p[0] - p[2] / 2.0,
        p[1] - p[3] / 2.0,
        p[0] + p[2] / 2.0,
        p[1] + p[3] / 2.0,
    ]
}

/// IoU of two continuous boxes.
pub fn jaccard(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// The regression target of box `g` against prior `p`:
/// `((g_c − p_c) / (0.1 · p_wh), log(g_wh / p_wh) / 0.2)`.
pub fn encode(g: [f32; 4], p: [f32; 4]) -> [f32; 4] {
    let (gcx, gcy) = ((g[0] + g[2]) / 2.0, (g[1] + g[3]) / 2.0);
    let (gw, gh) = (g[2] - g[0], g[3] - g[1]);
    [
        (gcx - p[0]) / (VARIANCES[0] * p[2]),
        (gcy - p[1]) / (VARIANCES[0] * p[3]),
        (gw / p[2]).ln() / VARIANCES[1],
        (gh / p[3]).ln() / VARIANCES[1],
    ]
}

/// The inverse of [`encode`].
pub fn decode(l: [f32; 4], p: [f32; 4]) -> [f32; 4] {
    let cx = p[0] + l[0] * VARIANCES[0] * p[2];
    let cy = p[1] + l[1] * VARIANCES[0] * p[3];
    let w = p[2] * (l[2] * VARIANCES[1]).exp();
    let h = p[3] * (l[3] * VARIANCES[1]).exp();
    [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
}

/// SSD's matching of one image: each prior takes the ground truth it overlaps most; each
/// ground truth also claims its own best prior (whatever the overlap; a later ground truth wins
/// a prior two claim); a prior whose overlap is below `threshold` and that no ground truth
/// claimed is background. Returns per prior the class (0 = background, `label + 1`) and the
/// encoded offsets of its box (zeros for background).
pub fn match_priors(
    truths: &[[f32; 4]],
    labels: &[u32],
    priors: &[[f32; 4]],
    threshold: f32,
) -> (Vec<u32>, Vec<[f32; 4]>) {
    let n = priors.len();
    let mut classes = vec![0u32; n];
    let mut offsets = vec![[0.0f32; 4]; n];
    if truths.is_empty() {
        return (classes, offsets);
    }
    let pf: Vec<[f32; 4]> = priors.iter().map(|&p| point_form(p)).collect();
    let mut best_truth = vec![0usize; n];
    let mut best_overlap = vec![f32::NEG_INFINITY; n];
    let mut best_prior = vec![(0usize, f32::NEG_INFINITY); truths.len()];
    for (t, &g) in truths.iter().enumerate() {
        for (i, &p) in pf.iter().enumerate() {
            let o = jaccard(g, p);
            if o > best_overlap[i] {
                best_overlap[i] = o;
                best_truth[i] = t;
            }
            if o > best_prior[t].1 {
                best_prior[t] = (i, o);
            }
        }
    }
    for (t, &(i, _)) in best_prior.iter().enumerate() {
        best_overlap[i] = 2.0;
        best_truth[i] = t;
    }
    for i in 0..n {
        if best_overlap[i] >= threshold {
            let t = best_truth[i];
            classes[i] = labels[t] + 1;
            offsets[i] = encode(truths[t], priors[i]);
        }
    }
    (classes, offsets)
}

/// Greedy NMS: indices of `boxes` kept, in descending score, dropping any box whose IoU with a
/// kept one exceeds `iou`; at most `top_k`.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], iou: f32, top_k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep.len() >= top_k {
            break;
        }
        if keep.iter().all(|&k| jaccard(boxes[i], boxes[k]) <= iou) {
            keep.push(i);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_by_hand() {
        let p = [0.5, 0.5, 0.2, 0.4];
        let g = [0.42, 0.3, 0.62, 0.9]; // centre (0.52, 0.6), size (0.2, 0.6)
        let l = encode(g, p);
        let want = [0.02 / 0.02, 0.1 / 0.04, 0.0, (1.5f32).ln() / 0.2];
        for (a, b) in l.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{l:?} vs {want:?}");
        }
        let back = decode(l, p);
        for (a, b) in back.iter().zip(g) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn matching_threshold_and_best_prior() {
        let priors = [[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]];
        // Truth 0 covers prior 0 exactly; truth 1 is small inside prior 1 (IoU 0.25 < 0.5) but
        // is that prior's best, so it still matches.
        let truths = [[0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.85, 0.85]];
        let (c, o) = match_priors(&truths, &[2, 0], &priors, 0.5);
        assert_eq!(c, vec![3, 1, 0]);
        assert_eq!(o[0], [0.0, 0.0, 0.0, 0.0]);
        assert_eq!(o[2], [0.0; 4]);
        let (c, _) = match_priors(&[], &[], &priors, 0.5);
        assert_eq!(c, vec![0, 0, 0]);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let b = [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.9, 1.0], [2.0, 2.0, 3.0, 3.0]];
        assert_eq!(nms(&b, &[0.5, 0.9, 0.1], 0.45, 200), vec![1, 2]);
        assert_eq!(nms(&b, &[0.5, 0.9, 0.1], 0.95, 2), vec![1, 0]);
    }
}
