//! Detection batches: images resized to the detector's input, flipped at random (SSD's
//! zoom-out and random-crop augmentations are not implemented), normalised with ImageNet's
//! statistics, and, for labelled data, boxes matched to the default boxes on the host
//! ([`crate::coding::match_priors`]) and sent as `seg_core::DetTargets`. Resized samples are
//! kept in memory after their first use. Every random choice comes from a generator derived
//! from (seed, draw, slot), so a batch does not depend on thread scheduling.

use std::sync::{Arc, OnceLock};

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use seg_core::{Batch, DetTargets, Domain, Rng};
use seg_data::transform::{normalize_chw, resize_bilinear, IMAGENET_MEAN, IMAGENET_STD};
use seg_data::Sampler;
use seg_detect::{DetDataset, DetError};
use seg_labels::RgbImage;

use crate::coding::match_priors;

/// A sample at the detector's input size: image, unit boxes and their labels (positions in
/// the class set, background excluded).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub name: String,
    pub image: RgbImage,
    pub boxes: Vec<[f32; 4]>,
    pub labels: Vec<u32>,
}

/// Loads sample `i` of `ds` at `size` `(w, h)`.
pub fn prepare(ds: &DetDataset, i: usize, size: (usize, usize)) -> Result<Prepared, DetError> {
    let s = ds.load(i)?;
    let classes = ds.classes.indices();
    let (w, h) = (s.image.width, s.image.height);
    let image = if (w as usize, h as usize) == size {
        s.image
    } else {
        resize_bilinear(&s.image, size.0 as u32, size.1 as u32)
    };
    let mut boxes = Vec::with_capacity(s.boxes.len());
    let mut labels = Vec::with_capacity(s.boxes.len());
    for b in &s.boxes {
        if let Some(pos) = classes.iter().position(|&c| c == b.class) {
            boxes.push(b.bbox.to_unit(w, h));
            labels.push(pos as u32);
        }
    }
    Ok(Prepared {
        name: s.name,
        image,
        boxes,
        labels,
    })
}

/// The `N×3×H×W` tensor of prepared images.
pub fn images_tensor(images: &[&RgbImage], device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = images.first().map_or((0, 0), |i| (i.width as usize, i.height as usize));
    let mut px = Vec::with_capacity(images.len() * 3 * w * h);
    for img in images {
        normalize_chw(img, IMAGENET_MEAN, IMAGENET_STD, &mut px);
    }
    Tensor::from_vec(px, (images.len(), 3, h, w), device)
}

/// The sample mirrored left to right (image and boxes).
fn flip(p: &Prepared) -> Prepared {
    let mut image = p.image.clone();
    seg_data::transform::hflip(&mut image, None);
    Prepared {
        name: p.name.clone(),
        image,
        boxes: p.boxes.iter().map(|b| [1.0 - b[2], b[1], 1.0 - b[0], b[3]]).collect(),
        labels: p.labels.clone(),
    }
}

/// An endless, seeded loader of detection batches.
pub struct DetLoader {
    ds: Arc<DetDataset>,
    sampler: Sampler,
    seed: u64,
    draws: u64,
    batch: usize,
    size: (usize, usize),
    priors: Arc<Vec<[f32; 4]>>,
    labelled: bool,
    hflip: bool,
    domain: Domain,
    device: Device,
    cache: Vec<OnceLock<Prepared>>,
}

impl DetLoader {
    /// `labelled`: match boxes and attach targets (the dataset must have annotations).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ds: Arc<DetDataset>,
        batch: usize,
        size: (usize, usize),
        priors: Arc<Vec<[f32; 4]>>,
        labelled: bool,
        domain: Domain,
        seed: u64,
        device: Device,
    ) -> Self {
        let cache = (0..ds.len()).map(|_| OnceLock::new()).collect();
        Self {
            sampler: Sampler::new(ds.len(), seed),
            ds,
            seed,
            draws: 0,
            batch,
            size,
            priors,
            labelled,
            hflip: true,
            domain,
            device,
            cache,
        }
    }

    /// Where the loader is (saved in checkpoints).
    pub fn state(&self) -> seg_data::loader::LoaderState {
        let (epoch, pos) = self.sampler.position();
        seg_data::loader::LoaderState {
            epoch,
            pos,
            draws: self.draws,
            dataset: Some(self.identity()),
        }
    }

    /// The samples this loader draws from.
    pub fn identity(&self) -> seg_data::loader::DatasetIdentity {
        seg_data::loader::DatasetIdentity::of(self.ds.entries.iter().map(|e| e.name.as_str()))
    }

    /// Continues from a saved [`Self::state`], refusing one saved over another dataset (`role`
    /// names it in the message).
    pub fn resume(&mut self, st: seg_data::loader::LoaderState, role: &str) -> Result<(), String> {
        self.identity().check_resume(&st, role)?;
        self.sampler.seek(st.epoch, st.pos);
        self.draws = st.draws;
        Ok(())
    }

    pub fn with_hflip(mut self, hflip: bool) -> Self {
        self.hflip = hflip;
        self
    }

    fn cached(&self, i: usize) -> Result<&Prepared, DetError> {
        if let Some(p) = self.cache[i].get() {
            return Ok(p);
        }
        let p = prepare(&self.ds, i, self.size)?;
        Ok(self.cache[i].get_or_init(|| p))
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Result<Batch, DetError> {
        let idx: Vec<usize> = (0..self.batch).map(|_| self.sampler.next_index()).collect();
        let draw = self.draws;
        self.draws += 1;
        let prepared: Vec<Prepared> = idx
            .par_iter()
            .enumerate()
            .map(|(slot, &i)| {
                let p = self.cached(i)?;
                let mut rng = Rng::derive(self.seed, &[draw, slot as u64, 0xF11F]);
                Ok(if self.hflip && rng.chance(0.5) {
                    flip(p)
                } else {
                    p.clone()
                })
            })
            .collect::<Result<_, DetError>>()?;
        let dev_err = |e: candle_core::Error| DetError::Invalid {
            path: self.ds.root.clone(),
            reason: format!("building a batch: {e}"),
        };
        let images =
            images_tensor(&prepared.iter().map(|p| &p.image).collect::<Vec<_>>(), &self.device).map_err(dev_err)?;
        let det = if self.labelled {
            let np = self.priors.len();
            let mut classes = Vec::with_capacity(prepared.len() * np);
            let mut offsets = Vec::with_capacity(prepared.len() * np * 4);
            for p in &prepared {
                let (c, o) = match_priors(&p.boxes, &p.labels, &self.priors, 0.5);
                classes.extend(c);
                offsets.extend(o.into_iter().flatten());
            }
            let n = prepared.len();
            Some(DetTargets {
                classes: Tensor::from_vec(classes, (n, np), &self.device).map_err(dev_err)?,
                offsets: Tensor::from_vec(offsets, (n, np, 4), &self.device).map_err(dev_err)?,
            })
        } else {
            None
        };
        Ok(Batch {
            images,
            labels: None,
            domain: self.domain,
            names: prepared.into_iter().map(|p| p.name).collect(),
            det,
        })
    }
}
