//! The Structural Adaptation Network (Hong et al., CVPR 2018): a conditional generator that maps
//! source conv1 features plus a noise channel to a residual added to conv5, a discriminator that
//! tells generated source features from target conv5, and the task loss on generated features.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use seg_core::{AdaptationHead, Backbone, FeatureTap, GroupId, HeadInput, HeadParams, LossTerm, IGNORE};
use seg_nn::layers::ConvCfg;
use seg_nn::{conv2d, cross_entropy_ignore, BatchNorm2d, Conv2d};

use crate::discriminator::{CellDiscriminator, DiscriminatorSpec};
use crate::error::{check_range, require_tap, HeadError};
use crate::ops::{max_pool_to, pool_to, stream};

const METHOD: &str = "san";

/// How the generator pools from conv1's to conv5's resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SanPool {
    /// Block averages.
    Avg,
    /// Block maxima (reshape + max, unscaled gradient).
    Max,
}

/// SAN's hyperparameters. "paper" = Hong et al.'s value, "ours" = not published or reduced for
/// the CPU demo.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SanConfig {
    /// Generator width. Default 16 (ours; paper 64).
    pub width: usize,
    /// Residual blocks (3×3 conv, BN, ReLU, 3×3 conv, BN, skip). Default 2 (ours; paper 16).
    pub blocks: usize,
    /// Pooling down to conv5's resolution. Default `avg` (ours; the paper says "pooling").
    pub pool: SanPool,
    /// Normal init std of the generator's last 1×1 conv, so that `f' ≈ conv5` at the start.
    /// Default 0.01 (ours).
    pub out_init_std: f64,
    /// Feed a noise channel `z ~ U(-1, 1)`; false feeds zeros (the paper's "without noise"
    /// ablation). Default true (paper).
    pub noise: bool,
    /// Hidden width of the per-cell discriminator. Default 64 (ours; paper fully connected
    /// 4096-1024-1 on the flattened map).
    pub disc_hidden: usize,
    /// Normal init std of the discriminator, `0` = `seg_nn::conv2d`'s default uniform init. Default 0 (ours).
    pub disc_init_std: f64,
    /// Dropout in the discriminator. Default 0 (ours).
    pub disc_dropout: f32,
    /// Weight of the generator's adversarial loss. Default 1 (paper: `L_adv + alpha L_task`).
    pub adv_weight: f64,
    /// Weight of the task loss on generated features. Default 1 (ours; not published).
    pub alpha: f64,
    /// Weight of the adversarial loss for the segmenter (term `san_adv`; omitted at 0): the
    /// paper also updates conv1..conv5 with the adversarial loss, whose two sides are the
    /// generated source features and the target features. Default 1 (paper).
    pub segmenter_adv_weight: f64,
    /// Ramp the segmenter's adversarial weight with `2 / (1 + exp(-gamma p)) - 1`. Default true
    /// (ours: the paper publishes no schedule; this is DANN's).
    pub ramp: bool,
    /// Steepness of that ramp. Default 10 (ours, DANN's value).
    pub gamma: f64,
    /// Share of the segmenter's source task loss taken on generated features: the trainer's
    /// plain source cross-entropy is weighted `1 - share` and `san_task` (on `f'`) `share`, so
    /// the segmenter sees one source cross-entropy in all, as in every other method. Default 0.5
    /// (ours; the paper sums both terms without weights).
    pub generated_task_share: f64,
    /// Learning-rate multiplier of the generator. Default 1 (ours).
    pub gen_lr_mult: f64,
    /// Learning-rate multiplier of the discriminator. Default 1 (ours).
    pub disc_lr_mult: f64,
    /// Seed of the noise and dropout (set to the run seed by `MethodConfig::with_seed`).
    /// Default 0.
    pub seed: u64,
}

impl Default for SanConfig {
    fn default() -> Self {
        Self {
            width: 16,
            blocks: 2,
            pool: SanPool::Avg,
            out_init_std: 0.01,
            noise: true,
            disc_hidden: 64,
            disc_init_std: 0.0,
            disc_dropout: 0.0,
            adv_weight: 1.0,
            alpha: 1.0,
            segmenter_adv_weight: 1.0,
            ramp: true,
            gamma: 10.0,
            generated_task_share: 0.5,
            gen_lr_mult: 1.0,
            disc_lr_mult: 1.0,
            seed: 0,
        }
    }
}

impl SanConfig {
    pub fn validate(&self) -> std::result::Result<(), HeadError> {
        if self.width == 0 {
            return Err(HeadError::invalid(METHOD, "width", "must be at least 1"));
        }
        if self.disc_hidden == 0 {
            return Err(HeadError::invalid(METHOD, "disc_hidden", "must be at least 1"));
        }
        check_range(METHOD, "out_init_std", self.out_init_std, 0.0, f64::MAX)?;
        check_range(METHOD, "disc_init_std", self.disc_init_std, 0.0, f64::MAX)?;
        check_range(METHOD, "disc_dropout", self.disc_dropout as f64, 0.0, 0.99)?;
        check_range(METHOD, "adv_weight", self.adv_weight, 0.0, f64::MAX)?;
        check_range(METHOD, "alpha", self.alpha, 0.0, f64::MAX)?;
        check_range(METHOD, "segmenter_adv_weight", self.segmenter_adv_weight, 0.0, f64::MAX)?;
        crate::error::check_gamma(METHOD, self.gamma)?;
        check_range(METHOD, "generated_task_share", self.generated_task_share, 0.0, 1.0)?;
        check_range(METHOD, "gen_lr_mult", self.gen_lr_mult, 0.0, f64::MAX)?;
        check_range(METHOD, "disc_lr_mult", self.disc_lr_mult, 0.0, f64::MAX)
    }
}

struct ResBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
}

impl ResBlock {
    fn new(c: usize, vb: VarBuilder<'_>, vars: &VarMap) -> Result<Self> {
        let cfg = ConvCfg {
            padding: 1,
            bias: false,
            ..Default::default()
        };
        Ok(Self {
            conv1: conv2d(c, c, 3, cfg, vb.pp("conv1"))?,
            bn1: BatchNorm2d::new(c, vb.pp("bn1"), vars)?,
            conv2: conv2d(c, c, 3, cfg, vb.pp("conv2"))?,
            bn2: BatchNorm2d::new(c, vb.pp("bn2"), vars)?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.forward_t(&self.conv1.forward(x)?, train)?.relu()?;
        let y = self.bn2.forward_t(&self.conv2.forward(&y)?, train)?;
        x + y
    }
}

/// SAN's conditional generator: `[conv1, z]` → 3×3 conv + ReLU → residual blocks → pooling to
/// conv5's grid → 1×1 conv to conv5's channels. Variables `input`, `blocks.{i}.{conv1,bn1,
/// conv2,bn2}`, `out` under its builder (batch-norm running statistics in the `VarMap`).
pub struct SanGenerator {
    input: Conv2d,
    blocks: Vec<ResBlock>,
    out: Conv2d,
    pool: SanPool,
}

impl SanGenerator {
    pub fn new(c1: usize, c5: usize, cfg: &SanConfig, vb: VarBuilder<'_>, vars: &VarMap) -> Result<Self> {
        let input = conv2d(
            c1 + 1,
            cfg.width,
            3,
            ConvCfg {
                padding: 1,
                ..Default::default()
            },
            vb.pp("input"),
        )?;
        let blocks = (0..cfg.blocks)
            .map(|i| ResBlock::new(cfg.width, vb.pp("blocks").pp(i), vars))
            .collect::<Result<_>>()?;
        let out_cfg = ConvCfg {
            init_std: (cfg.out_init_std > 0.0).then_some(cfg.out_init_std),
            ..Default::default()
        };
        let out = conv2d(cfg.width, c5, 1, out_cfg, vb.pp("out"))?;
        Ok(Self {
            input,
            blocks,
            out,
            pool: cfg.pool,
        })
    }

    /// The residual for conv5 features of size `grid` from conv1 features `N×C1×H1×W1` and noise
    /// `N×1×H1×W1`.
    pub fn forward(&self, conv1: &Tensor, z: &Tensor, grid: (usize, usize), train: bool) -> Result<Tensor> {
        let mut x = self.input.forward(&Tensor::cat(&[conv1, z], 1)?)?.relu()?;
        for b in &self.blocks {
            x = b.forward(&x, train)?;
        }
        let x = match self.pool {
            SanPool::Avg => pool_to(&x, grid.0, grid.1)?,
            SanPool::Max => max_pool_to(&x, grid.0, grid.1)?,
        };
        seg_nn::precision::to_f32(&self.out.forward(&x)?)
    }
}

/// The SAN head. Variables: `<prefix>.gen.*` (generator, Generator group) and
/// `<prefix>.disc.{fc1,fc2,out}.{weight,bias}` (per-cell discriminator on conv5-level features,
/// instead of the paper's fully connected one, so any crop size works).
///
/// With `f' = conv5(source) + G(conv1(source), z)` and `z ~ U(-1, 1)` drawn from
/// `Rng::derive(seed, [step, 0])`, the terms are (`share` = `generated_task_share`):
/// - `san_disc` (Discriminator): mean of BCE(D(target conv5), 1) and BCE(D(f'), 0), both
///   **detached**.
/// - `gen_adv` (Generator): `adv_weight · BCE(D(f'), 1)` (non-saturating: fool D), with conv5
///   **detached** (the Generator group updates the generator only).
/// - `gen_task` (Generator): `alpha · CE(backbone.forward_from(source, conv5, f'), labels)`,
///   conv5 detached likewise.
/// - `san_task` (Segmenter): `share · alpha ·` the same cross-entropy, so the classifier and
///   conv1..conv5 learn from generated features, conv1 also through the generator's input (the
///   Segmenter group leaves the generator's weights as they are); the trainer weights its plain
///   source cross-entropy `1 - share` ([`AdaptationHead::source_task_weight`]).
/// - `san_adv` (Segmenter, only when `segmenter_adv_weight > 0`): `segmenter_adv_weight · w ·`
///   the mean of BCE(D(f'), 1) and BCE(D(target conv5), 0), with `w` the
///   ramp (or 1): the paper's adversarial update of conv1..conv5, which moves both sides of
///   `L_adv` (the discriminator's loss with its labels inverted).
///
/// The paper alternates D, G and the segmenter; here the three groups (D on `san_disc`; G on
/// `gen_adv + gen_task`; the segmenter on `seg + san_task + san_adv`) are differentiated from
/// one forward pass and stepped together, as AdaptSegNet's reference code does. The extra passes
/// through the backbone's layers after conv5 (`forward_from`) run in training mode; under
/// `trainer.bn_stats = "target"` (the default) the batch-norm running statistics are frozen
/// while a head computes its terms, so generated features never enter the test-time
/// statistics; under `"mixed"` they do, until the run's final re-estimation on target images
/// (`eval.adabn_batches`).
pub struct SanHead {
    cfg: SanConfig,
    gen: SanGenerator,
    disc: CellDiscriminator,
    gen_prefix: String,
    disc_prefix: String,
}

impl SanHead {
    /// Builds the head under `vb` (the trainer passes `vb.pp("head")`), checking that the model
    /// has conv1 and conv5.
    pub fn new(
        cfg: &SanConfig,
        backbone: &dyn Backbone,
        vb: VarBuilder<'_>,
        vars: &VarMap,
    ) -> std::result::Result<Self, HeadError> {
        cfg.validate()?;
        let c1 = require_tap(backbone, METHOD, FeatureTap::Conv1)?;
        let c5 = require_tap(backbone, METHOD, FeatureTap::Conv5)?;
        let (vb_gen, vb_disc) = (vb.pp("gen"), vb.pp("disc"));
        let (gen_prefix, disc_prefix) = (vb_gen.prefix(), vb_disc.prefix());
        let gen = SanGenerator::new(c1, c5, cfg, vb_gen, vars).map_err(HeadError::build(METHOD))?;
        let spec = DiscriminatorSpec {
            hidden: cfg.disc_hidden,
            init_std: cfg.disc_init_std,
            dropout: cfg.disc_dropout,
        };
        let disc = CellDiscriminator::new(c5, &spec, vb_disc).map_err(HeadError::build(METHOD))?;
        Ok(Self {
            cfg: cfg.clone(),
            gen,
            disc,
            gen_prefix,
            disc_prefix,
        })
    }

    /// The noise channel for a conv1 map of shape `N×C×H×W` at `step`: `N×1×H×W`, uniform in
    /// `[-1, 1)` (zeros without noise), identical for identical `(seed, step)`.
    pub fn noise(&self, like: &Tensor, step: usize) -> Result<Tensor> {
        let (n, _, h, w) = like.dims4()?;
        if !self.cfg.noise {
            return Tensor::zeros((n, 1, h, w), like.dtype(), like.device());
        }
        let mut rng = stream(self.cfg.seed, step, 0);
        let z: Vec<f32> = (0..n * h * w).map(|_| rng.range_f32(-1.0, 1.0)).collect();
        Tensor::from_vec(z, (n, 1, h, w), like.device())?.to_dtype(like.dtype())
    }

    /// `G(conv1, z)` on conv5's grid.
    fn residual(&self, c1: &Tensor, c5: &Tensor, step: usize) -> Result<Tensor> {
        let (_, _, h5, w5) = c5.dims4()?;
        let (_, _, h1, w1) = c1.dims4()?;
        if h1 < h5 || w1 < w5 {
            candle_core::bail!("san: conv1 ({h1}x{w1}) is coarser than conv5 ({h5}x{w5})");
        }
        let z = self.noise(c1, step)?;
        self.gen.forward(c1, &z, (h5, w5), true)
    }

    fn disc_mean(&self, x: &Tensor, target: f64, step: usize, site: u64) -> Result<Tensor> {
        self.disc.bce_mean(x, target, (self.cfg.seed, step, site))
    }
}

impl AdaptationHead for SanHead {
    fn name(&self) -> &'static str {
        METHOD
    }

    fn taps(&self) -> Vec<FeatureTap> {
        vec![FeatureTap::Conv1, FeatureTap::Conv5]
    }

    fn param_groups(&self) -> Vec<HeadParams> {
        vec![
            HeadParams::new(self.gen_prefix.clone(), GroupId::GENERATOR, self.cfg.gen_lr_mult),
            HeadParams::new(self.disc_prefix.clone(), GroupId::DISCRIMINATOR, self.cfg.disc_lr_mult),
        ]
    }

    fn losses(&self, input: &HeadInput<'_>) -> Result<Vec<LossTerm>> {
        let step = input.step.step;
        let c1 = input.source.get(FeatureTap::Conv1)?;
        let c5 = input.source.get(FeatureTap::Conv5)?;
        // One residual serves both: the generator's terms see conv5 detached (its group updates
        // the generator only); the segmenter's reach conv1..conv5 through both paths, conv1
        // through the generator's input, as the paper trains G and conv1..conv5 together.
        let residual = self.residual(c1, c5, step)?;
        let fake_gen = (c5.detach() + &residual)?;
        let fake_seg = (c5 + &residual)?;
        let real = input.target.get(FeatureTap::Conv5)?;

        let disc = ((self.disc_mean(&real.detach(), 1.0, step, 1)?
            + self.disc_mean(&fake_gen.detach(), 0.0, step, 2)?)?
            * 0.5)?;
        let fool = self.disc_mean(&fake_gen, 1.0, step, 3)?;
        let task = |fake: &Tensor| -> Result<Tensor> {
            let logits = input
                .backbone
                .forward_from(input.source, FeatureTap::Conv5, fake, true)?;
            cross_entropy_ignore(&logits, input.source_labels, IGNORE as u32)? * self.cfg.alpha
        };
        let gen_task = task(&fake_gen)?;
        let san_task = (task(&fake_seg)? * self.cfg.generated_task_share)?;

        let mut terms = vec![
            LossTerm {
                name: "san_disc",
                value: disc,
                group: GroupId::DISCRIMINATOR,
            },
            LossTerm {
                name: "gen_adv",
                value: (&fool * self.cfg.adv_weight)?,
                group: GroupId::GENERATOR,
            },
            LossTerm {
                name: "gen_task",
                value: gen_task,
                group: GroupId::GENERATOR,
            },
            LossTerm {
                name: "san_task",
                value: san_task,
                group: GroupId::SEGMENTER,
            },
        ];
        if self.cfg.segmenter_adv_weight > 0.0 {
            let w = if self.cfg.ramp {
                seg_nn::lambda_schedule(input.step.progress(), self.cfg.gamma)
            } else {
                1.0
            };
            let inverted = (self.disc_mean(&fake_seg, 1.0, step, 4)? + self.disc_mean(real, 0.0, step, 5)?)?;
            terms.push(LossTerm {
                name: "san_adv",
                value: (inverted * (0.5 * self.cfg.segmenter_adv_weight * w))?,
                group: GroupId::SEGMENTER,
            });
        }
        Ok(terms)
    }

    fn source_task_weight(&self) -> f64 {
        1.0 - self.cfg.generated_task_share
    }
}
