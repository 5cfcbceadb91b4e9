//! Inference and evaluation: full-resolution prediction (resize by the training scale, pad to a
//! multiple of the network's stride, crop, upsample the logits to the label size, argmax), the
//! evaluation of a model on a labelled split through `seg-metrics`' `Evaluator` (the same code
//! path as prediction-folder evaluation), and AdaBN's re-estimation of batch-norm statistics.
//! On CUDA all of it runs in a [`seg_nn::grad::no_grad`] scope ([`graph_free`]).

use candle_core::Device;
use rayon::prelude::*;
use seg_core::Backbone;
use seg_data::loader::{images_to_tensor, Augment};
use seg_data::{Dataset, ErrorPolicy, Loader};
use seg_labels::png_io::RgbImage;
use seg_metrics::report::{Evaluator, Sample};

use crate::error::TrainError;

/// A [`seg_nn::grad::no_grad`] scope on CUDA: no backward graph, so each activation goes back
/// to the memory pool once the next layer has read it, and a full-resolution forward pass holds
/// a few activations at a time instead of all of them (PyTorch evaluates under `no_grad` too).
/// On the CPU the pass keeps its graph: there the caching allocator (1 GiB of freed blocks by
/// default) serves a forward that frees everything at its end from the cache and one that frees
/// as it goes partly from fresh pages; the small model at 1×3×1024×2048 took 511-534 ms a pass
/// the first way and 596-664 ms the second, and the same 296-308 ms either way with a 4 GiB
/// cache (criterion, 2026-11-30, the 2-core development machine).
pub fn graph_free(device: &Device) -> Option<seg_nn::grad::NoGrad> {
    device.is_cuda().then(seg_nn::grad::no_grad)
}

/// How to evaluate: the normalisation and scale the model was trained with, and the device.
#[derive(Debug, Clone)]
pub struct EvalSetup {
    pub augment: Augment,
    pub device: Device,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Images kept for the report's pictures.
    pub keep_samples: usize,
}

/// Predicts train ids at each image's full resolution. All images must share one size.
pub fn predict_train_ids(
    backbone: &dyn Backbone,
    images: &[&RgbImage],
    setup: &EvalSetup,
) -> Result<Vec<Vec<u8>>, TrainError> {
    let Some(first) = images.first() else {
        return Ok(Vec::new());
    };
    let (w, h) = (first.width, first.height);
    let s = setup.augment.base_scale;
    let (sw, sh) = (
        ((w as f32 * s).round() as u32).max(1),
        ((h as f32 * s).round() as u32).max(1),
    );
    let scaled: Vec<RgbImage> = images
        .iter()
        .map(|im| seg_data::transform::resize_bilinear(im, sw, sh))
        .collect();
    let refs: Vec<&RgbImage> = scaled.iter().collect();
    let x = images_to_tensor(&refs, &setup.augment, &setup.device)?;
    let stride = backbone.stride();
    let (ph, pw) = (
        (sh as usize).div_ceil(stride) * stride,
        (sw as usize).div_ceil(stride) * stride,
    );
    let x = x
        .pad_with_zeros(2, 0, ph - sh as usize)?
        .pad_with_zeros(3, 0, pw - sw as usize)?;
    let _no_grad = graph_free(&setup.device);
    let feats = backbone.forward_taps(&x, false, &[])?;
    let logits = feats.logits()?.narrow(2, 0, sh as usize)?.narrow(3, 0, sw as usize)?;
    let logits = seg_nn::resize_bilinear(&logits, h as usize, w as usize)?;
    let pred = seg_nn::argmax_channels(&logits)?
        .to_dtype(candle_core::DType::U8)?
        .to_device(&Device::Cpu)?;
    let n = images.len();
    let flat = pred.reshape((n, (w * h) as usize))?.to_vec2::<u8>()?;
    Ok(flat)
}

/// The evaluation's warning for a sample left out before the run (named already when the run
/// or the evaluation opened its data).
pub fn left_out_warning(l: &seg_labels::LeftOut) -> String {
    format!("left out of the evaluation: {}", l.reason)
}

/// Logs the warnings of an evaluation of `dataset` that `said` does not hold yet, adding them:
/// each once per run, not at every evaluation. The samples the dataset left out before the run
/// are not logged again (they were named when it opened).
pub fn log_new_warnings(warnings: &[String], dataset: &Dataset, said: &mut std::collections::BTreeSet<String>) {
    let named: std::collections::BTreeSet<String> = dataset.left_out().iter().map(left_out_warning).collect();
    for w in warnings.iter().filter(|w| !named.contains(*w)) {
        if said.insert(w.clone()) {
            tracing::warn!("evaluation: {w}");
        }
    }
}

/// The instance map beside `label` at the image's size: under `size_policy =
/// "resize-label-nearest"` resized as the label was; otherwise it must be the image's size.
fn instances_of(label: &std::path::Path, width: u32, height: u32, dataset: &Dataset) -> Result<Vec<u16>, String> {
    let img = seg_metrics::instances::read_beside(label)?;
    if (img.width, img.height) == (width, height) {
        return Ok(img.data);
    }
    if dataset.options().size_policy == seg_data::SizePolicy::ResizeLabelNearest {
        return Ok(seg_data::transform::resize_nearest(
            &img.data, img.width, img.height, width, height,
        ));
    }
    Err(format!(
        "its `*_gtFine_instanceIds.png` is {}x{} but the image is {width}x{height}",
        img.width, img.height
    ))
}

/// Evaluates `backbone` on a labelled dataset; every image is predicted at full resolution.
/// Its warnings are in the evaluator's report, for the caller to show (nothing is logged here).
pub fn evaluate(backbone: &dyn Backbone, dataset: &Dataset, setup: &EvalSetup) -> Result<Evaluator, TrainError> {
    let mut ev = Evaluator::new(setup.keep_samples);
    // Ground truth without its camera image cannot be predicted from: named, since the
    // official evaluator (which pairs every ground-truth file with a prediction) would count it.
    for orphan in seg_data::readers::orphan_labels(dataset) {
        let message = format!(
            "{}: ground truth without its camera image, not in this evaluation (the official evaluator would need a prediction for it)",
            orphan.label.display()
        );
        ev.warn(message);
    }
    // Samples left out before the run (a size mismatch, or a file that does not decode under
    // `error_policy = "skip"`): the mean is over the others, and the report says which.
    for l in dataset.left_out() {
        ev.warn(left_out_warning(l));
    }
    // Cityscapes ground truth read from labelTrainIds where labelIds is absent: said, as
    // `eval --pred` says it, since the official evaluator would not count those images.
    if let Some(message) = dataset.train_ids_only_warning() {
        ev.warn(message);
    }
    let skip = dataset.options().error_policy == ErrorPolicy::Skip;
    let size = setup.batch_size.max(1);
    for start in (0..dataset.len()).step_by(size) {
        let loaded: Vec<_> = (start..(start + size).min(dataset.len()))
            .into_par_iter()
            .map(|i| {
                let sample = dataset.get(i);
                // The ground truth's instances (for iIoU), read beside it in the same pass.
                let instances = match (&sample, dataset.entries()[i].label.as_deref()) {
                    (Ok(s), Some(label)) => instances_of(label, s.image.width, s.image.height, dataset),
                    _ => Err("no ground-truth file".to_string()),
                };
                (sample, instances)
            })
            .collect();
        let mut batch = Vec::with_capacity(loaded.len());
        let mut instances = Vec::with_capacity(loaded.len());
        for (sample, inst) in loaded {
            match sample {
                Ok(s) => {
                    batch.push(s);
                    instances.push(inst);
                }
                // Under `error_policy = "skip"` a file that opened but does not decode (a PNG
                // cut after its header) is left out of the evaluation and named, as in training.
                Err(e) if skip => ev.warn(format!("left out of the evaluation (error_policy = \"skip\"): {e}")),
                Err(e) => return Err(e.into()),
            }
        }
        // Group by size: real datasets may mix sizes.
        let mut i = 0;
        while i < batch.len() {
            let size = (batch[i].image.width, batch[i].image.height);
            let j = batch[i..]
                .iter()
                .position(|s| (s.image.width, s.image.height) != size)
                .map_or(batch.len(), |k| i + k);
            let imgs: Vec<&RgbImage> = batch[i..j].iter().map(|s| &s.image).collect();
            let preds = predict_train_ids(backbone, &imgs, setup)?;
            for ((s, pred), inst) in batch[i..j].iter().zip(preds).zip(&instances[i..j]) {
                let Some(gt) = &s.label else {
                    return Err(TrainError::Setup(format!(
                        "evaluation sample `{}` has no label",
                        s.name
                    )));
                };
                ev.add(gt, &pred)?;
                // The instance-level scores, where the ground truth has its instanceIds.
                match inst {
                    Ok(inst) => {
                        let categories: Vec<u8> = pred
                            .iter()
                            .map(|&p| seg_metrics::instances::pred_category_of_train_id(p))
                            .collect();
                        ev.add_instances(inst, gt, &pred, &categories);
                    }
                    Err(why) => ev.no_instances(&s.name, why.clone()),
                }
                if ev.wants_sample(&s.name) {
                    ev.keep_sample(Sample {
                        name: s.name.clone(),
                        width: s.image.width,
                        height: s.image.height,
                        gt: gt.clone(),
                        pred,
                        image: Some(s.image.clone()),
                    });
                }
            }
            i = j;
        }
    }
    // Ground truth that looks like labels already converted to train ids (every class from
    // traffic light on scores 0).
    let warning = seg_data::inspect::reads_label_ids(dataset.name()).then(|| ev.train_ids_look_warning());
    if let Some(w) = warning.flatten() {
        ev.warn(format!(
            "{} ground truth at {}: {w}",
            dataset.name(),
            dataset.root().display()
        ));
    }
    Ok(ev)
}

/// AdaBN: re-estimates every batch-norm layer's statistics as the mean and variance of all
/// `batches` target batches together (forward passes in training mode, no gradient step).
pub fn reestimate_bn(backbone: &dyn Backbone, target: &mut Loader, batches: usize) -> Result<(), TrainError> {
    if !backbone.has_batch_norm() {
        return Err(TrainError::Setup(
            "AdaBN needs a model with batch norm (model.name = \"small\")".into(),
        ));
    }
    backbone.set_bn_momentum(None, true)?;
    let result = (|| {
        for _ in 0..batches.max(1) {
            let b = target.next_batch()?;
            let _no_grad = graph_free(b.images.device());
            backbone.forward_taps(&b.images.detach(), true, &[])?;
        }
        Ok::<_, TrainError>(())
    })();
    backbone.set_bn_momentum(Some(0.1), false)?;
    result
}
