//! One module per subcommand; each has an `Args` (clap) and a `run`.

pub mod check;
pub mod demo;
mod demo_run;
pub mod detect;
pub mod eval;
pub mod gen_toy;
pub mod inspect;
pub mod predict;
pub mod train;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Read every file of every split a run config names, list the problems, and time a few
    /// training steps for an estimate of the run's duration; fails if the run would stop.
    Check(check::Args),
    /// The main job: generate the embedded benchmark, train every method over several seeds,
    /// evaluate, and write a comparison report.
    Demo(demo::Args),
    /// Write the embedded synthetic-to-real benchmark in the GTA5, SYNTHIA and Cityscapes formats.
    GenToy(gen_toy::Args),
    /// Count samples, sizes and class pixels of a dataset, and list every problem sample.
    Inspect(inspect::Args),
    /// Evaluate predictions (a folder of PNGs, or a checkpoint) against Cityscapes ground truth.
    Eval(eval::Args),
    /// Train one run (source-only, oracle, adabn or an adaptation method).
    Train(Box<train::Args>),
    /// Train one detector (SSD; source-only, oracle, adabn, da-image or da-maps) from a TOML
    /// config, and evaluate it on the target val split.
    TrainDetector(detect::TrainArgs),
    /// Predict with a trained model: label-id PNGs, colour maps or overlays.
    Predict(predict::Args),
}

/// Runs one subcommand; `device` is the global `--device` (commands that compute nothing on a
/// device refuse any other than the CPU, as any option they do not read).
pub fn run(command: Command, device: &crate::run::DeviceName) -> anyhow::Result<()> {
    let no_model = |what: &str| refuse_unused(&[("--device", *device != Default::default())], what);
    match command {
        Command::Check(a) => check::run(a, device),
        Command::Demo(a) => demo::run(a, device),
        Command::GenToy(a) => {
            no_model("commands that run a model: gen-toy writes files on the CPU")?;
            gen_toy::run(a)
        }
        Command::Inspect(a) => {
            no_model("commands that run a model: inspect reads files on the CPU")?;
            inspect::run(a)
        }
        Command::Eval(a) if a.checkpoint.is_none() => {
            no_model("eval --checkpoint, which runs a model: predictions from --pred are scored on the CPU")?;
            eval::run(a, device)
        }
        Command::Eval(a) => eval::run(a, device),
        Command::Train(a) => train::run(*a, device),
        Command::TrainDetector(a) => detect::train(a, device),
        Command::Predict(a) => predict::run(a, device),
    }
}

/// Which task a command works on.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Task {
    /// Semantic segmentation (the default).
    #[default]
    Segmentation,
    /// Object detection (Sim10k → Cityscapes boxes).
    Detection,
}

/// The name an input image's prediction takes: its file's stem without Cityscapes'
/// `_leftImg8bit` (`frankfurt_000000_000294`), as the evaluations pair predictions by it.
pub(crate) fn image_name(path: &std::path::Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem.strip_suffix("_leftImg8bit").unwrap_or(&stem).to_string()
}

/// `path` made absolute with its links resolved, for a path that may not exist yet: its
/// nearest existing ancestor resolved, the rest appended.
pub(crate) fn resolved(path: &std::path::Path) -> std::path::PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut head = abs.as_path();
    let mut tail = Vec::new();
    loop {
        if let Ok(real) = head.canonicalize() {
            return tail.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                head = parent;
            }
            _ => return abs,
        }
    }
}

/// `n` and the noun, plural unless `n` is 1: "1 problem", "3 problems".
pub(crate) fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The parser of `--set KEY=VALUE`: text, as a TOML config is. A value that is not UTF-8 (a path
/// of a Latin-1 file system) is refused naming the argument and why, where clap's own check would
/// say only that some argument was not UTF-8.
pub(crate) fn setting() -> impl clap::builder::TypedValueParser<Value = String> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().try_map(|raw| {
        raw.into_string().map_err(|raw| {
            format!(
                "`{}` is not UTF-8: a setting is TOML text, so a path in it must be too \
                 (give the folder a UTF-8 name, or a UTF-8 link to it)",
                raw.to_string_lossy()
            )
        })
    })
}

/// Refuses the first option of `options` (its flag, and whether it was given) that was given:
/// an option the chosen task or dataset does not read is a mistake to name, not to ignore.
/// `used_by` names what reads it.
pub(crate) fn refuse_unused(options: &[(&str, bool)], used_by: &str) -> anyhow::Result<()> {
    match options.iter().find(|(_, given)| *given) {
        Some((flag, _)) => anyhow::bail!("{flag} is not read here: it is for {used_by}"),
        None => Ok(()),
    }
}

/// The run folder whose `eval/` folder holds `out` (at any depth), if any: a folder holding a
/// checkpoint, or both a `config.toml` and a `metrics.jsonl` (a user's own `config.toml` alone
/// makes no run). `plain` is `--out` as [`resolved`] gives it (`..` and links resolved).
fn run_whose_evaluations_hold(plain: &std::path::Path) -> Option<std::path::PathBuf> {
    plain.ancestors().skip(1).find_map(|dir| {
        let has = |f: &str| dir.join(f).is_file();
        let is_run = has(seg_train::checkpoint::FILE) || (has("config.toml") && has("metrics.jsonl"));
        let first = plain.strip_prefix(dir).ok()?.components().next()?;
        (is_run && first.as_os_str() == "eval").then(|| dir.to_path_buf())
    })
}

/// Refuses an `--out` that is a run's or a demo's folder, or inside a run's evaluations
/// (`eval/`, where `metrics.jsonl`'s evaluation lines point): what `what` writes there would
/// replace the run's own files.
pub(crate) fn refuse_run_folders(out: &std::path::Path, what: &str) -> anyhow::Result<()> {
    if let Some(f) = seg_train::checkpoint::RUN_FILES
        .iter()
        .chain(&["demo-task.txt"])
        .find(|f| out.join(f).exists())
    {
        anyhow::bail!(
            "--out {} is a run's or a demo's folder (it holds {f}): write the {what} into a folder of its own (e.g. {})",
            out.display(),
            out.join("val").display()
        );
    }
    refuse_inside_evaluations(out, what)
}

/// Refuses an `--out` inside a run's evaluations (`eval/`), which the run's resume and its
/// report page take for its own.
pub(crate) fn refuse_inside_evaluations(out: &std::path::Path, what: &str) -> anyhow::Result<()> {
    let plain = resolved(out);
    if let Some(run) = run_whose_evaluations_hold(&plain) {
        anyhow::bail!(
            "--out {} is inside the evaluations of the run in {}: write the {what} into a folder of its own (e.g. {})",
            out.display(),
            run.display(),
            run.join("eval-other").display()
        );
    }
    // A demo's folder holds only what the demo writes: anything else there stops its next run
    // (or the arm whose folder it took). Its runs themselves may still be resumed.
    let a_run = seg_train::checkpoint::RUN_FILES.iter().any(|f| plain.join(f).exists());
    let demo = (!a_run).then(|| plain.ancestors().skip(1).find(|d| d.join("demo-task.txt").is_file()));
    if let Some(demo) = demo.flatten() {
        anyhow::bail!(
            "--out {} is inside the demo in {}, which holds only what the demo writes: write the {what} into a folder of its own",
            out.display(),
            demo.display()
        );
    }
    Ok(())
}

/// Whether a command ended because a signal interrupted its training loop (after writing a
/// checkpoint): the process then exits 130, as for any command stopped by Ctrl-C.
pub fn was_interrupted(e: &anyhow::Error) -> bool {
    use seg_train::error::TrainError;
    e.chain().any(|c| {
        matches!(c.downcast_ref::<TrainError>(), Some(TrainError::Interrupted { .. }))
            || matches!(
                c.downcast_ref::<seg_ssd::train::DetRunError>(),
                Some(seg_ssd::train::DetRunError::Train(TrainError::Interrupted { .. }))
            )
    })
}

/// The scratch folder where `check` times training steps (removed when timing ends), after
/// removing those of earlier `check`s killed before removing theirs: a detector's timed run
/// leaves a checkpoint there, hundreds of MB for SSD300.
pub(crate) fn check_scratch_dir() -> std::path::PathBuf {
    seg_labels::fsutil::scratch_dir("seg-adapt-check-")
}
