//! The method choice: one serde enum tagged by `kind`, parsed from names or TOML, validated
//! against the backbone and turned into a [`Method`] before training starts. The list of
//! methods lives here and nowhere else.

use candle_core::Var;
use candle_nn::{VarBuilder, VarMap};
use seg_core::{AdaptationHead, Backbone, SegMethod};

use crate::curriculum::{Curriculum, CurriculumConfig};
use crate::feature_alignment::FeatureAlignment;
use crate::two_stream::{TwoStream, TwoStreamConfig};
use seg_heads::cross_city::{CrossCityConfig, CrossCityHead};
use seg_heads::dann::{DannConfig, DannHead};
use seg_heads::dsn::{DsnConfig, DsnHead};
use seg_heads::entropy::{MinEntConfig, MinEntHead};
use seg_heads::error::HeadError;
use seg_heads::fcn_wild::{FcnWildConfig, FcnWildHead};
use seg_heads::output_adv::{OutputAdvConfig, OutputAdvHead, OutputMap};
use seg_heads::san::{SanConfig, SanHead};
use seg_heads::size::SizeConstraints;

/// The valid method names, in the order results are reported: the baselines, the feature- and
/// model-level methods, then the output-space baselines of later papers.
pub const METHOD_NAMES: [&str; 13] = [
    "source-only",
    "oracle",
    "adabn",
    "dann",
    "fcn-wild",
    "cross-city",
    "san",
    "dsn",
    "curriculum",
    "two-stream",
    "adaptsegnet",
    "advent-minent",
    "advent",
];

/// A training method and its hyperparameters. In TOML: `kind = "dann"` plus the variant's fields
/// (each optional, with the defaults documented on its config struct).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MethodConfig {
    /// Cross-entropy on source only (no head).
    SourceOnly,
    /// Cross-entropy on the target's own train labels: the upper bound (no head; the data
    /// choice is [`MethodConfig::trains_on_target_labels`]).
    Oracle,
    /// Source-only training followed by the batch-norm re-estimation stage on target images
    /// (Li et al., 2016).
    Adabn,
    /// Gradient reversal and a per-cell domain discriminator.
    Dann(DannConfig),
    /// Global per-cell alignment plus category-size constraints.
    FcnWild(FcnWildConfig),
    /// Global plus class-wise alignment weighted by grid-cell class presence.
    CrossCity(CrossCityConfig),
    /// Conditional generator on conv1 adding a residual to conv5.
    San(SanConfig),
    /// Domain Separation Networks: private encoders, shared decoder, difference and similarity
    /// losses.
    Dsn(DsnConfig),
    /// Curriculum DA: regressors of label distributions and landmarks first, then the segmenter
    /// held to them on target.
    Curriculum(CurriculumConfig),
    /// Two streams with regularised unshared weights and MMD.
    TwoStream(TwoStreamConfig),
    /// Output-space adversarial training on the softmax (AdaptSegNet).
    Adaptsegnet(OutputAdvConfig),
    /// Entropy minimisation on target predictions (ADVENT's MinEnt).
    AdventMinent(MinEntConfig),
    /// Adversarial training on weighted self-information maps (ADVENT's AdvEnt).
    Advent(OutputAdvConfig),
}

/// What a method is built from, supplied by the composition root.
pub struct MethodParts<'a> {
    /// The model; the deployed network of every method.
    pub backbone: Box<dyn Backbone>,
    /// The model's trainable variables (`model.*`).
    pub model_vars: Vec<(String, Var)>,
    /// Every variable of the run (checkpointed together).
    pub vars: &'a VarMap,
    /// Builder for the method's own modules (the root passes a seeded builder at `head`).
    pub vb: VarBuilder<'a>,
    /// Builds another copy of the model with its variables under the given prefix of `vars`
    /// (second streams, frozen copies).
    pub another: &'a dyn Fn(&str) -> candle_core::Result<Box<dyn Backbone>>,
    /// Per-image class fractions of the source labels (required by `fcn-wild`).
    pub source_stats: Option<&'a SizeConstraints>,
}

/// Where the variables of a method built by [`MethodConfig::build_on`] come from: the seed of
/// its own modules' stream (under `head`) and of the copies of the model (second streams,
/// frozen copies).
#[derive(Debug, Clone, Copy)]
pub struct PartSeeds {
    pub head: u64,
    pub copies: u64,
}

impl MethodConfig {
    /// Builds the method as a run does: on `backbone`, whose variables are under `model` in
    /// `vars`; its own modules under `head`, initialised from `seeds.head`; copies of the model
    /// made by `rebuild` (the same network on another builder) from `seeds.copies`. The
    /// composition root and the benchmarks both build their methods here.
    pub fn build_on(
        &self,
        backbone: Box<dyn Backbone>,
        vars: &VarMap,
        device: &candle_core::Device,
        seeds: PartSeeds,
        rebuild: &dyn Fn(VarBuilder<'_>) -> candle_core::Result<Box<dyn Backbone>>,
        source_stats: Option<&SizeConstraints>,
    ) -> Result<Box<dyn SegMethod>, HeadError> {
        let f32 = candle_core::DType::F32;
        let vb = seg_nn::init::seeded_builder(vars, seeds.head, f32, device);
        let copy_vb = seg_nn::init::seeded_builder(vars, seeds.copies, f32, device);
        let another = |prefix: &str| rebuild(copy_vb.pp(prefix));
        self.build(MethodParts {
            backbone,
            model_vars: seg_nn::vars::trainable_under(vars, "model"),
            vars,
            vb: vb.pp("head"),
            another: &another,
            source_stats,
        })
    }

    /// Source-only steps the method runs before its training stage (the curriculum's stage 1),
    /// and the same method with that stage left out (what timing its training steps needs).
    pub fn pretraining(&self) -> (usize, Self) {
        match self {
            MethodConfig::Curriculum(c) => (
                c.pretrain_steps,
                MethodConfig::Curriculum(CurriculumConfig {
                    pretrain_steps: 0,
                    ..c.clone()
                }),
            ),
            other => (0, other.clone()),
        }
    }

    /// The method's kebab-case name, as in [`METHOD_NAMES`] and the TOML `kind`.
    pub fn name(&self) -> &'static str {
        match self {
            MethodConfig::SourceOnly => "source-only",
            MethodConfig::Oracle => "oracle",
            MethodConfig::Adabn => "adabn",
            MethodConfig::Dann(_) => "dann",
            MethodConfig::FcnWild(_) => "fcn-wild",
            MethodConfig::CrossCity(_) => "cross-city",
            MethodConfig::San(_) => "san",
            MethodConfig::Dsn(_) => "dsn",
            MethodConfig::Curriculum(_) => "curriculum",
            MethodConfig::TwoStream(_) => "two-stream",
            MethodConfig::Adaptsegnet(_) => "adaptsegnet",
            MethodConfig::AdventMinent(_) => "advent-minent",
            MethodConfig::Advent(_) => "advent",
        }
    }

    /// The method of that name with its default hyperparameters.
    pub fn parse(name: &str) -> Result<Self, HeadError> {
        Ok(match name.trim() {
            "source-only" => MethodConfig::SourceOnly,
            "oracle" => MethodConfig::Oracle,
            "adabn" => MethodConfig::Adabn,
            "dann" => MethodConfig::Dann(DannConfig::default()),
            "fcn-wild" => MethodConfig::FcnWild(FcnWildConfig::default()),
            "cross-city" => MethodConfig::CrossCity(CrossCityConfig::default()),
            "san" => MethodConfig::San(SanConfig::default()),
            "dsn" => MethodConfig::Dsn(DsnConfig::default()),
            "curriculum" => MethodConfig::Curriculum(CurriculumConfig::default()),
            "two-stream" => MethodConfig::TwoStream(TwoStreamConfig::default()),
            "adaptsegnet" => MethodConfig::Adaptsegnet(OutputAdvConfig::default()),
            "advent-minent" => MethodConfig::AdventMinent(MinEntConfig::default()),
            "advent" => MethodConfig::Advent(OutputAdvConfig::default()),
            other => {
                return Err(HeadError::UnknownMethod {
                    name: other.to_string(),
                    valid: METHOD_NAMES.join(", "),
                })
            }
        })
    }

    /// The seed written in the method's own section (`method.seed`), for the methods that have
    /// one; runs replace it with the run's seed ([`Self::with_seed`]).
    pub fn own_seed(&self) -> Option<u64> {
        match self {
            MethodConfig::Dann(c) => Some(c.seed),
            MethodConfig::FcnWild(c) => Some(c.seed),
            MethodConfig::CrossCity(c) => Some(c.seed),
            MethodConfig::San(c) => Some(c.seed),
            _ => None,
        }
    }

    /// The same method with its random seed (dropout masks, SAN noise) set to `seed`; the
    /// trainer passes the run seed so that runs with different seeds differ here too.
    pub fn with_seed(mut self, seed: u64) -> Self {
        match &mut self {
            MethodConfig::Dann(c) => c.seed = seed,
            MethodConfig::FcnWild(c) => c.seed = seed,
            MethodConfig::CrossCity(c) => c.seed = seed,
            MethodConfig::San(c) => c.seed = seed,
            _ => {}
        }
        self
    }

    /// Whether the method trains on the target's train labels instead of the source (the
    /// oracle: a data choice, not a method of its own).
    pub fn trains_on_target_labels(&self) -> bool {
        matches!(self, MethodConfig::Oracle)
    }

    /// Whether a run of the method reads the target's train split: for the target batches of
    /// its steps or for AdaBN's re-estimation after them; every method but source-only and the
    /// oracle. What the built method says ([`SegMethod::needs_target`], or a
    /// [`seg_core::Stage::ReestimateBn`] stage) agrees, and a test holds the two together; a
    /// run opens the split by the built method, `seg-adapt check` by this.
    pub fn reads_target_train(&self) -> bool {
        !matches!(self, MethodConfig::SourceOnly | MethodConfig::Oracle)
    }

    /// Whether the method needs [`SizeConstraints`] from the source labels (`fcn-wild`).
    pub fn needs_source_stats(&self) -> bool {
        matches!(self, MethodConfig::FcnWild(_))
    }

    /// The smallest side a training crop may have (the models' outputs are at the input's
    /// resolution): AdaptSegNet's and AdvEnt's discriminators need
    /// [`seg_heads::output_adv::MIN_SIDE`] pixels a side of the output map.
    pub fn min_crop_side(&self) -> usize {
        match self {
            MethodConfig::Adaptsegnet(_) | MethodConfig::Advent(_) => seg_heads::output_adv::MIN_SIDE,
            _ => 1,
        }
    }

    /// Checks the hyperparameters alone (no model needed).
    pub fn validate(&self) -> Result<(), HeadError> {
        match self {
            MethodConfig::SourceOnly | MethodConfig::Oracle | MethodConfig::Adabn => Ok(()),
            MethodConfig::Dann(c) => c.validate(),
            MethodConfig::FcnWild(c) => c.validate(),
            MethodConfig::CrossCity(c) => c.validate(),
            MethodConfig::San(c) => c.validate(),
            MethodConfig::Dsn(c) => c.validate(),
            MethodConfig::Curriculum(c) => c.validate(),
            MethodConfig::TwoStream(c) => c.validate(),
            MethodConfig::Adaptsegnet(c) => c.validate(OutputMap::Softmax),
            MethodConfig::AdventMinent(c) => c.validate(),
            MethodConfig::Advent(c) => c.validate(OutputMap::SelfInformation),
        }
    }

    /// Validates the method against the model (taps, channels, classes, batch norm, per-layer
    /// access) and builds it.
    pub fn build(&self, parts: MethodParts<'_>) -> Result<Box<dyn SegMethod>, HeadError> {
        let MethodParts {
            backbone,
            model_vars,
            vars,
            vb,
            another,
            source_stats,
        } = parts;
        let name = self.name();
        match self {
            MethodConfig::Curriculum(c) => {
                let frozen = another("frozen").map_err(HeadError::build(name))?;
                return Ok(Box::new(Curriculum::new(c, backbone, model_vars, frozen, vars, vb)?));
            }
            MethodConfig::TwoStream(c) => {
                let source = another("source_stream").map_err(HeadError::build(name))?;
                return Ok(Box::new(TwoStream::new(c, backbone, model_vars, source, vars, vb)?));
            }
            _ => {}
        }
        let head = self.build_head(backbone.as_ref(), vb, vars, source_stats)?;
        // Every method that adapts ends with AdaBN's re-estimation over the same target batches,
        // so that test-time statistics are computed the same way for all; AdaBN is that stage.
        let reestimate = head.is_some() || matches!(self, MethodConfig::Adabn);
        Ok(Box::new(FeatureAlignment::new(
            name, backbone, model_vars, head, vars, reestimate,
        )?))
    }
}

impl MethodConfig {
    /// The feature-alignment head of a method run by [`FeatureAlignment`], validated against
    /// `backbone`, with variables under `vb`; `None` for the methods without one (source-only,
    /// oracle, AdaBN) and for those with a step of their own (curriculum, two-stream).
    /// `source_stats` is required by `fcn-wild` and ignored otherwise.
    pub fn build_head(
        &self,
        backbone: &dyn Backbone,
        vb: VarBuilder<'_>,
        vars: &VarMap,
        source_stats: Option<&SizeConstraints>,
    ) -> Result<Option<Box<dyn AdaptationHead>>, HeadError> {
        let name = self.name();
        Ok(match self {
            MethodConfig::SourceOnly
            | MethodConfig::Oracle
            | MethodConfig::Curriculum(_)
            | MethodConfig::TwoStream(_) => None,
            MethodConfig::Adabn => {
                if !backbone.has_batch_norm() {
                    return Err(HeadError::NoBatchNorm { method: name });
                }
                None
            }
            MethodConfig::Dann(c) => Some(Box::new(DannHead::new(c, backbone, vb)?)),
            MethodConfig::FcnWild(c) => {
                let stats = source_stats.ok_or(HeadError::MissingSourceStats { method: name })?;
                Some(Box::new(FcnWildHead::new(c, backbone, vb, stats)?))
            }
            MethodConfig::CrossCity(c) => Some(Box::new(CrossCityHead::new(c, backbone, vb)?)),
            MethodConfig::San(c) => Some(Box::new(SanHead::new(c, backbone, vb, vars)?)),
            MethodConfig::Dsn(c) => Some(Box::new(DsnHead::new(c, backbone, vb)?)),
            MethodConfig::Adaptsegnet(c) => Some(Box::new(OutputAdvHead::new(c, OutputMap::Softmax, backbone, vb)?)),
            MethodConfig::AdventMinent(c) => Some(Box::new(MinEntHead::new(c)?)),
            MethodConfig::Advent(c) => Some(Box::new(OutputAdvHead::new(
                c,
                OutputMap::SelfInformation,
                backbone,
                vb,
            )?)),
        })
    }

    /// What the method needs of `backbone` (its taps at strides it can use, batch norm for
    /// AdaBN), checked by building the head on variables of its own that are then dropped:
    /// a run refuses a wrong tap before it opens its data. Uniform size constraints stand in
    /// for `fcn-wild`'s, which need the source labels.
    pub fn refuse_on(&self, backbone: &dyn Backbone) -> Result<(), HeadError> {
        let scratch = VarMap::new();
        let vb = VarBuilder::from_varmap(&scratch, candle_core::DType::F32, &candle_core::Device::Cpu);
        const N: usize = seg_core::NUM_CLASSES;
        let uniform = SizeConstraints::from_fractions(&[[1.0 / N as f32; N]]);
        self.build_head(backbone, vb, &scratch, Some(&uniform)).map(drop)
    }
}

impl std::str::FromStr for MethodConfig {
    type Err = HeadError;

    fn from_str(s: &str) -> Result<Self, HeadError> {
        Self::parse(s)
    }
}

impl std::fmt::Display for MethodConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The method of that name with its default hyperparameters (see [`MethodConfig::parse`]).
pub fn parse_method(name: &str) -> Result<MethodConfig, HeadError> {
    MethodConfig::parse(name)
}
