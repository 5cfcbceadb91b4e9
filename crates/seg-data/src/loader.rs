//! From dataset to candle batches: an endless, reshuffling, seeded [`Sampler`]; [`Augment`]
//! settings; a training [`Loader`] that decodes and augments a batch in parallel with rayon
//! and collates it on a device.
//!
//! Every random choice for a sample is drawn from a generator derived from (seed, draw number,
//! slot), so a batch is the same whatever the thread scheduling, and a resumed run continues
//! the exact sequence from the saved [`LoaderState`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, OnceLock};

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use seg_core::{Batch, Domain, Rng};

use crate::dataset::{Dataset, ErrorPolicy, Sample};
use crate::error::DataError;
use crate::transform;

/// Endless sampler: a fresh permutation per epoch, derived from the seed and the epoch number.
#[derive(Debug, Clone)]
pub struct Sampler {
    len: usize,
    seed: u64,
    epoch: u64,
    pos: usize,
    order: Vec<usize>,
}

impl Sampler {
    pub fn new(len: usize, seed: u64) -> Self {
        let mut s = Self {
            len,
            seed,
            epoch: 0,
            pos: 0,
            order: Vec::new(),
        };
        s.reshuffle();
        s
    }

    fn reshuffle(&mut self) {
        self.order = (0..self.len).collect();
        Rng::derive(self.seed, &[self.epoch]).shuffle(&mut self.order);
    }

    /// The next index; wraps into a new, reshuffled epoch.
    pub fn next_index(&mut self) -> usize {
        if self.pos >= self.len {
            self.epoch += 1;
            self.pos = 0;
            self.reshuffle();
        }
        let i = self.order.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        i
    }

    pub fn position(&self) -> (u64, usize) {
        (self.epoch, self.pos)
    }

    pub fn seek(&mut self, epoch: u64, pos: usize) {
        self.epoch = epoch;
        self.pos = pos;
        self.reshuffle();
    }
}

/// Augmentation settings for training batches.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Augment {
    /// Resize factor applied to every sample before anything else (1.0 = as stored).
    pub base_scale: f32,
    /// Random extra scale range `[lo, hi]` (1.0, 1.0 = off).
    pub scale_range: [f32; 2],
    /// Crop `[width, height]`; padded with ignore where the image is smaller.
    pub crop: Option<[u32; 2]>,
    pub hflip: bool,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            base_scale: 1.0,
            scale_range: [1.0, 1.0],
            crop: None,
            hflip: true,
            mean: transform::IMAGENET_MEAN,
            std: transform::IMAGENET_STD,
        }
    }
}

/// The largest resize factor (`base_scale` times the top of `scale_range`) a config may ask for:
/// the datasets are downscaled (GTA5 by half in the presets); a factor of 100 would ask for
/// images of 10,000 times the pixels.
pub const MAX_SCALE: f32 = 4.0;

impl Augment {
    /// Checks the values no batch could be made with; the message names the key (`augment.*`).
    pub fn validate(&self) -> Result<(), String> {
        let [lo, hi] = self.scale_range;
        if !(self.base_scale > 0.0 && self.base_scale <= MAX_SCALE) {
            return Err(format!(
                "augment.base_scale = {}: must be in (0, {MAX_SCALE}]",
                self.base_scale
            ));
        }
        if !(lo > 0.0 && lo <= hi && self.base_scale * hi <= MAX_SCALE) {
            return Err(format!(
                "augment.scale_range = [{lo}, {hi}]: must be 0 < lo ≤ hi with base_scale × hi ≤ {MAX_SCALE}"
            ));
        }
        if let Some(c) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("augment.std has {c}: every channel's std must be positive"));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(format!("augment.mean has {m}: every channel's mean must be finite"));
        }
        Ok(())
    }
}

/// Position of a loader, stored in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoaderState {
    pub epoch: u64,
    pub pos: usize,
    pub draws: u64,
    /// The samples the position indexes (absent in checkpoints written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetIdentity>,
}

/// Which samples, in which order, a loader draws from: their count and a digest of their
/// names (FNV-1a, 64 bits). A loader position means nothing over another list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatasetIdentity {
    pub samples: u64,
    pub names_digest: u64,
}

impl DatasetIdentity {
    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut h = seg_labels::fsutil::Fnv::default();
        let mut samples = 0;
        for name in names {
            samples += 1;
            // Each name ends with a 0 byte, so `ab`,`c` and `a`,`bc` differ.
            h.write(name.as_bytes());
            h.write(&[0]);
        }
        Self {
            samples,
            names_digest: h.0,
        }
    }

    /// Refuses a saved position over other samples than `self`'s; `role` names the dataset.
    pub fn check_resume(&self, saved: &LoaderState, role: &str) -> Result<(), String> {
        match saved.dataset {
            Some(then) if then != *self => Err(format!(
                "the {role} dataset is not the one the checkpoint's loader position indexes: {} samples now, {} then{}; \
                 a resumed run would draw other samples than the run it continues. Restore the dataset as it was, or \
                 start the run again in a new folder",
                self.samples,
                then.samples,
                if then.samples == self.samples { ", with other names" } else { "" }
            )),
            _ => Ok(()),
        }
    }
}

/// An augmented sample in CHW floats.
struct Prepared {
    name: String,
    width: u32,
    height: u32,
    pixels: Vec<f32>,
    label: Option<Vec<u8>>,
}

/// Applies base scale, random scale, crop, flip and normalisation to one sample.
pub fn prepare(sample: &Sample, aug: &Augment, rng: &mut Rng) -> (seg_labels::RgbImage, Option<Vec<u8>>) {
    let s = aug.base_scale * rng.range_f32(aug.scale_range[0], aug.scale_range[1].max(aug.scale_range[0]));
    let (w, h) = (sample.image.width, sample.image.height);
    let (nw, nh) = (
        ((w as f32 * s).round() as u32).max(1),
        ((h as f32 * s).round() as u32).max(1),
    );
    // The crop is drawn first and only its window is resampled (the same pixels as resizing
    // the whole image and cropping it; the draw order of the random numbers is unchanged).
    let (win, crop) = match aug.crop {
        Some([cw, ch]) => (transform::crop_window(nw, nh, cw, ch, rng), Some((cw, ch))),
        None => (transform::Window::whole(nw, nh), None),
    };
    let img = transform::resize_bilinear_window(&sample.image, nw, nh, win);
    let lab = sample
        .label
        .as_ref()
        .map(|l| transform::resize_nearest_window(l, w, h, nw, nh, win));
    let (mut img, mut lab) = match crop {
        Some((cw, ch)) => transform::pad_to(img, lab, cw, ch),
        None => (img, lab),
    };
    if aug.hflip && rng.chance(0.5) {
        transform::hflip(&mut img, lab.as_mut());
    }
    (img, lab)
}

/// Training loader: endless, shuffled, augmented batches on a device.
///
/// With a lookahead of `k` ([`Loader::with_lookahead`]), the next `k` batches are decoded and
/// augmented in the background on rayon's threads while the caller trains on the current one
/// (PyTorch's `DataLoader` workers): on a GPU a full-size PNG takes longer to decode than a
/// training step takes. The batches are the same as without lookahead, and [`Loader::state`]
/// is the position after the last batch handed out, so a checkpoint resumes exactly.
pub struct Loader {
    shared: Arc<Shared>,
    sampler: Sampler,
    batch_size: usize,
    draws: u64,
    domain: Domain,
    device: Device,
    lookahead: usize,
    /// Batches drawn from the sampler and being prepared, oldest first.
    ahead: VecDeque<Ahead>,
    /// The position after the last batch handed out.
    consumed: LoaderState,
    /// Set when the batches being prepared are no longer wanted (a restore, or the loader
    /// dropped): their jobs stop before their next sample.
    cancel: Arc<AtomicBool>,
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// What preparing a sample needs, shared with the background jobs.
#[derive(Clone)]
struct Shared {
    dataset: Arc<Dataset>,
    augment: Augment,
    seed: u64,
    with_labels: bool,
    cache: Option<Arc<Vec<OnceLock<Arc<Sample>>>>>,
}

/// One batch drawn ahead: its draw number, the sampler's position after it, and its samples
/// (each prepared, or the error that stopped it) once the job is done; `Err` with the message
/// of a job that panicked.
struct Ahead {
    draw: u64,
    after: LoaderState,
    samples: Receiver<std::result::Result<Vec<Result<Prepared, DataError>>, String>>,
}

impl Loader {
    pub fn new(
        dataset: Arc<Dataset>,
        batch_size: usize,
        augment: Augment,
        seed: u64,
        domain: Domain,
        device: Device,
    ) -> Self {
        let sampler = Sampler::new(dataset.len(), seed);
        Self {
            shared: Arc::new(Shared {
                dataset,
                augment,
                seed,
                with_labels: true,
                cache: None,
            }),
            sampler,
            batch_size: batch_size.max(1),
            draws: 0,
            domain,
            device,
            lookahead: 0,
            ahead: VecDeque::new(),
            consumed: LoaderState {
                epoch: 0,
                pos: 0,
                draws: 0,
                dataset: None,
            },
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Keep decoded samples in memory (small datasets such as the embedded benchmark).
    pub fn with_cache(mut self, cache: bool) -> Self {
        let n = self.shared.dataset.len();
        Arc::make_mut(&mut self.shared).cache = cache.then(|| Arc::new((0..n).map(|_| OnceLock::new()).collect()));
        // Batches already prepared ahead were made with the old setting.
        self.restore(self.consumed);
        self
    }

    /// Whether batches carry labels (false for unlabelled target batches).
    pub fn with_labels(mut self, with_labels: bool) -> Self {
        Arc::make_mut(&mut self.shared).with_labels = with_labels;
        self.restore(self.consumed);
        self
    }

    /// Prepare up to `batches` batches ahead in the background (0: each when it is asked for).
    pub fn with_lookahead(mut self, batches: usize) -> Self {
        self.lookahead = batches;
        self
    }

    /// The position after the last batch handed out (batches prepared ahead do not count).
    pub fn state(&self) -> LoaderState {
        LoaderState {
            dataset: Some(self.identity()),
            ..self.consumed
        }
    }

    /// The samples this loader draws from.
    pub fn identity(&self) -> DatasetIdentity {
        DatasetIdentity::of(self.shared.dataset.entries().iter().map(|e| e.name.as_str()))
    }

    /// Continues from a checkpoint's `state`, refusing one saved over another dataset (`role`
    /// names it in the message).
    pub fn resume(&mut self, state: LoaderState, role: &str) -> Result<(), String> {
        self.identity().check_resume(&state, role)?;
        self.restore(state);
        Ok(())
    }

    /// Continues from `state`; batches prepared ahead are dropped.
    pub fn restore(&mut self, state: LoaderState) {
        self.cancel.store(true, Ordering::Relaxed);
        self.cancel = Arc::new(AtomicBool::new(false));
        self.ahead.clear();
        self.sampler.seek(state.epoch, state.pos);
        self.draws = state.draws;
        self.consumed = state;
    }

    /// Draws the next batch's samples from the sampler and starts preparing them: on rayon's
    /// threads with a lookahead, at once otherwise.
    fn draw_ahead(&mut self) {
        let draw = self.draws;
        self.draws += 1;
        let indices: Vec<usize> = (0..self.batch_size).map(|_| self.sampler.next_index()).collect();
        let (epoch, pos) = self.sampler.position();
        let after = LoaderState {
            epoch,
            pos,
            draws: self.draws,
            dataset: None,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (shared, cancel) = (self.shared.clone(), self.cancel.clone());
        let job = move || {
            // A panic becomes the batch's error (on rayon's threads it would end the process).
            let samples = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                indices
                    .par_iter()
                    .enumerate()
                    .map(|(slot, &i)| {
                        if cancel.load(Ordering::Relaxed) {
                            return Err(DataError::Invalid {
                                path: shared.dataset.root().to_path_buf(),
                                reason: "batch no longer wanted".into(),
                            });
                        }
                        shared.prepare_one(i, draw, slot as u64)
                    })
                    .collect()
            }))
            .map_err(|p| {
                p.downcast_ref::<&str>()
                    .map(|m| m.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into())
            });
            // The loader may be gone (or restored) by now: then nobody wants these.
            let _ = tx.send(samples);
        };
        if self.lookahead > 0 {
            rayon::spawn(job);
        } else {
            job();
        }
        self.ahead.push_back(Ahead {
            draw,
            after,
            samples: rx,
        });
    }

    /// The next batch. Under [`ErrorPolicy::Skip`] a sample that fails to decode is replaced by
    /// one drawn at random from the dataset by the batch's own generator (with a warning), so a
    /// batch does not depend on how far ahead the loader reads; under `Fail` the error names
    /// the file.
    pub fn next_batch(&mut self) -> Result<Batch, DataError> {
        while self.ahead.len() <= self.lookahead {
            self.draw_ahead();
        }
        let Some(next) = self.ahead.pop_front() else {
            return Err(DataError::Empty {
                dataset: self.shared.dataset.name(),
                split: self.shared.dataset.split().to_string(),
                root: self.shared.dataset.root().to_path_buf(),
                detail: ": no batch was drawn".into(),
            });
        };
        // The batch counts as handed out, error or not (as when the sampler drew it on demand).
        self.consumed = next.after;
        let root = || self.shared.dataset.root().to_path_buf();
        let samples = wait(&next.samples)
            .ok_or_else(|| DataError::Invalid {
                path: root(),
                reason: "a background decoding job ended without its batch".into(),
            })?
            .map_err(|panic| DataError::Invalid {
                path: root(),
                reason: format!("preparing a batch failed: {panic}"),
            })?;
        let skip = self.shared.dataset.options().error_policy == ErrorPolicy::Skip;
        let mut prepared: Vec<Option<Prepared>> = samples
            .into_iter()
            .map(|r| match r {
                Ok(p) => Ok(Some(p)),
                Err(e) if skip => {
                    tracing::warn!("skipping sample: {e}");
                    Ok(None)
                }
                Err(e) => Err(e),
            })
            .collect::<Result<_, _>>()?;
        // Refill skipped slots by walking a permutation of the dataset drawn by the batch's own
        // generator (only for a batch with a slot to refill); give up after two passes without
        // one good sample.
        let len = self.shared.dataset.len();
        let mut order: Vec<usize> = Vec::new();
        if prepared.iter().any(Option::is_none) {
            order.extend(0..len);
            Rng::derive(self.shared.seed, &[next.draw, u64::MAX]).shuffle(&mut order);
        }
        let mut attempts = 0;
        for slot in prepared.iter_mut() {
            let mut misses = 0;
            while slot.is_none() {
                attempts += 1;
                misses += 1;
                if misses > 2 * len {
                    return Err(DataError::Empty {
                        dataset: self.shared.dataset.name(),
                        split: self.shared.dataset.split().to_string(),
                        root: self.shared.dataset.root().to_path_buf(),
                        detail: ": every sample failed to decode".into(),
                    });
                }
                let i = order[(attempts - 1) % len];
                match self.shared.prepare_one(i, next.draw, 1000 + attempts as u64) {
                    Ok(p) => *slot = Some(p),
                    Err(e) => tracing::warn!("skipping sample: {e}"),
                }
            }
        }
        let prepared: Vec<Prepared> = prepared.into_iter().flatten().collect();
        collate(prepared, self.domain, &self.device)
    }
}

/// A batch's samples once its job has sent them (`None`: the job is gone). On one of rayon's
/// threads (a loader used inside a parallel job) the wait runs other queued jobs meanwhile, the
/// batch's own among them, instead of blocking the thread.
fn wait<T>(rx: &Receiver<T>) -> Option<T> {
    if rayon::current_thread_index().is_none() {
        return rx.recv().ok();
    }
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::thread::yield_now();
                }
            }
        }
    }
}

impl Shared {
    fn load(&self, i: usize) -> Result<Arc<Sample>, DataError> {
        if let Some(cache) = &self.cache {
            if let Some(s) = cache[i].get() {
                return Ok(s.clone());
            }
            let s = Arc::new(self.dataset.get(i)?);
            let _ = cache[i].set(s.clone());
            return Ok(s);
        }
        Ok(Arc::new(self.dataset.get(i)?))
    }

    fn prepare_one(&self, i: usize, draw: u64, slot: u64) -> Result<Prepared, DataError> {
        let sample = self.load(i)?;
        let mut rng = Rng::derive(self.seed, &[draw, slot]);
        let (img, lab) = prepare(&sample, &self.augment, &mut rng);
        let mut pixels = Vec::new();
        transform::normalize_chw(&img, self.augment.mean, self.augment.std, &mut pixels);
        Ok(Prepared {
            name: sample.name.clone(),
            width: img.width,
            height: img.height,
            pixels,
            label: if self.with_labels { lab } else { None },
        })
    }
}

fn collate(prepared: Vec<Prepared>, domain: Domain, device: &Device) -> Result<Batch, DataError> {
    let n = prepared.len();
    let (w, h) = (prepared[0].width, prepared[0].height);
    if let Some(p) = prepared.iter().find(|p| (p.width, p.height) != (w, h)) {
        return Err(DataError::Invalid {
            path: p.name.clone().into(),
            reason: format!(
                "batch samples differ in size ({}x{} vs {w}x{h}): set a crop size to batch images of different sizes",
                p.width, p.height
            ),
        });
    }
    let mut pixels = Vec::with_capacity(n * 3 * (w * h) as usize);
    let mut labels: Option<Vec<u32>> = prepared[0]
        .label
        .as_ref()
        .map(|_| Vec::with_capacity(n * (w * h) as usize));
    let mut names = Vec::with_capacity(n);
    for p in prepared {
        pixels.extend_from_slice(&p.pixels);
        if let (Some(all), Some(l)) = (labels.as_mut(), p.label.as_ref()) {
            all.extend(l.iter().map(|&v| v as u32));
        }
        names.push(p.name);
    }
    let (h, w) = (h as usize, w as usize);
    let images = Tensor::from_vec(pixels, (n, 3, h, w), device)?;
    let labels = match labels {
        Some(l) if l.len() == n * h * w => Some(Tensor::from_vec(l, (n, h, w), device)?),
        _ => None,
    };
    Ok(Batch {
        images,
        labels,
        domain,
        names,
        det: None,
    })
}

/// Normalises whole decoded samples into one `N×3×H×W` tensor (all the same size).
pub fn images_to_tensor(
    samples: &[&seg_labels::RgbImage],
    aug: &Augment,
    device: &Device,
) -> Result<Tensor, DataError> {
    let prepared = samples
        .iter()
        .map(|img| {
            let mut pixels = Vec::new();
            transform::normalize_chw(img, aug.mean, aug.std, &mut pixels);
            Prepared {
                name: String::new(),
                width: img.width,
                height: img.height,
                pixels,
                label: None,
            }
        })
        .collect();
    Ok(collate(prepared, Domain::Target, device)?.images)
}
