//! Typed errors of head construction: unknown methods, taps or classes the model lacks, missing
//! source statistics and invalid hyperparameters, all raised before training starts.

use seg_core::FeatureTap;

/// Why a method could not be parsed or its head could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// A method name that is not one of `seg_methods::METHOD_NAMES`.
    #[error("unknown method `{name}`: expected one of {valid}")]
    UnknownMethod { name: String, valid: String },
    /// The head reads a feature tap the backbone does not provide.
    #[error("method `{method}` needs feature tap `{tap}`, but the model only has: {available}")]
    MissingTap {
        method: &'static str,
        tap: &'static str,
        available: String,
    },
    /// The head needs a specific number of classes.
    #[error("method `{method}` needs a model with {expected} classes, the model has {got}")]
    ClassCount {
        method: &'static str,
        expected: usize,
        got: usize,
    },
    /// AdaBN on a model without batch norm has nothing to re-estimate.
    #[error("method `{method}` needs a model with batch norm, and this model has none")]
    NoBatchNorm { method: &'static str },
    /// FCNs in the Wild's size constraints come from source label statistics.
    #[error("method `{method}` needs the source label statistics (SizeConstraints), none were given")]
    MissingSourceStats { method: &'static str },
    /// A hyperparameter outside its valid range.
    #[error("method `{method}`: invalid `{field}`: {reason}")]
    InvalidConfig {
        method: &'static str,
        field: &'static str,
        reason: String,
    },
    /// Creating the head's variables failed.
    /// The reason is in the message (not also a `source`, which would print it twice).
    #[error("method `{method}`: building the head failed: {cause}")]
    Build {
        method: &'static str,
        cause: candle_core::Error,
    },
}

impl HeadError {
    pub fn invalid(method: &'static str, field: &'static str, reason: impl Into<String>) -> Self {
        HeadError::InvalidConfig {
            method,
            field,
            reason: reason.into(),
        }
    }

    pub fn build(method: &'static str) -> impl FnOnce(candle_core::Error) -> Self {
        move |cause| HeadError::Build { method, cause }
    }
}

/// Channels of `tap` in `backbone`, or [`HeadError::MissingTap`] naming the model's taps.
pub fn require_tap(
    backbone: &dyn seg_core::Backbone,
    method: &'static str,
    tap: FeatureTap,
) -> Result<usize, HeadError> {
    match backbone.tap_channels(tap) {
        Some(c) => Ok(c),
        None => Err(HeadError::MissingTap {
            method,
            tap: tap.name(),
            available: backbone.taps().iter().map(|t| t.name()).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Checks that `value` lies in `[lo, hi]` (finite).
pub fn check_range(method: &'static str, field: &'static str, value: f64, lo: f64, hi: f64) -> Result<(), HeadError> {
    if value.is_finite() && (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(HeadError::invalid(
            method,
            field,
            format!("{value} is outside [{lo}, {hi}]"),
        ))
    }
}
