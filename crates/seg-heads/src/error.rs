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

/// Checks the steepness of a ramp (`2 / (1 + exp(-gamma p)) - 1`): finite and above 0, since at
/// 0 the ramp stays 0 and the adaptation term it weights never counts.
pub fn check_gamma(method: &'static str, value: f64) -> Result<(), HeadError> {
    if value.is_finite() && value > 0.0 {
        return Ok(());
    }
    Err(HeadError::invalid(
        method,
        "gamma",
        format!("{value} must be above 0 (at 0 the ramp stays 0 and the adaptation term it weights never counts)"),
    ))
}

/// Checks that `value` lies in `[lo, hi]` (finite).
pub fn check_range(method: &'static str, field: &'static str, value: f64, lo: f64, hi: f64) -> Result<(), HeadError> {
    // An f32 setting widened to f64 (0.99 becomes 0.9900000095...) is compared as f32 too, so
    // a bound written in the docs is inside the range (`f64::MAX as f32` is infinite).
    let within = |v: f64| (lo..=hi).contains(&v) || (lo as f32..=hi as f32).contains(&(v as f32));
    if value.is_finite() && within(value) {
        return Ok(());
    }
    // An f32 setting widened to f64 is shown as written (-0.1, not -0.10000000149011612).
    let shown = if f64::from(value as f32) == value {
        (value as f32).to_string()
    } else {
        value.to_string()
    };
    let wanted = if hi == f64::MAX {
        format!("must be at least {lo}")
    } else {
        format!("is outside [{lo}, {hi}]")
    };
    Err(HeadError::invalid(method, field, format!("{shown} {wanted}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_out_of_range_is_shown_as_written_with_its_bound() {
        let e = check_range("dann", "adv_weight", -1.0, 0.0, f64::MAX)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`adv_weight`: -1 must be at least 0"), "{e}");
        let e = check_gamma("dann", 0.0).unwrap_err().to_string();
        assert!(e.contains("`gamma`: 0 must be above 0"), "{e}");
        let e = check_range("fcn-wild", "dropout", f64::from(-0.1f32), 0.0, 0.99)
            .unwrap_err()
            .to_string();
        assert!(e.contains("-0.1 is outside [0, 0.99]"), "{e}");
        // The documented bound itself, written in a config (an f32 widened to f64), is inside.
        check_range("dann", "dropout", f64::from(0.99f32), 0.0, 0.99).unwrap();
        assert!(check_range("dann", "dropout", f64::from(0.991f32), 0.0, 0.99).is_err());
        let e = crate::DsnConfig {
            recon_pool: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("`recon_pool`"), "{e}");
        let wide = crate::output_adv::OutputAdvConfig {
            ndf: 2048,
            ..Default::default()
        };
        let e = wide
            .validate(crate::output_adv::OutputMap::Softmax)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`ndf`: 2048 must be 1 to 1024"), "{e}");
    }
}
