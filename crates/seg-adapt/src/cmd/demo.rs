//! `seg-adapt demo`: the README's main command. Generates the embedded benchmark if absent,
//! trains source-only, AdaBN, oracle and every adaptation method with identical data, steps and
//! seeds, evaluates each on the target val split, and writes `report.md`, `report.json` and a
//! picture comparing the methods' predictions on the same target images. Finished runs are
//! reused, so an interrupted demo continues where it stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use seg_data::toy::{self, Preset};
use seg_data::{Augment, DatasetName, DatasetOptions};
use seg_fcn::ModelName;
use seg_heads::MethodConfig;
use seg_labels::png_io;

use crate::config::{DataConfig, EvalConfig, ModelConfig, RunConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output folder: data/, runs/, report.md, report.json, comparison.png.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// The small benchmark and short runs (about two minutes, for tests).
    #[arg(long)]
    pub quick: bool,
    /// Seeds per method.
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Training steps per run (default: 120, or 25 with --quick).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Comma-separated subset of methods (default: all).
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<String>>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Every method the demo compares, in table order.
pub const METHODS: [&str; 7] = [
    "source-only",
    "adabn",
    "oracle",
    "dann",
    "fcn-wild",
    "cross-city",
    "san",
];

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RunResult {
    method: String,
    seed: u64,
    miou: Option<f64>,
    class_iou: serde_json::Value,
    seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Summary {
    mean: f64,
    std: f64,
    n: usize,
}

/// The demo's run configuration for one method and seed.
pub fn demo_config(data: &Path, preset: Preset, method: &str, seed: u64, steps: usize) -> anyhow::Result<RunConfig> {
    let (gta, _, cs) = toy::paths(data);
    let s = preset.sizes();
    // Train at 64x128 whatever the stored size; evaluation upsamples to full resolution.
    let scale = 64.0 / s.height as f32;
    let mut method: MethodConfig = method.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    if let MethodConfig::San(c) = &mut method {
        // The generator runs at conv1's full resolution: on a 2-core CPU the demo uses one
        // residual block of width 8 (paper: 16 blocks of width 64).
        c.width = 8;
        c.blocks = 1;
    }
    Ok(RunConfig {
        data: DataConfig::new(DatasetName::Gta5, gta, DatasetName::Cityscapes, cs),
        model: ModelConfig {
            name: ModelName::Small,
            init_weights: None,
        },
        method,
        augment: Augment {
            base_scale: scale,
            crop: Some([128, 64]),
            hflip: true,
            ..Default::default()
        },
        trainer: seg_train::TrainerConfig {
            steps,
            batch_size: 8,
            lr: 0.05,
            seed,
            log_every: 10,
            ..Default::default()
        },
        eval: EvalConfig {
            pictures: 3,
            adabn_batches: 30,
            ..Default::default()
        },
    })
}

fn final_report(run_dir: &Path) -> anyhow::Result<serde_json::Value> {
    let eval = run_dir.join("eval");
    let mut steps: Vec<PathBuf> = std::fs::read_dir(&eval)
        .with_context(|| format!("{}: no evaluation", eval.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    steps.sort();
    let last = steps
        .last()
        .with_context(|| format!("{}: no evaluation", eval.display()))?;
    let text = std::fs::read_to_string(last.join("report.json"))?;
    Ok(serde_json::from_str(&text)?)
}

fn run_one(cfg: &RunConfig, method: &str, out: &Path, device: &candle_core::Device) -> anyhow::Result<RunResult> {
    let seed = cfg.trainer.seed;
    let dir = out.join("runs").join(method).join(format!("seed{seed}"));
    let done = dir.join("result.json");
    if let Ok(text) = std::fs::read_to_string(&done) {
        if let Ok(r) = serde_json::from_str::<RunResult>(&text) {
            if r.miou.is_some() && RunConfig::load(&dir.join("config.toml")).ok().as_ref() == Some(cfg) {
                return Ok(r);
            }
        }
    }
    let start = std::time::Instant::now();
    let outcome = if method == "adabn" {
        let from = out.join("runs").join("source-only").join(format!("seed{seed}"));
        std::fs::create_dir_all(&dir)?;
        crate::run::adabn_from(cfg, &from, &dir, device)?
    } else {
        crate::run::train(cfg, &dir, device, false, true)?
    };
    let report = final_report(&dir)?;
    let r = RunResult {
        method: method.to_string(),
        seed,
        miou: outcome.final_miou,
        class_iou: report.get("class_iou").cloned().unwrap_or_default(),
        seconds: start.elapsed().as_secs_f64(),
    };
    seg_labels::fsutil::write_atomic(&done, serde_json::to_string_pretty(&r)?.as_bytes())?;
    Ok(r)
}

fn summarise(runs: &[RunResult], methods: &[String]) -> BTreeMap<String, Summary> {
    methods
        .iter()
        .filter_map(|m| {
            let v: Vec<f64> = runs.iter().filter(|r| &r.method == m).filter_map(|r| r.miou).collect();
            if v.is_empty() {
                return None;
            }
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = if v.len() > 1 {
                v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64
            } else {
                0.0
            };
            Some((
                m.clone(),
                Summary {
                    mean,
                    std: var.sqrt(),
                    n: v.len(),
                },
            ))
        })
        .collect()
}

fn markdown(runs: &[RunResult], summary: &BTreeMap<String, Summary>, methods: &[String], meta: &str) -> String {
    let mut s = String::from("# seg-adapt demo: synthetic (GTA5-format) → real (Cityscapes-format)\n\n");
    s.push_str(meta);
    s.push_str("\n\nTarget val mIoU (19 classes, official evaluation rules, last checkpoint), mean ± sample std over seeds:\n\n");
    s.push_str("| method | mIoU % | ± | seeds | vs source-only | vs AdaBN |\n|---|---:|---:|---:|---:|---:|\n");
    let so = summary.get("source-only");
    let ab = summary.get("adabn");
    for m in methods {
        let Some(x) = summary.get(m) else { continue };
        let diff = |b: Option<&Summary>, skip: &[&str]| match b {
            Some(b) if !skip.contains(&m.as_str()) => format!("{:+.2}", 100.0 * (x.mean - b.mean)),
            _ => String::new(),
        };
        s.push_str(&format!(
            "| {m} | {:.2} | {:.2} | {} | {} | {} |\n",
            100.0 * x.mean,
            100.0 * x.std,
            x.n,
            diff(so, &["source-only"]),
            diff(ab, &["source-only", "adabn"])
        ));
    }
    if let Some(so) = so {
        s.push_str("\nVerdicts (a gain counts when it exceeds the larger of the two methods' seed spreads):\n\n");
        for m in methods
            .iter()
            .filter(|m| !["source-only", "oracle", "adabn"].contains(&m.as_str()))
        {
            let Some(x) = summary.get(m) else { continue };
            let spread = x.std.max(so.std);
            let gain = x.mean - so.mean;
            let vs_ab = ab.map(|a| x.mean - a.mean);
            s.push_str(&format!(
                "- **{m}**: {:+.2} points over source-only ({}){}\n",
                100.0 * gain,
                if gain > spread {
                    "clearly above the seed spread"
                } else {
                    "NOT above the seed spread"
                },
                vs_ab.map_or(String::new(), |d| format!(
                    "; {:+.2} vs AdaBN ({})",
                    100.0 * d,
                    if d > 0.0 { "above" } else { "below" }
                ))
            ));
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
    for name in seg_labels::TRAIN_CLASS_NAMES {
        s.push_str(&format!("| {name} |"));
        for m in methods {
            let v: Vec<f64> = runs
                .iter()
                .filter(|r| &r.method == m)
                .filter_map(|r| r.class_iou.get(name).and_then(|v| v.as_f64()))
                .collect();
            if v.is_empty() {
                s.push_str(" n/a |");
            } else {
                s.push_str(&format!(" {:.1} |", 100.0 * v.iter().sum::<f64>() / v.len() as f64));
            }
        }
        s.push('\n');
    }
    s.push_str("\n![Predictions of every method on the same target val images](comparison.png)\n\n");
    s.push_str("Columns of `comparison.png`: image, ground truth, then one column per method (seed 0) in the order of the table.\n");
    s
}

/// Image | ground truth | each method's prediction (first seed), for the first val images.
fn comparison(
    out: &Path,
    cfg: &RunConfig,
    methods: &[String],
    seed: u64,
    device: &candle_core::Device,
) -> anyhow::Result<()> {
    let opts = DatasetOptions {
        require_labels: true,
        ..Default::default()
    };
    let val = seg_data::open_dataset(DatasetName::Cityscapes, &cfg.data.target_root, "val", opts)?;
    let samples: Vec<_> = (0..val.len().min(4)).map(|i| val.get(i)).collect::<Result<_, _>>()?;
    let mut rows: Vec<Vec<png_io::RgbImage>> = samples
        .iter()
        .map(|s| {
            let (w, h) = (s.image.width, s.image.height);
            vec![
                s.image.clone(),
                seg_metrics::pictures::colorize(w, h, s.label.as_deref().unwrap_or(&[])),
            ]
        })
        .collect();
    for m in methods {
        let dir = out.join("runs").join(m).join(format!("seed{seed}"));
        let trained = crate::run::load_trained(&dir, device)?;
        let setup = crate::run::eval_setup(&trained.cfg, device);
        for (row, s) in rows.iter_mut().zip(&samples) {
            let pred = seg_train::predict_train_ids(trained.backbone.as_ref(), &[&s.image], &setup)?.remove(0);
            row.push(seg_metrics::pictures::colorize(s.image.width, s.image.height, &pred));
        }
    }
    let rows: Vec<Vec<_>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|t| seg_metrics::pictures::resize_to_width(t, 192))
                .collect()
        })
        .collect();
    png_io::write_rgb(&out.join("comparison.png"), &seg_metrics::pictures::grid(&rows))?;
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let device = crate::run::device(&args.device)?;
    let preset = if args.quick { Preset::Quick } else { Preset::Default };
    let seeds = args.seeds.unwrap_or(if args.quick { 2 } else { 3 });
    let steps = args.steps.unwrap_or(if args.quick { 25 } else { 120 });
    let methods: Vec<String> = match &args.methods {
        Some(list) => {
            for m in list {
                m.parse::<MethodConfig>().map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            let mut v: Vec<String> = list.clone();
            if v.iter().any(|m| m == "adabn") && !v.iter().any(|m| m == "source-only") {
                v.insert(0, "source-only".into());
            }
            v
        }
        None => METHODS.iter().map(|s| s.to_string()).collect(),
    };
    let data = args.out.join("data");
    match toy::read_manifest(&data) {
        Some(m) if m.preset == preset && m.generator_version == toy::GENERATOR_VERSION => {}
        _ => {
            eprintln!("generating the embedded benchmark ({preset:?}) in {}", data.display());
            toy::generate(&data, 0, preset)?;
        }
    }
    let mut runs = Vec::new();
    for seed in 0..seeds as u64 {
        for m in &methods {
            let cfg = demo_config(&data, preset, m, seed, steps)?;
            eprintln!("[{:>5.0}s] {m} seed {seed}", start.elapsed().as_secs_f64());
            let r = run_one(&cfg, m, &args.out, &device).with_context(|| format!("demo run {m} seed {seed}"))?;
            eprintln!(
                "         mIoU {}",
                r.miou.map_or("n/a".into(), |v| format!("{:.2}", 100.0 * v))
            );
            runs.push(r);
        }
    }
    let summary = summarise(&runs, &methods);
    let cfg0 = demo_config(&data, preset, "source-only", 0, steps)?;
    comparison(&args.out, &cfg0, &methods, 0, &device)?;
    let s = preset.sizes();
    let meta = format!(
        "Embedded benchmark `{preset:?}` ({} source images, {} target train, {} target val, stored at {}x{}); small BN FCN trained at 64x128, {steps} steps, batch 8 (+8 target), seeds 0..{seeds}. Total time {:.0}s.",
        s.gta5,
        s.target_train,
        s.target_val,
        s.width,
        s.height,
        start.elapsed().as_secs_f64()
    );
    let md = markdown(&runs, &summary, &methods, &meta);
    let json = serde_json::json!({"runs": runs, "summary": summary, "steps": steps, "seeds": seeds, "preset": preset});
    seg_labels::fsutil::write_atomic(
        &args.out.join("report.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    seg_labels::fsutil::write_atomic(&args.out.join("report.md"), md.as_bytes())?;
    println!("{md}");
    println!(
        "wrote {}, {} and {}",
        args.out.join("report.md").display(),
        args.out.join("report.json").display(),
        args.out.join("comparison.png").display()
    );
    Ok(())
}
