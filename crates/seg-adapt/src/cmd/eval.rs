//! `seg-adapt eval`: scores predictions against Cityscapes ground truth with the official
//! rules, prints the per-class table and writes the report folder (`report.json`,
//! `report.md`, `confusion.csv`, `pictures/`). The work is `seg_metrics`'s; this wires flags.

use std::path::PathBuf;

use anyhow::Context as _;
use seg_labels::Protocol;
use seg_metrics::{FolderOptions, PredFormat};

/// Ground-truth datasets that can be evaluated against.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataset {
    Cityscapes,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["pred", "checkpoint"])))]
pub struct Args {
    /// `segmentation` (prediction PNGs against labelIds) or `detection` (a detections JSON
    /// file, or a trained detector, against boxes derived from `*_gtFine_instanceIds.png`:
    /// AP at IoU 0.5 per class in the VOC07, all-point and COCO flavours).
    #[arg(long, value_enum, default_value_t = super::Task::Segmentation)]
    pub task: super::Task,
    /// Detection: the classes evaluated, `all` (Cityscapes' eight instance classes) or `car`;
    /// by default `all` for --pred and the detector's own classes for --checkpoint.
    #[arg(long)]
    pub classes: Option<seg_detect::ClassSet>,
    /// Dataset holding the ground truth.
    #[arg(long, value_enum, default_value_t = Dataset::Cityscapes)]
    pub dataset: Dataset,
    /// Dataset root (with gtFine/, and leftImg8bit/ for overlays).
    #[arg(long)]
    pub root: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Segmentation: folder of prediction PNGs, searched recursively, one
    /// `{city}_{seq}_{frame}*.png` per ground-truth image. Detection: a JSON list of
    /// `{"image": stem, "class": name, "box": [x_min, y_min, x_max, y_max], "score": s}` with
    /// 0-based inclusive pixel indices.
    #[arg(long, conflicts_with = "checkpoint")]
    pub pred: Option<PathBuf>,
    /// Run folder of a trained model (or its checkpoint file) to evaluate instead of predictions.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// With --checkpoint (either task): evaluate only the images a split list names (as `data.target_val_list`,
    /// e.g. AdaptSegNet's `cityscapes_list/val.txt`) instead of the whole split.
    #[arg(long, requires = "checkpoint")]
    pub list: Option<PathBuf>,
    /// Segmentation: what the prediction PNGs hold, `labelids` (0..=33, official; the default)
    /// or `trainids` (0..=18, 255).
    #[arg(long)]
    pub pred_format: Option<PredFormat>,
    /// Segmentation: classes averaged in the mean IoU, 19, 16 (SYNTHIA) or 13; by default the
    /// run's `eval.protocol` with --checkpoint, 19 with --pred.
    #[arg(long)]
    pub protocol: Option<Protocol>,
    /// Segmentation: count ground-truth images without a prediction as all wrong instead of
    /// failing.
    #[arg(long)]
    pub missing_as_wrong: bool,
    /// Number of images (the first by name) shown in the report's pictures (`pictures/`; none
    /// with 0).
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    /// Output folder for the report.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: Args, device_name: &crate::run::DeviceName) -> anyhow::Result<()> {
    let Dataset::Cityscapes = args.dataset;
    seg_labels::fsutil::check_writable_dir(&args.out).context("--out")?;
    super::refuse_run_folders(&args.out, "evaluation")?;
    // An evaluation replaces its own report (report.json is written first), never a user's.
    anyhow::ensure!(
        !args.out.join("report.md").exists() || args.out.join("report.json").exists(),
        "--out {} holds a report.md that no evaluation wrote (no report.json beside it): write the evaluation into a folder of its own",
        args.out.display()
    );
    // Two evaluations into one folder would leave a report of one beside the pictures of the
    // other.
    let _lock = seg_labels::fsutil::lock_dir(&args.out).context("--out")?;
    if args.task == super::Task::Detection {
        super::refuse_unused(
            &[
                ("--pred-format", args.pred_format.is_some()),
                ("--protocol", args.protocol.is_some()),
                ("--missing-as-wrong", args.missing_as_wrong),
            ],
            "segmentation (--task segmentation)",
        )?;
        return super::detect::eval(&args, device_name);
    }
    super::refuse_unused(&[("--classes", args.classes.is_some())], "detection (--task detection)")?;
    if args.checkpoint.is_some() {
        super::refuse_unused(
            &[
                ("--pred-format", args.pred_format.is_some()),
                ("--missing-as-wrong", args.missing_as_wrong),
            ],
            "a prediction folder (--pred)",
        )?;
    } else {
        // The official evaluator takes every ground-truth file of the split.
        super::refuse_unused(&[("--list", args.list.is_some())], "a trained model (--checkpoint)")?;
    }
    // A run's evaluation protocol is its config's (`eval.protocol`, 16 for SYNTHIA presets)
    // unless --protocol says otherwise; a prediction folder's is 19 by default.
    let (evaluator, source, protocol) = match &args.checkpoint {
        Some(run_dir) => evaluate_checkpoint(&args, run_dir, device_name)?,
        None => {
            let (ev, source) = evaluate_predictions(&args)?;
            (ev, source, Protocol::Classes19)
        }
    };
    let mut report = evaluator.finish(args.protocol.unwrap_or(protocol));
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    report.source = Some(source);
    report
        .write(&args.out)
        .with_context(|| format!("writing the report to {}", args.out.display()))?;
    print!("{}", report.text_table());
    println!("report written to {}", args.out.join("report.md").display());
    Ok(())
}

/// Full-resolution inference of a trained model on the split, through the same evaluator.
fn evaluate_checkpoint(
    args: &Args,
    run_dir: &std::path::Path,
    device_name: &crate::run::DeviceName,
) -> anyhow::Result<(seg_metrics::report::Evaluator, String, Protocol)> {
    let device = crate::run::device(device_name)?;
    let trained = crate::run::load_trained(run_dir, &device)?;
    // The run's own data policies, so that the run's evaluation and this one of the same data
    // score the same images (a mismatched pair resized or left out; under `skip`, a file that
    // does not read left out and named).
    let opts = seg_data::DatasetOptions {
        require_labels: true,
        list: args.list.clone(),
        size_policy: trained.cfg.data.size_policy,
        error_policy: trained.cfg.data.error_policy,
        ..Default::default()
    };
    if let (None, Some(l)) = (&args.list, &trained.cfg.data.target_val_list) {
        eprintln!(
            "note: the run evaluated the images of its data.target_val_list; `--list {}` evaluates the same",
            l.display()
        );
    }
    let mut ds = seg_data::open_dataset(seg_data::DatasetName::Cityscapes, &args.root, &args.split, opts)?;
    ds.leave_out_unusable()
        .with_context(|| format!("checking the {} split", args.split))?;
    let mut setup = crate::run::eval_setup(&trained.cfg, &device);
    setup.keep_samples = args.samples;
    let ev = seg_train::evaluate(trained.backbone.as_ref(), &ds, &setup)?;
    let listed = args
        .list
        .as_ref()
        .map_or(String::new(), |l| format!(" (the images {} names)", l.display()));
    let source = format!(
        "Cityscapes `{}` split under `{}`{listed}; model from `{}` (step {}), full-resolution inference.",
        args.split,
        args.root.display(),
        run_dir.display(),
        trained.step
    );
    Ok((ev, source, trained.cfg.eval.protocol))
}

fn evaluate_predictions(args: &Args) -> anyhow::Result<(seg_metrics::report::Evaluator, String)> {
    let pred = args.pred.clone().context("give a prediction folder with --pred")?;
    // The report's pictures written inside the prediction folder would be taken for
    // predictions next time.
    anyhow::ensure!(
        !super::resolved(&args.out).starts_with(super::resolved(&pred)),
        "--out {} is inside --pred {}: the report's pictures would be taken for predictions next time; choose another --out",
        args.out.display(),
        pred.display()
    );
    let opts = FolderOptions {
        root: args.root.clone(),
        split: args.split.clone(),
        pred_dir: pred.clone(),
        pred_format: args.pred_format.unwrap_or_default(),
        missing_as_wrong: args.missing_as_wrong,
        samples: args.samples,
    };
    let evaluator = seg_metrics::evaluate_folder(&opts).with_context(|| {
        format!(
            "evaluating predictions in {} against {}",
            pred.display(),
            args.root.display()
        )
    })?;
    let source = format!(
        "Cityscapes `{}` split under `{}`; predictions ({}) from `{}`.",
        args.split,
        args.root.display(),
        args.pred_format.unwrap_or_default(),
        pred.display()
    );
    Ok((evaluator, source))
}
