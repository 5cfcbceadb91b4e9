//! DANN (Ganin & Lempitsky, 2015) for segmentation: a per-cell domain discriminator on one
//! feature tap (fc7), trained against the segmenter through a gradient reversal layer.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use seg_core::{AdaptationHead, Backbone, FeatureTap, GroupId, HeadInput, HeadParams, LossTerm};
use seg_nn::lambda_schedule;

use crate::discriminator::{CellDiscriminator, DiscriminatorSpec};
use crate::error::{check_range, require_tap, HeadError};
use crate::grl::grad_reverse;

const METHOD: &str = "dann";

/// DANN's hyperparameters. "paper" = Ganin & Lempitsky's value, "ours" = not published for
/// segmentation (or changed for the CPU demo), chosen here.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DannConfig {
    /// Feature tap the discriminator reads. Default `fc7` (paper: the last feature layer).
    pub tap: FeatureTap,
    /// Hidden width of the per-cell discriminator. Default 64 (ours; paper 1024, fully connected).
    pub hidden: usize,
    /// Normal init std of the discriminator, `0` = `seg_nn::conv2d`'s default uniform init. Default 0 (ours).
    pub init_std: f64,
    /// Dropout after each hidden layer of the discriminator. Default 0 (ours).
    pub dropout: f32,
    /// Ceiling of the GRL weight: `lambda = max_weight · (2 / (1 + exp(-gamma p)) - 1)`.
    /// Default 1 (paper).
    pub max_weight: f64,
    /// Steepness of the lambda ramp. Default 10 (paper).
    pub gamma: f64,
    /// Learning-rate multiplier of the discriminator. Default 1 (ours: the discriminator at
    /// `trainer.head_lr`; DANN anneals one rate for the whole network, mu0 / (1 + 10p)^0.75).
    pub disc_lr_mult: f64,
    /// Seed of the dropout masks (the trainer sets the run seed, see `MethodConfig::with_seed`).
    /// Default 0.
    pub seed: u64,
}

impl Default for DannConfig {
    fn default() -> Self {
        Self {
            tap: FeatureTap::Fc7,
            hidden: 64,
            init_std: 0.0,
            dropout: 0.0,
            max_weight: 1.0,
            gamma: 10.0,
            disc_lr_mult: 1.0,
            seed: 0,
        }
    }
}

impl DannConfig {
    pub fn validate(&self) -> std::result::Result<(), HeadError> {
        if self.hidden == 0 {
            return Err(HeadError::invalid(METHOD, "hidden", "must be at least 1"));
        }
        check_range(METHOD, "init_std", self.init_std, 0.0, f64::MAX)?;
        check_range(METHOD, "dropout", self.dropout as f64, 0.0, 0.99)?;
        check_range(METHOD, "max_weight", self.max_weight, 0.0, f64::MAX)?;
        crate::error::check_gamma(METHOD, self.gamma)?;
        check_range(METHOD, "disc_lr_mult", self.disc_lr_mult, 0.0, f64::MAX)
    }

    fn spec(&self) -> DiscriminatorSpec {
        DiscriminatorSpec {
            hidden: self.hidden,
            init_std: self.init_std,
            dropout: self.dropout,
        }
    }
}

/// The DANN head. Variables: `<prefix>.disc.{fc1,fc2,out}.{weight,bias}`.
///
/// Terms:
/// - `domain_disc` (Discriminator): mean of BCE(D(source), 1) and BCE(D(target), 0) over the
///   cells of the **detached** features.
/// - `domain_adv` (Segmenter): the same loss with the features passed through the gradient
///   reversal layer with `lambda_p`; its value is the domain loss, its gradient with respect to
///   the features is `-lambda_p` times that loss's gradient.
pub struct DannHead {
    cfg: DannConfig,
    disc: CellDiscriminator,
    prefix: String,
}

impl DannHead {
    /// Builds the head under `vb` (the trainer passes `vb.pp("head")`), checking the tap.
    pub fn new(cfg: &DannConfig, backbone: &dyn Backbone, vb: VarBuilder<'_>) -> std::result::Result<Self, HeadError> {
        cfg.validate()?;
        let c = require_tap(backbone, METHOD, cfg.tap)?;
        let vb = vb.pp("disc");
        let prefix = vb.prefix();
        let disc = CellDiscriminator::new(c, &cfg.spec(), vb).map_err(HeadError::build(METHOD))?;
        Ok(Self {
            cfg: cfg.clone(),
            disc,
            prefix,
        })
    }

    /// The GRL weight at progress `p`.
    pub fn lambda(&self, p: f64) -> f64 {
        self.cfg.max_weight * lambda_schedule(p, self.cfg.gamma)
    }

    fn domain_loss(&self, s: &Tensor, t: &Tensor, step: usize, site: u64) -> Result<Tensor> {
        let seed = self.cfg.seed;
        let ls = self.disc.bce_mean(s, 1.0, (seed, step, site))?;
        let lt = self.disc.bce_mean(t, 0.0, (seed, step, site + 1))?;
        (ls + lt)? * 0.5
    }
}

impl AdaptationHead for DannHead {
    fn name(&self) -> &'static str {
        METHOD
    }

    fn taps(&self) -> Vec<FeatureTap> {
        vec![self.cfg.tap]
    }

    fn param_groups(&self) -> Vec<HeadParams> {
        vec![HeadParams::new(
            self.prefix.clone(),
            GroupId::DISCRIMINATOR,
            self.cfg.disc_lr_mult,
        )]
    }

    fn losses(&self, input: &HeadInput<'_>) -> Result<Vec<LossTerm>> {
        let s = input.source.get(self.cfg.tap)?;
        let t = input.target.get(self.cfg.tap)?;
        let step = input.step.step;
        let disc = self.domain_loss(&s.detach(), &t.detach(), step, 0)?;
        let lambda = self.lambda(input.step.progress());
        let adv = self.domain_loss(&grad_reverse(s, lambda)?, &grad_reverse(t, lambda)?, step, 2)?;
        Ok(vec![
            LossTerm {
                name: "domain_disc",
                value: disc,
                group: GroupId::DISCRIMINATOR,
            },
            LossTerm {
                name: "domain_adv",
                value: adv,
                group: GroupId::SEGMENTER,
            },
        ])
    }
}
