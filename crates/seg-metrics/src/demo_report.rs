//! The segmentation demo's comparison report: each arm's result as the demo keeps it, and the
//! report's markdown and HTML (the results table with its paired columns, per-class IoU, the
//! official evaluator's other means, the arms' evaluation warnings, the training curves and the
//! predictions picture).

use std::collections::BTreeMap;
use std::path::Path;

use crate::compare::{arm_curves_html, results_markdown, with_ci, Comparison};
use crate::html;
use crate::seeds::Summary;

/// One finished run of the demo (an arm of one seed) and its last evaluation's scores.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ArmResult {
    pub method: String,
    pub seed: u64,
    pub miou: Option<f64>,
    pub class_iou: serde_json::Value,
    /// The official evaluator's other means (category IoU, iIoU, category iIoU) of the run's
    /// last evaluation; `None` where it could not score them.
    #[serde(default)]
    pub mean_category_iou: Option<f64>,
    #[serde(default)]
    pub mean_iiou: Option<f64>,
    #[serde(default)]
    pub mean_category_iiou: Option<f64>,
    /// The warnings of the run's last evaluation (a damaged or incomplete val split says so
    /// here, and the demo's report repeats it).
    #[serde(default)]
    pub warnings: Vec<String>,
    pub seconds: f64,
    /// The benchmark instance the run trained on.
    #[serde(default)]
    pub data_seed: u64,
    /// Digest of the checkpoint the run started from (`model.init_from`).
    #[serde(default)]
    pub init_digest: Option<String>,
    /// Reused from an earlier invocation of the demo in the same folder (`seconds` is then
    /// what its training took in that one).
    #[serde(default)]
    pub reused: bool,
}

impl ArmResult {
    /// Takes per-class IoU, the other means and the warnings from `report`, the run's last
    /// `report.json` (a result kept by an older version lacks some; they are read again).
    pub fn with_report(self, report: &serde_json::Value) -> Self {
        let mean = |k: &str| report.get(k).and_then(|v| v.as_f64());
        Self {
            class_iou: report.get("class_iou").cloned().unwrap_or_default(),
            mean_category_iou: mean("mean_category_iou"),
            mean_iiou: mean("mean_iiou"),
            mean_category_iiou: mean("mean_category_iiou"),
            warnings: report
                .get("warnings")
                .and_then(|w| w.as_array())
                .map(|w| w.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                .unwrap_or_default(),
            ..self
        }
    }
}

/// `(seed, mIoU)` of one method's finished runs.
pub fn scores(runs: &[ArmResult], method: &str) -> Vec<(u64, f64)> {
    runs.iter()
        .filter(|r| r.method == method)
        .filter_map(|r| r.miou.map(|m| (r.seed, m)))
        .collect()
}

fn mean_of(v: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = v.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Per class (train-id order), each method's IoU averaged over its seeds (`None` where no run
/// scored the class); the markdown table and the HTML chart show the same numbers.
pub fn class_means(runs: &[ArmResult], methods: &[String]) -> Vec<(&'static str, Vec<Option<f64>>)> {
    seg_labels::TRAIN_CLASS_NAMES
        .iter()
        .map(|name| {
            let vals = methods
                .iter()
                .map(|m| {
                    mean_of(
                        runs.iter()
                            .filter(|r| &r.method == m)
                            .filter_map(|r| r.class_iou.get(*name).and_then(|v| v.as_f64())),
                    )
                })
                .collect();
            (*name, vals)
        })
        .collect()
}

/// The official evaluator's other means, per method over its seeds: `(category mIoU, iIoU,
/// category iIoU, seeds that scored iIoU)`.
type OtherMeans = (Option<f64>, Option<f64>, Option<f64>, usize);

fn other_means(runs: &[ArmResult], m: &str) -> OtherMeans {
    let mine: Vec<&ArmResult> = runs.iter().filter(|r| r.method == m).collect();
    let of = |f: fn(&ArmResult) -> Option<f64>| mean_of(mine.iter().filter_map(|r| f(r)));
    (
        of(|r| r.mean_category_iou),
        of(|r| r.mean_iiou),
        of(|r| r.mean_category_iiou),
        mine.iter().filter(|r| r.mean_iiou.is_some()).count(),
    )
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{:.2}", 100.0 * v))
}

/// Every distinct warning of the arms' last evaluations, in first-seen order, with the runs
/// (`method seedN`) that gave it.
pub fn warnings(runs: &[ArmResult]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for r in runs {
        for w in &r.warnings {
            let run = format!("{} seed{}", r.method, r.seed);
            match out.iter_mut().find(|(x, _)| x == w) {
                Some((_, who)) => who.push(run),
                None => out.push((w.clone(), vec![run])),
            }
        }
    }
    out
}

/// `a, b and 3 more` for a warning's runs.
fn who(runs: &[String]) -> String {
    match runs.len() {
        0..=3 => runs.join(", "),
        n => format!("{} and {} more", runs[..2].join(", "), n - 2),
    }
}

/// The demo's `report.md`; `meta` says what was run.
pub fn markdown(
    runs: &[ArmResult],
    summary: &BTreeMap<String, Summary>,
    paired: &BTreeMap<String, Comparison>,
    methods: &[String],
    meta: &str,
) -> String {
    let mut s = String::from("# seg-adapt demo: synthetic (GTA5-format) → real (Cityscapes-format)\n\n");
    s.push_str(meta);
    s.push_str(
        "\n\nTarget val mIoU (19 classes, official evaluation rules, last checkpoint), mean ± sample std over \
         seeds. The \"vs\" columns are paired: the mean over seeds of each seed's difference (arms of one seed \
         start from the same model and see the same batches), ± the half-width of its 95% confidence interval \
         (t distribution); the last two count the seeds on which the method beat source-only and AdaBN.\n\n",
    );
    s.push_str(&results_markdown("mIoU %", methods, summary, paired));
    let warned = warnings(runs);
    if !warned.is_empty() {
        s.push_str(
            "\n## Evaluation warnings\n\nThe arms' last evaluations warned (each run's `report.md` says more):\n\n",
        );
        for (w, runs) in &warned {
            s.push_str(&format!("- {w} ({})\n", who(runs)));
        }
    }
    s.push_str("\n## Per-class IoU % (mean over seeds)\n\n| class |");
    for m in methods {
        s.push_str(&format!(" {m} |"));
    }
    s.push_str("\n|---|");
    for _ in methods {
        s.push_str("---:|");
    }
    s.push('\n');
    for (name, vals) in class_means(runs, methods) {
        s.push_str(&format!("| {name} |"));
        for v in vals {
            s.push_str(&format!(
                " {} |",
                v.map_or("n/a".into(), |v| format!("{:.1}", 100.0 * v))
            ));
        }
        s.push('\n');
    }
    s.push_str(
        "\n## The official evaluator's other scores (mean over seeds)\n\nCategory mIoU over the 7 categories; iIoU, \
         the instance-weighted IoU of the 8 classes with instances, per class and per category (n/a where \
         the val split has no instance maps).\n\n| method | category mIoU % | iIoU % | category iIoU % |\n|---|---:|---:|---:|\n",
    );
    for m in methods {
        let (cat, iiou, cat_iiou, _) = other_means(runs, m);
        s.push_str(&format!("| {m} | {} | {} | {} |\n", pct(cat), pct(iiou), pct(cat_iiou)));
    }
    s.push_str("\n![Predictions of every method on the same target val images](comparison.png)\n\n");
    s.push_str("Columns of `comparison.png`: image, ground truth, then one column per method (seed 0) in the order of the table.\n");
    s
}

/// The demo's self-contained `report.html` in `out`: the results table with the paired columns
/// and per-seed differences, the evaluation warnings, per-class IoU of every method as a chart,
/// the other official means, the seg term of every arm over its steps (seed 0), the predictions
/// picture, and links to each run's own page.
pub fn html_page(
    out: &Path,
    runs: &[ArmResult],
    summary: &BTreeMap<String, Summary>,
    paired: &BTreeMap<String, Comparison>,
    methods: &[String],
    meta: &str,
) -> String {
    let mut b = format!("<p>{}</p>\n", html::escape(meta));
    b.push_str(
        "<h2>Results</h2><p>Target val mIoU (19 classes, official rules, last checkpoint), mean ± sample std over \
         seeds; paired columns: mean per-seed difference ± half-width of its 95% interval (t distribution), in points.</p>\
         <table><tr><th>method</th><th>mIoU %</th><th>±</th><th>seeds</th><th>vs source-only</th><th>vs AdaBN</th>\
         <th>seeds above AdaBN</th><th>per seed vs AdaBN</th></tr>",
    );
    for m in methods {
        let (Some(x), Some(c)) = (summary.get(m), paired.get(m)) else {
            continue;
        };
        let per_seed = c.vs_adabn.as_ref().map_or(String::new(), |p| {
            p.per_seed
                .iter()
                .map(|(s, d)| format!("{s}: {:+.2}", 100.0 * d))
                .collect::<Vec<_>>()
                .join(", ")
        });
        b.push_str(&format!(
            "<tr><td><a href=\"runs/{m}/seed0/report.html\">{}</a></td><td>{:.2} %</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html::escape(m),
            100.0 * x.mean,
            x.spread(),
            x.n,
            c.vs_source_only.as_ref().map_or(String::new(), with_ci),
            c.vs_adabn.as_ref().map_or(String::new(), with_ci),
            c.vs_adabn.as_ref().map_or(String::new(), |p| format!("{}/{}", p.positive, p.n)),
            per_seed,
        ));
    }
    b.push_str("</table>");
    let warned = warnings(runs);
    if !warned.is_empty() {
        b.push_str("<h2>Evaluation warnings</h2><ul>");
        for (w, runs) in &warned {
            b.push_str(&format!("<li>{} ({})</li>", html::escape(w), html::escape(&who(runs))));
        }
        b.push_str("</ul>");
    }
    let rows = class_means(runs, methods);
    b.push_str(&html::heat_table("Per-class IoU % (mean over seeds)", methods, &rows));
    b.push_str(
        "<h2>The official evaluator's other scores</h2><p>Mean over seeds: category mIoU over the 7 categories; \
         iIoU, instance-weighted, per class (the 8 with instances) and per category.</p>\
         <table><tr><th>method</th><th>category mIoU %</th><th>iIoU %</th><th>category iIoU %</th></tr>",
    );
    for m in methods {
        let (cat, iiou, cat_iiou, _) = other_means(runs, m);
        let cell = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{:.2} %", 100.0 * v));
        b.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html::escape(m),
            cell(cat),
            cell(iiou),
            cell(cat_iiou)
        ));
    }
    b.push_str("</table>");
    b.push_str(&arm_curves_html(
        out,
        methods,
        "seg",
        "The seg term of each arm (seed 0) over its training steps (the curriculum's stage before training left out): source cross-entropy; SAN's on real features, × (1 − generated_task_share)",
    ));
    if let Some(img) = html::png_img(&out.join("comparison.png"), "predictions of every method") {
        b.push_str("<h2>Predictions (seed 0)</h2><p>Columns: image, ground truth, then one per method in the table's order.</p>");
        b.push_str(&img);
    }
    html::page("seg-adapt demo: synthetic (GTA5-format) → real (Cityscapes-format)", &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(method: &str, seed: u64, miou: f64, report: serde_json::Value) -> ArmResult {
        ArmResult {
            method: method.into(),
            seed,
            miou: Some(miou),
            class_iou: serde_json::Value::Null,
            mean_category_iou: None,
            mean_iiou: None,
            mean_category_iiou: None,
            warnings: Vec::new(),
            seconds: 1.0,
            data_seed: 0,
            init_digest: None,
            reused: false,
        }
        .with_report(&report)
    }

    #[test]
    fn the_report_carries_the_other_means_and_every_warning_once() {
        let missing = "2 val images have no prediction";
        let runs = vec![
            arm(
                "source-only",
                0,
                0.2,
                serde_json::json!({"class_iou": {"road": 0.5}, "mean_category_iou": 0.4, "mean_iiou": 0.1,
                    "mean_category_iiou": 0.2, "warnings": [missing]}),
            ),
            arm(
                "source-only",
                1,
                0.3,
                serde_json::json!({"class_iou": {"road": 0.7}, "mean_category_iou": 0.6, "mean_iiou": null,
                    "warnings": [missing, "another"]}),
            ),
            arm("adabn", 0, 0.25, serde_json::json!({})),
        ];
        assert_eq!(runs[0].mean_iiou, Some(0.1));
        let w = warnings(&runs);
        assert_eq!(
            w,
            vec![
                (
                    missing.to_string(),
                    vec!["source-only seed0".to_string(), "source-only seed1".to_string()]
                ),
                ("another".to_string(), vec!["source-only seed1".to_string()]),
            ]
        );
        let methods = vec!["source-only".to_string(), "adabn".to_string()];
        let f = |m: &str| scores(&runs, m);
        let (summary, paired) = (
            crate::compare::summarise(&methods, f),
            crate::compare::comparisons(&methods, f),
        );
        let md = markdown(&runs, &summary, &paired, &methods, "meta");
        // Means over the seeds that scored each: category 50 %, iIoU 10 % (one seed), 20 %.
        assert!(md.contains("| source-only | 50.00 | 10.00 | 20.00 |"), "{md}");
        assert!(md.contains("| adabn | n/a | n/a | n/a |"), "{md}");
        assert!(
            md.contains(&format!("- {missing} (source-only seed0, source-only seed1)")),
            "{md}"
        );
        assert!(md.contains("| road | 60.0 | n/a |"), "{md}");
        let page = html_page(Path::new("/nonexistent"), &runs, &summary, &paired, &methods, "meta");
        assert!(
            page.contains("<td>50.00 %</td><td>10.00 %</td><td>20.00 %</td>"),
            "{page}"
        );
        assert!(page.contains("<h2>Evaluation warnings</h2>"), "{page}");
        assert_eq!(
            who(&["a".into(), "b".into(), "c".into(), "d".into()]),
            "a, b and 2 more"
        );
    }
}
