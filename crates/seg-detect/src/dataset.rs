//! Detection datasets: Sim10k (`VOC2012/JPEGImages/*.jpg`, `VOC2012/Annotations/*.xml`, the
//! split list `VOC2012/ImageSets/Main/trainval10k.txt`) and Cityscapes with boxes derived from
//! `gtFine/<split>/<city>/*_gtFine_instanceIds.png`.

use std::path::{Path, PathBuf};

use seg_labels::png_io::{self, LabelEncoding};
use seg_labels::split_list;
use seg_labels::RgbImage;

use crate::boxes::{GtBox, PixelBox};
use crate::classes::{class_of_label_id, ClassSet};
use crate::error::DetError;
use crate::voc::parse_voc;

/// The on-disk format of a detection dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetFormat {
    Sim10k,
    Cityscapes,
}

impl DetFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DetFormat::Sim10k => "sim10k",
            DetFormat::Cityscapes => "cityscapes",
        }
    }
}

/// One sample: its name (Sim10k id, or Cityscapes `city_seq_frame`), image and annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct DetEntry {
    pub name: String,
    pub image: PathBuf,
    pub annotation: Option<PathBuf>,
    /// The split list that named the sample, if one did: a listed image not on disk is named
    /// with its list.
    pub listed_by: Option<PathBuf>,
}

impl DetEntry {
    /// A listed sample whose image is not on disk: the error names the list as well.
    fn listed_but_missing(&self) -> Result<(), DetError> {
        match &self.listed_by {
            Some(list) if matches!(self.image.try_exists(), Ok(false)) => Err(DetError::invalid(
                &self.image,
                format!("image named by the split list {} not found", list.display()),
            )),
            _ => Ok(()),
        }
    }
}

/// A decoded sample.
#[derive(Debug, Clone)]
pub struct DetSample {
    pub name: String,
    pub image: RgbImage,
    /// Boxes of the dataset's class set (empty when read without annotations).
    pub boxes: Vec<GtBox>,
}

/// Ground truth of one sample, without its pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct DetTruth {
    pub width: u32,
    pub height: u32,
    pub boxes: Vec<GtBox>,
    /// Boxes of every class, by class index (for counts).
    pub all_boxes: usize,
    pub problems: Vec<String>,
}

/// A listed detection dataset.
#[derive(Debug, Clone)]
pub struct DetDataset {
    pub format: DetFormat,
    pub root: PathBuf,
    pub split: String,
    pub classes: ClassSet,
    pub entries: Vec<DetEntry>,
}

/// The entries of `dir`, sorted, hidden ones aside (`fsutil::is_hidden`).
pub(crate) fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DetError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(DetError::io(dir))?
        .filter_map(|e| e.ok())
        .filter(|e| !seg_labels::fsutil::is_hidden(&e.file_name()))
        .map(|e| e.path())
        .collect();
    v.sort();
    Ok(v)
}

impl DetDataset {
    /// Sim10k under `root` (the folder holding `VOC2012/`, or `VOC2012/` itself). Samples are
    /// the ids of `list` if given, else of `ImageSets/Main/trainval10k.txt` if present, else
    /// every `Annotations/*.xml`.
    pub fn open_sim10k(root: &Path, list: Option<&Path>, classes: ClassSet) -> Result<Self, DetError> {
        let voc = if root.join("VOC2012").is_dir() {
            root.join("VOC2012")
        } else {
            root.to_path_buf()
        };
        let ann_dir = voc.join("Annotations");
        let img_dir = voc.join("JPEGImages");
        if !ann_dir.is_dir() || !img_dir.is_dir() {
            return Err(DetError::invalid(
                root,
                "not a Sim10k folder: expected VOC2012/Annotations/ and VOC2012/JPEGImages/",
            ));
        }
        let default_list = voc.join("ImageSets/Main/trainval10k.txt");
        let list = list
            .map(Path::to_path_buf)
            .or_else(|| default_list.is_file().then_some(default_list));
        let ids: Vec<String> = match &list {
            Some(l) => {
                let text = seg_labels::fsutil::read_text(l).map_err(DetError::io(l))?;
                text.trim_start_matches('\u{feff}')
                    .lines()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.split_whitespace().next().unwrap_or(s))
                    // `3384800.jpg` names the same sample as `3384800`.
                    .map(|s| {
                        let (stem, ext) = s.rsplit_once('.').unwrap_or((s, ""));
                        match ext.to_ascii_lowercase().as_str() {
                            "jpg" | "jpeg" | "xml" | "png" => stem.to_string(),
                            _ => s.to_string(),
                        }
                    })
                    .collect()
            }
            None => read_dir_sorted(&ann_dir)?
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "xml"))
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect(),
        };
        if ids.is_empty() {
            return Err(DetError::invalid(
                list.as_deref().unwrap_or(&ann_dir),
                "no samples listed",
            ));
        }
        // An id listed twice would be trained on and counted twice.
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
            return Err(DetError::invalid(
                list.as_deref().unwrap_or(&ann_dir),
                format!("lists `{dup}` twice"),
            ));
        }
        let entries = ids
            .into_iter()
            .map(|id| DetEntry {
                image: img_dir.join(format!("{id}.jpg")),
                annotation: Some(ann_dir.join(format!("{id}.xml"))),
                name: id,
                listed_by: list.clone(),
            })
            .collect();
        Ok(Self {
            format: DetFormat::Sim10k,
            root: root.to_path_buf(),
            split: list
                .as_deref()
                .and_then(|l| l.file_stem())
                .map_or("all".into(), |s| s.to_string_lossy().into_owned()),
            classes,
            entries,
        })
    }

    /// Cityscapes' `split` under `root`. With `annotations`, the samples are the images and
    /// `gtFine/<split>/*/*_gtFine_instanceIds.png` files by name (the evaluation's image list): one
    /// without the other is a sample that does not load, named by its missing file; without, the
    /// `leftImg8bit/<split>/*/*_leftImg8bit.png` images (unlabelled target training).
    pub fn open_cityscapes(root: &Path, split: &str, annotations: bool, classes: ClassSet) -> Result<Self, DetError> {
        const IMAGE: &str = "_leftImg8bit.png";
        const INSTANCES: &str = "_gtFine_instanceIds.png";
        let (top, suffix) = if annotations {
            ("gtFine", INSTANCES)
        } else {
            ("leftImg8bit", IMAGE)
        };
        let dir = root.join(top).join(split);
        if !dir.is_dir() {
            let reason = match dir.symlink_metadata() {
                Ok(_) => "is no folder: a Cityscapes split folder belongs here",
                Err(_) => "missing: not a Cityscapes split folder",
            };
            return Err(DetError::invalid(&dir, reason));
        }
        // (city, stem) of every file ending in `suffix` under `base/<city>/`.
        let stems = |base: &Path, suffix: &str| -> Result<Vec<(String, String)>, DetError> {
            let mut out = Vec::new();
            for city in read_dir_sorted(base)?.into_iter().filter(|p| p.is_dir()) {
                let city_name = city
                    .file_name()
                    .map(|c| c.to_string_lossy().into_owned())
                    .unwrap_or_default();
                for f in read_dir_sorted(&city)? {
                    if let Some(stem) = f
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_suffix(suffix))
                    {
                        out.push((city_name.clone(), stem.to_string()));
                    }
                }
            }
            Ok(out)
        };
        let mut found: std::collections::BTreeSet<(String, String)> = stems(&dir, suffix)?.into_iter().collect();
        if found.is_empty() {
            return Err(DetError::invalid(&dir, format!("no `*{suffix}` files found")));
        }
        let images = root.join("leftImg8bit").join(split);
        if annotations && images.is_dir() {
            found.extend(stems(&images, IMAGE)?);
        }
        let entries = found
            .into_iter()
            .map(|(city, stem)| DetEntry {
                image: images.join(&city).join(format!("{stem}{IMAGE}")),
                annotation: annotations.then(|| {
                    root.join("gtFine")
                        .join(split)
                        .join(&city)
                        .join(format!("{stem}{INSTANCES}"))
                }),
                name: stem,
                listed_by: None,
            })
            .collect::<Vec<_>>();
        // Detections name their image by its stem: one stem in two cities cannot be told apart.
        let mut seen: std::collections::HashMap<&str, &Path> = std::collections::HashMap::new();
        for e in &entries {
            // The file that is there: the annotation (evaluation), else the image.
            let file = e.annotation.as_deref().filter(|a| a.is_file()).unwrap_or(&e.image);
            if let Some(first) = seen.insert(&e.name, file) {
                return Err(DetError::invalid(
                    file,
                    format!(
                        "duplicate image name `{}` (also {}): detections are matched to images by name",
                        e.name,
                        first.display()
                    ),
                ));
            }
        }
        Ok(Self {
            format: DetFormat::Cityscapes,
            root: root.to_path_buf(),
            split: split.to_string(),
            classes,
            entries,
        })
    }

    /// Keeps the Cityscapes samples a split list names, as AdaptSegNet's
    /// `cityscapes_list/{train,val}.txt` names them (every line form of
    /// [`split_list::cityscapes_line`], as the segmentation readers take them), in the split's
    /// order. A line naming an image that is not on disk stays a sample that does not load,
    /// named by its missing file and the list (the run stops on it, or leaves it out under
    /// `error_policy = "skip"`, as the segmentation readers do); a sample named twice or
    /// another split's path is refused, naming the list.
    pub fn keep_listed(&mut self, list: &Path) -> Result<(), DetError> {
        let mut wanted = std::collections::HashMap::new();
        for line in split_list::read(list).map_err(DetError::io(list))? {
            let listed =
                split_list::cityscapes_line(&line, &self.split).map_err(|reason| DetError::invalid(list, reason))?;
            if wanted.contains_key(&listed.stem) {
                return Err(DetError::invalid(list, format!("names `{}` twice", listed.stem)));
            }
            wanted.insert(listed.stem.clone(), listed);
        }
        if wanted.is_empty() {
            return Err(DetError::invalid(list, "no samples listed"));
        }
        let annotated = self.entries.iter().any(|e| e.annotation.is_some());
        self.entries.retain(|e| wanted.remove(&e.name).is_some());
        // What is left names no file of the split: the files it names, which do not load.
        for (stem, listed) in wanted {
            let images = self.root.join("leftImg8bit").join(&self.split).join(&listed.city);
            self.entries.push(DetEntry {
                image: images.join(listed.image_file()),
                annotation: annotated.then(|| {
                    self.root
                        .join("gtFine")
                        .join(&self.split)
                        .join(&listed.city)
                        .join(format!("{stem}_gtFine_instanceIds.png"))
                }),
                name: stem,
                listed_by: Some(list.to_path_buf()),
            });
        }
        let city = |e: &DetEntry| e.image.parent().and_then(|p| p.file_name()).map(|c| c.to_os_string());
        self.entries.sort_by(|a, b| (city(a), &a.name).cmp(&(city(b), &b.name)));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Leaves out the samples that do not load: every one is read as [`Self::load`] reads it
    /// (image decoded, annotation parsed, their sizes compared), in parallel. Returns what was
    /// left out, in entry order, each with the error that names its file.
    pub fn leave_out_unloadable(&mut self) -> Vec<seg_labels::LeftOut> {
        use rayon::prelude::*;
        let verdicts: Vec<Option<String>> = (0..self.len())
            .into_par_iter()
            .map(|i| self.load(i).err().map(|e| e.to_string()))
            .collect();
        let mut left_out = Vec::new();
        let mut verdicts = verdicts.into_iter();
        self.entries.retain(|e| match verdicts.next().flatten() {
            Some(reason) => {
                left_out.push(seg_labels::LeftOut {
                    name: e.name.clone(),
                    image: e.image.clone(),
                    reason,
                });
                false
            }
            None => true,
        });
        left_out
    }

    /// The first sample, in entry order, whose image header does not read (missing, empty, not
    /// a PNG or JPEG, a declared size above the limit) or whose annotation file is missing: what
    /// a run under `error_policy = "fail"` checks before its first step, for the price of
    /// headers rather than of decoding every file (that is `check`'s, and `skip`'s).
    pub fn first_missing_or_unreadable(&self) -> Option<DetError> {
        use rayon::prelude::*;
        self.entries
            .par_iter()
            .map(|e| -> Result<(), DetError> {
                e.listed_but_missing()?;
                png_io::read_size(&e.image)?;
                if let Some(a) = &e.annotation {
                    std::fs::metadata(a).map_err(DetError::io(a))?;
                }
                Ok(())
            })
            .find_first(Result::is_err)
            .and_then(Result::err)
    }

    /// The ground truth of sample `i` (its annotation only).
    pub fn truth(&self, i: usize) -> Result<DetTruth, DetError> {
        let e = &self.entries[i];
        let ann = e
            .annotation
            .as_ref()
            .ok_or_else(|| DetError::invalid(&e.image, "this dataset was opened without annotations"))?;
        match self.format {
            DetFormat::Sim10k => {
                let text =
                    crate::voc::decode_xml(ann, &seg_labels::fsutil::read_regular(ann).map_err(DetError::io(ann))?)?;
                let image_size = || png_io::read_size(&e.image).map_err(DetError::from);
                let a = parse_voc(ann, &text, self.classes, image_size)?;
                Ok(DetTruth {
                    width: a.width,
                    height: a.height,
                    boxes: a.boxes,
                    all_boxes: a.objects,
                    problems: a.problems,
                })
            }
            DetFormat::Cityscapes => {
                let l = png_io::read_label(ann, LabelEncoding::Instance16)?;
                let all = boxes_from_instance_ids(l.width, l.height, &l.data, ClassSet::All, BoxRule::Detectron);
                let boxes = all.iter().copied().filter(|b| self.classes.contains(b.class)).collect();
                Ok(DetTruth {
                    width: l.width,
                    height: l.height,
                    all_boxes: all.len(),
                    boxes,
                    problems: Vec::new(),
                })
            }
        }
    }

    /// Each sample's index by its name, for reading a detections file.
    pub fn image_index(&self) -> std::collections::HashMap<String, usize> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect()
    }

    /// The ground-truth boxes of every sample, in order (the evaluation's ground truth). An
    /// image on disk whose header gives another size than its annotation is refused, as
    /// [`DetDataset::load`] refuses it: boxes and detections would be in different frames. An
    /// image that is not there (or whose header does not read) is not needed to score a
    /// detections file and is left to the caller.
    pub fn all_boxes(&self) -> Result<Vec<Vec<GtBox>>, DetError> {
        (0..self.len())
            .map(|i| {
                let t = self.truth(i)?;
                let image = &self.entries[i].image;
                if let Some(Ok((w, h))) = image.is_file().then(|| png_io::read_size(image)) {
                    self.same_size(i, (w, h), &t)?;
                }
                Ok(t.boxes)
            })
            .collect()
    }

    /// Refuses sample `i` when its image (`width`, `height`) and its annotation disagree.
    fn same_size(&self, i: usize, (width, height): (u32, u32), t: &DetTruth) -> Result<(), DetError> {
        if (t.width, t.height) == (width, height) {
            return Ok(());
        }
        let e = &self.entries[i];
        Err(DetError::invalid(
            &e.image,
            format!(
                "image is {width}x{height} but its annotation {} says {}x{}",
                e.annotation.as_ref().map_or(String::new(), |a| a.display().to_string()),
                t.width,
                t.height
            ),
        ))
    }

    /// Decodes sample `i`'s image (JPEG or PNG), with its boxes when the dataset has
    /// annotations; an image whose size differs from its annotation's is refused.
    pub fn load(&self, i: usize) -> Result<DetSample, DetError> {
        let e = &self.entries[i];
        e.listed_but_missing()?;
        let image = decode_image(&e.image)?;
        let boxes = if e.annotation.is_some() {
            let t = self.truth(i)?;
            self.same_size(i, (image.width, image.height), &t)?;
            t.boxes
        } else {
            Vec::new()
        };
        Ok(DetSample {
            name: e.name.clone(),
            image,
            boxes,
        })
    }
}

/// Decodes a JPEG or PNG file (by its content) to 8-bit RGB, naming the file on failure (a JPEG
/// cut short too): `png_io::read_rgb`, which every reader shares.
pub fn decode_image(path: &Path) -> Result<RgbImage, DetError> {
    Ok(png_io::read_rgb(path)?)
}

/// How boxes are drawn from an instance-id map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoxRule {
    /// The tight box of every instance's pixels (the embedded benchmark's Sim10k boxes, which a
    /// game engine gives whole).
    Tight,
    /// Detectron's Cityscapes converter (`convert_cityscapes_to_coco.py`, used by the
    /// Sim10k → Cityscapes papers that report COCO AP50): an instance whose mask has an outer
    /// contour of at most 4 coordinates (OpenCV's `findContours` with `RETR_EXTERNAL` and
    /// `CHAIN_APPROX_NONE`, as OpenCV 3.2 and later trace them, the image's border counting as
    /// background: an outer 8-connected part of one or two pixels) is left out whole;
    /// the others get the extent of their outer contours, which is the tight box of their pixels.
    Detectron,
}

/// Boxes of a Cityscapes instance-id map: every value ≥ 1000 is one instance of label id
/// `value / 1000`; instances of the detection classes in `classes` get a box (0-based,
/// inclusive) under `rule`, in increasing instance-value order. Values below 1000 (label ids of
/// pixels without an instance) and instances of other labels (caravan, trailer) give no box.
pub fn boxes_from_instance_ids(
    width: u32,
    height: u32,
    values: &[u16],
    classes: ClassSet,
    rule: BoxRule,
) -> Vec<GtBox> {
    let w = width as usize;
    if w == 0 {
        return Vec::new();
    }
    // Whole rows only: a map shorter than its size says is read as far as it goes.
    let values = &values[..values.len().min(w * height as usize) / w * w];
    let mut ext: std::collections::BTreeMap<u16, [u32; 4]> = std::collections::BTreeMap::new();
    for (i, &v) in values.iter().enumerate() {
        if v < 1000 {
            continue;
        }
        let (x, y) = ((i % w) as u32, (i / w) as u32);
        let e = ext.entry(v).or_insert([x, y, x, y]);
        e[0] = e[0].min(x);
        e[1] = e[1].min(y);
        e[2] = e[2].max(x);
        e[3] = e[3].max(y);
    }
    let slivers = match rule {
        BoxRule::Tight => std::collections::BTreeSet::new(),
        BoxRule::Detectron => instances_with_outer_slivers(w, values, &ext),
    };
    ext.into_iter()
        .filter(|(v, _)| !slivers.contains(v))
        .filter_map(|(v, e)| {
            let class = class_of_label_id(v / 1000)?;
            classes.contains(class).then_some(GtBox {
                class,
                bbox: PixelBox::new(e[0] as f64, e[1] as f64, e[2] as f64, e[3] as f64),
            })
        })
        .collect()
}

/// The instance values (≥ 1000) whose mask has an outer 8-connected part of at most two pixels:
/// the parts whose outer contour, as OpenCV traces it, has at most two points. A part lying in
/// a hole of its own instance has no outer contour (`RETR_EXTERNAL`) and does not count.
///
/// One pass labels the 8-connected parts of equal values (union-find) and counts their pixels;
/// only a part of one or two pixels is then looked at: outer when a straight run of other
/// values leads from it to its instance's box edge, else when a 4-connected flood of other
/// values (within the box, widened by one pixel) reaches that edge.
fn instances_with_outer_slivers(
    w: usize,
    values: &[u16],
    boxes: &std::collections::BTreeMap<u16, [u32; 4]>,
) -> std::collections::BTreeSet<u16> {
    fn find(parent: &mut [u32], mut i: u32) -> u32 {
        while parent[i as usize] != i {
            let up = parent[parent[i as usize] as usize];
            parent[i as usize] = up;
            i = up;
        }
        i
    }
    let n = values.len();
    let mut parent: Vec<u32> = (0..n as u32).collect();
    for i in 0..n {
        let v = values[i];
        if v < 1000 {
            continue;
        }
        let (x, y) = (i % w, i / w);
        let mut neighbours = [None; 4];
        if x > 0 {
            neighbours[0] = Some(i - 1);
        }
        if y > 0 {
            neighbours[1] = Some(i - w);
            if x > 0 {
                neighbours[2] = Some(i - w - 1);
            }
            if x + 1 < w {
                neighbours[3] = Some(i - w + 1);
            }
        }
        for j in neighbours.into_iter().flatten().filter(|&j| values[j] == v) {
            let (a, b) = (find(&mut parent, i as u32), find(&mut parent, j as u32));
            if a != b {
                parent[a.max(b) as usize] = a.min(b);
            }
        }
    }
    // Pixels of each part, up to three (a part of three or more is never a sliver).
    let mut parts: std::collections::HashMap<u32, Vec<usize>> = std::collections::HashMap::new();
    for i in (0..n).filter(|&i| values[i] >= 1000) {
        let part = parts.entry(find(&mut parent, i as u32)).or_default();
        if part.len() < 3 {
            part.push(i);
        }
    }
    let mut out = std::collections::BTreeSet::new();
    // Small parts grouped by instance, so that one instance's flood is made once and dropped.
    let mut small: Vec<(u16, &Vec<usize>)> = parts
        .values()
        .filter(|p| p.len() <= 2)
        .map(|p| (values[p[0]], p))
        .collect();
    small.sort();
    let mut flooded: Option<(u16, Vec<bool>)> = None;
    for (v, part) in small {
        if out.contains(&v) {
            continue;
        }
        let Some(&[x0, y0, x1, y1]) = boxes.get(&v).map(|b| b.map(|c| c as usize)).as_ref() else {
            continue;
        };
        // Each straight run scanned from the part outwards: it stops at the first pixel of the
        // instance, which is near in a hole.
        let straight_out = part.iter().any(|&i| {
            let (x, y) = (i % w, i / w);
            (x0..x).rev().all(|xx| values[y * w + xx] != v)
                || (x + 1..=x1).all(|xx| values[y * w + xx] != v)
                || (y0..y).rev().all(|yy| values[yy * w + x] != v)
                || (y + 1..=y1).all(|yy| values[yy * w + x] != v)
        });
        if straight_out {
            out.insert(v);
            continue;
        }
        // One flood per instance (the small parts come grouped by instance).
        let flood = match flooded.take() {
            Some((fv, f)) if fv == v => f,
            _ => outside_of(w, values, v, [x0, y0, x1, y1]),
        };
        let bw = x1 - x0 + 3;
        let is_outer = part.iter().any(|&i| {
            let (bx, by) = (i % w - x0 + 1, i / w - y0 + 1);
            [(bx - 1, by), (bx + 1, by), (bx, by - 1), (bx, by + 1)]
                .iter()
                .any(|&(nx, ny)| flood[ny * bw + nx])
        });
        flooded = Some((v, flood));
        if is_outer {
            out.insert(v);
        }
    }
    out
}

/// The cells of instance `v`'s box `[x0, y0, x1, y1]` widened by one pixel (row-major, width
/// `x1 - x0 + 3`) that a 4-connected flood of other values reaches from the widened edge: the
/// background outside the instance, as against the holes it encloses.
fn outside_of(w: usize, values: &[u16], v: u16, [x0, y0, x1, y1]: [usize; 4]) -> Vec<bool> {
    let (bw, bh) = (x1 - x0 + 3, y1 - y0 + 3);
    let mine = |bx: usize, by: usize| {
        (1..=bw - 2).contains(&bx) && (1..=bh - 2).contains(&by) && values[(y0 + by - 1) * w + x0 + bx - 1] == v
    };
    let mut seen = vec![false; bw * bh];
    let mut stack: Vec<(usize, usize)> = (0..bw).flat_map(|bx| [(bx, 0), (bx, bh - 1)]).collect();
    stack.extend((0..bh).flat_map(|by| [(0, by), (bw - 1, by)]));
    while let Some((bx, by)) = stack.pop() {
        if seen[by * bw + bx] || mine(bx, by) {
            continue;
        }
        seen[by * bw + bx] = true;
        if bx > 0 {
            stack.push((bx - 1, by));
        }
        if bx + 1 < bw {
            stack.push((bx + 1, by));
        }
        if by > 0 {
            stack.push((bx, by - 1));
        }
        if by + 1 < bh {
            stack.push((bx, by + 1));
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classes::CAR;

    #[test]
    fn a_jpeg_cut_inside_its_scan_is_refused_by_name() {
        // Noise, so the scan is most of the file.
        let (w, h) = (256u32, 128u32);
        let px: Vec<u8> = (0..w * h * 3)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode(&px, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("3000011.jpg");
        std::fs::write(&path, &jpeg).unwrap();
        assert_eq!(decode_image(&path).unwrap().width, w);
        // Bytes after the end-of-image marker (some cameras' padding) are allowed.
        let mut padded = jpeg.clone();
        padded.extend_from_slice(&[0; 64]);
        std::fs::write(&path, &padded).unwrap();
        assert!(decode_image(&path).is_ok());
        for cut in [jpeg.len() * 2 / 3, jpeg.len() - 2] {
            std::fs::write(&path, &jpeg[..cut]).unwrap();
            let e = decode_image(&path).unwrap_err().to_string();
            assert!(e.contains("3000011.jpg") && e.contains("truncated JPEG"), "{e}");
        }
    }

    /// Scoring detections needs only the ground truth, but an image beside it of another size
    /// than its instanceIds puts boxes and detections in different frames: refused by name.
    #[test]
    fn ground_truth_of_another_size_than_its_image_is_refused() {
        use seg_labels::png_io;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let city = |top: &str, name: &str| root.join(top).join("val/ulm").join(name);
        let ann = |stem: &str| city("gtFine", &format!("{stem}_gtFine_instanceIds.png"));
        let img = |stem: &str| city("leftImg8bit", &format!("{stem}_leftImg8bit.png"));
        png_io::write_gray16(&ann("ulm_000000_000019"), 3, 1, &[26000, 26000, 26000]).unwrap();
        png_io::write_gray16(&ann("ulm_000001_000019"), 3, 1, &[26001, 26001, 26001]).unwrap();
        let image = |width: u32| RgbImage {
            width,
            height: 1,
            data: vec![9; 3 * width as usize],
        };
        png_io::write_rgb(&img("ulm_000000_000019"), &image(3)).unwrap();
        // 000001's image is not there: its boxes are scored all the same.
        let ds = DetDataset::open_cityscapes(root, "val", true, ClassSet::Car).unwrap();
        assert_eq!(ds.all_boxes().unwrap().iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
        png_io::write_rgb(&img("ulm_000001_000019"), &image(4)).unwrap();
        let ds = DetDataset::open_cityscapes(root, "val", true, ClassSet::Car).unwrap();
        for e in [ds.all_boxes().unwrap_err(), ds.load(1).unwrap_err()] {
            let e = e.to_string();
            assert!(
                e.contains("ulm_000001_000019_leftImg8bit.png")
                    && e.contains("ulm_000001_000019_gtFine_instanceIds.png")
                    && e.contains("4x1")
                    && e.contains("3x1"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_cityscapes_image_without_usable_instance_ids_is_a_sample_that_says_why() {
        use seg_labels::png_io;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let city = |top: &str, name: &str| root.join(top).join("val/lindau").join(name);
        let image = RgbImage {
            width: 3,
            height: 1,
            data: vec![9; 9],
        };
        for stem in ["lindau_000000_000019", "lindau_000001_000019", "lindau_000002_000019"] {
            png_io::write_rgb(&city("leftImg8bit", &format!("{stem}_leftImg8bit.png")), &image).unwrap();
        }
        let ann = |stem: &str| city("gtFine", &format!("{stem}_gtFine_instanceIds.png"));
        // A car of three pixels (Detectron's converter leaves out a part of one or two).
        png_io::write_gray16(&ann("lindau_000000_000019"), 3, 1, &[26000, 26000, 26000]).unwrap();
        // 000001 has no instanceIds; 000002's was saved as 8 bits; 000003 has no image.
        png_io::write_gray8(&ann("lindau_000002_000019"), 2, 1, &[26, 7]).unwrap();
        png_io::write_gray16(&ann("lindau_000003_000019"), 2, 1, &[7, 7]).unwrap();
        // Hidden files and folders (macOS's `._*` companions, `.trash/`) are no samples.
        std::fs::write(ann("._lindau_000004_000019"), b"junk").unwrap();
        std::fs::write(city("leftImg8bit", "._lindau_000004_000019_leftImg8bit.png"), b"junk").unwrap();
        png_io::write_gray16(
            &root.join("gtFine/val/.trash/x_000000_000019_gtFine_instanceIds.png"),
            2,
            1,
            &[7, 7],
        )
        .unwrap();
        let ds = DetDataset::open_cityscapes(root, "val", true, ClassSet::Car).unwrap();
        let names: Vec<&str> = ds.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lindau_000000_000019",
                "lindau_000001_000019",
                "lindau_000002_000019",
                "lindau_000003_000019"
            ]
        );
        assert_eq!(ds.load(0).unwrap().boxes.len(), 1);
        let e = ds.load(1).unwrap_err().to_string();
        assert!(
            e.contains("lindau_000001_000019_gtFine_instanceIds.png") && e.contains("cannot read"),
            "{e}"
        );
        let e = ds.load(2).unwrap_err().to_string();
        assert!(
            e.contains("lindau_000002_000019_gtFine_instanceIds.png") && e.contains("8 bits cannot hold"),
            "{e}"
        );
        let e = ds.load(3).unwrap_err().to_string();
        assert!(e.contains("lindau_000003_000019_leftImg8bit.png"), "{e}");
        // Unlabelled target training takes the images alone.
        assert_eq!(
            DetDataset::open_cityscapes(root, "val", false, ClassSet::Car)
                .unwrap()
                .len(),
            3
        );
        // A split list keeps the samples it names, however each line names its image.
        let list = root.join("val.txt");
        let keep = |text: &str| {
            std::fs::write(&list, text).unwrap();
            let mut ds = DetDataset::open_cityscapes(root, "val", true, ClassSet::Car).unwrap();
            ds.keep_listed(&list)
                .map(|()| ds.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>())
        };
        let both = ["lindau_000000_000019", "lindau_000002_000019"];
        for text in [
            "lindau/lindau_000002_000019_leftImg8bit.png\nlindau/lindau_000000_000019_leftImg8bit.png\n",
            "# val\nleftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png\n\nlindau_000002_000019\n",
            "lindau_000000_000019_leftImg8bit\r\nlindau_000002_000019_gtFine_instanceIds.png\r\n",
        ] {
            assert_eq!(keep(text).unwrap(), both, "{text}");
        }
        for (text, said) in [
            (
                "lindau_000000_000019\nlindau_000000_000019_leftImg8bit.png\n",
                "names `lindau_000000_000019` twice",
            ),
            (
                "leftImg8bit/train/lindau/lindau_000000_000019_leftImg8bit.png\n",
                "names the `train` split",
            ),
            ("# nothing\n", "no samples listed"),
        ] {
            let e = keep(text).unwrap_err().to_string();
            assert!(e.contains(said) && e.contains("val.txt"), "{text}: {e}");
        }
        // A listed image that is not on disk is a sample that does not load, named by its file
        // and the list (the run's error policy decides), in the split's order.
        assert_eq!(
            keep("lindau_000009_000019\nlindau_000000_000019\n").unwrap(),
            ["lindau_000000_000019", "lindau_000009_000019"]
        );
        let mut ds = DetDataset::open_cityscapes(root, "val", true, ClassSet::Car).unwrap();
        ds.keep_listed(&list).unwrap();
        let e = ds.load(1).unwrap_err().to_string();
        assert!(
            e.contains("lindau_000009_000019_leftImg8bit.png: image named by the split list")
                && e.contains("val.txt not found"),
            "{e}"
        );
        assert_eq!(ds.first_missing_or_unreadable().unwrap().to_string(), e);
        let left_out = ds.leave_out_unloadable();
        assert_eq!(left_out.len(), 1);
        assert_eq!(left_out[0].name, "lindau_000009_000019");
        // One stem in two cities: detections could not say which, so the split is refused.
        std::fs::create_dir_all(root.join("gtFine/val/munster")).unwrap();
        std::fs::copy(
            ann("lindau_000000_000019"),
            root.join("gtFine/val/munster/lindau_000000_000019_gtFine_instanceIds.png"),
        )
        .unwrap();
        let e = DetDataset::open_cityscapes(root, "val", true, ClassSet::Car)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("duplicate image name `lindau_000000_000019`") && e.contains("munster") && e.contains("lindau/"),
            "{e}"
        );
    }

    #[test]
    fn tight_instance_boxes_cover_every_part() {
        // 6×4 map: a car (26000) in two parts, a person (24001), a caravan (29000),
        // plain label ids 26 (car group) and 7 (road).
        #[rustfmt::skip]
        let v: Vec<u16> = vec![
            7,     26000, 26000, 7,     7,     26,
            7,     26000, 7,     24001, 24001, 26,
            29000, 7,     7,     24001, 24001, 7,
            29000, 7,     26000, 7,     7,     7,
        ];
        let b = boxes_from_instance_ids(6, 4, &v, ClassSet::All, BoxRule::Tight);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].class, 0);
        assert_eq!(b[0].bbox, PixelBox::new(3.0, 1.0, 4.0, 2.0));
        assert_eq!(b[1].class, CAR);
        assert_eq!(b[1].bbox, PixelBox::new(1.0, 0.0, 2.0, 3.0));
        assert_eq!(
            boxes_from_instance_ids(6, 4, &v, ClassSet::Car, BoxRule::Tight).len(),
            1
        );
        // Detectron's converter leaves the car out: its one-pixel part has an outer contour
        // of one point.
        let b = boxes_from_instance_ids(6, 4, &v, ClassSet::All, BoxRule::Detectron);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].class, 0);
    }

    /// An instance-id map of `w`×`h` filled with road (7), with `(value, x0, y0, x1, y1)`
    /// rectangles (inclusive) painted in order.
    fn painted(w: usize, h: usize, rects: &[(u16, usize, usize, usize, usize)]) -> Vec<u16> {
        let mut v = vec![7u16; w * h];
        for &(id, x0, y0, x1, y1) in rects {
            for y in y0..=y1 {
                for x in x0..=x1 {
                    v[y * w + x] = id;
                }
            }
        }
        v
    }

    #[test]
    fn detectron_boxes_match_opencvs_outer_contours() {
        // Expected boxes as OpenCV 5.0's findContours (RETR_EXTERNAL, CHAIN_APPROX_NONE) and
        // Detectron's `min(len_p) <= 4` filter give them on the same maps.
        let boxes = |w: usize, h: usize, v: &[u16]| -> Vec<(usize, [f64; 4])> {
            boxes_from_instance_ids(w as u32, h as u32, v, ClassSet::All, BoxRule::Detectron)
                .into_iter()
                .map(|b| (b.class, [b.bbox.x_min, b.bbox.y_min, b.bbox.x_max, b.bbox.y_max]))
                .collect()
        };
        // A car with a stray pixel, a one-pixel car, a two-pixel car (left out); a 3×1 car, a
        // 2×2 car, a plain car (kept); a car group region (no instance).
        let v = painted(
            64,
            48,
            &[
                (26001, 5, 5, 14, 12),
                (26001, 60, 40, 60, 40),
                (26002, 30, 20, 30, 20),
                (26003, 40, 25, 41, 25),
                (26004, 10, 30, 12, 30),
                (26005, 20, 35, 21, 36),
                (26006, 40, 2, 59, 19),
                (26, 2, 44, 29, 46),
            ],
        );
        assert_eq!(
            boxes(64, 48, &v),
            vec![
                (CAR, [10.0, 30.0, 12.0, 30.0]),
                (CAR, [20.0, 35.0, 21.0, 36.0]),
                (CAR, [40.0, 2.0, 59.0, 19.0])
            ]
        );
        // A ring with a one-pixel island in its hole (no outer contour: kept), a diagonal
        // two-pixel person, a one-pixel car in the image's corner (left out), a 3×1 truck.
        let mut v = painted(12, 12, &[(26001, 2, 2, 8, 8), (7, 3, 3, 7, 7), (26001, 5, 5, 5, 5)]);
        v[11] = 24001;
        v[12 + 10] = 24001;
        v[10 * 12..10 * 12 + 3].fill(27001);
        v[12 * 12 - 1] = 26002;
        assert_eq!(
            boxes(12, 12, &v),
            vec![(CAR, [2.0, 2.0, 8.0, 8.0]), (3, [0.0, 10.0, 2.0, 10.0])]
        );
        // A ring along the image's edges, a two-pixel island in its hole: kept.
        let v = painted(6, 6, &[(26001, 0, 0, 5, 5), (7, 1, 1, 4, 4), (26001, 2, 2, 3, 2)]);
        assert_eq!(boxes(6, 6, &v), vec![(CAR, [0.0, 0.0, 5.0, 5.0])]);
        // The same ring opened by one pixel: the island is outer, the car left out.
        let mut open = v.clone();
        open[3] = 7;
        assert!(boxes(6, 6, &open).is_empty());
        // An island whose four straight runs all meet the car, walled on three sides with the
        // fourth wall short of a corner: a bent way out (dropped); the fourth wall closing the
        // corner diagonally shuts it (kept).
        let walled = |top: [usize; 3]| {
            let mut v = painted(
                10,
                10,
                &[
                    (26001, 5, 5, 5, 5),
                    (26001, 3, 4, 3, 6),
                    (26001, 7, 4, 7, 6),
                    (26001, 4, 7, 6, 7),
                ],
            );
            for x in top {
                v[3 * 10 + x] = 26001;
            }
            v
        };
        assert!(boxes(10, 10, &walled([5, 6, 7])).is_empty());
        assert_eq!(boxes(10, 10, &walled([4, 5, 6])), vec![(CAR, [3.0, 3.0, 7.0, 7.0])]);
        // An island in a ring in the hole of another ring: kept.
        let v = painted(
            15,
            15,
            &[
                (26001, 1, 1, 13, 13),
                (7, 2, 2, 12, 12),
                (26001, 4, 4, 10, 10),
                (7, 5, 5, 9, 9),
                (26001, 7, 7, 7, 7),
            ],
        );
        assert_eq!(boxes(15, 15, &v), vec![(CAR, [1.0, 1.0, 13.0, 13.0])]);
        // A map shorter than its size says: its whole rows are read, nothing panics.
        let mut short = painted(8, 3, &[(26000, 6, 0, 7, 1), (26000, 0, 2, 2, 2), (26000, 4, 2, 4, 2)]);
        short.truncate(21);
        assert_eq!(boxes(8, 3, &short), vec![(CAR, [6.0, 0.0, 7.0, 1.0])]);
        assert!(boxes_from_instance_ids(0, 3, &short, ClassSet::All, BoxRule::Detectron).is_empty());
    }
}
