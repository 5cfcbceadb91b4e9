//! Learning-rate and loss-weight schedules.

/// Poly decay: `lr0 * (1 - step / total) ^ power` (DeepLab/FCN convention, power 0.9).
pub fn poly_lr(lr0: f64, step: usize, total: usize, power: f64) -> f64 {
    if total == 0 {
        return lr0;
    }
    lr0 * (1.0 - (step.min(total) as f64 / total as f64)).powf(power)
}

/// DANN's adaptation weight `2 / (1 + exp(-gamma p)) - 1` for progress `p` in `[0, 1]`
/// (gamma = 10 in the paper).
pub fn lambda_schedule(p: f64, gamma: f64) -> f64 {
    2.0 / (1.0 + (-gamma * p.clamp(0.0, 1.0)).exp()) - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_their_formulas() {
        assert_eq!(poly_lr(0.01, 0, 100, 0.9), 0.01);
        assert!((poly_lr(0.01, 50, 100, 0.9) - 0.01 * 0.5f64.powf(0.9)).abs() < 1e-12);
        assert_eq!(poly_lr(0.01, 100, 100, 0.9), 0.0);
        assert_eq!(lambda_schedule(0.0, 10.0), 0.0);
        assert!((lambda_schedule(1.0, 10.0) - 0.999_909_2).abs() < 1e-6);
        assert!((lambda_schedule(0.1, 10.0) - 0.462_117_2).abs() < 1e-6);
    }
}
