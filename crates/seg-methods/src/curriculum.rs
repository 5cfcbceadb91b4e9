//! Curriculum domain adaptation (Zhang, David, Gong, ICCV 2017). Stage 1, on source only:
//! learn to predict an image's global label distribution and the labels of its landmark regions
//! from image features of a fixed network (the paper: Inception features and superpixels; here:
//! a frozen copy of the starting model's `fc7` and the cells of its grid). Stage 2: train the
//! segmenter on source labels while, on target images, its predicted label distribution
//! (pixel probabilities sharpened with exponent K and normalised, averaged over the image) is
//! held to the estimate, and its predictions on the most confidently classified landmark cells
//! to their estimated labels.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use seg_core::{Backbone, FeatureTap, GroupId, LossTerm, Method, ParamSet, SegMethod, Stage, StepCx};
use seg_nn::layers::ConvCfg;
use seg_nn::{conv2d, cross_entropy_ignore, Conv2d};

use crate::feature_alignment::{seg_labels_ignore, train_then_reestimate};
use seg_heads::error::{check_range, require_tap, HeadError};
use seg_heads::ops::{one_hot, pool_to};
use seg_nn::vars::{copy_network, trainable_under};

const METHOD: &str = "curriculum";

/// The optimiser group of the two regressors (`[trainer.groups.curriculum]`).
pub const CURRICULUM_GROUP: GroupId = GroupId("curriculum");

/// The curriculum's hyperparameters ("paper" = Zhang et al.'s value).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CurriculumConfig {
    /// Steps of stage 1 (the regressors on source only) before training. Default 400 (ours;
    /// a stage-1 step runs the frozen network forward only, a tenth of a training step).
    pub pretrain_steps: usize,
    /// Feature tap of the frozen network the regressors read. Default `fc7` (ours).
    pub tap: FeatureTap,
    /// Sharpening exponent of the predicted pixel distributions. Default 6 (paper).
    pub sharpen: f64,
    /// Weight of the global label-distribution term. Default 0.1 (ours).
    pub dist_weight: f64,
    /// Weight of the landmark term. Default 0.2 (ours).
    pub landmark_weight: f64,
    /// Share of each image's landmark cells kept, the most confident first. Default 0.3 (paper:
    /// the top 30% of each image's 100 superpixels).
    pub landmark_fraction: f64,
    /// A landmark cell's label in stage 1 is its majority class when that class covers at least
    /// this share of its labelled pixels (else the cell is ignored). Default 0.5 (ours).
    pub cell_purity: f64,
    /// Learning-rate multiplier of the regressors over `trainer.head_lr`. Default 10 (ours: two
    /// linear layers on fixed features, Adam 1e-2 at the demo's `head_lr`).
    pub lr_mult: f64,
}

impl Default for CurriculumConfig {
    fn default() -> Self {
        Self {
            pretrain_steps: 400,
            tap: FeatureTap::Fc7,
            sharpen: 6.0,
            dist_weight: 0.1,
            landmark_weight: 0.2,
            landmark_fraction: 0.3,
            cell_purity: 0.5,
            lr_mult: 10.0,
        }
    }
}

impl CurriculumConfig {
    pub fn validate(&self) -> std::result::Result<(), HeadError> {
        check_range(METHOD, "sharpen", self.sharpen, 1e-3, 1e3)?;
        check_range(METHOD, "dist_weight", self.dist_weight, 0.0, f64::MAX)?;
        check_range(METHOD, "landmark_weight", self.landmark_weight, 0.0, f64::MAX)?;
        check_range(METHOD, "landmark_fraction", self.landmark_fraction, 1e-6, 1.0)?;
        check_range(METHOD, "cell_purity", self.cell_purity, 0.0, 1.0)?;
        check_range(METHOD, "lr_mult", self.lr_mult, 0.0, f64::MAX)
    }
}

/// Per-image class distribution of `N×H×W` labels (`N×C`; ignored pixels do not count; an image
/// without labelled pixels gets all zeros).
pub fn label_distribution(labels: &Tensor, classes: usize) -> Result<Tensor> {
    let oh = one_hot(labels, classes, DType::F32)?; // N×C×H×W
    let counts = oh.sum(D::Minus1)?.sum(D::Minus1)?; // N×C
    let total = counts.sum_keepdim(1)?.maximum(1.0)?;
    counts.broadcast_div(&total)
}

/// The segmenter's predicted label distribution of each image: pixel probabilities sharpened
/// (`p^K / Σ p^K`, i.e. a softmax of `K ·` logits) and averaged over pixels (`N×C`).
pub fn predicted_distribution(logits: &Tensor, sharpen: f64) -> Result<Tensor> {
    let q = candle_nn::ops::softmax(&(logits * sharpen)?, 1)?;
    q.mean(D::Minus1)?.mean(D::Minus1)
}

/// Majority label of each `h×w` cell of `N×H×W` labels, or the ignore label when the majority
/// covers less than `purity` of the cell's labelled pixels (or none is labelled).
fn cell_labels(labels: &Tensor, classes: usize, h: usize, w: usize, purity: f64) -> Result<Tensor> {
    let frac = pool_to(&one_hot(labels, classes, DType::F32)?, h, w)?; // N×C×h×w
    let total = frac.sum(1)?;
    let best = frac.max(1)?;
    let arg = frac.argmax(1)?.to_dtype(DType::U32)?;
    let keep = best.ge(&(total * purity)?.maximum(1e-6)?)?;
    keep.where_cond(&arg, &arg.ones_like()?.affine(0.0, seg_labels_ignore() as f64)?)
}

/// The two regressors on the frozen network's features: the global label distribution (a
/// linear layer on the spatial mean) and each cell's label (a 1×1 convolution).
struct Regressors {
    global: Conv2d,
    cells: Conv2d,
}

/// See the module documentation. Variables: the trained model (`model.*`), its frozen copy
/// (`frozen.*`, copied from the model when a run starts) and the regressors (`<prefix>.global`,
/// `<prefix>.cells`).
///
/// Terms: stage 1 `regress_dist` and `regress_cells` (group `curriculum`, source only); stage 2
/// `seg`, `dist` (`dist_weight ·` cross-entropy of the estimate against the sharpened predicted
/// distribution) and `landmarks` (`landmark_weight ·` cross-entropy on the kept cells).
pub struct Curriculum {
    cfg: CurriculumConfig,
    backbone: Box<dyn Backbone>,
    frozen: Box<dyn Backbone>,
    reg: Regressors,
    params: Vec<ParamSet>,
    vars: VarMap,
}

impl Curriculum {
    /// `frozen` is another copy of the model, with its variables under `frozen.*` in `vars`.
    pub fn new(
        cfg: &CurriculumConfig,
        backbone: Box<dyn Backbone>,
        model_vars: Vec<(String, candle_core::Var)>,
        frozen: Box<dyn Backbone>,
        vars: &VarMap,
        vb: VarBuilder<'_>,
    ) -> std::result::Result<Self, HeadError> {
        cfg.validate()?;
        let c = require_tap(backbone.as_ref(), METHOD, cfg.tap)?;
        let k = backbone.num_classes();
        let build = HeadError::build(METHOD);
        let prefix = vb.prefix();
        let reg = (|| {
            Ok::<_, candle_core::Error>(Regressors {
                global: conv2d(c, k, 1, ConvCfg::default(), vb.pp("global"))?,
                cells: conv2d(c, k, 1, ConvCfg::default(), vb.pp("cells"))?,
            })
        })()
        .map_err(build)?;
        let params = vec![
            ParamSet {
                group: GroupId::SEGMENTER,
                loss: GroupId::SEGMENTER,
                lr_mult: 1.0,
                vars: model_vars,
            },
            ParamSet {
                group: GroupId::FROZEN,
                loss: GroupId::FROZEN,
                lr_mult: 0.0,
                vars: trainable_under(vars, "frozen"),
            },
            ParamSet {
                group: CURRICULUM_GROUP,
                loss: CURRICULUM_GROUP,
                lr_mult: cfg.lr_mult,
                vars: trainable_under(vars, &prefix),
            },
        ];
        Ok(Self {
            cfg: cfg.clone(),
            backbone,
            frozen,
            reg,
            params,
            vars: vars.clone(),
        })
    }

    /// The frozen network's features of `images` (no gradient, no dropout). A batch-norm
    /// model normalises each batch by its own statistics (as AdaBN does for the target domain; ours: the paper's
    /// Inception features have no such domain dependence), with momentum 0 so the copy's
    /// stored statistics never move.
    fn features(&self, images: &Tensor) -> Result<Tensor> {
        let batch_stats = self.frozen.has_batch_norm();
        if batch_stats {
            self.frozen.set_bn_momentum(Some(0.0), false)?;
        }
        let f = self.frozen.forward_taps(images, batch_stats, &[self.cfg.tap])?;
        Ok(f.get(self.cfg.tap)?.detach())
    }

    /// Estimated global distribution (log-probabilities, `N×C`) and cell logits (`N×C×h×w`).
    fn regress(&self, feats: &Tensor) -> Result<(Tensor, Tensor)> {
        let pooled = feats.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
        let g = seg_nn::precision::to_f32(&self.reg.global.forward(&pooled)?)?.flatten_from(1)?;
        let logq = candle_nn::ops::log_softmax(&g, 1)?;
        Ok((logq, seg_nn::precision::to_f32(&self.reg.cells.forward(feats)?)?))
    }

    fn stage1(&self, cx: &StepCx<'_>) -> Result<Vec<LossTerm>> {
        let labels = cx.source_labels()?;
        let feats = self.features(&cx.source.images)?;
        let (logq, cells) = self.regress(&feats)?;
        let k = self.backbone.num_classes();
        let dist = label_distribution(labels, k)?;
        let regress_dist = (dist * logq)?.sum(1)?.neg()?.mean_all()?;
        let (_, _, h, w) = cells.dims4()?;
        let targets = cell_labels(labels, k, h, w, self.cfg.cell_purity)?;
        let regress_cells = cross_entropy_ignore(&cells, &targets, seg_labels_ignore())?;
        Ok(vec![
            LossTerm::new("regress_dist", regress_dist, CURRICULUM_GROUP),
            LossTerm::new("regress_cells", regress_cells, CURRICULUM_GROUP),
        ])
    }

    fn stage2(&self, cx: &StepCx<'_>) -> Result<Vec<LossTerm>> {
        let labels = cx.source_labels()?;
        let tgt = cx.target()?;
        let bb = self.backbone.as_ref();
        let bn = bb.has_batch_norm();
        if cx.target_bn_only && bn {
            bb.set_bn_momentum(Some(0.0), false)?;
        }
        let src = bb.forward_taps(&cx.source.images, true, &[])?;
        let seg = cross_entropy_ignore(src.logits()?, labels, seg_labels_ignore())?;
        if bn {
            bb.set_bn_momentum(Some(0.1), false)?;
        }
        let logits = bb.forward_taps(&tgt.images, true, &[])?.logits()?.clone();
        let feats = self.features(&tgt.images)?;
        let (logq, cells) = self.regress(&feats)?;
        let estimate = logq.exp()?.detach();
        let pred = predicted_distribution(&logits, self.cfg.sharpen)?;
        let dist = (estimate * (pred + 1e-8)?.log()?)?.sum(1)?.neg()?.mean_all()?;
        let pseudo = landmarks(&cells.detach(), &logits, self.cfg.landmark_fraction)?;
        let landmarks = cross_entropy_ignore(&logits, &pseudo, seg_labels_ignore())?;
        Ok(vec![
            LossTerm::new("seg", seg, GroupId::SEGMENTER),
            LossTerm::new("dist", (dist * self.cfg.dist_weight)?, GroupId::SEGMENTER),
            LossTerm::new("landmarks", (landmarks * self.cfg.landmark_weight)?, GroupId::SEGMENTER),
        ])
    }
}

/// Pixel labels `N×H×W` from the cell regressor: the most confident `fraction` of
/// each image's cells (the paper's superpixels of an image) keep their predicted class, every
/// other pixel is ignored. Computed on the device (a sort per image, no read-back).
fn landmarks(cells: &Tensor, logits: &Tensor, fraction: f64) -> Result<Tensor> {
    let (n, _, h, w) = cells.dims4()?;
    let (_, _, hh, ww) = logits.dims4()?;
    let p = candle_nn::ops::softmax(cells, 1)?;
    let conf = p.max(1)?; // N×h×w
    let arg = p.argmax(1)?.to_dtype(DType::U32)?;
    let m = h * w;
    let keep = ((m as f64 * fraction).ceil() as usize).clamp(1, m);
    let per_image = conf.reshape((n, m))?;
    let (sorted, _) = per_image.sort_last_dim(false)?;
    let threshold = sorted.narrow(1, keep - 1, 1)?;
    let mask = per_image.broadcast_ge(&threshold)?.reshape((n, h, w))?;
    let ignore = arg.ones_like()?.affine(0.0, seg_labels_ignore() as f64)?;
    let labels = mask.where_cond(&arg, &ignore)?;
    if hh % h != 0 || ww % w != 0 {
        return Err(candle_core::Error::Msg(format!(
            "curriculum: the {h}x{w} feature grid does not divide the {hh}x{ww} output"
        )));
    }
    let (sh, sw) = (hh / h, ww / w);
    labels
        .reshape((n, h, 1, w, 1))?
        .broadcast_as((n, h, sh, w, sw))?
        .contiguous()?
        .reshape((n, hh, ww))
}

impl Method for Curriculum {
    fn name(&self) -> &'static str {
        METHOD
    }

    fn parameters(&self) -> Vec<ParamSet> {
        self.params.clone()
    }

    fn stages(&self) -> Vec<Stage> {
        let pretrain = Stage::Pretrain {
            steps: self.cfg.pretrain_steps,
        };
        train_then_reestimate(vec![pretrain], self.backbone.as_ref())
    }

    fn needs_target(&self) -> bool {
        true
    }

    fn start(&self) -> Result<()> {
        copy_network(&self.vars, "model", "frozen")
    }

    fn losses(&self, cx: &StepCx<'_>) -> Result<Vec<LossTerm>> {
        match cx.stage {
            Stage::Pretrain { .. } => self.stage1(cx),
            _ => self.stage2(cx),
        }
    }
}

impl SegMethod for Curriculum {
    fn deployed(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn landmarks_are_the_most_confident_cells_of_each_image() {
        // Two images of 2×2 cells, class 0 more likely from cell 0 to cell 3; image 0 is far
        // more confident than image 1. A batch-wide cut would keep image 0's cells only.
        let mut v = vec![0f32; 2 * 3 * 4];
        for (img, scale) in [(0, 2.0), (1, 0.1)] {
            for cell in 0..4 {
                v[img * 12 + cell] = scale * (cell + 1) as f32;
            }
        }
        let cells = Tensor::from_vec(v, (2, 3, 2, 2), &Device::Cpu).unwrap();
        let logits = Tensor::zeros((2, 3, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let labels = super::landmarks(&cells, &logits, 0.5).unwrap();
        let l = labels.to_vec3::<u32>().unwrap();
        for img in &l {
            // Cells 0 and 1 (the top row, 2×2 pixels each) ignored, cells 2 and 3 class 0.
            assert!(img[..2].iter().flatten().all(|&x| x == 255), "{l:?}");
            assert!(img[2..].iter().flatten().all(|&x| x == 0), "{l:?}");
        }
    }
}
