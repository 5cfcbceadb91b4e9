//! `seg-adapt inspect`: counts and problems of one dataset split.

use std::path::PathBuf;

use anyhow::Context;
use seg_data::{DatasetName, DatasetOptions, SizePolicy};
use seg_labels::TRAIN_CLASS_NAMES;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// cityscapes, gta5, synthia or sim10k (detection).
    #[arg(long, value_enum)]
    pub dataset: InspectDataset,
    /// `segmentation` (label pixels) or `detection` (boxes: Cityscapes from instanceIds;
    /// sim10k is always detection).
    #[arg(long, value_enum, default_value_t = super::Task::Segmentation)]
    pub task: super::Task,
    /// Detection: `all`, the eight Cityscapes instance classes (Sim10k's car, motorbike and
    /// person among them; the default), or `car`.
    #[arg(long)]
    pub classes: Option<seg_detect::ClassSet>,
    /// The dataset's root folder (the layout of `data/README.md`).
    #[arg(long)]
    pub root: PathBuf,
    /// Cityscapes split (train, the default; val, test); GTA5, SYNTHIA and Sim10k have none.
    #[arg(long)]
    pub split: Option<String>,
    /// Segmentation and Sim10k: a split list file instead of a directory scan.
    #[arg(long)]
    pub list: Option<PathBuf>,
    /// Segmentation: what to do with image/label size mismatches, skip (report; the default)
    /// or resize-label-nearest.
    #[arg(long, value_parser = parse_size_policy)]
    pub size_policy: Option<SizePolicy>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The datasets `inspect` reads.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InspectDataset {
    Cityscapes,
    #[value(alias = "gta")]
    Gta5,
    Synthia,
    Sim10k,
}

pub fn parse_size_policy(s: &str) -> Result<SizePolicy, String> {
    match s {
        "skip" => Ok(SizePolicy::Skip),
        "resize-label-nearest" => Ok(SizePolicy::ResizeLabelNearest),
        o => Err(format!(
            "unknown size policy `{o}`: expected skip or resize-label-nearest"
        )),
    }
}

#[derive(serde::Serialize)]
struct JsonReport<'a> {
    dataset: &'a str,
    split: &'a str,
    samples: usize,
    usable: usize,
    labelled: usize,
    image_sizes: &'a std::collections::BTreeMap<String, usize>,
    class_pixels: serde_json::Map<String, serde_json::Value>,
    ignored_pixels: u64,
    outside_table_pixels: u64,
    problems: &'a [seg_data::Problem],
    warnings: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let detection = args.task == super::Task::Detection || args.dataset == InspectDataset::Sim10k;
    if detection {
        super::refuse_unused(&[("--size-policy", args.size_policy.is_some())], "segmentation")?;
    } else {
        super::refuse_unused(
            &[("--classes", args.classes.is_some())],
            "detection (--task detection, sim10k)",
        )?;
    }
    if args.dataset != InspectDataset::Cityscapes {
        super::refuse_unused(
            &[("--split", args.split.is_some())],
            "Cityscapes (the others have no splits: give a list file with --list)",
        )?;
    }
    let classes = args.classes.unwrap_or(seg_detect::ClassSet::All);
    let split = args.split.as_deref().unwrap_or("train");
    let dataset = match (args.dataset, args.task) {
        (InspectDataset::Sim10k, _) => {
            let ds = seg_detect::DetDataset::open_sim10k(&args.root, args.list.as_deref(), classes)
                .with_context(|| format!("opening sim10k at {}", args.root.display()))?;
            return super::detect::inspect(&ds, args.json);
        }
        (InspectDataset::Cityscapes, super::Task::Detection) => {
            super::refuse_unused(&[("--list", args.list.is_some())], "segmentation and Sim10k")?;
            let ds = seg_detect::DetDataset::open_cityscapes(&args.root, split, true, classes)
                .with_context(|| format!("opening cityscapes at {}", args.root.display()))?;
            return super::detect::inspect(&ds, args.json);
        }
        (_, super::Task::Detection) => anyhow::bail!("--task detection: only cityscapes and sim10k have boxes"),
        (InspectDataset::Cityscapes, _) => DatasetName::Cityscapes,
        (InspectDataset::Gta5, _) => DatasetName::Gta5,
        (InspectDataset::Synthia, _) => DatasetName::Synthia,
    };
    // A missing label is a problem where every run needs one: the sources, and Cityscapes'
    // val split (evaluation); Cityscapes' train split may be used without labels.
    let require_labels = dataset != DatasetName::Cityscapes || split == "val";
    let options = DatasetOptions {
        size_policy: args.size_policy.unwrap_or(SizePolicy::Skip),
        list: args.list.clone(),
        require_labels,
        ..Default::default()
    };
    // Every opening error names the root or the file.
    let ds = seg_data::open_dataset(dataset, &args.root, split, options)?;
    let r = seg_data::inspect(&ds);
    if args.json {
        let class_pixels = TRAIN_CLASS_NAMES
            .iter()
            .zip(r.class_pixels)
            .map(|(n, c)| (n.to_string(), serde_json::Value::from(c)))
            .collect();
        let j = JsonReport {
            dataset: &r.dataset,
            split: &r.split,
            samples: r.samples,
            usable: r.usable,
            labelled: r.labelled,
            image_sizes: &r.image_sizes,
            class_pixels,
            ignored_pixels: r.ignored_pixels,
            outside_table_pixels: r.outside_table_pixels,
            problems: &r.problems,
            warnings: r.warnings(),
        };
        println!("{}", serde_json::to_string(&j)?);
        return Ok(());
    }
    println!(
        "{} {}: {}, {} usable",
        r.dataset,
        r.split,
        super::count(r.samples, "sample"),
        r.usable
    );
    for (size, n) in &r.image_sizes {
        println!("  image size {size}: {n}");
    }
    if r.labelled == 0 {
        // Cityscapes' train split without gtFine: what unlabelled target training reads.
        match r.usable {
            0 => println!("  no usable sample, so no class counts"),
            _ => println!("  no labels in this split: images only, no class counts"),
        }
        print_problems(r.problems.iter().map(|p| (p.file.as_str(), p.reason.as_str())));
        return Ok(());
    }
    if r.labelled < r.usable {
        println!(
            "  {} of the {} usable samples have labels (the class counts are theirs)",
            r.labelled, r.usable
        );
    }
    let total: u64 = r.class_pixels.iter().sum::<u64>() + r.ignored_pixels;
    println!("  {:<14} {:>12} {:>7}", "class", "pixels", "%");
    for (name, c) in TRAIN_CLASS_NAMES.iter().zip(r.class_pixels) {
        println!("  {name:<14} {c:>12} {:>6.2}%", 100.0 * c as f64 / total.max(1) as f64);
    }
    println!(
        "  {:<14} {:>12} {:>6.2}%",
        "ignored",
        r.ignored_pixels,
        100.0 * r.ignored_pixels as f64 / total.max(1) as f64
    );
    if r.outside_table_pixels > 0 {
        println!(
            "  ({} label pixels had ids outside the dataset's table and were ignored)",
            r.outside_table_pixels
        );
    }
    for w in r.warnings() {
        println!("warning: {w}");
    }
    print_problems(r.problems.iter().map(|p| (p.file.as_str(), p.reason.as_str())));
    Ok(())
}

/// `no problems`, or the count and one `file: reason` line each.
pub fn print_problems<'a>(problems: impl ExactSizeIterator<Item = (&'a str, &'a str)>) {
    if problems.len() == 0 {
        println!("no problems");
        return;
    }
    println!("{}:", super::count(problems.len(), "problem"));
    for (file, reason) in problems {
        println!("  {file}: {reason}");
    }
}
