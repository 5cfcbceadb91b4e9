//! The official Cityscapes label table (`helpers/labels.py` of cityscapesscripts 2.3.0).

/// One row of the official label table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    pub name: &'static str,
    /// Label id as stored in `*_gtFine_labelIds.png`; -1 for `license plate`.
    pub id: i16,
    /// Train id in `0..19`, or 255 (ignore); -1 for `license plate`.
    pub train_id: i16,
    pub category: &'static str,
    pub cat_id: u8,
    pub has_instances: bool,
    pub ignore_in_eval: bool,
    pub color: [u8; 3],
}

#[allow(clippy::too_many_arguments)] // one argument per column of the official table
const fn l(
    name: &'static str,
    id: i16,
    train_id: i16,
    category: &'static str,
    cat_id: u8,
    has_instances: bool,
    ignore_in_eval: bool,
    color: [u8; 3],
) -> Label {
    Label {
        name,
        id,
        train_id,
        category,
        cat_id,
        has_instances,
        ignore_in_eval,
        color,
    }
}

/// The table, in the official order.
pub const LABELS: [Label; 35] = [
    l("unlabeled", 0, 255, "void", 0, false, true, [0, 0, 0]),
    l("ego vehicle", 1, 255, "void", 0, false, true, [0, 0, 0]),
    l("rectification border", 2, 255, "void", 0, false, true, [0, 0, 0]),
    l("out of roi", 3, 255, "void", 0, false, true, [0, 0, 0]),
    l("static", 4, 255, "void", 0, false, true, [0, 0, 0]),
    l("dynamic", 5, 255, "void", 0, false, true, [111, 74, 0]),
    l("ground", 6, 255, "void", 0, false, true, [81, 0, 81]),
    l("road", 7, 0, "flat", 1, false, false, [128, 64, 128]),
    l("sidewalk", 8, 1, "flat", 1, false, false, [244, 35, 232]),
    l("parking", 9, 255, "flat", 1, false, true, [250, 170, 160]),
    l("rail track", 10, 255, "flat", 1, false, true, [230, 150, 140]),
    l("building", 11, 2, "construction", 2, false, false, [70, 70, 70]),
    l("wall", 12, 3, "construction", 2, false, false, [102, 102, 156]),
    l("fence", 13, 4, "construction", 2, false, false, [190, 153, 153]),
    l("guard rail", 14, 255, "construction", 2, false, true, [180, 165, 180]),
    l("bridge", 15, 255, "construction", 2, false, true, [150, 100, 100]),
    l("tunnel", 16, 255, "construction", 2, false, true, [150, 120, 90]),
    l("pole", 17, 5, "object", 3, false, false, [153, 153, 153]),
    l("polegroup", 18, 255, "object", 3, false, true, [153, 153, 153]),
    l("traffic light", 19, 6, "object", 3, false, false, [250, 170, 30]),
    l("traffic sign", 20, 7, "object", 3, false, false, [220, 220, 0]),
    l("vegetation", 21, 8, "nature", 4, false, false, [107, 142, 35]),
    l("terrain", 22, 9, "nature", 4, false, false, [152, 251, 152]),
    l("sky", 23, 10, "sky", 5, false, false, [70, 130, 180]),
    l("person", 24, 11, "human", 6, true, false, [220, 20, 60]),
    l("rider", 25, 12, "human", 6, true, false, [255, 0, 0]),
    l("car", 26, 13, "vehicle", 7, true, false, [0, 0, 142]),
    l("truck", 27, 14, "vehicle", 7, true, false, [0, 0, 70]),
    l("bus", 28, 15, "vehicle", 7, true, false, [0, 60, 100]),
    l("caravan", 29, 255, "vehicle", 7, true, true, [0, 0, 90]),
    l("trailer", 30, 255, "vehicle", 7, true, true, [0, 0, 110]),
    l("train", 31, 16, "vehicle", 7, true, false, [0, 80, 100]),
    l("motorcycle", 32, 17, "vehicle", 7, true, false, [0, 0, 230]),
    l("bicycle", 33, 18, "vehicle", 7, true, false, [119, 11, 32]),
    l("license plate", -1, -1, "vehicle", 7, false, true, [0, 0, 142]),
];

/// Number of evaluated (train) classes.
pub const NUM_CLASSES: usize = 19;

/// Number of label ids (0..=33) in the table.
pub const NUM_LABEL_IDS: usize = 34;

/// Label ids of the 19 train classes, in train-id order.
pub const TRAIN_LABEL_IDS: [u8; NUM_CLASSES] =
    [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33];

/// Official names of the 19 train classes, in train-id order.
pub const TRAIN_CLASS_NAMES: [&str; NUM_CLASSES] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
];

/// Official colours of the 19 train classes, in train-id order.
pub const TRAIN_COLORS: [[u8; 3]; NUM_CLASSES] = {
    let mut out = [[0u8; 3]; NUM_CLASSES];
    let mut i = 0;
    while i < NUM_CLASSES {
        out[i] = LABELS[TRAIN_LABEL_IDS[i] as usize].color;
        i += 1;
    }
    out
};

/// The row for a label id in `0..=33`.
pub fn label_by_id(id: u8) -> Option<&'static Label> {
    LABELS.get(id as usize).filter(|l| l.id == id as i16)
}

/// The warning for Cityscapes ground truth read from `*_gtFine_labelTrainIds.png` where an image
/// has no `*_gtFine_labelIds.png` (`count` images, the first `first`): the official evaluator
/// reads labelIds only, so an evaluation of them is not its own. One sentence for the readers
/// (`inspect`, `check`, a run's evaluation) and for `eval --pred`.
pub fn train_ids_only_warning(count: usize, first: &std::path::Path) -> String {
    format!(
        "{count} ground-truth image(s) have only `*_gtFine_labelTrainIds.png` (the first: {}): read from those; \
         the official evaluator reads `*_gtFine_labelIds.png` only and would not count them",
        first.display()
    )
}

/// A warning when labels read as Cityscapes label ids (GTA5, Cityscapes `labelIds`), counted
/// as `class_pixels` per train id and `ignored` pixels, hold none of the classes from traffic
/// light on (label ids 19 to 33) and are mostly ignored: the mark of labels already converted
/// to train ids (0-18, 255), whose road (0) reads as void and whose 255 is outside the table.
/// One sentence for the readers (`inspect`, `check`), a run's evaluation and `eval --pred`.
pub fn train_ids_look_warning(class_pixels: &[u64; crate::NUM_CLASSES], ignored: u64) -> Option<String> {
    let total: u64 = class_pixels.iter().sum::<u64>() + ignored;
    let later: u64 = class_pixels[6..].iter().sum();
    (total > 0 && later == 0 && ignored * 2 > total).then(|| {
        format!(
            "the labels hold no pixel of traffic light to bicycle (label ids 19-33) and {:.0}% of them \
             are ignored: they look like train ids (0-18, 255, as DAFormer's and MMSegmentation's \
             conversions write them), where this reader takes Cityscapes label ids 0-33; give the \
             original labels",
            100.0 * ignored as f64 / total as f64
        )
    })
}

/// Label id → train id (255 for ignored ids and for ids outside the table).
pub fn id_to_train_id(id: u8) -> u8 {
    match label_by_id(id) {
        Some(l) if (0..NUM_CLASSES as i16).contains(&l.train_id) => l.train_id as u8,
        _ => crate::IGNORE,
    }
}

/// Train id → label id, as `labels.py` does it: 255 (and anything else) maps to `unlabeled` (0).
pub fn train_id_to_id(train_id: u8) -> u8 {
    TRAIN_LABEL_IDS.get(train_id as usize).copied().unwrap_or(0)
}

/// The palette used for colour label images: label id → colour, everything else black.
pub fn label_id_palette() -> Vec<[u8; 3]> {
    (0..256u16)
        .map(|i| label_by_id(i as u8).filter(|_| i < 256).map_or([0, 0, 0], |l| l.color))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_ids_match_the_official_table() {
        for (t, &id) in TRAIN_LABEL_IDS.iter().enumerate() {
            assert_eq!(id_to_train_id(id), t as u8);
            assert_eq!(train_id_to_id(t as u8), id);
            assert_eq!(LABELS[id as usize].name, TRAIN_CLASS_NAMES[t]);
        }
        assert_eq!(id_to_train_id(0), 255);
        assert_eq!(id_to_train_id(9), 255); // parking
        assert_eq!(id_to_train_id(34), 255);
        assert_eq!(train_id_to_id(255), 0);
        assert_eq!(TRAIN_COLORS[0], [128, 64, 128]);
        assert_eq!(TRAIN_COLORS[18], [119, 11, 32]);
        let evaluated = LABELS.iter().filter(|l| !l.ignore_in_eval).count();
        assert_eq!(evaluated, NUM_CLASSES);
    }
}
