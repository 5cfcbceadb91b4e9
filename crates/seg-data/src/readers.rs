//! Readers for the three on-disk formats (`data/README.md`): each finds image/label
//! pairs by name, from a directory scan or a split list file, and returns a [`Dataset`].
//!
//! - Cityscapes: `leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png` with
//!   `gtFine/{split}/{city}/{stem}_gtFine_labelIds.png` (or `_labelTrainIds.png`).
//! - GTA5: `images/NNNNN.png` with palettized `labels/NNNNN.png` (index = label id).
//! - SYNTHIA-RAND-CITYSCAPES: `RGB/NNNNNNN.png` with 16-bit `GT/LABELS/NNNNNNN.png`.

use std::path::{Path, PathBuf};

use seg_labels::{split_list, DatasetKind, LabelEncoding, LabelMap};

use crate::dataset::{Dataset, DatasetOptions, LabelSource, SampleRef, CS_LABEL_IDS, CS_TRAIN_IDS};
use crate::error::DataError;

/// The dataset formats the readers understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetName {
    Cityscapes,
    Gta5,
    Synthia,
}

impl DatasetName {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Cityscapes => "cityscapes",
            DatasetName::Gta5 => "gta5",
            DatasetName::Synthia => "synthia",
        }
    }
}

impl DatasetName {
    /// The image and label folders under the root of a dataset without splits (GTA5: `images/`,
    /// `labels/`; SYNTHIA: `RGB/`, `GT/LABELS/`); `None` for Cityscapes.
    pub fn flat_folders(self, root: &Path) -> Option<(PathBuf, PathBuf)> {
        match self {
            DatasetName::Cityscapes => None,
            DatasetName::Gta5 => Some((root.join("images"), root.join("labels"))),
            DatasetName::Synthia => Some((root.join("RGB"), root.join("GT").join("LABELS"))),
        }
    }
}

impl std::str::FromStr for DatasetName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cityscapes" => Ok(DatasetName::Cityscapes),
            "gta5" | "gta" => Ok(DatasetName::Gta5),
            "synthia" => Ok(DatasetName::Synthia),
            other => Err(format!(
                "unknown dataset `{other}`: expected cityscapes, gta5 or synthia"
            )),
        }
    }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A split name (`train`, `val`, `test`, or `all` for datasets without splits).
pub type Split = String;

/// Opens a dataset of the given format.
pub fn open_dataset(
    name: DatasetName,
    root: &Path,
    split: &str,
    options: DatasetOptions,
) -> Result<Dataset, DataError> {
    if !root.is_dir() {
        return Err(DataError::Missing {
            what: "dataset root",
            path: root.to_path_buf(),
        });
    }
    let ds = match name {
        DatasetName::Cityscapes => open_cityscapes(root, split, options)?,
        DatasetName::Gta5 | DatasetName::Synthia => {
            let (images, labels) = name.flat_folders(root).unwrap_or_default();
            let (encoding, kind) = match name {
                DatasetName::Gta5 => (LabelEncoding::Ids8, DatasetKind::Gta5),
                _ => (LabelEncoding::Synthia16, DatasetKind::Synthia),
            };
            open_flat(root, name.as_str(), &images, &labels, encoding, kind, options)?
        }
    };
    if ds.is_empty() {
        return Err(DataError::Empty {
            dataset: ds.name,
            split: ds.split.clone(),
            root: root.to_path_buf(),
            detail: match &ds.options.list {
                Some(list) => format!(": the split list {} names no images", list.display()),
                None => nothing_found(name, root, split),
            },
        });
    }
    Ok(ds)
}

/// Why a split read without a list has no images: the pattern looked for, and what is there
/// instead (JPEGs, `.PNG`, other names), counted with an example.
fn nothing_found(name: DatasetName, root: &Path, split: &str) -> String {
    let (dir, pattern, depth) = match name {
        DatasetName::Cityscapes => (
            root.join("leftImg8bit").join(split),
            format!("leftImg8bit/{split}/{{city}}/*{CS_IMAGE_SUFFIX}"),
            2,
        ),
        DatasetName::Gta5 | DatasetName::Synthia => {
            let images = name.flat_folders(root).unwrap_or_default().0;
            let shown = images.strip_prefix(root).unwrap_or(&images).display().to_string();
            (images, format!("{shown}/*.png"), 1)
        }
    };
    fn files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        for p in sorted_entries(dir, |_| true).unwrap_or_default() {
            match p.is_dir() {
                true if depth > 1 => files(&p, depth - 1, out),
                true => {}
                false => out.push(p),
            }
        }
    }
    let mut others = Vec::new();
    files(&dir, depth, &mut others);
    match others.first() {
        None => format!(": no images found (looked for {pattern})"),
        Some(first) => format!(
            ": no images found (looked for {pattern}; {} other file(s) there, such as {})",
            others.len(),
            first.strip_prefix(root).unwrap_or(first).display()
        ),
    }
}

/// The entries of `dir` that `keep` accepts, sorted by path, hidden ones aside
/// (`fsutil::is_hidden`).
fn sorted_entries(dir: &Path, keep: impl Fn(&std::fs::DirEntry) -> bool) -> Result<Vec<PathBuf>, DataError> {
    let err = |cause| DataError::ReadDir {
        path: dir.to_path_buf(),
        cause,
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(err)? {
        let e = e.map_err(err)?;
        if !seg_labels::fsutil::is_hidden(&e.file_name()) && keep(&e) {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// `*.png` entries that are not directories. Symbolic links are kept even when they lead
/// nowhere (or in a loop): reading them then fails with an error that names the file, instead
/// of the file silently vanishing from the dataset.
fn sorted_pngs(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    sorted_entries(dir, |e| {
        let p = e.path();
        let is_dir = std::fs::metadata(&p).is_ok_and(|m| m.is_dir());
        p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")) && !is_dir
    })
}

/// Refuses two samples with one name (a split list naming a file twice, or `a.png` beside
/// `a.PNG`): they would pair with the same label and count twice.
fn check_unique(entries: &[SampleRef], list: Option<&Path>) -> Result<(), DataError> {
    let mut seen: std::collections::HashMap<&str, &Path> = std::collections::HashMap::new();
    for e in entries {
        if let Some(first) = seen.insert(&e.name, &e.image) {
            if let Some(l) = list.filter(|_| first == e.image) {
                return Err(DataError::Invalid {
                    path: l.to_path_buf(),
                    reason: format!("names `{}` twice ({})", e.name, e.image.display()),
                });
            }
            return Err(DataError::Duplicate {
                name: e.name.clone(),
                first: first.to_path_buf(),
                second: e.image.clone(),
                hint: match list {
                    Some(l) => format!("; the split list {} names it twice", l.display()),
                    None => String::new(),
                },
            });
        }
    }
    Ok(())
}

/// The city folders under a split: directories, and links to directories (a city kept on
/// another disk), as the official evaluator's `glob` follows them. Nothing below a city is a
/// folder to walk, so a link cannot lead into a loop; one that leads nowhere is no city.
fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    sorted_entries(dir, |e| std::fs::metadata(e.path()).is_ok_and(|m| m.is_dir()))
}

/// Refuses a folder that is there but cannot be listed (no permission, a file or a link that
/// leads nowhere in its place), naming it; one that is not there at all is no error here.
fn listable(dir: &Path) -> Result<(), DataError> {
    match std::fs::read_dir(dir) {
        Err(cause) if dir.symlink_metadata().is_ok() => Err(DataError::ReadDir {
            path: dir.to_path_buf(),
            cause,
        }),
        _ => Ok(()),
    }
}

fn read_list(path: &Path) -> Result<Vec<String>, DataError> {
    split_list::read(path).map_err(|cause| DataError::List {
        path: path.to_path_buf(),
        cause,
    })
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// GTA5 and SYNTHIA: one image folder and one label folder, paired by file name.
fn open_flat(
    root: &Path,
    name: &'static str,
    image_dir: &Path,
    label_dir: &Path,
    encoding: LabelEncoding,
    kind: DatasetKind,
    options: DatasetOptions,
) -> Result<Dataset, DataError> {
    if !image_dir.is_dir() {
        return Err(DataError::Missing {
            what: "image folder",
            path: image_dir.to_path_buf(),
        });
    }
    let images: Vec<PathBuf> = match &options.list {
        Some(list) => read_list(list)?
            .into_iter()
            .map(|l| {
                let file = Path::new(&l)
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(&l));
                let file = if file.extension().is_none() {
                    file.with_extension("png")
                } else {
                    file
                };
                image_dir.join(file)
            })
            .collect(),
        None => sorted_pngs(image_dir)?,
    };
    let has_labels = label_dir.is_dir();
    if has_labels && options.require_labels {
        listable(label_dir)?;
    }
    if options.require_labels && !has_labels {
        return Err(DataError::Missing {
            what: "label folder",
            path: label_dir.to_path_buf(),
        });
    }
    let entries = images
        .into_iter()
        .map(|image| {
            // A missing label is told as such ("no label file"), as Cityscapes' is.
            let label = image
                .file_name()
                .map(|f| label_dir.join(f))
                .filter(|l| has_labels && l.symlink_metadata().is_ok());
            SampleRef {
                name: file_stem(&image),
                image,
                label,
            }
        })
        .collect::<Vec<_>>();
    check_unique(&entries, options.list.as_deref())?;
    Ok(Dataset {
        name,
        split: "all".into(),
        root: root.to_path_buf(),
        entries,
        label_maps: vec![(String::new(), LabelMap::new(kind))],
        encoding,
        options,
        left_out: Vec::new(),
    })
}

const CS_IMAGE_SUFFIX: &str = "_leftImg8bit.png";

fn open_cityscapes(root: &Path, split: &str, options: DatasetOptions) -> Result<Dataset, DataError> {
    let image_root = root.join("leftImg8bit").join(split);
    if !image_root.is_dir() {
        return Err(DataError::Missing {
            what: "Cityscapes image split",
            path: image_root,
        });
    }
    let label_root = root.join("gtFine").join(split);
    if options.require_labels && !label_root.is_dir() {
        return Err(DataError::Missing {
            what: "Cityscapes gtFine split",
            path: label_root,
        });
    }
    let images: Vec<PathBuf> = match &options.list {
        Some(list) => read_list(list)?
            .into_iter()
            .map(|l| {
                // AdaptSegNet's `city/stem_leftImg8bit.png` and the other forms of
                // `split_list::cityscapes_line`; another split's line is refused.
                let listed = split_list::cityscapes_line(&l, split).map_err(|reason| DataError::Invalid {
                    path: list.clone(),
                    reason,
                })?;
                Ok::<_, DataError>(image_root.join(&listed.city).join(listed.image_file()))
            })
            .collect::<Result<_, _>>()?,
        None => {
            let mut all = Vec::new();
            for city in sorted_dirs(&image_root)? {
                all.extend(sorted_pngs(&city)?.into_iter().filter(|p| {
                    p.file_name()
                        .is_some_and(|f| f.to_string_lossy().ends_with(CS_IMAGE_SUFFIX))
                }));
            }
            all
        }
    };
    // A label folder that cannot be listed (no permission, a file in its place) is said to be so,
    // rather than each of its labels being missing.
    let cities: std::collections::BTreeSet<&Path> = images
        .iter()
        .filter_map(|i| i.parent()?.file_name())
        .map(Path::new)
        .collect();
    for city in cities.into_iter().filter(|_| options.require_labels) {
        listable(&label_root.join(city))?;
    }
    let entries = images
        .into_iter()
        .map(|image| {
            let file = image
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = file.strip_suffix(CS_IMAGE_SUFFIX).unwrap_or(&file).to_string();
            let city = image
                .parent()
                .and_then(|p| p.file_name())
                .map(PathBuf::from)
                .unwrap_or_default();
            let dir = label_root.join(city);
            let ids = dir.join(format!("{stem}{CS_LABEL_IDS}"));
            let train = dir.join(format!("{stem}{CS_TRAIN_IDS}"));
            let label = match options.label_source {
                LabelSource::LabelIds => Some(ids).filter(|p| p.is_file()),
                LabelSource::TrainIds => Some(train).filter(|p| p.is_file()),
                LabelSource::Auto => {
                    if ids.is_file() {
                        Some(ids)
                    } else {
                        Some(train).filter(|p| p.is_file())
                    }
                }
            };
            SampleRef {
                name: stem,
                image,
                label,
            }
        })
        .collect::<Vec<_>>();
    check_unique(&entries, options.list.as_deref())?;
    Ok(Dataset {
        name: "cityscapes",
        split: split.to_string(),
        root: root.to_path_buf(),
        entries,
        label_maps: vec![
            (CS_LABEL_IDS.into(), LabelMap::new(DatasetKind::Cityscapes)),
            (CS_TRAIN_IDS.into(), LabelMap::new(DatasetKind::CityscapesTrainIds)),
        ],
        encoding: LabelEncoding::Ids8,
        options,
        left_out: Vec::new(),
    })
}

/// A label file with no image beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub label: PathBuf,
    /// Where its image belongs (a folder may be in its place).
    pub image: PathBuf,
}

impl Orphan {
    /// What is wrong, for a report: no image, or something else where the image belongs.
    pub fn reason(&self) -> String {
        if self.image.is_dir() {
            format!(
                "label file whose image {} is a folder, not an image",
                self.image.display()
            )
        } else {
            "label file with no matching image".into()
        }
    }
}

/// Label files with no image beside them, for inspection reports.
pub fn orphan_labels(ds: &Dataset) -> Vec<Orphan> {
    let (image_dir, label_dir) = match ds.name {
        "gta5" => (ds.root.join("images"), ds.root.join("labels")),
        "synthia" => (ds.root.join("RGB"), ds.root.join("GT").join("LABELS")),
        _ => return cityscapes_orphans(ds),
    };
    // An orphan is a label whose image does not exist: a pair a split list leaves out is not one.
    let images: std::collections::HashSet<String> = sorted_pngs(&image_dir)
        .unwrap_or_default()
        .iter()
        .map(|p| file_stem(p))
        .collect();
    // DAFormer's and MMSegmentation's GTA5 conversion writes `NNNNN_labelTrainIds.png` beside
    // each `NNNNN.png` label: a companion of a label, not a label without an image.
    sorted_pngs(&label_dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            let stem = file_stem(p);
            let owner = stem.strip_suffix("_labelTrainIds").unwrap_or(&stem);
            !images.contains(owner)
        })
        .map(|label| Orphan {
            image: image_dir.join(label.file_name().unwrap_or_default()),
            label,
        })
        .collect()
}

/// Cityscapes labelIds files whose camera image (`leftImg8bit/SPLIT/CITY/NAME_leftImg8bit.png`)
/// does not exist; a pair left out for another reason (its size, a split list) is not one.
fn cityscapes_orphans(ds: &Dataset) -> Vec<Orphan> {
    let label_root = ds.root.join("gtFine").join(&ds.split);
    let image_root = ds.root.join("leftImg8bit").join(&ds.split);
    let mut out = Vec::new();
    for city in sorted_dirs(&label_root).unwrap_or_default() {
        for p in sorted_pngs(&city).unwrap_or_default() {
            let f = p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(stem) = f.strip_suffix(CS_LABEL_IDS) {
                let image = city
                    .file_name()
                    .map(|c| image_root.join(c).join(format!("{stem}{CS_IMAGE_SUFFIX}")));
                if let Some(image) = image.filter(|i| !i.is_file()) {
                    out.push(Orphan { label: p, image });
                }
            }
        }
    }
    out
}
