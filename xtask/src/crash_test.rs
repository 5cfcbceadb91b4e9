//! `cargo xtask crash-test`: kills training with SIGKILL at random moments (checkpoint writes
//! included, with a checkpoint after every other step), resumes each time, and checks that every
//! `metrics.jsonl` line is whole, that the run always resumes, and that the final weights are
//! byte-identical to an uninterrupted run with the same seed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Deterministic jitter for kill times (SplitMix64).
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The run every trial makes: DANN on the small model over the generated benchmark in `data`,
/// a checkpoint every 2 steps.
fn write_config(data: &Path) -> Result<PathBuf, String> {
    let path = data.join("crash-test.toml");
    let text = format!(
        "[data]\nsource_dataset = \"gta5\"\nsource_root = {:?}\ntarget_dataset = \"cityscapes\"\ntarget_root = {:?}\n\n\
         [model]\nname = \"small\"\n\n[method]\nkind = \"dann\"\n\n[augment]\ncrop = [64, 64]\n\n\
         [trainer]\nbatch_size = 2\nseed = 3\ncheckpoint_every = 2\neval_every = 25\n",
        data.join("gta5").display().to_string(),
        data.join("cityscapes").display().to_string()
    );
    std::fs::write(&path, text).map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
    Ok(path)
}

fn train_cmd(bin: &Path, config: &Path, out: &Path, steps: usize, resume: bool) -> Command {
    let mut c = Command::new(bin);
    c.arg("train")
        .arg(config)
        .args(["--steps", &steps.to_string()])
        .arg("--out")
        .arg(out)
        .env("SEG_ADAPT_LOG", "error");
    if resume {
        c.arg("--resume");
    }
    c
}

/// The tensor bytes of a safetensors file (everything after the JSON header, whose metadata
/// order may differ between runs).
fn tensor_bytes(path: &Path) -> Result<Vec<u8>, String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let n = u64::from_le_bytes(b.get(..8).ok_or("short file")?.try_into().map_err(|_| "short file")?) as usize;
    Ok(b.get(8 + n..)
        .ok_or_else(|| format!("{}: truncated", path.display()))?
        .to_vec())
}

/// A checkpoint on disk is whole: its header is complete JSON and the file ends exactly where
/// the last tensor does.
fn check_checkpoint(path: &Path) -> Result<(), String> {
    let Ok(b) = std::fs::read(path) else {
        return Ok(());
    };
    let n = u64::from_le_bytes(b.get(..8).ok_or("short checkpoint")?.try_into().map_err(|_| "short")?) as usize;
    let header = std::str::from_utf8(
        b.get(8..8 + n)
            .ok_or_else(|| format!("{}: header cut", path.display()))?,
    )
    .map_err(|e| format!("{}: header not UTF-8: {e}", path.display()))?;
    if !header.trim_end().ends_with('}') {
        return Err(format!("{}: header is not whole JSON", path.display()));
    }
    let end = header
        .split("\"data_offsets\":[")
        .skip(1)
        .filter_map(|t| t.split(']').next()?.split(',').nth(1)?.trim().parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    if b.len() != 8 + n + end {
        return Err(format!(
            "{}: {} bytes, the header describes {}",
            path.display(),
            b.len(),
            8 + n + end
        ));
    }
    Ok(())
}

/// Every `report.json` under `dir` is a whole JSON object (reports are written by rename).
fn check_reports(dir: &Path) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            check_reports(&p)?;
        } else if p.file_name().is_some_and(|f| f == "report.json") {
            let t = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let t = t.trim();
            if !(t.starts_with('{') && t.ends_with('}')) {
                return Err(format!("{}: half-written report", p.display()));
            }
        } else if p.extension().is_some_and(|x| x == "tmp") {
            eprintln!(
                "note: {} left by a killed write (ignored by readers, replaced next time)",
                p.display()
            );
        }
    }
    Ok(())
}

fn check_metrics(path: &Path) -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if !(l.starts_with('{') && l.ends_with('}')) {
            return Err(format!(
                "{}: line {} is not a whole JSON object: {l:?}",
                path.display(),
                i + 1
            ));
        }
    }
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(format!("{}: last line is cut", path.display()));
    }
    Ok(())
}

pub(crate) fn run(args: &[String], root: &Path) -> Result<(), String> {
    let mut trials = 12usize;
    let mut steps = 200usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let slot = match a.as_str() {
            "--trials" => &mut trials,
            "--steps" => &mut steps,
            o => return Err(format!("unknown flag `{o}`: expected --trials N, --steps N")),
        };
        let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        *slot = v
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{a}: `{v}` is not a whole number of at least 1"))?;
    }
    crate::tasks::cargo(root, &["build", "--release", "-p", "seg-adapt"])?;
    let bin = root.join("target/release/seg-adapt");
    let work: PathBuf = root.join("target/crash-test");
    let _ = std::fs::remove_dir_all(&work);
    let data = work.join("data");
    crate::tasks::run(
        Command::new(&bin)
            .args(["gen-toy", "--preset", "quick", "--seed", "5", "--out"])
            .arg(&data),
    )?;
    let config = write_config(&data)?;

    let reference = work.join("reference");
    let t0 = Instant::now();
    crate::tasks::run(&mut train_cmd(&bin, &config, &reference, steps, false))?;
    let full = t0.elapsed();
    eprintln!("uninterrupted run: {:.1}s", full.as_secs_f64());

    let crashed = work.join("crashed");
    let mut jitter = Jitter(0xC0FFEE);
    let mut kills = 0;
    for trial in 0..trials {
        // A run killed before its first checkpoint has written its config: resumed from step 0.
        let resume = crashed.join("config.toml").exists();
        let mut child = train_cmd(&bin, &config, &crashed, steps, resume)
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start seg-adapt: {e}"))?;
        let wait = Duration::from_millis(300 + jitter.next() % 700);
        std::thread::sleep(wait);
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => {
                if !status.success() {
                    return Err(format!("trial {trial}: training failed on its own ({status})"));
                }
                eprintln!("trial {trial}: finished before the kill");
                break;
            }
            None => {
                child.kill().map_err(|e| e.to_string())?; // SIGKILL on Unix
                let _ = child.wait();
                kills += 1;
                eprintln!("trial {trial}: killed after {} ms (resume: {resume})", wait.as_millis());
            }
        }
        check_metrics(&crashed.join("metrics.jsonl"))?;
        check_checkpoint(&crashed.join("checkpoint.safetensors"))?;
        check_reports(&crashed)?;
    }
    // Finish the interrupted run.
    let resume = crashed.join("config.toml").exists();
    crate::tasks::run(&mut train_cmd(&bin, &config, &crashed, steps, resume))?;
    check_metrics(&crashed.join("metrics.jsonl"))?;
    let a = tensor_bytes(&reference.join("checkpoint.safetensors"))?;
    let b = tensor_bytes(&crashed.join("checkpoint.safetensors"))?;
    if a != b {
        return Err("the final weights after crashes differ from the uninterrupted run".into());
    }
    // A test that killed nothing tested nothing.
    if kills == 0 {
        return Err(format!(
            "no trial was killed before its run finished ({trials} trials of {steps} steps): nothing was tested; give more --steps"
        ));
    }
    println!(
        "crash-test passed: {kills} SIGKILLs over {trials} trials; final weights identical to the uninterrupted run"
    );
    Ok(())
}
