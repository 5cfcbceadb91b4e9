//! The streaming confusion matrix over the 19 Cityscapes train classes, and the scores the
//! official evaluator derives from it (per-class IoU, protocol means, accuracies).
//!
//! Rows are ground-truth train ids `0..19`; ground-truth pixels with train id 255 never enter
//! the matrix. Columns are predicted train ids `0..19` plus one column, [`VOID_COLUMN`], for a
//! prediction of 255 (a void or ignored label id). This is exactly the official 34-id
//! evaluator (`evalPixelLevelSemanticLabeling.py`) once label ids have gone through
//! `id_to_train_id`: the map is a bijection on the 19 evaluated ids, the rows of ignored
//! ground-truth ids are the ones the official FP sum leaves out, and its FN sum runs over
//! every column, void ones included.
//!
//! # Speed
//! [`ConfusionMatrix::add`] reads eight pixels of each map with one 8-byte load, turns each
//! (ground truth, prediction) byte pair into a histogram slot with two 256-entry tables (no
//! branch, no bounds check), and counts into four interleaved `u32` histograms that stay in L1
//! (several, so that runs of one class do not serialise on a single counter). Maps above 256 Ki
//! pixels are split into chunks spread with rayon and merged into `u64` counts. On 2048x1024
//! maps that is about 1.0 Gpixel/s on the 2-vCPU development machine (0.73 G on one thread),
//! 13x the equivalent `numpy.bincount`; it is compute-bound (about 3.4 cycles per pixel), at
//! roughly 13% of main-memory bandwidth. Numbers and method: `benches/benches/confusion.rs`
//! and `benches/reference/confusion_numpy.py`.

use rayon::prelude::*;
use seg_labels::{Protocol, IGNORE, NUM_CLASSES};

/// Number of columns: the 19 classes and one for "predicted void / ignored" (255).
pub const COLUMNS: usize = NUM_CLASSES + 1;
/// The column that counts predictions of 255.
pub const VOID_COLUMN: usize = NUM_CLASSES;

/// Errors from feeding label maps to the metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("ground truth holds {gt} pixels but the prediction holds {pred}")]
    LengthMismatch { gt: usize, pred: usize },
    #[error("predicted train id {value} is neither a class (0..=18) nor 255 (ignore)")]
    PredValue { value: u8 },
    #[error("ground-truth train id {value} is neither a class (0..=18) nor 255 (ignore)")]
    GtValue { value: u8 },
}

/// Counts of (ground-truth class, predicted column) pixel pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    counts: [[u64; COLUMNS]; NUM_CLASSES],
    /// Ground-truth pixels of 255 (ignored, not evaluated).
    ignored: u64,
}

impl Default for ConfusionMatrix {
    fn default() -> Self {
        Self::new()
    }
}

// --- the hot loop -----------------------------------------------------------------------------

/// Histogram slots: row `r` (0..=20) starts at `21 * r`, column `c` (0..=20) is added to it.
/// Row 19 collects ground-truth 255 (discarded), row 20 and column 20 collect invalid values.
/// 21 × 21 = 441 slots fit below 512, so masking with 511 keeps every index in bounds.
const STRIDE: usize = 21;
const SLOTS: usize = 512;
const SLOT_MASK: usize = SLOTS - 1;
const ROW_DISCARD: usize = NUM_CLASSES;
const INVALID: usize = NUM_CLASSES + 1;
/// Interleaved sub-histograms: consecutive pixels (often the same class) hit different
/// counters, so increments do not wait on each other. 4 × 512 × 4 B = 8 KiB, L1-resident.
/// (Measured on the bench machine: 4 lanes fed 8 pixels per iteration beat 8 lanes, and
/// byte-by-byte slices, by about 10%.)
const LANES: usize = 4;

const fn row_table() -> [u16; 256] {
    let mut t = [(INVALID * STRIDE) as u16; 256];
    let mut i = 0;
    while i < NUM_CLASSES {
        t[i] = (i * STRIDE) as u16;
        i += 1;
    }
    t[IGNORE as usize] = (ROW_DISCARD * STRIDE) as u16;
    t
}

const fn col_table() -> [u16; 256] {
    let mut t = [INVALID as u16; 256];
    let mut i = 0;
    while i < NUM_CLASSES {
        t[i] = i as u16;
        i += 1;
    }
    t[IGNORE as usize] = VOID_COLUMN as u16;
    t
}

static ROW_OF: [u16; 256] = row_table();
static COL_OF: [u16; 256] = col_table();

/// Pixels per rayon task; also bounds every `u32` counter far below overflow.
const CHUNK: usize = 256 * 1024;

#[inline(always)]
fn slot(g: u8, p: u8) -> usize {
    (ROW_OF[g as usize] + COL_OF[p as usize]) as usize & SLOT_MASK
}

/// Histogram of one chunk (at most `CHUNK` pixels, so `u32` cannot overflow).
fn histogram_chunk(gt: &[u8], pred: &[u8], out: &mut [u64; SLOTS]) {
    debug_assert!(gt.len() <= CHUNK && gt.len() == pred.len());
    let mut h = [[0u32; SLOTS]; LANES];
    let mut g8 = gt.chunks_exact(8);
    let mut p8 = pred.chunks_exact(8);
    for (g, p) in (&mut g8).zip(&mut p8) {
        // Eight pixels from one 8-byte load per map; pixel k goes to lane k % 4. Indexing the
        // 256-entry tables by a byte and masking the slot leaves no bounds check in this loop.
        let g = u64::from_le_bytes(g.try_into().unwrap_or([0; 8]));
        let p = u64::from_le_bytes(p.try_into().unwrap_or([0; 8]));
        for k in 0..8 {
            h[k % LANES][slot((g >> (8 * k)) as u8, (p >> (8 * k)) as u8)] += 1;
        }
    }
    for (&g, &p) in g8.remainder().iter().zip(p8.remainder()) {
        h[0][slot(g, p)] += 1;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o += h.iter().map(|lane| lane[i] as u64).sum::<u64>();
    }
}

fn histogram(gt: &[u8], pred: &[u8]) -> Box<[u64; SLOTS]> {
    if gt.len() <= CHUNK {
        let mut out = Box::new([0u64; SLOTS]);
        histogram_chunk(gt, pred, &mut out);
        return out;
    }
    gt.par_chunks(CHUNK)
        .zip(pred.par_chunks(CHUNK))
        .fold(
            || Box::new([0u64; SLOTS]),
            |mut acc, (g, p)| {
                histogram_chunk(g, p, &mut acc);
                acc
            },
        )
        .reduce(
            || Box::new([0u64; SLOTS]),
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b.iter()) {
                    *x += y;
                }
                a
            },
        )
}

impl ConfusionMatrix {
    /// An empty matrix.
    pub fn new() -> Self {
        Self {
            counts: [[0; COLUMNS]; NUM_CLASSES],
            ignored: 0,
        }
    }

    /// Adds one image: `gt_train_ids` and `pred_train_ids` are row-major train ids of the same
    /// image (0..=18, or 255). Ground-truth 255 pixels are skipped; a predicted 255 counts in
    /// the void column. On error the matrix is left unchanged.
    pub fn add(&mut self, gt_train_ids: &[u8], pred_train_ids: &[u8]) -> Result<(), MetricsError> {
        if gt_train_ids.len() != pred_train_ids.len() {
            return Err(MetricsError::LengthMismatch {
                gt: gt_train_ids.len(),
                pred: pred_train_ids.len(),
            });
        }
        let h = histogram(gt_train_ids, pred_train_ids);
        let invalid_row: u64 = h[INVALID * STRIDE..(INVALID + 1) * STRIDE].iter().sum();
        let invalid_col: u64 = (0..=INVALID).map(|r| h[r * STRIDE + INVALID]).sum();
        if invalid_col > 0 {
            let value = pred_train_ids
                .iter()
                .copied()
                .find(|&v| COL_OF[v as usize] as usize == INVALID);
            return Err(MetricsError::PredValue {
                value: value.unwrap_or_default(),
            });
        }
        if invalid_row > 0 {
            let value = gt_train_ids
                .iter()
                .copied()
                .find(|&v| ROW_OF[v as usize] as usize == INVALID * STRIDE);
            return Err(MetricsError::GtValue {
                value: value.unwrap_or_default(),
            });
        }
        for (r, row) in self.counts.iter_mut().enumerate() {
            for (c, cell) in row.iter_mut().enumerate() {
                *cell += h[r * STRIDE + c];
            }
        }
        self.ignored += h[ROW_DISCARD * STRIDE..(ROW_DISCARD + 1) * STRIDE].iter().sum::<u64>();
        Ok(())
    }

    /// Adds every ground-truth pixel of an image as predicted void (all wrong): what a missing
    /// prediction counts as with `--missing-as-wrong`.
    pub fn add_all_wrong(&mut self, gt_train_ids: &[u8]) -> Result<(), MetricsError> {
        let void = vec![IGNORE; gt_train_ids.len()];
        self.add(gt_train_ids, &void)
    }

    /// Adds another matrix's counts (e.g. from another thread).
    pub fn merge(&mut self, other: &ConfusionMatrix) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            for (x, y) in a.iter_mut().zip(b.iter()) {
                *x += y;
            }
        }
        self.ignored += other.ignored;
    }

    /// Builds a matrix from raw counts (tests, or a matrix read back from `confusion.csv`);
    /// its ignored pixels are not known, and counted 0.
    pub fn from_counts(counts: [[u64; COLUMNS]; NUM_CLASSES]) -> Self {
        Self { counts, ignored: 0 }
    }

    /// Ground-truth pixels of 255 the added images held (ignored, not evaluated).
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Raw counts: `counts()[gt][pred]`, with `pred == VOID_COLUMN` for predicted 255.
    pub fn counts(&self) -> &[[u64; COLUMNS]; NUM_CLASSES] {
        &self.counts
    }

    /// Evaluated pixels (ground truth not ignored).
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// True positives of class `c`.
    pub fn true_positives(&self, c: usize) -> u64 {
        self.counts[c][c]
    }

    /// False negatives of class `c`: its ground-truth pixels predicted as anything else,
    /// void included.
    pub fn false_negatives(&self, c: usize) -> u64 {
        self.gt_pixels(c) - self.counts[c][c]
    }

    /// False positives of class `c`: pixels predicted `c` whose ground truth is another
    /// evaluated class (pixels with ignored ground truth never count).
    pub fn false_positives(&self, c: usize) -> u64 {
        (0..NUM_CLASSES).filter(|&r| r != c).map(|r| self.counts[r][c]).sum()
    }

    /// Ground-truth pixels of class `c`.
    pub fn gt_pixels(&self, c: usize) -> u64 {
        self.counts[c].iter().sum()
    }

    /// IoU = TP / (TP + FP + FN) per class; `None` where TP + FP + FN = 0 (the official NaN).
    pub fn class_iou(&self) -> [Option<f64>; NUM_CLASSES] {
        std::array::from_fn(|c| {
            let tp = self.true_positives(c);
            let denom = tp + self.false_positives(c) + self.false_negatives(c);
            (denom > 0).then(|| tp as f64 / denom as f64)
        })
    }

    /// Mean IoU over the protocol's classes that have a score (the official
    /// `averageScoreClasses`); `None` if none has one.
    pub fn miou(&self, protocol: Protocol) -> Option<f64> {
        let iou = self.class_iou();
        mean(protocol.train_ids().iter().filter_map(|&t| iou[t as usize]))
    }

    /// Recall of each class, TP / (GT pixels); `None` for classes absent from the ground truth.
    pub fn class_accuracy(&self) -> [Option<f64>; NUM_CLASSES] {
        std::array::from_fn(|c| {
            let n = self.gt_pixels(c);
            (n > 0).then(|| self.counts[c][c] as f64 / n as f64)
        })
    }

    /// Correct pixels / evaluated pixels, over all 19 classes; `None` if nothing was evaluated.
    pub fn pixel_accuracy(&self) -> Option<f64> {
        let total = self.total();
        let correct: u64 = (0..NUM_CLASSES).map(|c| self.counts[c][c]).sum();
        (total > 0).then(|| correct as f64 / total as f64)
    }

    /// Mean of [`Self::class_accuracy`] over the protocol's classes present in the ground truth.
    pub fn mean_class_accuracy(&self, protocol: Protocol) -> Option<f64> {
        let acc = self.class_accuracy();
        mean(protocol.train_ids().iter().filter_map(|&t| acc[t as usize]))
    }
}

/// The mean of the values, `None` when there are none (the official `getScoreAverage` over the
/// non-NaN scores).
pub(crate) fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts added pixel by pixel, the obvious way, to check the fast path against.
    fn naive(gt: &[u8], pred: &[u8]) -> ConfusionMatrix {
        let mut m = ConfusionMatrix::new();
        for (&g, &p) in gt.iter().zip(pred) {
            if g == IGNORE {
                m.ignored += 1;
                continue;
            }
            let col = if p == IGNORE { VOID_COLUMN } else { p as usize };
            m.counts[g as usize][col] += 1;
        }
        m
    }

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn random_ids(n: usize, seed: &mut u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let v = (lcg(seed) % 21) as u8;
                if v >= 19 {
                    IGNORE
                } else {
                    v
                }
            })
            .collect()
    }

    #[test]
    fn fast_path_equals_naive_counting_at_every_size() {
        let mut seed = 7;
        // Odd sizes hit the 4-way remainder; the large one takes the rayon path with a partial
        // last chunk.
        for n in [0, 1, 3, 5, 23 * 23, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let gt = random_ids(n, &mut seed);
            let pred = random_ids(n, &mut seed);
            let mut m = ConfusionMatrix::new();
            m.add(&gt, &pred).unwrap();
            assert_eq!(m, naive(&gt, &pred), "n = {n}");
        }
    }

    #[test]
    fn bad_values_are_errors_and_leave_the_matrix_unchanged() {
        let mut m = ConfusionMatrix::new();
        m.add(&[0, 1], &[0, 1]).unwrap();
        let before = m.clone();
        let e = m.add(&[0, 1, 2], &[0, 1]).unwrap_err();
        assert!(matches!(e, MetricsError::LengthMismatch { gt: 3, pred: 2 }), "{e}");
        let e = m.add(&[0, 1, 2], &[0, 19, 254]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "predicted train id 19 is neither a class (0..=18) nor 255 (ignore)"
        );
        // A bad prediction on an ignored ground-truth pixel is still an error.
        let e = m.add(&[255], &[33]).unwrap_err();
        assert!(matches!(e, MetricsError::PredValue { value: 33 }), "{e}");
        let e = m.add(&[40], &[0]).unwrap_err();
        assert!(matches!(e, MetricsError::GtValue { value: 40 }), "{e}");
        assert_eq!(m, before);
    }

    /// A hand-checked example covering each official rule. Ground truth / prediction pairs
    /// (train ids; 255 = ignore):
    ///
    /// | pixels | gt  | pred | effect                                                  |
    /// |--------|-----|------|---------------------------------------------------------|
    /// | 6      | 0   | 0    | TP road                                                  |
    /// | 2      | 0   | 1    | FN road, FP sidewalk                                     |
    /// | 1      | 0   | 255  | FN road (void prediction is still a miss)                |
    /// | 3      | 1   | 1    | TP sidewalk                                              |
    /// | 1      | 1   | 0    | FN sidewalk, FP road                                     |
    /// | 5      | 255 | 0    | nothing: FP never counts on ignored ground truth         |
    /// | 4      | 255 | 13   | nothing (car absent everywhere else: NaN, left out)      |
    /// | 2      | 2   | 18   | FN building, FP bicycle (bicycle absent from GT: IoU 0)  |
    ///
    /// road:     TP 6, FN 3, FP 1  → 6/10 = 0.6
    /// sidewalk: TP 3, FN 1, FP 2  → 3/6  = 0.5
    /// building: TP 0, FN 2, FP 0  → 0/2  = 0
    /// bicycle:  TP 0, FN 0, FP 2  → 0/2  = 0   (absent from GT, predicted: 0 and counts)
    /// others:   TP+FP+FN = 0      → None (left out of the mean)
    /// mIoU19 = (0.6 + 0.5 + 0 + 0) / 4 = 0.275
    /// mIoU16 = same four classes (all in the 16-class set) = 0.275
    /// mIoU13 = same four classes (all in the 13-class set) = 0.275
    /// pixel accuracy = (6 + 3) / 15 = 0.6 (the 9 ignored-GT pixels are not evaluated)
    /// class accuracy: road 6/9, sidewalk 3/4, building 0/2 → mean = (2/3 + 3/4 + 0) / 3
    fn rules_example() -> (Vec<u8>, Vec<u8>) {
        let runs: [(usize, u8, u8); 8] = [
            (6, 0, 0),
            (2, 0, 1),
            (1, 0, 255),
            (3, 1, 1),
            (1, 1, 0),
            (5, 255, 0),
            (4, 255, 13),
            (2, 2, 18),
        ];
        let mut gt = Vec::new();
        let mut pred = Vec::new();
        for (n, g, p) in runs {
            gt.extend(std::iter::repeat_n(g, n));
            pred.extend(std::iter::repeat_n(p, n));
        }
        (gt, pred)
    }

    #[test]
    fn official_rules_on_a_hand_computed_matrix() {
        let (gt, pred) = rules_example();
        let mut m = ConfusionMatrix::new();
        m.add(&gt, &pred).unwrap();
        assert_eq!(m.total(), 15);
        assert_eq!(
            (m.true_positives(0), m.false_negatives(0), m.false_positives(0)),
            (6, 3, 1)
        );
        assert_eq!(
            (m.true_positives(1), m.false_negatives(1), m.false_positives(1)),
            (3, 1, 2)
        );
        assert_eq!(m.counts()[0][VOID_COLUMN], 1);
        let iou = m.class_iou();
        assert_eq!(iou[0], Some(0.6));
        assert_eq!(iou[1], Some(0.5));
        assert_eq!(iou[2], Some(0.0));
        assert_eq!(iou[18], Some(0.0), "absent from GT but predicted: 0");
        assert_eq!(iou[13], None, "predicted only on ignored GT: not a false positive");
        assert_eq!(iou.iter().filter(|v| v.is_none()).count(), 15);
        for p in [Protocol::Classes19, Protocol::Classes16, Protocol::Classes13] {
            assert!((m.miou(p).unwrap() - 0.275).abs() < 1e-15, "{p:?}");
        }
        assert_eq!(m.pixel_accuracy(), Some(0.6));
        let mca = (2.0 / 3.0 + 0.75 + 0.0) / 3.0;
        assert!((m.mean_class_accuracy(Protocol::Classes19).unwrap() - mca).abs() < 1e-15);
    }

    /// Protocol means are over each protocol's own classes, never a rescaled 19-class mean.
    /// IoUs: wall (3) = 1.0, terrain (9) = 0.5, road (0) = 0.25, every other class None.
    ///   gt wall ×4 → wall;  gt terrain ×1 → terrain, ×1 → road;  gt road ×1 → road, ×2 → void.
    ///   road: TP 1, FN 2, FP 1 → 0.25;  terrain: TP 1, FN 1 → 0.5;  wall: 1.0.
    /// mIoU19 = (1 + 0.5 + 0.25) / 3 = 0.583333…
    /// mIoU16 (no terrain) = (1 + 0.25) / 2 = 0.625
    /// mIoU13 (no wall, no terrain) = 0.25
    #[test]
    fn protocol_means_use_their_own_classes() {
        let gt = [3, 3, 3, 3, 9, 9, 0, 0, 0];
        let pred = [3, 3, 3, 3, 9, 0, 0, 255, 255];
        let mut m = ConfusionMatrix::new();
        m.add(&gt, &pred).unwrap();
        let iou = m.class_iou();
        assert_eq!((iou[3], iou[9], iou[0]), (Some(1.0), Some(0.5), Some(0.25)));
        assert!((m.miou(Protocol::Classes19).unwrap() - 1.75 / 3.0).abs() < 1e-15);
        assert_eq!(m.miou(Protocol::Classes16), Some(0.625));
        assert_eq!(m.miou(Protocol::Classes13), Some(0.25));
    }

    #[test]
    fn empty_and_merged_matrices() {
        let m = ConfusionMatrix::new();
        assert_eq!(m.miou(Protocol::Classes19), None);
        assert_eq!(m.pixel_accuracy(), None);
        let (gt, pred) = rules_example();
        let mut a = ConfusionMatrix::new();
        a.add(&gt[..10], &pred[..10]).unwrap();
        let mut b = ConfusionMatrix::new();
        b.add(&gt[10..], &pred[10..]).unwrap();
        a.merge(&b);
        let mut whole = ConfusionMatrix::new();
        whole.add(&gt, &pred).unwrap();
        assert_eq!(a, whole);
        let mut w = ConfusionMatrix::new();
        w.add_all_wrong(&[0, 0, 255, 5]).unwrap();
        assert_eq!(w.class_iou()[0], Some(0.0));
        assert_eq!(w.counts()[5][VOID_COLUMN], 1);
        assert_eq!(w.total(), 3);
    }
}
