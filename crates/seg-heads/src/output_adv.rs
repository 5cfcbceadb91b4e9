//! Adversarial alignment in the output space: a fully convolutional discriminator on a map
//! derived from the segmenter's prediction, the softmax (AdaptSegNet, Tsai et al., CVPR 2018)
//! or the weighted self-information `-p log p / log C` (AdvEnt, Vu et al., CVPR 2019). The
//! discriminator learns source (1) from target (0) on detached maps; the segmenter is trained
//! GAN-style, with flipped labels, to make target maps look like source ones.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use seg_core::{AdaptationHead, Backbone, FeatureTap, GroupId, HeadInput, HeadParams, LossTerm};
use seg_nn::layers::ConvCfg;
use seg_nn::{bce_with_logits, conv2d, Conv2d};

use crate::entropy::self_information;
use crate::error::{check_range, HeadError};
use crate::ops::pool_to;

/// The smallest side of the output map the discriminator takes: its five stride-2 4×4
/// convolutions (padding 1) halve it five times and the last needs 2 pixels.
pub const MIN_SIDE: usize = 32;

/// What the discriminator looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMap {
    /// The softmax probabilities (AdaptSegNet).
    Softmax,
    /// `-p log p / log C` per class (AdvEnt; its code's `prob_2_entropy`), so that the maps sum
    /// over classes to the normalised entropy, in `[0, 1]`.
    SelfInformation,
}

impl OutputMap {
    fn method(self) -> &'static str {
        match self {
            OutputMap::Softmax => "adaptsegnet",
            OutputMap::SelfInformation => "advent",
        }
    }

    /// The map of logits `N×C×H×W`.
    pub fn of(self, logits: &Tensor) -> Result<Tensor> {
        match self {
            OutputMap::Softmax => seg_nn::loss::softmax_channels(logits),
            OutputMap::SelfInformation => {
                let c = logits.dim(1)?;
                self_information(logits)? / (c as f64).ln().max(f64::MIN_POSITIVE)
            }
        }
    }
}

/// Hyperparameters of both output-space methods ("paper" = Tsai et al. and Vu et al., who use
/// the same values).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputAdvConfig {
    /// Channels of the first discriminator conv, doubled by each of the next three (paper 64:
    /// 64-128-256-512-1). Default 8 (ours, for the CPU demo).
    pub ndf: usize,
    /// Weight of the segmenter's adversarial term. Default 0.003 (ours: the demo's arms are 120
    /// steps; in the demo 0.01 and 0.03 fell below AdaBN; paper 0.001 for the main output,
    /// 0.0002 for the auxiliary one, which a single-output model does not have: this is the
    /// single-level variant).
    pub adv_weight: f64,
    /// Negative slope of the leaky ReLUs. Default 0.2 (paper).
    pub leaky_slope: f64,
    /// Learning-rate multiplier of the discriminator over `trainer.head_lr` (paper: Adam 1e-4,
    /// betas 0.9/0.99). Default 1 (ours).
    pub disc_lr_mult: f64,
    /// The maps are average-pooled by this factor before the discriminator when it divides
    /// their sides and leaves at least 32 pixels a side (ours, for the CPU demo: 2 quarters the
    /// discriminator's cost; paper 1, the full output resolution). Default 2.
    pub pool: usize,
}

impl Default for OutputAdvConfig {
    fn default() -> Self {
        Self {
            ndf: 8,
            adv_weight: 0.003,
            leaky_slope: 0.2,
            disc_lr_mult: 1.0,
            pool: 2,
        }
    }
}

/// The widest first layer of the output discriminator: its last conv is then 8192 wide, the
/// widest a `[method]` may ask for.
pub const MAX_NDF: usize = 1024;

impl OutputAdvConfig {
    pub fn validate(&self, map: OutputMap) -> std::result::Result<(), HeadError> {
        let m = map.method();
        // The last conv is 8 × ndf wide; at ndf = 2048 its 4×4 weights alone are 17 GB.
        if !(1..=MAX_NDF).contains(&self.ndf) {
            return Err(HeadError::invalid(
                m,
                "ndf",
                format!(
                    "{} must be 1 to {MAX_NDF} (its widest conv is 8 × ndf channels)",
                    self.ndf
                ),
            ));
        }
        if self.pool == 0 {
            return Err(HeadError::invalid(m, "pool", "must be at least 1"));
        }
        check_range(m, "adv_weight", self.adv_weight, 0.0, f64::MAX)?;
        check_range(m, "leaky_slope", self.leaky_slope, 0.0, 1.0)?;
        check_range(m, "disc_lr_mult", self.disc_lr_mult, 0.0, f64::MAX)
    }
}

/// The discriminator of both papers: five 4×4 convolutions with stride 2 and padding 1
/// (`c_in → ndf → 2ndf → 4ndf → 8ndf → 1`), leaky ReLU after the first four; one logit per cell
/// of a grid 32 times coarser than the input. Variables `conv1` … `conv5`.
pub struct OutputDiscriminator {
    convs: Vec<Conv2d>,
    slope: f64,
}

impl OutputDiscriminator {
    pub fn new(c_in: usize, ndf: usize, slope: f64, vb: VarBuilder<'_>) -> Result<Self> {
        let widths = [c_in, ndf, ndf * 2, ndf * 4, ndf * 8, 1];
        let cfg = ConvCfg {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        let convs = (0..5)
            .map(|i| conv2d(widths[i], widths[i + 1], 4, cfg, vb.pp(format!("conv{}", i + 1))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { convs, slope })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, c) in self.convs.iter().enumerate() {
            x = candle_core::Module::forward(c, &x)?;
            if i + 1 < self.convs.len() {
                x = x.maximum(&(&x * self.slope)?)?;
            }
        }
        seg_nn::precision::to_f32(&x)
    }
}

/// The AdaptSegNet / AdvEnt head (single level, on the main output). Variables
/// `<prefix>.disc.conv{1..5}.{weight,bias}`.
///
/// Terms:
/// - `out_disc` (discriminator): mean of BCE(D(map_s), 1) and BCE(D(map_t), 0) on detached maps.
/// - `out_adv` (segmenter): `adv_weight ·` BCE(D(map_t), 1), the target fooling the
///   discriminator (its gradient to the discriminator is not used: other loss group).
pub struct OutputAdvHead {
    cfg: OutputAdvConfig,
    map: OutputMap,
    disc: OutputDiscriminator,
    prefix: String,
}

impl OutputAdvHead {
    /// Builds the head under `vb`. The output map must be at least [`MIN_SIDE`] pixels a side
    /// for the discriminator's five stride-2 convolutions; a run's config is checked against it
    /// before any work starts (`MethodConfig::min_crop_side`).
    pub fn new(
        cfg: &OutputAdvConfig,
        map: OutputMap,
        backbone: &dyn Backbone,
        vb: VarBuilder<'_>,
    ) -> std::result::Result<Self, HeadError> {
        cfg.validate(map)?;
        let vb = vb.pp("disc");
        let prefix = vb.prefix();
        let disc = OutputDiscriminator::new(backbone.num_classes(), cfg.ndf, cfg.leaky_slope, vb)
            .map_err(HeadError::build(map.method()))?;
        Ok(Self {
            cfg: cfg.clone(),
            map,
            disc,
            prefix,
        })
    }

    pub fn discriminator(&self) -> &OutputDiscriminator {
        &self.disc
    }
}

impl AdaptationHead for OutputAdvHead {
    fn name(&self) -> &'static str {
        self.map.method()
    }

    fn taps(&self) -> Vec<FeatureTap> {
        Vec::new()
    }

    fn param_groups(&self) -> Vec<HeadParams> {
        vec![HeadParams::new(
            self.prefix.clone(),
            GroupId::DISCRIMINATOR,
            self.cfg.disc_lr_mult,
        )]
    }

    fn losses(&self, input: &HeadInput<'_>) -> Result<Vec<LossTerm>> {
        let pooled = |logits: &Tensor| -> Result<Tensor> {
            let m = self.map.of(logits)?;
            let (_, _, h, w) = m.dims4()?;
            let p = self.cfg.pool;
            // The discriminator's five stride-2 convolutions need MIN_SIDE pixels a side:
            // smaller outputs are not pooled.
            if p > 1 && h % p == 0 && w % p == 0 && h / p >= MIN_SIDE && w / p >= MIN_SIDE {
                pool_to(&m, h / p, w / p)
            } else {
                Ok(m)
            }
        };
        let ms = pooled(input.source.logits()?)?;
        let mt = pooled(input.target.logits()?)?;
        let ds = bce_with_logits(&self.disc.forward(&ms.detach())?, 1.0)?;
        let dt = bce_with_logits(&self.disc.forward(&mt.detach())?, 0.0)?;
        let disc = ((ds + dt)? * 0.5)?;
        let adv = (bce_with_logits(&self.disc.forward(&mt)?, 1.0)? * self.cfg.adv_weight)?;
        Ok(vec![
            LossTerm::new("out_disc", disc, GroupId::DISCRIMINATOR),
            LossTerm::new("out_adv", adv, GroupId::SEGMENTER),
        ])
    }
}
