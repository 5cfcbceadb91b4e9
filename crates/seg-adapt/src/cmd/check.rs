//! `seg-adapt check CONFIG`: before hours of training, decode every file of every split a run
//! config names (in parallel), list each problem with its file, show the resolved config, and
//! time a few training steps on the chosen device for an estimate of the run's duration. Exits
//! non-zero when the config's error policy would stop the run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use seg_data::ProblemKind;

use crate::config::RunConfig;
use crate::run::DeviceName;
use seg_data::Role;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run configuration (TOML) to check: a segmentation run's, or a detection run's (one
    /// with `data.source_format`, as `train-detector` takes).
    pub config: PathBuf,
    /// Training steps to time for the estimate (0: no timing), after up to 2 + `trainer.prefetch`
    /// untimed warm-up steps (convolution plans, allocator caches, the batches decoded ahead).
    #[arg(long, default_value_t = 3)]
    pub time_steps: usize,
    /// Override one config key (repeatable), as `train --set` and `train-detector --set` take
    /// it, so that the run checked is the run trained.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = super::setting())]
    pub set: Vec<String>,
}

/// Untimed steps before the timed ones (besides one per batch decoded ahead), where the stage
/// has room for them.
const WARMUP: usize = 2;

pub fn run(args: Args, device_name: &DeviceName) -> anyhow::Result<()> {
    // A detection config (Sim10k-style `data.source_format`) is checked by the detection side.
    let text = seg_labels::fsutil::read_text(&args.config)
        .with_context(|| format!("{}: cannot read config", args.config.display()))?;
    if crate::config::is_detection_config(&text) {
        return super::detect::check(&args.config, &args.set, args.time_steps, device_name);
    }
    let mut cfg = RunConfig::load(&args.config)?;
    for kv in &args.set {
        cfg = cfg.with_set(kv)?;
    }
    // What the config alone settles is refused before reading every file, which takes minutes
    // on a full dataset: sizes and settings against the model, the ImageNet weights' file.
    cfg.validate(cfg.model.name.stride())
        .context("the run would stop before its first step")?;
    if let Some(w) = &cfg.model.init_weights {
        seg_fcn::weights::weights_file_exists(w).context("the run would stop before its first step")?;
    }
    // The device first: reading every file takes long, and a device that cannot open would
    // stop the run anyway.
    let device = crate::run::device(device_name)?;
    crate::run::refuse_what_the_model_settles(&cfg, &device).context("the run would stop before its first step")?;
    let dir = super::check_scratch_dir();
    let text = cfg.to_toml()?;
    println!("# resolved config ({})\n{text}", args.config.display());
    let implied = [
        ("trainer.prefetch", toml::Value::try_from(cfg.trainer.prefetch)),
        ("trainer.precision", toml::Value::try_from(cfg.trainer.precision)),
    ];
    let notes = cfg.trainer.groups_resolved() + &seg_train::config::unwritten_defaults(&text, &implied);
    if !notes.is_empty() {
        println!("{notes}");
    }
    let mut roles = vec![crate::run::training_role(&cfg)];
    if cfg.method.reads_target_train() {
        roles.push(Role::TargetTrain);
    }
    roles.push(Role::Val);
    let mut blocking = Vec::new();
    // What a run under "fail" stops on before its first step (a header that does not read, a
    // missing label), in the order the run checks its datasets: other files stop it when drawn.
    let mut first_stop = None;
    let mut unreadable = 0;
    for role in roles {
        let mut ds = crate::run::open_all(&cfg, role)?;
        let start = Instant::now();
        let bar = seg_train::progress::Shown::new(indicatif::ProgressBar::new(ds.len() as u64));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("reading every file of the {role} dataset"));
        let r = seg_data::inspect_with_progress(&ds, &|| bar.inc(1));
        bar.finish_and_clear();
        let list = cfg
            .data
            .place(role)
            .3
            .map_or(String::new(), |l| format!(" (list {})", l.display()));
        println!(
            "{role}: {} {} at {}{list}: {}, {} usable, {} ({:.1}s)",
            r.dataset,
            r.split,
            ds.root().display(),
            super::count(r.samples, "sample"),
            r.usable,
            super::count(r.problems.len(), "problem"),
            start.elapsed().as_secs_f64()
        );
        for w in r.warnings() {
            println!("  warning: {w}");
        }
        for p in &r.problems {
            let verdict = match (p.kind, cfg.data.error_policy) {
                (ProblemKind::SizeMismatch, _) => "left out (size_policy)",
                (ProblemKind::OrphanLabel, _) => "never read",
                (ProblemKind::Unreadable, seg_data::ErrorPolicy::Skip) => {
                    unreadable += 1;
                    "left out (error_policy = \"skip\")"
                }
                (ProblemKind::Unreadable, seg_data::ErrorPolicy::Fail) => {
                    blocking.push(p.file.clone());
                    "STOPS THE RUN (error_policy = \"fail\")"
                }
            };
            println!("  {}: {} [{verdict}]", p.file, p.reason);
        }
        if cfg.data.error_policy == seg_data::ErrorPolicy::Fail && first_stop.is_none() {
            first_stop = ds.leave_out_unusable().err().map(|e| e.to_string());
        }
    }
    // Every file was decoded above: when none failed, the run's own pass over them under
    // "skip" would find nothing, so the set-up below reads headers only (as under "fail").
    if cfg.data.error_policy == seg_data::ErrorPolicy::Skip && unreadable == 0 {
        cfg.data.error_policy = seg_data::ErrorPolicy::Fail;
    }
    if args.time_steps == 0 && blocking.is_empty() {
        // Without timing, the run is still set up once (and dropped), so every check `train`
        // makes before its first step is made here too: crop, sizes, weights, `init_from`, the
        // parameter groups and their optimisers.
        let setup = crate::run::build_setup(&cfg, &dir, &device, false, false)
            .and_then(|s| seg_train::Trainer::new(s).map_err(anyhow::Error::from))
            .map(|t| println!("trainable parameters: {}", t.parameter_summary()));
        let _ = std::fs::remove_dir_all(&dir);
        setup.context("the run would stop before its first step")?;
    }
    if args.time_steps > 0 && blocking.is_empty() {
        // (seconds for `n` steps at the steady rate, warm-up steps) within a stage of `len` steps.
        // The warm-up also hands out the batches the loaders prepared ahead at the start, so
        // the timed steps wait on decoding as a long run's do.
        // Each stage's parameters, once when both stages train the same ones.
        let said = std::cell::RefCell::new(String::new());
        let time = |cfg: &RunConfig, n: usize, len: usize| {
            let warmup = (WARMUP + cfg.trainer.prefetch).min(len.saturating_sub(n));
            let timed = (|| {
                let setup = crate::run::build_setup(cfg, &dir, &device, false, false)?;
                let trainer = seg_train::Trainer::new(setup)?;
                let summary = trainer.parameter_summary();
                if *said.borrow() != summary {
                    println!("trainable parameters: {summary}");
                    said.replace(summary);
                }
                let per = trainer.time_steps(warmup, n)?;
                anyhow::Ok((per * n as f64, warmup))
            })();
            let _ = std::fs::remove_dir_all(&dir);
            timed.context("timing training steps")
        };
        // A method with a stage before training (the curriculum's) is timed twice: its first
        // steps, which are that stage's, and then the training stage's with that stage left out.
        let (pretrain, without) = cfg.method.pretraining();
        let mut before = 0.0;
        if pretrain > 0 {
            let n = args.time_steps.min(pretrain);
            let (secs, warmup) = time(&cfg, n, pretrain)?;
            let per = secs / n.max(1) as f64;
            before = per * pretrain as f64;
            println!(
                "timing: {} of the {pretrain}-step stage before training on {device_name} in {secs:.1}s ({per:.2} s/step, after {warmup} untimed)",
                seg_core::steps(n)
            );
        }
        let train_cfg = RunConfig {
            method: without,
            ..cfg.clone()
        };
        let n = args.time_steps.min(cfg.trainer.steps);
        let (secs, warmup) = time(&train_cfg, n, cfg.trainer.steps)?;
        let per = secs / n.max(1) as f64;
        let total = before + per * cfg.trainer.steps as f64;
        println!(
            "timing: {} on {} in {secs:.1}s ({per:.2} s/step, after {}); {}{}: about {}, evaluation and checkpoints not included",
            seg_core::steps(n).replace("step", "training step"),
            device_name,
            seg_core::steps(warmup).replace("step", "untimed warm-up step"),
            seg_core::steps(cfg.trainer.steps),
            if pretrain > 0 { format!(" and the {pretrain} before them") } else { String::new() },
            hours_minutes(total)
        );
    }
    if let (true, Some(stop)) = (blocking.is_empty(), &first_stop) {
        anyhow::bail!("the run would stop before its first step, on {stop}");
    }
    if !blocking.is_empty() {
        let which = match &first_stop {
            Some(stop) => format!("before its first step, on {stop}"),
            None => format!("on the first it draws (the first listed: {})", blocking[0]),
        };
        anyhow::bail!(
            "{} file(s) would stop the run under error_policy = \"fail\", {which}; fix them or set data.error_policy = \"skip\"",
            blocking.len()
        );
    }
    println!("check passed: {}", args.config.display());
    Ok(())
}

/// `secs` as `Hh MMmin`, rounded to the minute first (so 59.6 minutes past an hour read as the
/// next hour, not as `60min`).
pub(crate) fn hours_minutes(secs: f64) -> String {
    let minutes = (secs / 60.0).round() as u64;
    format!("{}h {:02}min", minutes / 60, minutes % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hours_and_minutes_round_to_the_minute_first() {
        assert_eq!(super::hours_minutes(0.0), "0h 00min");
        assert_eq!(super::hours_minutes(3599.7), "1h 00min");
        assert_eq!(super::hours_minutes(49.0 * 3600.0 + 59.6 * 60.0), "50h 00min");
        assert_eq!(super::hours_minutes(2.0 * 3600.0 + 5.0 * 60.0 + 20.0), "2h 05min");
    }

    #[test]
    fn one_step_is_singular() {
        assert_eq!(seg_core::steps(1), "1 step");
        assert_eq!(seg_core::steps(0), "0 steps");
        assert_eq!(seg_core::steps(400), "400 steps");
    }
}
