//! The statistics and report pieces both demos (segmentation and detection) share: per-method
//! summaries over seeds, paired per-seed differences with their t-distribution 95% interval,
//! the results table and its verdicts against AdaBN, and the arms' training curves (aligned on
//! their training steps).

use std::collections::BTreeMap;
use std::path::Path;

use crate::seeds::{paired, Paired, Summary};

/// One line of a report's verdicts: method `m` (scores `x`, paired differences `p`) against
/// AdaBN (`adabn`).
pub fn adabn_verdict(m: &str, x: &Summary, adabn: &Summary, p: &Paired) -> String {
    format!(
        "- **{m}**: {:+.2} points over AdaBN on average ({}); above on {} of {} seeds; {}.\n",
        100.0 * p.mean,
        match adabn.std {
            Some(std) if x.mean > adabn.mean + std => "beyond AdaBN's mean + std",
            Some(_) => "NOT beyond AdaBN's mean + std",
            None if x.mean > adabn.mean => "above AdaBN's one seed",
            None => "NOT above AdaBN's one seed",
        },
        p.positive,
        p.n,
        match p.ci95 {
            Some([lo, _]) if lo > 0.0 => "the 95% interval excludes 0",
            Some(_) => "the 95% interval includes 0",
            None => "one seed gives no 95% interval",
        },
    )
}

/// `+1.23 ± 0.45` (the 95% interval's half-width), in points.
pub fn with_ci(p: &Paired) -> String {
    match p.ci95 {
        Some([lo, hi]) => format!("{:+.2} ± {:.2}", 100.0 * p.mean, 100.0 * (hi - lo) / 2.0),
        None => format!("{:+.2}", 100.0 * p.mean),
    }
}

/// One method's paired differences to source-only and to AdaBN (in the score's fractions;
/// absent for the baseline itself and where no seed is shared).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub vs_source_only: Option<Paired>,
    pub vs_adabn: Option<Paired>,
}

/// Every method's [`Comparison`], from `scores(method)`: its `(seed, score)` pairs.
pub fn comparisons(methods: &[String], scores: impl Fn(&str) -> Vec<(u64, f64)>) -> BTreeMap<String, Comparison> {
    let so = scores("source-only");
    let ab = scores("adabn");
    methods
        .iter()
        .map(|m| {
            let mine = scores(m);
            let vs = |base: &[(u64, f64)], skip: &[&str]| {
                if skip.contains(&m.as_str()) {
                    None
                } else {
                    paired(&mine, base)
                }
            };
            (
                m.clone(),
                Comparison {
                    vs_source_only: vs(&so, &["source-only"]),
                    vs_adabn: vs(&ab, &["source-only", "adabn"]),
                },
            )
        })
        .collect()
}

/// Every method's [`Summary`] over its seeds' scores (`scores(method)`, as for [`comparisons`]);
/// a method without a score is absent.
pub fn summarise(methods: &[String], scores: impl Fn(&str) -> Vec<(u64, f64)>) -> BTreeMap<String, Summary> {
    methods
        .iter()
        .filter_map(|m| {
            let v: Vec<f64> = scores(m).into_iter().map(|(_, x)| x).collect();
            Summary::of(&v).map(|x| (m.clone(), x))
        })
        .collect()
}

/// The report's results table in markdown (`metric`: the score column's header, in %), then one
/// verdict line per adaptation method against AdaBN when AdaBN was run.
pub fn results_markdown(
    metric: &str,
    methods: &[String],
    summary: &BTreeMap<String, Summary>,
    paired: &BTreeMap<String, Comparison>,
) -> String {
    let mut s = format!(
        "| method | {metric} | ± | seeds | vs source-only | vs AdaBN | seeds above source-only | seeds above AdaBN |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let above = |p: &Option<Paired>| p.as_ref().map_or(String::new(), |p| format!("{}/{}", p.positive, p.n));
    for m in methods {
        let (Some(x), Some(c)) = (summary.get(m), paired.get(m)) else {
            continue;
        };
        s += &format!(
            "| {m} | {:.2} | {} | {} | {} | {} | {} | {} |\n",
            100.0 * x.mean,
            x.spread(),
            x.n,
            c.vs_source_only.as_ref().map_or(String::new(), with_ci),
            c.vs_adabn.as_ref().map_or(String::new(), with_ci),
            above(&c.vs_source_only),
            above(&c.vs_adabn),
        );
    }
    if let Some(ab) = summary.get("adabn") {
        s += "\nVerdicts against AdaBN (the baseline that costs no training):\n\n";
        for m in methods
            .iter()
            .filter(|m| !["source-only", "oracle", "adabn"].contains(&m.as_str()))
        {
            if let (Some(x), Some(p)) = (summary.get(m), paired.get(m).and_then(|c| c.vs_adabn.as_ref())) {
                s += &adabn_verdict(m, x, ab, p);
            }
        }
        if let (Some(so), Some(or)) = (summary.get("source-only"), summary.get("oracle")) {
            let best = summary
                .iter()
                .filter(|(k, _)| k.as_str() != "oracle")
                .map(|(_, v)| v.mean)
                .fold(f64::MIN, f64::max);
            let above = |yes: bool| if yes { "above" } else { "NOT above" };
            s += &format!(
                "- AdaBN {} source-only ({:+.2}); the oracle {} every other arm ({:+.2} over the best).\n",
                above(ab.mean > so.mean),
                100.0 * (ab.mean - so.mean),
                above(or.mean > best),
                100.0 * (or.mean - best),
            );
        }
    }
    s
}

/// A chart of one loss term (`term` in `metrics.jsonl`) of every arm's seed-0 run under
/// `out/runs/`, or nothing when no run logged it.
pub fn arm_curves_html(out: &Path, methods: &[String], term: &str, title: &str) -> String {
    use crate::html;
    let series: Vec<html::Series> = methods
        .iter()
        .filter_map(|m| {
            let text =
                seg_labels::fsutil::read_log_lossy(&out.join("runs").join(m).join("seed0/metrics.jsonl")).ok()?;
            let (losses, _) = html::curves(&text);
            let curve = losses.into_iter().find(|s| s.name == term)?;
            Some(html::Series {
                name: m.clone(),
                points: curve.points,
            })
        })
        .collect();
    // Every arm trains the same steps; the curriculum's stage before training logs first, so
    // its curve is aligned on the others' last step and that stage left out.
    let last = |s: &html::Series| s.points.last().map_or(0.0, |p| p.0);
    let Some(end) = series.iter().map(last).min_by(f64::total_cmp) else {
        return String::new();
    };
    let series: Vec<html::Series> = series
        .into_iter()
        .map(|s| {
            let shift = last(&s) - end;
            html::Series {
                points: s
                    .points
                    .iter()
                    .filter(|p| p.0 > shift)
                    .map(|p| (p.0 - shift, p.1))
                    .collect(),
                name: s.name,
            }
        })
        .collect();
    html::line_chart(title, "step", term, &series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_results_table_and_verdicts_say_what_the_seeds_show() {
        let methods: Vec<String> = ["source-only", "adabn", "oracle", "dann"].map(String::from).to_vec();
        let by_method = [
            ("source-only", [0.20, 0.22]),
            ("adabn", [0.25, 0.24]),
            ("oracle", [0.40, 0.41]),
            ("dann", [0.27, 0.23]),
        ];
        let scores = |m: &str| -> Vec<(u64, f64)> {
            by_method
                .iter()
                .filter(|(n, _)| *n == m)
                .flat_map(|(_, v)| v.iter().enumerate().map(|(s, &x)| (s as u64, x)))
                .collect()
        };
        let summary = summarise(&methods, scores);
        let paired = comparisons(&methods, scores);
        assert!(paired["adabn"].vs_adabn.is_none() && paired["source-only"].vs_source_only.is_none());
        let md = results_markdown("mIoU %", &methods, &summary, &paired);
        // dann: +0.02 and -0.01 against AdaBN, +0.07 and +0.01 against source-only.
        assert!(md.contains("| dann | 25.00 | 2.83 | 2 | +4.00 ± "), "{md}");
        assert!(md.contains("| 2/2 | 1/2 |"), "{md}");
        assert!(md.contains("- **dann**: +0.50 points over AdaBN on average (NOT beyond AdaBN's mean + std); above on 1 of 2 seeds; the 95% interval includes 0."), "{md}");
        assert!(
            md.contains("- AdaBN above source-only (+3.50); the oracle above every other arm (+15.50 over the best)."),
            "{md}"
        );
        // One seed: no spread and no interval, said as such.
        let first = |m: &str| scores(m).into_iter().take(1).collect::<Vec<_>>();
        let md = results_markdown(
            "mIoU %",
            &methods,
            &summarise(&methods, first),
            &comparisons(&methods, first),
        );
        assert!(md.contains("| dann | 27.00 | n/a | 1 | +7.00 | +2.00 |"), "{md}");
        assert!(
            md.contains("(above AdaBN's one seed); above on 1 of 1 seeds; one seed gives no 95% interval."),
            "{md}"
        );
    }
}
