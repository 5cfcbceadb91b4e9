//! The detection classes: Cityscapes' eight instance classes (the boxes derived from
//! `instanceIds`), and the names Sim10k's XML uses for three of them.

/// One detection class: its Cityscapes name and label id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetClass {
    pub name: &'static str,
    pub label_id: u8,
}

/// Cityscapes' classes with instances that are evaluated (caravan and trailer have instances
/// but are ignored in evaluation), in label-id order. A class index is a position here.
pub const DET_CLASSES: [DetClass; 8] = [
    DetClass {
        name: "person",
        label_id: 24,
    },
    DetClass {
        name: "rider",
        label_id: 25,
    },
    DetClass {
        name: "car",
        label_id: 26,
    },
    DetClass {
        name: "truck",
        label_id: 27,
    },
    DetClass {
        name: "bus",
        label_id: 28,
    },
    DetClass {
        name: "train",
        label_id: 31,
    },
    DetClass {
        name: "motorcycle",
        label_id: 32,
    },
    DetClass {
        name: "bicycle",
        label_id: 33,
    },
];

/// Index of `car` in [`DET_CLASSES`].
pub const CAR: usize = 2;

/// The class index of a Cityscapes class name.
pub fn class_index(name: &str) -> Option<usize> {
    DET_CLASSES.iter().position(|c| c.name == name)
}

/// The class index of a Cityscapes label id, if that label is a detection class.
pub fn class_of_label_id(id: u16) -> Option<usize> {
    DET_CLASSES.iter().position(|c| c.label_id as u16 == id)
}

/// The class index of a Sim10k XML object name (`car`, `motorbike`, `person`), without regard to
/// case or surrounding spaces; Cityscapes names are accepted too.
pub fn sim10k_class(name: &str) -> Option<usize> {
    match name.trim().to_ascii_lowercase().as_str() {
        "motorbike" => class_index("motorcycle"),
        n => class_index(n),
    }
}

/// Which classes a dataset, a detector and an evaluation use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassSet {
    /// `car` only: the Sim10k → Cityscapes benchmark.
    #[default]
    Car,
    /// Cityscapes' eight instance classes.
    All,
}

impl ClassSet {
    /// The class indices, in [`DET_CLASSES`] order.
    pub fn indices(self) -> Vec<usize> {
        match self {
            ClassSet::Car => vec![CAR],
            ClassSet::All => (0..DET_CLASSES.len()).collect(),
        }
    }

    pub fn contains(self, class: usize) -> bool {
        match self {
            ClassSet::Car => class == CAR,
            ClassSet::All => class < DET_CLASSES.len(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClassSet::Car => "car",
            ClassSet::All => "all",
        }
    }
}

impl std::str::FromStr for ClassSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "car" => Ok(ClassSet::Car),
            "all" => Ok(ClassSet::All),
            o => Err(format!("unknown class set `{o}`: expected car or all")),
        }
    }
}

impl std::fmt::Display for ClassSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
