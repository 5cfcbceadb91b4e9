//! Detection methods, through the segmentation side's method layer: each is a
//! `seg_core::Method` (parameter sets by optimiser group, stages, loss terms from whole
//! batches) trained by the same `seg_train::Stepper`, and a [`DetMethod`] whose deployed network
//! is an [`Ssd`] (variables `model.*`; domain branches `domain.*`).
//!
//! - `source-only`: MultiBox on source batches. `oracle`: the same on target train boxes (a data
//!   choice). `adabn`: source-only, then the detector's batch-norm statistics re-estimated on
//!   target train images (Li et al. 2016; only where the detector has batch norm).
//! - `da-image` (DA-Faster's image-level alignment, Chen et al. 2018, on SSD): per-location
//!   domain classifiers (1×1 conv → ReLU → 1×1 conv → one logit) on the first two source maps
//!   (conv4_3 after L2Norm, and fc7), behind gradient reversal with weight 0.1.
//! - `da-maps` (Xu et al. 2019's reading: domain branches "with the same structure as the
//!   detection branches"): one 3×3 conv per source map, one domain logit per default box,
//!   behind gradient reversal.
//!
//! Where the detector has batch norm, the adaptation methods end, like AdaBN, with the
//! statistics re-estimated on target train (as the segmentation methods do).
//!
//! Domain terms follow the project's GRL pattern: `domain_disc` (discriminator group) trains
//! the classifiers on detached maps, source = 1, target = 0, binary cross-entropy averaged over
//! each site's locations and summed over sites; `domain_adv` (segmenter group) is the same loss
//! through the reversal layer, so each site's map receives −weight times its own term's gradient.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarMap;
use seg_core::{GroupId, LossTerm, Method, ParamSet, Stage, StepCx};
use seg_heads::grad_reverse;
use seg_nn::layers::ConvCfg;
use seg_nn::vars::trainable_under;
use seg_nn::{bce_with_logits_per_element, conv2d, Conv2d};

use crate::loss::multibox_loss;
use crate::model::{Ssd, SsdConfig};

/// Image-level domain classifiers (`da-image`). "paper" = DA-Faster's value.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaImageConfig {
    /// Source maps the classifiers read, by index in the detector's list of source maps (for
    /// VGG16-SSD300, 0 = conv4_3 and 1 = fc7; for the small SSD, its first two maps). Default
    /// [0, 1].
    pub maps: Vec<usize>,
    /// Hidden channels of each classifier. Default 512 (paper).
    pub hidden: usize,
    /// Gradient-reversal weight. Default 0.1 (paper).
    pub weight: f64,
    /// Learning-rate multiplier of the classifiers. Default 1 (paper).
    pub disc_lr_mult: f64,
}

impl Default for DaImageConfig {
    fn default() -> Self {
        Self {
            maps: vec![0, 1],
            hidden: 512,
            weight: 0.1,
            disc_lr_mult: 1.0,
        }
    }
}

/// One domain branch per source map (`da-maps`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaMapsConfig {
    /// Gradient-reversal weight. Default 0.1 (ours: DA-Faster's value; Xu et al.'s is not
    /// published in the abstracts).
    pub weight: f64,
    /// Learning-rate multiplier of the branches. Default 1 (ours).
    pub disc_lr_mult: f64,
}

impl Default for DaMapsConfig {
    fn default() -> Self {
        Self {
            weight: 0.1,
            disc_lr_mult: 1.0,
        }
    }
}

/// A detection method (`[method]` of a detection run, `kind = "..."`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DetMethodConfig {
    SourceOnly,
    Oracle,
    Adabn,
    DaImage(DaImageConfig),
    DaMaps(DaMapsConfig),
}

/// Every detection method's name, in the demo's order.
pub const DET_METHOD_NAMES: [&str; 5] = ["source-only", "adabn", "da-image", "da-maps", "oracle"];

impl DetMethodConfig {
    pub fn name(&self) -> &'static str {
        match self {
            DetMethodConfig::SourceOnly => "source-only",
            DetMethodConfig::Oracle => "oracle",
            DetMethodConfig::Adabn => "adabn",
            DetMethodConfig::DaImage(_) => "da-image",
            DetMethodConfig::DaMaps(_) => "da-maps",
        }
    }

    /// The method of that name with default settings.
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        Ok(match name {
            "source-only" => DetMethodConfig::SourceOnly,
            "oracle" => DetMethodConfig::Oracle,
            "adabn" => DetMethodConfig::Adabn,
            "da-image" => DetMethodConfig::DaImage(DaImageConfig::default()),
            "da-maps" => DetMethodConfig::DaMaps(DaMapsConfig::default()),
            o => {
                return Err(format!(
                    "unknown detection method `{o}` (expected one of: {})",
                    DET_METHOD_NAMES.join(", ")
                ))
            }
        })
    }

    /// Whether a run of the method reads the target's unlabelled train images: the adaptation
    /// methods train on them, AdaBN re-estimates its statistics on them.
    pub fn reads_target_train(&self) -> bool {
        matches!(
            self,
            DetMethodConfig::Adabn | DetMethodConfig::DaImage(_) | DetMethodConfig::DaMaps(_)
        )
    }

    /// Whether the method trains on the target's boxes (the oracle).
    pub fn trains_on_target_labels(&self) -> bool {
        matches!(self, DetMethodConfig::Oracle)
    }

    /// Checks the settings against the detector.
    pub fn validate(&self, model: &SsdConfig) -> std::result::Result<(), String> {
        let sources = model.prior_spec().maps.len();
        let weight_ok = |w: f64| w.is_finite() && w >= 0.0;
        match self {
            DetMethodConfig::Adabn if model.arch == crate::SsdArch::Vgg300 => {
                Err("method adabn: SSD300 on VGG16 has no batch norm to re-estimate".into())
            }
            DetMethodConfig::DaImage(c) => {
                if c.maps.is_empty() || c.maps.iter().any(|&m| m >= sources) {
                    return Err(format!(
                        "method.maps {:?}: the detector's source maps are 0 to {} (at least one)",
                        c.maps,
                        sources - 1
                    ));
                }
                if let Some(m) = c
                    .maps
                    .iter()
                    .enumerate()
                    .find_map(|(i, m)| c.maps[..i].contains(m).then_some(m))
                {
                    return Err(format!(
                        "method.maps {:?} names map {m} twice (it would get two classifiers)",
                        c.maps
                    ));
                }
                if c.hidden == 0 {
                    return Err("method.hidden must be at least 1".into());
                }
                if !weight_ok(c.weight) || !weight_ok(c.disc_lr_mult) {
                    return Err("method.weight and method.disc_lr_mult must be finite and ≥ 0".into());
                }
                Ok(())
            }
            DetMethodConfig::DaMaps(c) if !weight_ok(c.weight) || !weight_ok(c.disc_lr_mult) => {
                Err("method.weight and method.disc_lr_mult must be finite and ≥ 0".into())
            }
            _ => Ok(()),
        }
    }

    /// Builds the detector (`model.*`) and the method's branches (`domain.*`) in `vars`, new
    /// variables drawn from `seed` and their names (the same seed gives every method the same
    /// initial detector).
    pub fn build(&self, model: &SsdConfig, vars: &VarMap, device: &Device, seed: u64) -> Result<Box<dyn DetMethod>> {
        self.validate(model).map_err(candle_core::Error::Msg)?;
        let vb = seg_nn::init::seeded_builder(vars, seed, DType::F32, device);
        let ssd = Ssd::new(model, vb.pp("model"), vars)?;
        let channels = ssd.source_channels();
        let dvb = vb.pp("domain");
        let (branches, weight, lr) = match self {
            DetMethodConfig::DaImage(c) => {
                let b = c
                    .maps
                    .iter()
                    .map(|&m| {
                        let v = dvb.pp(format!("map{m}"));
                        Ok(Branch {
                            map: m,
                            convs: vec![
                                conv2d(channels[m], c.hidden, 1, ConvCfg::default(), v.pp("conv1"))?,
                                conv2d(c.hidden, 1, 1, ConvCfg::default(), v.pp("conv2"))?,
                            ],
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                (b, c.weight, c.disc_lr_mult)
            }
            DetMethodConfig::DaMaps(c) => {
                let spec = model.prior_spec();
                let k3 = ConvCfg {
                    padding: 1,
                    ..Default::default()
                };
                let b = channels
                    .iter()
                    .enumerate()
                    .map(|(m, &ch)| {
                        Ok(Branch {
                            map: m,
                            convs: vec![conv2d(ch, spec.boxes_per_cell(m), 3, k3, dvb.pp(format!("map{m}")))?],
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                (b, c.weight, c.disc_lr_mult)
            }
            _ => (Vec::new(), 0.0, 1.0),
        };
        let mut params = vec![ParamSet {
            group: GroupId::SEGMENTER,
            loss: GroupId::SEGMENTER,
            lr_mult: 1.0,
            vars: trainable_under(vars, "model"),
        }];
        if !branches.is_empty() {
            params.push(ParamSet {
                group: GroupId::DISCRIMINATOR,
                loss: GroupId::DISCRIMINATOR,
                lr_mult: lr,
                vars: trainable_under(vars, "domain"),
            });
        }
        Ok(Box::new(DetAdapt {
            name: self.name(),
            adabn: matches!(self, DetMethodConfig::Adabn),
            model: ssd,
            branches,
            weight,
            params,
        }))
    }
}

/// A detection method: a [`Method`] that deploys an [`Ssd`].
pub trait DetMethod: Method {
    fn detector(&self) -> &Ssd;
}

struct Branch {
    map: usize,
    convs: Vec<Conv2d>,
}

impl Branch {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for (i, c) in self.convs.iter().enumerate() {
            if i > 0 {
                y = y.relu()?;
            }
            y = c.forward(&y)?;
        }
        Ok(y)
    }
}

struct DetAdapt {
    name: &'static str,
    adabn: bool,
    model: Ssd,
    branches: Vec<Branch>,
    weight: f64,
    params: Vec<ParamSet>,
}

impl DetAdapt {
    /// Sum over sites of `(BCE(D(s), 1) + BCE(D(t), 0)) / 2`, on maps passed through `f`: each
    /// site's classifier has its own loss at full weight, as DA-Faster's one classifier has.
    fn domain_loss(&self, s: &[Tensor], t: &[Tensor], f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for b in &self.branches {
            let ls = bce_with_logits_per_element(&b.forward(&f(&s[b.map])?)?, 1.0)?.mean_all()?;
            let lt = bce_with_logits_per_element(&b.forward(&f(&t[b.map])?)?, 0.0)?.mean_all()?;
            let l = ((ls + lt)? * 0.5)?;
            total = Some(match total {
                Some(acc) => (acc + l)?,
                None => l,
            });
        }
        total.ok_or_else(|| candle_core::Error::Msg("no domain branches".into()))
    }
}

impl Method for DetAdapt {
    fn name(&self) -> &'static str {
        self.name
    }

    fn parameters(&self) -> Vec<ParamSet> {
        self.params.clone()
    }

    fn stages(&self) -> Vec<Stage> {
        // As on the segmentation side, the adaptation methods end with AdaBN's re-estimation
        // when the detector has batch norm.
        if self.adabn || (!self.branches.is_empty() && self.model.has_batch_norm()) {
            vec![Stage::Train, Stage::ReestimateBn]
        } else {
            vec![Stage::Train]
        }
    }

    fn needs_target(&self) -> bool {
        !self.branches.is_empty()
    }

    fn losses(&self, cx: &StepCx<'_>) -> Result<Vec<LossTerm>> {
        let targets = cx.source.det.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "detection batch (first sample `{}`) has no box targets",
                cx.source.names.first().map_or("?", |s| s.as_str())
            ))
        })?;
        let out = self.model.forward(&cx.source.images, true)?;
        let (conf, loc) = multibox_loss(&out.loc, &out.conf, targets)?;
        let mut terms = vec![
            LossTerm::new("det_conf", conf, GroupId::SEGMENTER),
            LossTerm::new("det_loc", loc, GroupId::SEGMENTER),
        ];
        if !self.branches.is_empty() {
            let t = self.model.sources(&cx.target()?.images, true)?;
            let s = &out.sources;
            let disc = self.domain_loss(s, &t, |x| Ok(x.detach()))?;
            let w = self.weight;
            let adv = self.domain_loss(s, &t, |x| grad_reverse(x, w))?;
            terms.push(LossTerm::new("domain_disc", disc, GroupId::DISCRIMINATOR));
            terms.push(LossTerm::new("domain_adv", adv, GroupId::SEGMENTER));
        }
        Ok(terms)
    }
}

impl DetMethod for DetAdapt {
    fn detector(&self) -> &Ssd {
        &self.model
    }
}
