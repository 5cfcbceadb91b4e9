//! The gradient reversal layer (Ganin & Lempitsky, 2015): identity forward, `-lambda` times the
//! gradient backward, and DANN's adaptation-weight schedule.

use candle_core::{Result, Tensor};

/// Gradient reversal: returns a tensor equal to `x` whose gradient with respect to `x` is
/// `-lambda` times the incoming gradient.
///
/// Written as `(1 + lambda) * x.detach() - lambda * x` (value `x`, derivative `-lambda`), which
/// needs no custom op and so runs on every candle device. The forward value differs from `x` only
/// by float rounding. With `lambda = 0` candle prunes the reversed path entirely, so `x` gets
/// no gradient through it (the same as a zero gradient).
pub fn grad_reverse(x: &Tensor, lambda: f64) -> Result<Tensor> {
    (x.detach() * (1.0 + lambda))? - (x * lambda)?
}

/// A gradient reversal layer with a fixed `lambda`, as a candle module.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradReverse {
    pub lambda: f64,
}

impl candle_core::Module for GradReverse {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        grad_reverse(x, self.lambda)
    }
}

/// DANN's ramp `2 / (1 + exp(-gamma x)) - 1` for `x >= 0` (not clamped above: Cross-City's ramp
/// over `t / ramp_steps` keeps rising towards 1 after `t = ramp_steps`). Negative `x` gives 0.
pub fn ramp(x: f64, gamma: f64) -> f64 {
    if x <= 0.0 {
        0.0
    } else {
        2.0 / (1.0 + (-gamma * x).exp()) - 1.0
    }
}
