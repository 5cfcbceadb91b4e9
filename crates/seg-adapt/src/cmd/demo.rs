//! `seg-adapt demo`: the README's main command. Generates the embedded benchmark if absent,
//! then, per seed, follows the field's protocol of adapting a trained source model: one
//! source-only pretraining run shared by every arm, then each arm continues from it for the same
//! number of steps (source-only with the task loss alone, AdaBN taken from that, each
//! adaptation method with its own step); the oracle is the same arm on target train labels.
//! Every run is evaluated on the target val split; `report.md`, `report.json` and a
//! picture comparing the methods' predictions are written, with each method's paired per-seed
//! difference to AdaBN and to source-only (arms of one seed share the initial model and the
//! batches). Finished runs are reused (a killed run that had written a checkpoint resumes from
//! it), so an interrupted demo continues where it stopped (`demo_run::Stamp`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use seg_data::toy::{self, Preset};
use seg_data::{Augment, DatasetName, DatasetOptions};
use seg_fcn::ModelName;
use seg_labels::png_io;
use seg_methods::MethodConfig;

use super::demo_run::{Ledger, Stamp};
use crate::config::{DataConfig, EvalConfig, ModelConfig, RunConfig};
use seg_metrics::compare::{comparisons, summarise};
use seg_metrics::demo_report::{self, scores, ArmResult as RunResult};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output folder: data/, runs/ (one run folder per arm and seed, each with the demo's
    /// started.txt and, once finished, result.json, by which a demo run again reuses it),
    /// report.html, report.md, report.json (and comparison.png for segmentation), demo-task.txt
    /// (the task it holds); default: runs/demo, or runs/demo-detection with --task detection. A
    /// folder holding the other task's demo is refused.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The small benchmark and short runs (a few minutes, for tests).
    #[arg(long)]
    pub quick: bool,
    /// Seeds per method (default: 3, or 2 with --quick; detection: 5, or 2).
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Source-only pretraining steps shared by every arm of a seed (default: 240, or 80 with
    /// --quick; detection: 200, or 20).
    #[arg(long)]
    pub pretrain_steps: Option<usize>,
    /// Steps of each arm after pretraining (default: 120, or 40 with --quick; detection: 200,
    /// or 15), the oracle's included.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed of the generated benchmark: other seeds are other instances of the same benchmark.
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    /// Comma-separated subset of methods (default: all); source-only and adabn, which every
    /// verdict is measured against, are run whether named or not.
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<String>>,
    /// `segmentation` (the default) or `detection`: the small SSD on the Sim10k-format source
    /// and Cityscapes boxes, arms source-only, adabn, da-image, da-maps and oracle, with the
    /// same shared pretraining.
    #[arg(long, value_enum, default_value_t = super::Task::Segmentation)]
    pub task: super::Task,
}

/// Every method the demo compares, in table order: the three baselines first, then the
/// methods in the order of [`seg_methods::METHOD_NAMES`] (the one list of methods).
pub fn methods() -> Vec<&'static str> {
    const BASELINES: [&str; 3] = ["source-only", "adabn", "oracle"];
    BASELINES
        .into_iter()
        .chain(seg_methods::METHOD_NAMES.into_iter().filter(|m| !BASELINES.contains(m)))
        .collect()
}

/// Learning rate of the heads' own parameters (discriminators, SAN's generator; Adam) in the
/// demo (ours: the trainer's default is 1e-3; the demo's arms are short, so its
/// discriminators must learn fast to give the features a useful gradient).
const HEAD_LR: f64 = 1e-3;

/// Where the source-only pretraining of each seed goes (under `runs/`).
/// The pretraining run's name among the demo's runs (`runs/pretrain/seedN`).
pub const PRETRAIN: &str = "pretrain";

/// The demo's schedule: source-only pretraining shared by every arm, then each arm's own steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    pub pretrain: usize,
    pub adapt: usize,
}

impl Phases {
    /// The demo's lengths: 240 pretraining steps, 120 per arm.
    pub const DEFAULT: Self = Self {
        pretrain: 240,
        adapt: 120,
    };
    /// `--quick`'s: 80 and 40.
    pub const QUICK: Self = Self {
        pretrain: 80,
        adapt: 40,
    };
    /// The detection demo's: 200 and 200.
    pub const DETECTION: Self = Self {
        pretrain: 200,
        adapt: 200,
    };
    /// The detection demo's with `--quick`: 20 and 15.
    pub const DETECTION_QUICK: Self = Self {
        pretrain: 20,
        adapt: 15,
    };
}

/// Which run of the protocol a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Source-only from scratch, shared by every arm of a seed.
    Pretrain,
    /// One arm, continuing from the pretraining run in `init`.
    Arm,
}

/// The demo's run configuration for one method, seed and phase. `init` is the pretraining run
/// folder the arms start from.
pub fn demo_config(
    data: &Path,
    preset: Preset,
    method: &str,
    seed: u64,
    phases: Phases,
    phase: Phase,
    init: &Path,
) -> anyhow::Result<RunConfig> {
    let (gta, _, cs) = toy::paths(data);
    let s = preset.sizes();
    // Train on 128x64 (width x height) whatever the stored size; evaluation upsamples to full
    // resolution.
    let scale = 64.0 / s.height as f32;
    let mut method: MethodConfig = method.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    if let MethodConfig::San(c) = &mut method {
        // The generator runs at conv1's full resolution: on a 2-core CPU the demo uses one
        // residual block of width 8 (paper: 16 blocks of width 64).
        c.width = 8;
        c.blocks = 1;
    }
    // Pretraining trains from scratch at the demo's learning rate; every arm, the oracle
    // included (it differs only in its data: target train labels), continues from the
    // pretrained model at a fifth of it (both decay to 0 with the poly rule).
    let (steps, lr, init_from) = match phase {
        Phase::Pretrain => (phases.pretrain, 0.05, None),
        Phase::Arm => (phases.adapt, 0.01, Some(init.to_path_buf())),
    };
    Ok(RunConfig {
        data: DataConfig::new(DatasetName::Gta5, gta, DatasetName::Cityscapes, cs),
        model: ModelConfig {
            name: ModelName::Small,
            init_weights: None,
            init_from,
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
            lr,
            head_lr: HEAD_LR,
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

/// Trains (or reuses) one run of the demo into `runs/<name>/seed<N>`: a finished run is reused,
/// and one killed midway resumes, while its config, benchmark instance and starting checkpoint
/// are unchanged ([`Stamp`]).
fn run_one(
    cfg: &RunConfig,
    name: &str,
    out: &Path,
    data_seed: u64,
    device: &candle_core::Device,
) -> anyhow::Result<RunResult> {
    let seed = cfg.trainer.seed;
    let dir = out.join("runs").join(name).join(format!("seed{seed}"));
    // AdaBN starts from the source-only arm, every other arm from `init_from`.
    let init = if name == "adabn" {
        Some(out.join("runs").join("source-only").join(format!("seed{seed}")))
    } else {
        cfg.model.init_from.clone()
    };
    let stamp = Stamp::new(cfg.to_toml()?, data_seed, init.as_deref())?;
    if let Some(r) = stamp.finished::<RunResult>(&dir).filter(|r| r.miou.is_some()) {
        // A result kept by an older version lacks the later scores: the report has them.
        let r = RunResult { reused: true, ..r };
        return Ok(match final_report(&dir) {
            Ok(report) => r.with_report(&report),
            Err(_) => r,
        });
    }
    let start = std::time::Instant::now();
    let resume = stamp.start(&dir)?;
    let outcome = match (name, &init) {
        ("adabn", Some(from)) => crate::run::adabn_from(cfg, from, &dir, device)?,
        _ => crate::run::train(cfg, &dir, device, resume, true)?,
    };
    let r = RunResult {
        method: name.to_string(),
        seed,
        miou: outcome.final_miou,
        class_iou: Default::default(),
        mean_category_iou: None,
        mean_iiou: None,
        mean_category_iiou: None,
        warnings: Vec::new(),
        seconds: start.elapsed().as_secs_f64(),
        data_seed,
        init_digest: stamp.init_digest(),
        reused: false,
    }
    .with_report(&final_report(&dir)?);
    stamp.finish(&dir, &r)?;
    Ok(r)
}

/// Where a demo of `task` writes when `--out` is not given.
pub fn default_out(task: super::Task) -> PathBuf {
    match task {
        super::Task::Segmentation => PathBuf::from("runs/demo"),
        super::Task::Detection => PathBuf::from("runs/demo-detection"),
    }
}

/// What a demo writes in its folder; a folder holding anything else is not a demo's.
const DEMO_ENTRIES: [&str; 7] = [
    "data",
    "runs",
    "report.md",
    "report.json",
    "report.html",
    "comparison.png",
    "demo-task.txt",
];

/// Claims `out` for the demo of `task`: a folder that holds the other task's demo (its
/// `demo-task.txt`, or a report of the other kind) is refused, since both write `runs/`
/// folders of the same names (`pretrain`, `source-only`, `oracle`) and the same report files;
/// so is a folder holding anything a demo does not write (the user's own files).
pub(crate) fn claim_out(out: &Path, task: super::Task) -> anyhow::Result<seg_labels::fsutil::DirLock> {
    if let Ok(entries) = std::fs::read_dir(out) {
        let foreign: Vec<String> = entries
            .filter_map(Result::ok)
            // Hidden names (`.DS_Store`, a killed write's temp file, the lock) are no one's work.
            .filter(|e| !seg_labels::fsutil::is_hidden(&e.file_name()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !DEMO_ENTRIES.contains(&n.as_str()))
            .collect();
        if let Some(first) = foreign.first() {
            anyhow::bail!(
                "{} holds files a demo does not write (`{first}`{}): the demo writes data/, runs/ and its reports there; choose a new or empty --out",
                out.display(),
                if foreign.len() > 1 { format!(" and {} more", foreign.len() - 1) } else { String::new() }
            );
        }
    }
    let name = |t: super::Task| match t {
        super::Task::Segmentation => "segmentation",
        super::Task::Detection => "detection",
    };
    // One demo at a time in a folder: two would write the same runs.
    let lock = seg_labels::fsutil::lock_dir(out)?;
    let marker = out.join("demo-task.txt");
    let found = match std::fs::read_to_string(&marker) {
        Ok(s) => Some(s.trim().to_string()),
        Err(_) => std::fs::read(out.join("report.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| v["task"].as_str().unwrap_or("segmentation").to_string()),
    };
    if let Some(other) = found.filter(|t| t != name(task)) {
        anyhow::bail!(
            "{} holds the {other} demo's runs and report; the {} demo would overwrite them: choose another --out",
            out.display(),
            name(task)
        );
    }
    seg_labels::fsutil::write_atomic(&marker, name(task).as_bytes())
        .with_context(|| format!("writing {}", marker.display()))?;
    Ok(lock)
}

/// A `--methods` list as the demos run it: a name given twice is refused (its seeds would be
/// counted twice in the report); source-only and AdaBN, which every verdict is measured
/// against, run first whether named or not (AdaBN is taken from the source-only run).
pub(crate) fn method_list(list: Vec<String>) -> anyhow::Result<Vec<String>> {
    // `--methods "dann, adabn"`: the names without their spaces (they name the run folders).
    let list: Vec<String> = list.into_iter().map(|m| m.trim().to_string()).collect();
    anyhow::ensure!(list.iter().all(|m| !m.is_empty()), "--methods has an empty name");
    if let Some((i, m)) = list.iter().enumerate().find(|(i, m)| list[..*i].contains(m)) {
        anyhow::bail!(
            "--methods names `{m}` twice (entries {} and {})",
            list.iter().position(|x| x == m).unwrap_or(0) + 1,
            i + 1
        );
    }
    let baselines = ["source-only", "adabn"];
    let others = list.into_iter().filter(|m| !baselines.contains(&m.as_str()));
    Ok(baselines.into_iter().map(String::from).chain(others).collect())
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

pub fn run(args: Args, device_name: &crate::run::DeviceName) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| default_out(args.task));
    super::refuse_inside_evaluations(&out, "demo")?;
    if args.task == super::Task::Detection {
        return super::detect::demo(&args, &out, device_name);
    }
    let start = std::time::Instant::now();
    let device = crate::run::device(device_name)?;
    let preset = if args.quick { Preset::Quick } else { Preset::Default };
    let seeds = args.seeds.unwrap_or(if args.quick { 2 } else { 3 });
    anyhow::ensure!(seeds > 0, "--seeds must be at least 1");
    let lengths = if args.quick { Phases::QUICK } else { Phases::DEFAULT };
    let phases = Phases {
        pretrain: args.pretrain_steps.unwrap_or(lengths.pretrain),
        adapt: args.steps.unwrap_or(lengths.adapt),
    };
    anyhow::ensure!(
        phases.pretrain > 0 && phases.adapt > 0,
        "--pretrain-steps and --steps must be at least 1"
    );
    let methods: Vec<String> = match &args.methods {
        Some(list) => {
            let list = method_list(list.clone())?;
            for m in &list {
                m.parse::<MethodConfig>().map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            list
        }
        None => methods().iter().map(|s| s.to_string()).collect(),
    };
    // Only once every argument is known good is the folder claimed (and locked for the run).
    let _claim = claim_out(&out, args.task)?;
    let data = out.join("data");
    // The benchmark too: a `gen-toy --out` of this data/ would remove its datasets under the runs.
    let _data = seg_labels::fsutil::lock_dir(&data)?;
    if let Some(why) = toy::stale(&data, args.data_seed, preset) {
        eprintln!(
            "writing the embedded benchmark ({preset:?}, seed {}) in {}: {why}",
            args.data_seed,
            data.display()
        );
        toy::generate(&data, args.data_seed, preset)?;
    }
    let mut runs = Vec::new();
    let mut ledger = Ledger::default();
    for seed in 0..seeds as u64 {
        let init = out.join("runs").join(PRETRAIN).join(format!("seed{seed}"));
        {
            let cfg = demo_config(&data, preset, "source-only", seed, phases, Phase::Pretrain, &init)?;
            eprintln!(
                "[{:>5.0}s] source-only pretraining seed {seed} ({} steps)",
                start.elapsed().as_secs_f64(),
                phases.pretrain
            );
            let r = run_one(&cfg, PRETRAIN, &out, args.data_seed, &device)
                .with_context(|| format!("demo pretraining seed {seed}"))?;
            ledger.note(r.reused, r.seconds);
            eprintln!(
                "         mIoU {}",
                r.miou.map_or("n/a".into(), |v| format!("{:.2} %", 100.0 * v))
            );
        }
        for m in &methods {
            let cfg = demo_config(&data, preset, m, seed, phases, Phase::Arm, &init)?;
            eprintln!("[{:>5.0}s] {m} seed {seed}", start.elapsed().as_secs_f64());
            let r =
                run_one(&cfg, m, &out, args.data_seed, &device).with_context(|| format!("demo run {m} seed {seed}"))?;
            ledger.note(r.reused, r.seconds);
            eprintln!(
                "         mIoU {}",
                r.miou.map_or("n/a".into(), |v| format!("{:.2} %", 100.0 * v))
            );
            runs.push(r);
        }
    }
    let summary = summarise(&methods, |m| scores(&runs, m));
    let paired = comparisons(&methods, |m| scores(&runs, m));
    let init0 = out.join("runs").join(PRETRAIN).join("seed0");
    let cfg0 = demo_config(&data, preset, "source-only", 0, phases, Phase::Arm, &init0)?;
    comparison(&out, &cfg0, &methods, 0, &device)?;
    let s = preset.sizes();
    let last_seed = seeds.saturating_sub(1);
    let meta = format!(
        "Embedded benchmark `{preset:?}`, generator version {}, data seed {} ({} source images, {} target train, {} target val, stored at {}x{}); small BN FCN trained on 128x64 crops, batch 8 (+8 target). Per seed: {} source-only steps shared by every arm, then {} steps per arm from that model (AdaBN from the source-only arm; adaptation arms end with AdaBN's re-estimation of the batch-norm statistics over the same target batches; the oracle on target train labels). Seeds 0 to {last_seed} ({seeds} in all). {}",
        toy::GENERATOR_VERSION,
        args.data_seed,
        s.gta5,
        s.target_train,
        s.target_val,
        s.width,
        s.height,
        phases.pretrain,
        phases.adapt,
        ledger.describe(start.elapsed().as_secs_f64())
    );
    let md = demo_report::markdown(&runs, &summary, &paired, &methods, &meta);
    let page = demo_report::html_page(&out, &runs, &summary, &paired, &methods, &meta);
    let json = serde_json::json!({
        "task": "segmentation",
        "runs": runs,
        "summary": summary,
        "paired": paired,
        "pretrain_steps": phases.pretrain,
        "steps": phases.adapt,
        "seeds": seeds,
        "preset": preset,
        "data_seed": args.data_seed,
        "generator_version": toy::GENERATOR_VERSION,
        "seconds": start.elapsed().as_secs_f64(),
        "reused_runs": ledger.reused,
        "reused_runs_seconds": ledger.reused_seconds,
    });
    super::demo_run::write_reports(&out, &json, &md, &page, &["comparison.png"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_demo_folder_is_refused_to_the_other_task() {
        use crate::cmd::Task;
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("seg");
        claim_out(&seg, Task::Segmentation).unwrap();
        claim_out(&seg, Task::Segmentation).unwrap();
        let e = claim_out(&seg, Task::Detection).unwrap_err().to_string();
        assert!(e.contains("segmentation demo") && e.contains("seg"), "{e}");
        // Folders written before the marker existed are told apart by their report.
        let old_seg = dir.path().join("old-seg");
        std::fs::create_dir_all(&old_seg).unwrap();
        std::fs::write(old_seg.join("report.json"), r#"{"runs": []}"#).unwrap();
        assert!(claim_out(&old_seg, Task::Detection).is_err());
        let old_det = dir.path().join("old-det");
        std::fs::create_dir_all(&old_det).unwrap();
        std::fs::write(old_det.join("report.json"), r#"{"task": "detection"}"#).unwrap();
        assert!(claim_out(&old_det, Task::Segmentation).is_err());
        claim_out(&old_det, Task::Detection).unwrap();
        // A folder with the user's own files is not a demo's.
        let mine = dir.path().join("mine");
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::write(mine.join("notes.md"), "keep").unwrap();
        let e = claim_out(&mine, Task::Segmentation).unwrap_err().to_string();
        assert!(e.contains("`notes.md`") && e.contains("new or empty --out"), "{e}");
        assert_eq!(std::fs::read_to_string(mine.join("notes.md")).unwrap(), "keep");
        assert!(
            !mine.join(seg_labels::fsutil::LOCK_FILE).exists(),
            "nothing written there"
        );
        // Hidden files (Finder's .DS_Store) are no one's work.
        let finder = dir.path().join("finder");
        std::fs::create_dir_all(&finder).unwrap();
        std::fs::write(finder.join(".DS_Store"), "").unwrap();
        claim_out(&finder, Task::Segmentation).unwrap();
        assert_ne!(default_out(Task::Segmentation), default_out(Task::Detection));
    }

    #[test]
    fn source_only_and_adabn_run_first() {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let baselines_first = v(&["source-only", "adabn", "dann"]);
        for given in [&["adabn", "dann"][..], &["dann", "adabn", "source-only"], &["dann"]] {
            assert_eq!(method_list(v(given)).unwrap(), baselines_first, "{given:?}");
        }
        assert_eq!(method_list(v(&["adabn"])).unwrap(), v(&["source-only", "adabn"]));
        // A method given twice would count its seeds twice.
        let e = method_list(v(&["dann", "adabn", " dann"])).unwrap_err().to_string();
        assert!(e.contains("`dann` twice") && e.contains("entries 1 and 3"), "{e}");
    }
}
