//! `seg-adapt gen-toy`: writes the embedded benchmark.

use std::path::PathBuf;

use anyhow::Context;
use seg_data::toy::{self, Preset};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output folder; `gta5/`, `synthia/`, `sim10k/`, `cityscapes/` and `toy.json` are written
    /// inside. A benchmark already there is replaced whole; dataset folders without a `toy.json`
    /// (real data) are refused, never overwritten.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the generator: the same seed writes the same bytes; another seed is another
    /// instance of the same benchmark.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `quick` (128×64, small), `default` (256×128) or `full` (2048×1024, four images a split, two in val:
    /// for timing the real-size presets of `configs/`).
    #[arg(long, default_value = "default")]
    pub preset: Preset,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    // Two generations into one folder would remove each other's files half-way.
    let _lock = seg_labels::fsutil::lock_dir(&args.out).context("--out")?;
    let m = toy::generate(&args.out, args.seed, args.preset)
        .with_context(|| format!("generating the embedded benchmark in {}", args.out.display()))?;
    let s = m.sizes;
    println!(
        "wrote {} in {:.1}s: gta5 {} images, synthia {}, sim10k {}, cityscapes train {} / val {} ({}x{})",
        args.out.display(),
        start.elapsed().as_secs_f32(),
        s.gta5,
        s.synthia,
        s.sim10k,
        s.target_train,
        s.target_val,
        s.width,
        s.height
    );
    Ok(())
}
