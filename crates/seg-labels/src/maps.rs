//! Every dataset's label ids mapped to the 19 Cityscapes train ids (255 = ignore), and the
//! 19-, 16- and 13-class evaluation protocols. This is the only place these tables live.

use crate::cityscapes::{id_to_train_id, NUM_CLASSES};
use crate::IGNORE;

/// Which on-disk label convention a label map uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Cityscapes `*_gtFine_labelIds.png`: label ids 0..=33.
    Cityscapes,
    /// Cityscapes `*_gtFine_labelTrainIds.png`: train ids 0..=18 and 255.
    CityscapesTrainIds,
    /// GTA5 `labels/*.png`: palette index = Cityscapes label id.
    Gta5,
    /// SYNTHIA-RAND-CITYSCAPES `GT/LABELS/*.png`: SYNTHIA class id in the first channel.
    Synthia,
}

/// SYNTHIA class id → Cityscapes train id (DAFormer `synthia.py`); ids 0..=22 are in the table.
const SYNTHIA_TO_TRAIN: [u8; 23] = [
    255, // 0 void
    10,  // 1 sky
    2,   // 2 building
    0,   // 3 road
    1,   // 4 sidewalk
    4,   // 5 fence
    8,   // 6 vegetation
    5,   // 7 pole
    13,  // 8 car
    7,   // 9 traffic sign
    11,  // 10 pedestrian
    18,  // 11 bicycle
    17,  // 12 motorcycle
    255, // 13 parking-slot
    255, // 14 road-work
    6,   // 15 traffic light
    9,   // 16 terrain
    12,  // 17 rider
    14,  // 18 truck
    15,  // 19 bus
    16,  // 20 train
    3,   // 21 wall
    255, // 22 lanemarking (ignored, not merged into road)
];

/// SYNTHIA class ids, for writers (the toy benchmark) that need the reverse direction.
pub const SYNTHIA_CLASS_NAMES: [&str; 23] = [
    "void",
    "sky",
    "building",
    "road",
    "sidewalk",
    "fence",
    "vegetation",
    "pole",
    "car",
    "traffic sign",
    "pedestrian",
    "bicycle",
    "motorcycle",
    "parking-slot",
    "road-work",
    "traffic light",
    "terrain",
    "rider",
    "truck",
    "bus",
    "train",
    "wall",
    "lanemarking",
];

/// A dense lookup from a dataset's raw label values to train ids.
#[derive(Debug, Clone)]
pub struct LabelMap {
    kind: DatasetKind,
    /// `table[raw]` for raw values inside the dataset's table.
    table: Vec<u8>,
}

/// Result of mapping one raw value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped {
    /// A train id in `0..19`, or 255 for a value the dataset defines as ignored.
    Known(u8),
    /// A value outside the dataset's table: becomes ignore and is counted.
    Outside,
}

impl LabelMap {
    pub fn new(kind: DatasetKind) -> Self {
        let table: Vec<u8> = match kind {
            DatasetKind::Cityscapes | DatasetKind::Gta5 => (0..=33u8).map(id_to_train_id).collect(),
            DatasetKind::CityscapesTrainIds => (0..=255u16)
                .map(|v| if v < NUM_CLASSES as u16 { v as u8 } else { IGNORE })
                .collect(),
            DatasetKind::Synthia => SYNTHIA_TO_TRAIN.to_vec(),
        };
        Self { kind, table }
    }

    pub fn kind(&self) -> DatasetKind {
        self.kind
    }

    /// Maps one raw value.
    pub fn map(&self, raw: u16) -> Mapped {
        if self.kind == DatasetKind::CityscapesTrainIds && !(raw < NUM_CLASSES as u16 || raw == 255) {
            return Mapped::Outside;
        }
        match self.table.get(raw as usize) {
            Some(&t) => Mapped::Known(t),
            None => Mapped::Outside,
        }
    }

    /// Maps a whole label image in place of a new buffer; returns the train ids and the number
    /// of pixels whose raw value was outside the table (they become 255).
    pub fn map_all(&self, raw: &[u16]) -> (Vec<u8>, u64) {
        let mut outside = 0u64;
        let out = raw
            .iter()
            .map(|&v| match self.map(v) {
                Mapped::Known(t) => t,
                Mapped::Outside => {
                    outside += 1;
                    IGNORE
                }
            })
            .collect();
        (out, outside)
    }

    /// The reverse direction: a raw value of this dataset that maps to `train_id`
    /// (the first in table order), or the dataset's void value for 255.
    pub fn raw_for_train_id(&self, train_id: u8) -> u16 {
        self.table.iter().position(|&t| t == train_id).map_or(0, |p| p as u16)
    }
}

/// An evaluation protocol: which train classes the mean is taken over. Written as the string
/// `"19"`, `"16"` or `"13"`; read from that or the bare number (`protocol = 16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Protocol {
    /// The 19 Cityscapes train classes (GTA5 → Cityscapes).
    #[serde(rename = "19")]
    Classes19,
    /// 19 minus terrain, truck and train (SYNTHIA → Cityscapes).
    #[serde(rename = "16")]
    Classes16,
    /// 16 minus wall, fence and pole.
    #[serde(rename = "13")]
    Classes13,
}

impl Protocol {
    /// Train ids averaged over by this protocol.
    pub fn train_ids(self) -> &'static [u8] {
        match self {
            Protocol::Classes19 => &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
            Protocol::Classes16 => &[0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18],
            Protocol::Classes13 => &[0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18],
        }
    }

    pub fn num_classes(self) -> usize {
        self.train_ids().len()
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Classes19 => "19",
            Protocol::Classes16 => "16",
            Protocol::Classes13 => "13",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "19" => Ok(Protocol::Classes19),
            "16" => Ok(Protocol::Classes16),
            "13" => Ok(Protocol::Classes13),
            other => Err(format!("unknown protocol `{other}`: expected 19, 16 or 13")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(i64),
            Text(String),
        }
        let text = match Written::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected the protocol \"19\", \"16\" or \"13\""))?
        {
            Written::Number(n) => n.to_string(),
            Written::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cityscapes::TRAIN_CLASS_NAMES;

    #[test]
    fn protocols_read_as_strings_or_numbers() {
        #[derive(serde::Deserialize)]
        struct E {
            protocol: Protocol,
        }
        let read = |t: &str| toml::from_str::<E>(t).map(|e| e.protocol).map_err(|e| e.to_string());
        assert_eq!(read("protocol = \"16\""), Ok(Protocol::Classes16));
        assert_eq!(read("protocol = 13"), Ok(Protocol::Classes13));
        let e = read("protocol = 17").unwrap_err();
        assert!(e.contains("unknown protocol `17`: expected 19, 16 or 13"), "{e}");
        assert!(read("protocol = 1.5").unwrap_err().contains("expected the protocol"));
    }

    #[test]
    fn gta5_map_is_the_cityscapes_train_id_map() {
        let m = LabelMap::new(DatasetKind::Gta5);
        let expected = [
            (7, 0),
            (8, 1),
            (11, 2),
            (12, 3),
            (13, 4),
            (17, 5),
            (19, 6),
            (20, 7),
            (21, 8),
            (22, 9),
            (23, 10),
            (24, 11),
            (25, 12),
            (26, 13),
            (27, 14),
            (28, 15),
            (31, 16),
            (32, 17),
            (33, 18),
        ];
        for raw in 0..=33u16 {
            let want = expected.iter().find(|e| e.0 == raw).map_or(255, |e| e.1);
            assert_eq!(m.map(raw), Mapped::Known(want), "raw {raw}");
        }
        assert_eq!(m.map(34), Mapped::Outside);
        assert_eq!(m.map(255), Mapped::Outside);
    }

    #[test]
    fn synthia_map_matches_the_published_table() {
        let m = LabelMap::new(DatasetKind::Synthia);
        let expected = [
            (3, 0),
            (4, 1),
            (2, 2),
            (21, 3),
            (5, 4),
            (7, 5),
            (15, 6),
            (9, 7),
            (6, 8),
            (16, 9),
            (1, 10),
            (10, 11),
            (17, 12),
            (8, 13),
            (18, 14),
            (19, 15),
            (20, 16),
            (12, 17),
            (11, 18),
        ];
        for raw in 0..=22u16 {
            let want = expected.iter().find(|e| e.0 == raw).map_or(255, |e| e.1);
            assert_eq!(m.map(raw), Mapped::Known(want), "raw {raw}");
        }
        assert_eq!(m.map(22), Mapped::Known(255), "lanemarking is ignored");
        assert_eq!(m.map(23), Mapped::Outside);
        assert_eq!(m.map(1000), Mapped::Outside);
        // Names agree between the two tables for every mapped class.
        for t in 0..19u8 {
            let raw = m.raw_for_train_id(t) as usize;
            let name = SYNTHIA_CLASS_NAMES[raw].replace("pedestrian", "person");
            assert_eq!(name, TRAIN_CLASS_NAMES[t as usize]);
        }
    }

    #[test]
    fn train_id_map_and_protocols() {
        let m = LabelMap::new(DatasetKind::CityscapesTrainIds);
        assert_eq!(m.map(18), Mapped::Known(18));
        assert_eq!(m.map(255), Mapped::Known(255));
        assert_eq!(m.map(19), Mapped::Outside);
        let (ids, outside) = m.map_all(&[0, 19, 255, 300]);
        assert_eq!(ids, vec![0, 255, 255, 255]);
        assert_eq!(outside, 2);
        assert_eq!(Protocol::Classes16.num_classes(), 16);
        assert_eq!(Protocol::Classes13.num_classes(), 13);
        let names16: Vec<_> = Protocol::Classes16
            .train_ids()
            .iter()
            .map(|&t| TRAIN_CLASS_NAMES[t as usize])
            .collect();
        assert!(!names16.contains(&"terrain") && !names16.contains(&"truck") && !names16.contains(&"train"));
        let names13: Vec<_> = Protocol::Classes13
            .train_ids()
            .iter()
            .map(|&t| TRAIN_CLASS_NAMES[t as usize])
            .collect();
        assert!(!names13.contains(&"wall") && !names13.contains(&"fence") && !names13.contains(&"pole"));
        assert_eq!("16".parse::<Protocol>().unwrap(), Protocol::Classes16);
        assert!("17".parse::<Protocol>().is_err());
    }
}
