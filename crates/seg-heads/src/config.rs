//! The method choice: one serde enum tagged by `kind`, parsed from names or TOML, validated
//! against the backbone and turned into a head before training starts.

use candle_nn::{VarBuilder, VarMap};
use seg_core::{AdaptationHead, Backbone};

use crate::cross_city::{CrossCityConfig, CrossCityHead};
use crate::dann::{DannConfig, DannHead};
use crate::error::HeadError;
use crate::fcn_wild::{FcnWildConfig, FcnWildHead};
use crate::san::{SanConfig, SanHead};
use crate::size::SizeConstraints;

/// The valid method names, in the order results are reported.
pub const METHOD_NAMES: [&str; 7] = [
    "source-only",
    "oracle",
    "adabn",
    "dann",
    "fcn-wild",
    "cross-city",
    "san",
];

/// A training method and its hyperparameters. In TOML: `kind = "dann"` plus the variant's fields
/// (each optional, with the defaults documented on its config struct).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MethodConfig {
    /// Cross-entropy on source only (no head).
    SourceOnly,
    /// Cross-entropy on the target's own train labels: the upper bound (no head).
    Oracle,
    /// The source-only model with batch-norm statistics re-estimated on target images (Li et al.,
    /// 2016; no head, no training of its own).
    Adabn,
    /// Gradient reversal and a per-cell domain discriminator.
    Dann(DannConfig),
    /// Global per-cell alignment plus category-size constraints.
    FcnWild(FcnWildConfig),
    /// Global plus class-wise alignment weighted by soft grid-cell class presence.
    CrossCity(CrossCityConfig),
    /// Conditional generator on conv1 adding a residual to conv5.
    San(SanConfig),
}

impl MethodConfig {
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
            other => {
                return Err(HeadError::UnknownMethod {
                    name: other.to_string(),
                    valid: METHOD_NAMES.join(", "),
                })
            }
        })
    }

    /// The same method with its random seed (dropout masks, SAN noise) set to `seed`; the
    /// trainer passes the run seed so that runs with different seeds differ here too.
    pub fn with_seed(mut self, seed: u64) -> Self {
        match &mut self {
            MethodConfig::SourceOnly | MethodConfig::Oracle | MethodConfig::Adabn => {}
            MethodConfig::Dann(c) => c.seed = seed,
            MethodConfig::FcnWild(c) => c.seed = seed,
            MethodConfig::CrossCity(c) => c.seed = seed,
            MethodConfig::San(c) => c.seed = seed,
        }
        self
    }

    /// Whether the method needs [`SizeConstraints`] from the source labels (`fcn-wild`).
    pub fn needs_source_stats(&self) -> bool {
        matches!(self, MethodConfig::FcnWild(_))
    }

    /// Checks the hyperparameters alone (no model needed).
    pub fn validate(&self) -> Result<(), HeadError> {
        match self {
            MethodConfig::SourceOnly | MethodConfig::Oracle | MethodConfig::Adabn => Ok(()),
            MethodConfig::Dann(c) => c.validate(),
            MethodConfig::FcnWild(c) => c.validate(),
            MethodConfig::CrossCity(c) => c.validate(),
            MethodConfig::San(c) => c.validate(),
        }
    }

    /// Validates the method against `backbone` (taps, channels, classes, batch norm) and builds
    /// its head with variables under `vb` (the trainer passes `vb.pp("head")`); `None` for the
    /// methods without one. `source_stats` is required by `fcn-wild` and ignored otherwise.
    pub fn build_head(
        &self,
        backbone: &dyn Backbone,
        vb: VarBuilder<'_>,
        vars: &VarMap,
        source_stats: Option<&SizeConstraints>,
    ) -> Result<Option<Box<dyn AdaptationHead>>, HeadError> {
        Ok(match self {
            MethodConfig::SourceOnly | MethodConfig::Oracle => None,
            MethodConfig::Adabn => {
                if !backbone.has_batch_norm() {
                    return Err(HeadError::NoBatchNorm { method: self.name() });
                }
                None
            }
            MethodConfig::Dann(c) => Some(Box::new(DannHead::new(c, backbone, vb)?)),
            MethodConfig::FcnWild(c) => {
                let stats = source_stats.ok_or(HeadError::MissingSourceStats { method: self.name() })?;
                Some(Box::new(FcnWildHead::new(c, backbone, vb, stats)?))
            }
            MethodConfig::CrossCity(c) => Some(Box::new(CrossCityHead::new(c, backbone, vb)?)),
            MethodConfig::San(c) => Some(Box::new(SanHead::new(c, backbone, vb, vars)?)),
        })
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
