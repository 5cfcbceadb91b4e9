//! Scores over seeds: a method's mean and sample standard deviation, and paired per-seed
//! differences between two methods with the 95% confidence interval of their mean from
//! Student's t distribution (the demos' "vs" columns).

/// Mean, sample standard deviation (none for one value: `null` in JSON) and count of a method's
/// scores over seeds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub mean: f64,
    pub std: Option<f64>,
    pub n: usize,
}

impl Summary {
    /// `None` for no values.
    pub fn of(v: &[f64]) -> Option<Self> {
        let n = v.len();
        if n == 0 {
            return None;
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        Some(Self { mean, std, n })
    }

    /// The sample standard deviation in points for a table (`n/a` for one seed).
    pub fn spread(&self) -> String {
        self.std.map_or_else(|| "n/a".into(), |s| format!("{:.2}", 100.0 * s))
    }
}

/// Two-sided 95% quantile of Student's t distribution with `df` degrees of freedom
/// (`scipy.stats.t.ppf(0.975, df)`: tabulated to 30, then `1.96 + 2.4 / df`, within 0.002).
pub fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139, 2.200985,
        2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873,
        2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => 1.959964 + 2.4 / df as f64,
    }
}

/// A paired comparison over seeds: the per-seed differences `a - b`, their mean, sample
/// standard deviation, and the 95% confidence interval of the mean from the t distribution
/// (absent with a single seed).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Paired {
    pub mean: f64,
    pub std: Option<f64>,
    pub n: usize,
    /// `[low, high]` of the 95% confidence interval of the mean difference.
    pub ci95: Option<[f64; 2]>,
    /// `(seed, difference)` for every seed both sides have.
    pub per_seed: Vec<(u64, f64)>,
    /// Seeds on which the difference is positive.
    pub positive: usize,
}

/// Pairs `a` and `b` (`(seed, value)`) by seed; `None` when they share no seed.
pub fn paired(a: &[(u64, f64)], b: &[(u64, f64)]) -> Option<Paired> {
    let per_seed: Vec<(u64, f64)> = a
        .iter()
        .filter_map(|&(seed, x)| b.iter().find(|(s, _)| *s == seed).map(|&(_, y)| (seed, x - y)))
        .collect();
    let diffs: Vec<f64> = per_seed.iter().map(|d| d.1).collect();
    let Summary { mean, std, n } = Summary::of(&diffs)?;
    let ci95 = std.map(|std| {
        let half = t_975(n - 1) * std / (n as f64).sqrt();
        [mean - half, mean + half]
    });
    let positive = per_seed.iter().filter(|d| d.1 > 0.0).count();
    Some(Paired {
        mean,
        std,
        n,
        ci95,
        per_seed,
        positive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_scipy() {
        // scipy.stats.t.ppf(0.975, df) for df = 1, 2, 4, 30, 60, 120.
        for (df, want) in [
            (1, 12.706204736),
            (2, 4.302652730),
            (4, 2.776445105),
            (30, 2.042272456),
            (60, 2.000297822),
            (120, 1.979930405),
        ] {
            assert!((t_975(df) - want).abs() < 2e-3, "df {df}: {} vs {want}", t_975(df));
        }
    }

    #[test]
    fn paired_differences_match_by_seed() {
        let a = [(0, 0.30), (1, 0.25), (2, 0.28)];
        let b = [(2, 0.26), (0, 0.27), (1, 0.24), (7, 0.9)];
        let p = paired(&a, &b).unwrap();
        assert_eq!(p.n, 3);
        assert_eq!(p.positive, 3);
        // Differences 0.03, 0.01, 0.02: mean 0.02, std 0.01, half-width 4.302653 * 0.01 / sqrt(3).
        assert!((p.mean - 0.02).abs() < 1e-12);
        assert!((p.std.unwrap() - 0.01).abs() < 1e-12);
        let [lo, hi] = p.ci95.unwrap();
        let half = 4.302653 * 0.01 / 3f64.sqrt();
        assert!((lo - (0.02 - half)).abs() < 1e-9 && (hi - (0.02 + half)).abs() < 1e-9);
        let one = paired(&a[..1], &b).unwrap();
        assert_eq!((one.n, one.ci95), (1, None));
        assert!(paired(&a, &[(9, 0.1)]).is_none());
    }
}
