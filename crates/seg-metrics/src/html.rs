//! Self-contained HTML reports: a page needs no network and no script to be read. Charts are
//! inline SVG drawn here (line charts of training curves, bar charts of per-class IoU, a heat
//! table of IoU by class and method); pictures are PNGs embedded as `data:` URIs. IoU and mIoU
//! are shown as percentages with `%`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One line of a line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Text made safe for HTML and SVG.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// An `<img>` of a PNG file, embedded; `None` when the file cannot be read or is not a PNG.
pub fn png_img(path: &Path, alt: &str) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return None;
    }
    Some(format!(
        "<img alt=\"{}\" src=\"data:image/png;base64,{}\">",
        escape(alt),
        base64(&bytes)
    ))
}

const PALETTE: [&str; 13] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#393b79", "#ad494a", "#637939",
];

fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// A "nice" tick step for a span.
fn tick_step(span: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f < 1.5 {
        1.0
    } else if f < 3.0 {
        2.0
    } else if f < 7.0 {
        5.0
    } else {
        10.0
    }
}

/// A point the chart can place: finite, and small enough that spans between points stay finite.
fn plottable(&(x, y): &(f64, f64)) -> bool {
    x.is_finite() && y.is_finite() && x.abs() < 1e300 && y.abs() < 1e300
}

/// `[lo, hi]`, or a range around a single value wide enough to change it at any magnitude.
fn widened(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo {
        return (lo, hi);
    }
    let pad = (lo.abs() * 1e-3).max(1.0);
    (lo - pad, hi + pad)
}

/// The ticks `from, from + step, …` up to `to`: computed from their index, so a step too small
/// to move the sum at that magnitude cannot loop, and never more than 100.
fn ticks(from: f64, to: f64, step: f64) -> impl Iterator<Item = f64> {
    let n = ((to - from) / step + 1e-9).floor() + 1.0;
    let n = if n.is_finite() && n >= 1.0 {
        n.min(101.0) as usize
    } else {
        0
    };
    (0..n).map(move |i| from + i as f64 * step)
}

/// A tick's label with as many decimals as its axis's `step` needs, the same for every tick of
/// the axis (`0.0 0.5 1.0 1.5`, `19.50 19.55 19.60`); large or tiny magnitudes in exponent form.
fn fmt_tick(v: f64, step: f64) -> String {
    if v.abs() >= 1e6 || (v != 0.0 && step < 1e-4) {
        // As many digits as the step needs below the value's own, so that ticks of a nearly
        // flat curve (1.520001, 1.520002) stay apart.
        let digits = (v.abs().max(step).log10().floor() - step.log10().floor()).clamp(2.0, 15.0) as usize;
        return format!("{v:.digits$e}");
    }
    // Steps are 1, 2 or 5 times a power of ten: that power's decimals show every tick apart.
    let decimals = (-(step.log10() + 1e-9).floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

/// A line chart with axes, ticks and a legend. Series without finite points are left out; with
/// none left the chart says so in its body.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h) = (640.0, 300.0);
    let (l, r, t, b) = (60.0, 150.0, 30.0, 40.0);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(plottable)
        .collect();
    let mut svg = format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\"><title>{}</title><text x=\"{}\" y=\"18\" class=\"t\">{}</text>",
        escape(title),
        l,
        escape(title)
    );
    if pts.is_empty() {
        svg.push_str("<text x=\"60\" y=\"150\">no data</text></svg>");
        return svg;
    }
    let fold = |f: fn(f64, f64) -> f64, init: f64, sel: fn(&(f64, f64)) -> f64| pts.iter().map(sel).fold(init, f);
    let (mut x0, mut x1) = (fold(f64::min, f64::MAX, |p| p.0), fold(f64::max, f64::MIN, |p| p.0));
    let (mut y0, mut y1) = (fold(f64::min, f64::MAX, |p| p.1), fold(f64::max, f64::MIN, |p| p.1));
    (x0, x1) = widened(x0, x1);
    (y0, y1) = widened(y0, y1);
    let ys = tick_step(y1 - y0);
    y0 = (y0 / ys).floor() * ys;
    y1 = (y1 / ys).ceil() * ys;
    let (pw, ph) = (w - l - r, h - t - b);
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| t + ph - (y - y0) / (y1 - y0) * ph;
    let _ = write!(
        svg,
        "<rect x=\"{l}\" y=\"{t}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>"
    );
    for y in ticks(y0, y1, ys) {
        let py = sy(y);
        let _ = write!(
            svg,
            "<line x1=\"{l}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            l + pw,
            l - 4.0,
            py + 4.0,
            fmt_tick(y, ys)
        );
    }
    let xs = tick_step(x1 - x0);
    for x in ticks((x0 / xs).ceil() * xs, x1, xs) {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            sx(x),
            t + ph + 16.0,
            fmt_tick(x, xs)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text><text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">{}</text>",
        l + pw / 2.0,
        h - 6.0,
        escape(x_label),
        t + ph / 2.0,
        t + ph / 2.0,
        escape(y_label)
    );
    let mut shown = 0;
    for (i, s) in series.iter().enumerate() {
        let p: Vec<&(f64, f64)> = s.points.iter().filter(|p| plottable(p)).collect();
        if p.is_empty() {
            continue;
        }
        let c = color(i);
        if p.len() == 1 {
            let _ = write!(
                svg,
                "<circle class=\"mark\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{c}\"/>",
                sx(p[0].0),
                sy(p[0].1)
            );
        } else {
            let d: Vec<String> = p.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
            let _ = write!(
                svg,
                "<polyline class=\"mark\" fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{}\"/>",
                d.join(" ")
            );
        }
        let ly = t + 12.0 + 16.0 * shown as f64;
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{}\" y=\"{:.1}\">{}</text>",
            l + pw + 10.0,
            ly - 9.0,
            l + pw + 24.0,
            ly,
            escape(&s.name)
        );
        shown += 1;
    }
    svg.push_str("</svg>");
    svg
}

/// Horizontal bars of scores given as fractions, drawn and labelled in percent (`None` = no
/// score, drawn as "n/a").
pub fn bar_chart(title: &str, bars: &[(String, Option<f64>)]) -> String {
    let (l, w, row) = (120.0, 520.0, 16.0);
    let h = 30.0 + row * bars.len() as f64 + 10.0;
    let mut svg = format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{h}\" viewBox=\"0 0 {} {h}\" role=\"img\"><title>{}</title><text x=\"{l}\" y=\"18\" class=\"t\">{}</text>",
        l + w + 60.0,
        l + w + 60.0,
        escape(title),
        escape(title)
    );
    for (i, (name, v)) in bars.iter().enumerate() {
        let y = 30.0 + row * i as f64;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            l - 6.0,
            y + 11.0,
            escape(name)
        );
        match v {
            Some(v) => {
                let pct = (100.0 * v).clamp(0.0, 100.0);
                let _ = write!(
                    svg,
                    "<rect class=\"mark\" x=\"{l}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{}\" fill=\"#1f77b4\"/><text x=\"{:.1}\" y=\"{:.1}\">{pct:.1} %</text>",
                    w * pct / 100.0,
                    row - 3.0,
                    l + w * pct / 100.0 + 4.0,
                    y + 11.0
                );
            }
            None => {
                let _ = write!(svg, "<text x=\"{l}\" y=\"{:.1}\">n/a</text>", y + 11.0);
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A table of IoU (percent) by row and column, each cell shaded by its value.
pub fn heat_table(title: &str, columns: &[String], rows: &[(&str, Vec<Option<f64>>)]) -> String {
    let (l, cw, rh) = (120.0, 64.0, 18.0);
    let w = l + cw * columns.len() as f64 + 10.0;
    let h = 70.0 + rh * rows.len() as f64;
    let mut svg = format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\"><title>{}</title><text x=\"{l}\" y=\"16\" class=\"t\">{}</text>",
        escape(title),
        escape(title)
    );
    for (j, c) in columns.iter().enumerate() {
        let x = l + cw * j as f64 + cw / 2.0;
        let _ = write!(
            svg,
            "<text x=\"{x:.1}\" y=\"62\" transform=\"rotate(-30 {x:.1} 62)\">{}</text>",
            escape(c)
        );
    }
    for (i, (name, vals)) in rows.iter().enumerate() {
        let y = 70.0 + rh * i as f64;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            l - 6.0,
            y + 13.0,
            escape(name)
        );
        for (j, v) in vals.iter().enumerate() {
            let x = l + cw * j as f64;
            match v {
                Some(v) => {
                    let pct = (100.0 * v).clamp(0.0, 100.0);
                    // White (0 %) to blue (100 %).
                    let k = pct / 100.0;
                    let (r, g) = ((255.0 * (1.0 - 0.85 * k)) as u8, (255.0 * (1.0 - 0.55 * k)) as u8);
                    let _ = write!(
                        svg,
                        "<rect class=\"mark\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{}\" height=\"{}\" fill=\"rgb({r},{g},255)\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{pct:.1}</text>",
                        cw - 2.0,
                        rh - 2.0,
                        x + cw / 2.0,
                        y + 13.0
                    );
                }
                None => {
                    let _ = write!(
                        svg,
                        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">n/a</text>",
                        x + cw / 2.0,
                        y + 13.0
                    );
                }
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A whole page around `body` (HTML), with the project's small stylesheet inline.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
body{{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}}\
table{{border-collapse:collapse;margin:8px 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
th:first-child,td:first-child{{text-align:left}}svg.chart{{display:block;margin:12px 0;font-size:11px}}\
svg .t{{font-size:13px;font-weight:bold}}img{{max-width:100%;margin:4px 0}}\
</style></head><body>\n<h1>{}</h1>\n{}\n</body></html>\n",
        escape(title),
        escape(title),
        body
    )
}

/// The curves of a run's `metrics.jsonl`: every loss term over steps, and target val mIoU (in
/// percent) at each evaluation. Lines that are not JSON are skipped.
pub fn curves(metrics_jsonl: &str) -> (Vec<Series>, Series) {
    let mut losses: Vec<Series> = Vec::new();
    let mut miou = Series {
        name: "target val mIoU %".into(),
        points: Vec::new(),
    };
    for line in metrics_jsonl.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        if let Some(m) = v.pointer("/eval/miou").and_then(|m| m.as_f64()) {
            miou.points.push((step, 100.0 * m));
        }
        if let Some(obj) = v.get("losses").and_then(|l| l.as_object()) {
            for (name, val) in obj {
                let Some(val) = val.as_f64() else { continue };
                match losses.iter_mut().find(|s| &s.name == name) {
                    Some(s) => s.points.push((step, val)),
                    None => losses.push(Series {
                        name: name.clone(),
                        points: vec![(step, val)],
                    }),
                }
            }
        }
    }
    (losses, miou)
}

/// The last `eval/step_*` folder of a run.
pub fn last_eval_dir(run_dir: &Path) -> Option<PathBuf> {
    let eval = run_dir.join("eval");
    let mut steps: Vec<PathBuf> = std::fs::read_dir(&eval)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("report.json").is_file())
        .collect();
    steps.sort();
    // A detection run written before evaluations had a folder per step: `eval/` itself.
    steps
        .pop()
        .or_else(|| eval.join("report.json").is_file().then_some(eval))
}

/// Per-class IoU of an evaluation's `report.json`, in train-id order.
pub fn class_iou(report_json: &serde_json::Value) -> Vec<(String, Option<f64>)> {
    report_json
        .get("class_iou")
        .and_then(|c| c.as_object())
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_f64())).collect())
        .unwrap_or_default()
}

/// The samples a run left out before it started, from its `skipped.json` (role → list of
/// `{name, image, reason}`): a count per role and the first few, named with their reasons.
fn left_out_section(run_dir: &Path) -> String {
    const SHOWN: usize = 5;
    let Some(roles) = std::fs::read_to_string(run_dir.join("skipped.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.as_object().cloned())
    else {
        return String::new();
    };
    let mut items = String::new();
    for (role, list) in &roles {
        let Some(list) = list.as_array().filter(|l| !l.is_empty()) else {
            continue;
        };
        let _ = write!(items, "<li>{}: {} sample(s)<ul>", escape(role), list.len());
        for e in list.iter().take(SHOWN) {
            let field = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or_default();
            let _ = write!(items, "<li>{}: {}</li>", escape(field("name")), escape(field("reason")));
        }
        if list.len() > SHOWN {
            let _ = write!(items, "<li>and {} more (skipped.json)</li>", list.len() - SHOWN);
        }
        items.push_str("</ul></li>");
    }
    if items.is_empty() {
        return String::new();
    }
    format!("<h2>Left out before the run</h2><ul>{items}</ul>")
}

/// The page of one training run: final mIoU, training curves, per-class IoU and the last
/// evaluation's prediction sheet.
pub fn run_page(run_dir: &Path, title: &str) -> String {
    let mut body = String::new();
    let metrics = seg_labels::fsutil::read_log_lossy(&run_dir.join("metrics.jsonl")).unwrap_or_default();
    let (losses, miou) = curves(&metrics);
    let last = last_eval_dir(run_dir);
    let report = last
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("report.json")).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    if let Some(r) = &report {
        if let Some(m) = r.get("miou").and_then(|m| m.as_f64()) {
            // As report.md says it: the classes averaged and the images evaluated.
            let classes = r.get("class_iou").and_then(|c| c.as_object()).map_or(0, |c| c.len());
            let images = r.get("images").and_then(|n| n.as_u64()).unwrap_or(0);
            let _ = write!(
                body,
                "<p>Target val mIoU (last checkpoint, {classes} classes, {images} images): <b>{:.2} %</b></p>",
                100.0 * m
            );
        }
        // The official evaluator's other scores, where the report has them.
        let pct = |key: &str| {
            r.get(key)
                .and_then(|v| v.as_f64())
                .map(|v| format!("{:.2} %", 100.0 * v))
        };
        let others: Vec<String> = [
            ("categories mIoU", "mean_category_iou"),
            ("iIoU over classes", "mean_iiou"),
            ("iIoU over categories", "mean_category_iiou"),
        ]
        .iter()
        .filter_map(|(what, key)| pct(key).map(|v| format!("{what} {v}")))
        .collect();
        if !others.is_empty() {
            let _ = write!(body, "<p>{}</p>", escape(&others.join("; ")));
        }
        let warnings: Vec<&str> = r
            .get("warnings")
            .and_then(|w| w.as_array())
            .map(|w| w.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        if !warnings.is_empty() {
            body.push_str("<h2>Warnings of the evaluation</h2><ul>");
            for w in warnings {
                let _ = write!(body, "<li>{}</li>", escape(w));
            }
            body.push_str("</ul>");
        }
    }
    body.push_str(&left_out_section(run_dir));
    // A run that did not train (AdaBN applied to a finished run) has no curves to draw.
    if !losses.is_empty() {
        body.push_str(&line_chart("Training losses", "step", "loss", &losses));
    }
    if !miou.points.is_empty() {
        body.push_str(&line_chart(
            "Target val mIoU",
            "step",
            "mIoU %",
            std::slice::from_ref(&miou),
        ));
    }
    if let Some(r) = &report {
        body.push_str(&bar_chart("Per-class IoU (last evaluation)", &class_iou(r)));
    }
    if let Some(sheet) = last
        .as_ref()
        .and_then(|d| png_img(&d.join("pictures/sheet.png"), "predictions"))
    {
        body.push_str("<h2>Predictions</h2>");
        body.push_str(&sheet);
    }
    page(title, &body)
}

/// Writes [`run_page`] to `run_dir/report.html` (atomically).
pub fn write_run_page(run_dir: &Path, title: &str) -> std::io::Result<PathBuf> {
    let path = run_dir.join("report.html");
    seg_labels::fsutil::write_atomic(&path, run_page(run_dir, title).as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn curves_read_losses_and_evaluations_and_charts_draw_them() {
        let jsonl = "{\"step\":0,\"left_out\":{}}\n{\"step\":10,\"losses\":{\"seg\":1.5,\"adv\":0.7}}\nnot json\n\
                     {\"step\":20,\"losses\":{\"seg\":1.0,\"adv\":0.6}}\n{\"step\":20,\"eval\":{\"miou\":0.25}}\n";
        let (losses, miou) = curves(jsonl);
        assert_eq!(losses.len(), 2);
        let seg = losses.iter().find(|s| s.name == "seg").unwrap();
        assert_eq!(seg.points, vec![(10.0, 1.5), (20.0, 1.0)]);
        assert_eq!(miou.points, vec![(20.0, 25.0)]);
        let svg = line_chart("t", "x", "y", &losses);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(line_chart("t", "x", "y", &[]).contains("no data"));
        let bars = bar_chart("b", &[("road".into(), Some(0.5)), ("rider".into(), None)]);
        assert!(bars.contains("50.0 %") && bars.contains("n/a"));
        assert!(escape("<a & 'b'>").contains("&lt;a &amp; &#39;b&#39;&gt;"));
    }

    #[test]
    fn the_run_page_names_what_the_run_left_out_and_the_official_other_scores() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let entry = |i: usize| format!("{{\"name\": \"{i:05}\", \"image\": \"x.png\", \"reason\": \"a <bad> label\"}}");
        let source: Vec<String> = (0..7).map(entry).collect();
        std::fs::write(
            run.join("skipped.json"),
            format!("{{\"source\": [{}], \"val\": []}}", source.join(",")),
        )
        .unwrap();
        let eval = run.join("eval/step_000010");
        std::fs::create_dir_all(&eval).unwrap();
        std::fs::write(
            eval.join("report.json"),
            r#"{"miou": 0.5, "class_iou": {"road": 0.5}, "images": 3, "mean_category_iou": 0.75, "mean_iiou": null}"#,
        )
        .unwrap();
        std::fs::write(
            run.join("metrics.jsonl"),
            "{\"step\":10,\"eval\":{\"miou\":0.5,\"dir\":\"eval/step_000010\"}}\n",
        )
        .unwrap();
        let page = run_page(run, "t");
        assert!(
            page.contains("<h2>Left out before the run</h2><ul><li>source: 7 sample(s)"),
            "{page}"
        );
        assert!(
            page.contains("<li>00000: a &lt;bad&gt; label</li>") && page.contains("and 2 more"),
            "{page}"
        );
        assert!(!page.contains("val: "), "an empty role is not listed");
        assert!(
            page.contains("categories mIoU 75.00 %") && !page.contains("iIoU over classes"),
            "{page}"
        );
    }

    #[test]
    fn charts_of_extreme_values_end_with_a_few_ticks() {
        // A loss of 1e20 on every step made `y += step` stand still: the chart never ended.
        for points in [
            vec![(1.0, 1e20), (2.0, 1e20)],
            vec![(1.0, 6.46e15), (2.0, 6.46e15)],
            vec![(1.0, -1e299), (2.0, 1e299)],
            vec![(1e18, 0.5), (1e18, 0.5)],
            vec![(1.0, f64::MAX), (2.0, 1.0)],
            vec![(1.0, 0.0), (2.0, 1e-300)],
        ] {
            let svg = line_chart(
                "t",
                "x",
                "y",
                &[Series {
                    name: "seg".into(),
                    points,
                }],
            );
            assert!(svg.len() < 20_000, "{} bytes", svg.len());
            assert!(svg.contains("class=\"mark\"") || svg.contains("no data"));
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }

    #[test]
    fn tick_labels_of_an_axis_are_distinct_and_share_their_decimals() {
        let labels = |lo: f64, hi: f64| {
            let step = tick_step(hi - lo);
            let from = (lo / step).floor() * step;
            ticks(from, hi, step).map(|v| fmt_tick(v, step)).collect::<Vec<_>>()
        };
        assert_eq!(
            labels(0.0, 1.4),
            ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0", "1.2", "1.4"]
        );
        let narrow = labels(19.52, 19.71);
        assert_eq!(narrow, ["19.50", "19.55", "19.60", "19.65", "19.70"]);
        assert_eq!(labels(0.0, 1200.0), ["0", "200", "400", "600", "800", "1000", "1200"]);
        // A nearly flat loss: ticks a millionth apart are told apart.
        let flat = labels(1.520001, 1.520004);
        let distinct: std::collections::BTreeSet<&String> = flat.iter().collect();
        assert_eq!(distinct.len(), flat.len(), "{flat:?}");
    }
}
