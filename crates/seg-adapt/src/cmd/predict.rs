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
    /// Run folder or checkpoint file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// An image, or a folder searched recursively for PNGs.
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder: one PNG per input image, in the input's sub-folders, named
    /// `<stem>_labelIds.png` (or `_labelTrainIds`, `_color`, `_overlay`).
    #[arg(long)]
    pub out: PathBuf,
    /// `labelids` (what the official evaluator takes), `trainids`, `color` (the Cityscapes
    /// palette) or `overlay` (the palette blended over the image).
    #[arg(long, value_enum, default_value = "labelids")]
    pub format: Format,
}

fn collect_pngs(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> anyhow::Result<()> {
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
        let ft = e.file_type()?;
        let p = e.path();
        if ft.is_dir() {
            collect_pngs(&p, out, depth + 1)?;
        } else if ft.is_file() && p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")) {
            out.push(p);
        }
    }
    Ok(())
}

pub fn run(args: Args, device_name: &crate::run::DeviceName) -> anyhow::Result<()> {
    let device = crate::run::device(device_name)?;
    let trained = crate::run::load_trained(&args.checkpoint, &device)?;
    let setup = crate::run::eval_setup(&trained.cfg, &device);
    let inputs = if args.input.is_dir() {
        let mut v = Vec::new();
        collect_pngs(&args.input, &mut v, 0)?;
        v
    } else {
        anyhow::ensure!(args.input.is_file(), "input not found: {}", args.input.display());
        vec![args.input.clone()]
    };
    anyhow::ensure!(!inputs.is_empty(), "{}: no PNG images found", args.input.display());
    let base = if args.input.is_dir() {
        args.input.clone()
    } else {
        args.input.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    for path in &inputs {
        let img = png_io::read_rgb(path)?;
        let pred = seg_train::predict_train_ids(trained.backbone.as_ref(), &[&img], &setup)?.remove(0);
        let rel = path.strip_prefix(&base).unwrap_or(path).to_path_buf();
        let stem = rel
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = stem.strip_suffix("_leftImg8bit").unwrap_or(&stem).to_string();
        let dir = args.out.join(rel.parent().unwrap_or(Path::new("")));
        let (w, h) = (img.width, img.height);
        match args.format {
            Format::Labelids => {
                let ids: Vec<u8> = pred.iter().map(|&t| train_id_to_id(t)).collect();
                png_io::write_gray8(&dir.join(format!("{stem}_labelIds.png")), w, h, &ids)?;
            }
            Format::Trainids => png_io::write_gray8(&dir.join(format!("{stem}_labelTrainIds.png")), w, h, &pred)?,
            Format::Color => png_io::write_rgb(
                &dir.join(format!("{stem}_color.png")),
                &seg_metrics::pictures::colorize(w, h, &pred),
            )?,
            Format::Overlay => png_io::write_rgb(
                &dir.join(format!("{stem}_overlay.png")),
                &seg_metrics::pictures::overlay(&img, &pred, 0.5),
            )?,
        }
    }
    println!("wrote {} predictions to {}", inputs.len(), args.out.display());
    Ok(())
}
