//! Cross-City adaptation (Chen et al., "No More Discrimination", ICCV 2017): global per-cell
//! adversarial alignment of fc7 plus class-wise adversarial alignment weighted by the presence
//! of each class in each grid cell (the share of its pixels: from labels on the source; from the
//! argmax prediction on the target by default, or the detached softmax with
//! `target_presence = "soft"`), with ramped weights and a delayed class-wise start.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use seg_core::{AdaptationHead, Backbone, FeatureTap, GroupId, HeadInput, HeadParams, LossTerm};

use crate::discriminator::{CellDiscriminator, ClassDiscriminatorBank, DiscriminatorSpec};
use crate::error::{check_range, require_tap, HeadError};
use crate::grl::ramp;
use crate::ops::{one_hot, pool_to, presence_weighted_bce, stream, Presence};

const METHOD: &str = "cross-city";

/// Cross-City's hyperparameters. "paper" = Chen et al.'s value (from their code where the paper
/// is silent), "ours" = chosen here. Step counts of the paper (ramp over 1200 of 3000 steps,
/// class-wise from step 1000) are expressed as fractions of the run, so a short run keeps the
/// proportions.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrossCityConfig {
    /// Feature tap of both alignments. Default `fc7` (paper).
    pub tap: FeatureTap,
    /// Hidden width of the global discriminator. Default 64 (ours; paper 1024 for 4096-channel
    /// fc7).
    pub hidden: usize,
    /// Hidden width of each class-wise discriminator. Default 16 (ours, for the CPU demo: the
    /// bank costs `classes` discriminators; paper 1024, the same shape as the global one).
    pub ca_hidden: usize,
    /// Normal init std of the discriminators, `0` = `seg_nn::conv2d`'s default uniform init.
    /// Default 0 (ours; paper 0.001, for 3000 steps: in a run of a few hundred the product of
    /// three such layers sends the features almost no gradient).
    pub init_std: f64,
    /// Dropout after each hidden layer of the discriminators. Default 0.1 (ours; paper 0.5).
    pub dropout: f32,
    /// Ceiling of the global-alignment weight. Default 1 (ours; the ramp's ceiling).
    pub ga_weight: f64,
    /// Ceiling of the class-wise weight. Default 1 (ours; the ramp's ceiling).
    pub ca_weight: f64,
    /// The weights ramp as `2 / (1 + exp(-gamma t / ramp)) - 1` with `t / ramp` =
    /// `progress / ramp_fraction`. Default 0.4 (paper: 1200 of 3000 steps).
    pub ramp_fraction: f64,
    /// Steepness of the ramp. Default 10 (paper).
    pub gamma: f64,
    /// Progress at which the class-wise terms start (zero before). Default 0 (ours: runs start
    /// from a trained source model, `--init-from`, whose predictions are already meaningful;
    /// paper 1/3, step 1000 of 3000 from ImageNet weights).
    pub ca_start_fraction: f64,
    /// How a target cell's class presence is read off the prediction. Default `argmax` (ours;
    /// the paper averages the soft softmax, which gives every class some presence in every
    /// cell, so classes that are not in the image at all still pull on the features).
    pub target_presence: Presence,
    /// An (image, class) pair enters the class-wise loss when the class's mean presence per
    /// cell reaches this. Default 0.02 (ours).
    pub min_presence: f64,
    /// Learning-rate multiplier of the global discriminator, on top of `trainer.head_lr`.
    /// Default 1 (ours). The paper's ×10 is relative to a segmenter learning rate of 5e-6 with
    /// Adam; here the discriminators already have their own learning rate, and ×10 made the
    /// demo fall 4.6 points below source-only (12.6 vs 17.2 mIoU over 3 seeds).
    pub ga_lr_mult: f64,
    /// Learning-rate multiplier of the class-wise discriminators. Default 1 (ours; paper ×20,
    /// see `ga_lr_mult`).
    pub ca_lr_mult: f64,
    /// Seed of the dropout masks (set to the run seed by `MethodConfig::with_seed`). Default 0.
    pub seed: u64,
}

impl Default for CrossCityConfig {
    fn default() -> Self {
        Self {
            tap: FeatureTap::Fc7,
            hidden: 64,
            ca_hidden: 16,
            init_std: 0.0,
            dropout: 0.1,
            ga_weight: 1.0,
            ca_weight: 1.0,
            ramp_fraction: 0.4,
            gamma: 10.0,
            ca_start_fraction: 0.0,
            target_presence: Presence::Argmax,
            min_presence: 0.02,
            ga_lr_mult: 1.0,
            ca_lr_mult: 1.0,
            seed: 0,
        }
    }
}

impl CrossCityConfig {
    pub fn validate(&self) -> std::result::Result<(), HeadError> {
        if self.hidden == 0 {
            return Err(HeadError::invalid(METHOD, "hidden", "must be at least 1"));
        }
        if self.ca_hidden == 0 {
            return Err(HeadError::invalid(METHOD, "ca_hidden", "must be at least 1"));
        }
        check_range(METHOD, "init_std", self.init_std, 0.0, f64::MAX)?;
        check_range(METHOD, "dropout", self.dropout as f64, 0.0, 0.99)?;
        check_range(METHOD, "ga_weight", self.ga_weight, 0.0, f64::MAX)?;
        check_range(METHOD, "ca_weight", self.ca_weight, 0.0, f64::MAX)?;
        check_range(METHOD, "ramp_fraction", self.ramp_fraction, 0.0, 1.0)?;
        crate::error::check_gamma(METHOD, self.gamma)?;
        check_range(METHOD, "ca_start_fraction", self.ca_start_fraction, 0.0, 1.0)?;
        check_range(METHOD, "min_presence", self.min_presence, 0.0, 1.0)?;
        check_range(METHOD, "ga_lr_mult", self.ga_lr_mult, 0.0, f64::MAX)?;
        check_range(METHOD, "ca_lr_mult", self.ca_lr_mult, 0.0, f64::MAX)
    }

    /// The ramp value at progress `p`.
    pub fn ramp_weight(&self, p: f64) -> f64 {
        if self.ramp_fraction <= 0.0 {
            1.0
        } else {
            ramp(p / self.ramp_fraction, self.gamma)
        }
    }
}

/// The Cross-City head. Variables: `<prefix>.ga.{fc1,fc2,out}.{weight,bias}` (global
/// discriminator) and `<prefix>.ca.{fc1,fc2,out}.{weight,bias}` (the class-wise bank, grouped
/// 1×1 conv layout).
///
/// Each discriminator outputs one logit per cell (1 = source); this equals the paper's 2-way
/// softmax, whose CE depends only on the difference of the two logits. Terms (`r` = ramp):
/// - `ga_disc` (Discriminator): mean of BCE(GA(source), 1) and BCE(GA(target), 0) over the
///   cells of the **detached** features.
/// - `ga_adv` (Segmenter): `ga_weight · r ·` the same loss with inverted domain labels.
/// - `ca_disc` (Discriminator): mean over domains of the presence-weighted class-wise BCE
///   ([`presence_weighted_bce`]) on detached features, true domain labels. The weights are the
///   source one-hot labels (ignore pixels count for no class) and the detached target
///   prediction (one-hot of its argmax, or its softmax: `target_presence`), average-pooled to
///   the feature grid.
/// - `ca_adv` (Segmenter): `ca_weight · r ·` the mean over domains of `(L_CA + L_CA_inverted)
///   / 2`, computed as the weighted BCE against 0.5.
///
/// Before `ca_start_fraction` the two class-wise terms are constant zeros (no graph), so the
/// class-wise discriminators are neither evaluated nor trained.
pub struct CrossCityHead {
    cfg: CrossCityConfig,
    ga: CellDiscriminator,
    ca: ClassDiscriminatorBank,
    ga_prefix: String,
    ca_prefix: String,
}

impl CrossCityHead {
    /// Builds the head under `vb` (the trainer passes `vb.pp("head")`), checking the tap.
    pub fn new(
        cfg: &CrossCityConfig,
        backbone: &dyn Backbone,
        vb: VarBuilder<'_>,
    ) -> std::result::Result<Self, HeadError> {
        cfg.validate()?;
        let c = require_tap(backbone, METHOD, cfg.tap)?;
        let classes = backbone.num_classes();
        if classes == 0 {
            return Err(HeadError::ClassCount {
                method: METHOD,
                expected: 1,
                got: 0,
            });
        }
        let spec = DiscriminatorSpec {
            hidden: cfg.hidden,
            init_std: cfg.init_std,
            dropout: cfg.dropout,
        };
        let (vb_ga, vb_ca) = (vb.pp("ga"), vb.pp("ca"));
        let (ga_prefix, ca_prefix) = (vb_ga.prefix(), vb_ca.prefix());
        let ga = CellDiscriminator::new(c, &spec, vb_ga).map_err(HeadError::build(METHOD))?;
        let ca_spec = DiscriminatorSpec {
            hidden: cfg.ca_hidden,
            ..spec
        };
        let ca = ClassDiscriminatorBank::new(c, classes, &ca_spec, vb_ca).map_err(HeadError::build(METHOD))?;
        Ok(Self {
            cfg: cfg.clone(),
            ga,
            ca,
            ga_prefix,
            ca_prefix,
        })
    }

    fn ga_mean(&self, x: &Tensor, target: f64, step: usize, site: u64) -> Result<Tensor> {
        self.ga.bce_mean(x, target, (self.cfg.seed, step, site))
    }

    fn ca_loss(&self, x: &Tensor, weights: &Tensor, target: f64, step: usize, site: u64) -> Result<Tensor> {
        let mut rng = stream(self.cfg.seed, step, site);
        let logits = self.ca.forward_t(x, Some(&mut rng))?;
        presence_weighted_bce(&logits, weights, target, self.cfg.min_presence)
    }

    /// Class presence per cell of an `h × w` grid: source from labels, target from the detached
    /// prediction (argmax or softmax, `target_presence`).
    fn presence(
        &self,
        input: &HeadInput<'_>,
        s_grid: (usize, usize),
        t_grid: (usize, usize),
    ) -> Result<(Tensor, Tensor)> {
        let t_logits = input.target.logits()?.detach();
        let classes = self.ca.classes();
        if t_logits.dim(1)? != classes {
            candle_core::bail!(
                "cross-city: logits have {} classes, the head {classes}",
                t_logits.dim(1)?
            );
        }
        let src = one_hot(input.source_labels, classes, t_logits.dtype())?;
        let src = pool_to(&src, s_grid.0, s_grid.1)?;
        let tgt = pool_to(&self.cfg.target_presence.of(&t_logits)?, t_grid.0, t_grid.1)?;
        Ok((src, tgt))
    }
}

impl AdaptationHead for CrossCityHead {
    fn name(&self) -> &'static str {
        METHOD
    }

    fn taps(&self) -> Vec<FeatureTap> {
        vec![self.cfg.tap]
    }

    fn param_groups(&self) -> Vec<HeadParams> {
        vec![
            HeadParams::new(self.ga_prefix.clone(), GroupId::DISCRIMINATOR, self.cfg.ga_lr_mult),
            HeadParams::new(self.ca_prefix.clone(), GroupId::DISCRIMINATOR, self.cfg.ca_lr_mult),
        ]
    }

    fn losses(&self, input: &HeadInput<'_>) -> Result<Vec<LossTerm>> {
        let s = input.source.get(self.cfg.tap)?;
        let t = input.target.get(self.cfg.tap)?;
        let step = input.step.step;
        let p = input.step.progress();
        let r = self.cfg.ramp_weight(p);
        let (sd, td) = (s.detach(), t.detach());

        let ga_disc = ((self.ga_mean(&sd, 1.0, step, 0)? + self.ga_mean(&td, 0.0, step, 1)?)? * 0.5)?;
        let ga_adv =
            ((self.ga_mean(s, 0.0, step, 2)? + self.ga_mean(t, 1.0, step, 3)?)? * (0.5 * self.cfg.ga_weight * r))?;

        let (ca_disc, ca_adv) = if p >= self.cfg.ca_start_fraction {
            let (_, _, h, w) = s.dims4()?;
            let (_, _, ht, wt) = t.dims4()?;
            let (w_s, w_t) = self.presence(input, (h, w), (ht, wt))?;
            let disc = ((self.ca_loss(&sd, &w_s, 1.0, step, 4)? + self.ca_loss(&td, &w_t, 0.0, step, 5)?)? * 0.5)?;
            let adv = ((self.ca_loss(s, &w_s, 0.5, step, 6)? + self.ca_loss(t, &w_t, 0.5, step, 7)?)?
                * (0.5 * self.cfg.ca_weight * r))?;
            (disc, adv)
        } else {
            let zero = Tensor::zeros((), s.dtype(), s.device())?;
            (zero.clone(), zero)
        };
        Ok(vec![
            LossTerm {
                name: "ga_disc",
                value: ga_disc,
                group: GroupId::DISCRIMINATOR,
            },
            LossTerm {
                name: "ga_adv",
                value: ga_adv,
                group: GroupId::SEGMENTER,
            },
            LossTerm {
                name: "ca_disc",
                value: ca_disc,
                group: GroupId::DISCRIMINATOR,
            },
            LossTerm {
                name: "ca_adv",
                value: ca_adv,
                group: GroupId::SEGMENTER,
            },
        ])
    }
}
