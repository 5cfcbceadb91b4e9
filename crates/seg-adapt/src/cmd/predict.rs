//! `seg-adapt predict`: full-resolution predictions of a trained model for a folder or a file,
//! as label-id PNGs (what the official evaluator and server take), colour maps or overlays.

use std::path::{Path, PathBuf};

use anyhow::Context;
use seg_labels::cityscapes::train_id_to_id;
use seg_labels::png_io;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Labelids,
    Trainids,
    Color,
    Overlay,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run folder or checkpoint file: a segmentation model's, or a detector's.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// An image (PNG or JPEG), or a folder searched recursively for `.png`, `.jpg` and `.jpeg`
    /// files.
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder: one PNG per input image, in the input's sub-folders, named
    /// `<stem>_labelIds.png` (or `_labelTrainIds`, `_color`, `_overlay`), a Cityscapes image's
    /// `_leftImg8bit` dropped from its stem (`aachen_000000_000019_labelIds.png`, the name the
    /// official evaluator matches); for a detector, one `detections.json` of every input (`image`
    /// its stem without `_leftImg8bit`, as `eval --task detection --pred` reads it).
    #[arg(long)]
    pub out: PathBuf,
    /// `labelids` (what the official evaluator takes), `trainids`, `color` (the Cityscapes
    /// palette) or `overlay` (the palette blended over the image).
    #[arg(long, value_enum, default_value = "labelids")]
    pub format: Format,
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        depth < 32,
        "{}: folders nested too deep (a symlink loop?)",
        dir.display()
    );
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        // Hidden entries (macOS's `._*` companions) are no images.
        if seg_labels::fsutil::is_hidden(&e.file_name()) {
            continue;
        }
        let ft = e.file_type()?;
        let p = e.path();
        if ft.is_dir() {
            collect_images(&p, out, depth + 1)?;
        } else if ft.is_symlink() && p.is_dir() {
            // Linked folders are not entered (links could loop); said, not skipped silently.
            tracing::warn!("{}: a link to a folder, not entered", p.display());
        } else if (ft.is_file() || ft.is_symlink())
            && p.extension()
                .is_some_and(|x| ["png", "jpg", "jpeg"].iter().any(|e| x.eq_ignore_ascii_case(e)))
        {
            // A linked file is read like any other; one that leads nowhere fails naming it.
            out.push(p);
        }
    }
    Ok(())
}

pub fn run(args: Args, device_name: &crate::run::DeviceName) -> anyhow::Result<()> {
    seg_labels::fsutil::check_writable_dir(&args.out).context("--out")?;
    super::refuse_run_folders(&args.out, "predictions")?;
    // Two commands predicting into one folder would mix their files.
    let _lock = seg_labels::fsutil::lock_dir(&args.out).context("--out")?;
    let device = crate::run::device(device_name)?;
    let inputs = if args.input.is_dir() {
        let mut v = Vec::new();
        collect_images(&args.input, &mut v, 0)?;
        v
    } else {
        anyhow::ensure!(args.input.is_file(), "input not found: {}", args.input.display());
        vec![args.input.clone()]
    };
    anyhow::ensure!(
        !inputs.is_empty(),
        "{}: no PNG or JPEG images found",
        args.input.display()
    );
    // A detector's checkpoint: its detections, one file for every input.
    let meta = seg_train::checkpoint::read_meta(&seg_train::checkpoint::file_of(&args.checkpoint))?;
    if crate::config::is_detection_config(&meta.config) {
        anyhow::ensure!(
            args.format == Format::Labelids,
            "--format is for segmentation models: a detector writes detections.json"
        );
        return super::detect::predict(&args.checkpoint, &inputs, &args.out, &device);
    }
    let trained = crate::run::load_trained(&args.checkpoint, &device)?;
    let setup = crate::run::eval_setup(&trained.cfg, &device);
    let base = if args.input.is_dir() {
        // Predictions written inside the input folder would be read as inputs next time.
        anyhow::ensure!(
            !super::resolved(&args.out).starts_with(super::resolved(&args.input)),
            "--out {} is inside --input {}: the predictions would be taken for images next time; choose another --out",
            args.out.display(),
            args.input.display()
        );
        args.input.clone()
    } else {
        args.input.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let suffix = match args.format {
        Format::Labelids => "labelIds",
        Format::Trainids => "labelTrainIds",
        Format::Color => "color",
        Format::Overlay => "overlay",
    };
    // Each input's output file; two inputs with one output (`a.png` and `a.PNG`, or `a.png` and
    // `a_leftImg8bit.png`) are refused before anything is written.
    let mut outputs: std::collections::BTreeMap<PathBuf, &Path> = std::collections::BTreeMap::new();
    let mut plan = Vec::with_capacity(inputs.len());
    for path in &inputs {
        let rel = path.strip_prefix(&base).unwrap_or(path).to_path_buf();
        let stem = super::image_name(&rel);
        let file = args
            .out
            .join(rel.parent().unwrap_or(Path::new("")))
            .join(format!("{stem}_{suffix}.png"));
        if let Some(first) = outputs.insert(file.clone(), path) {
            anyhow::bail!(
                "{} and {} would both be predicted into {}: rename one",
                first.display(),
                path.display(),
                file.display()
            );
        }
        plan.push((path, file));
    }
    for (path, file) in plan {
        let img = png_io::read_rgb(path)?;
        let pred = seg_train::predict_train_ids(trained.backbone.as_ref(), &[&img], &setup)?.remove(0);
        let (w, h) = (img.width, img.height);
        match args.format {
            Format::Labelids => {
                let ids: Vec<u8> = pred.iter().map(|&t| train_id_to_id(t)).collect();
                png_io::write_gray8(&file, w, h, &ids)?;
            }
            Format::Trainids => png_io::write_gray8(&file, w, h, &pred)?,
            Format::Color => png_io::write_rgb(&file, &seg_metrics::pictures::colorize(w, h, &pred))?,
            Format::Overlay => png_io::write_rgb(&file, &seg_metrics::pictures::overlay(&img, &pred, 0.5))?,
        }
    }
    let n = inputs.len();
    println!(
        "wrote {n} prediction{} to {}",
        if n == 1 { "" } else { "s" },
        args.out.display()
    );
    Ok(())
}
