//! Project automation (`cargo xtask <task>`): it orchestrates, the `seg-adapt` binary does the
//! work and runs without it.
//!
//! Tasks:
//! - `train-seg --config FILE [--method M] [--steps N] [--seed S] [--out DIR] [--cuda]
//!   [--release|--debug] [-- extra seg-adapt flags]`:
//!   builds `seg-adapt` with the right features and profile, says where the run goes, and runs
//!   `seg-adapt train` (on Unix in this process's place, so that Ctrl-C reaches the run alone).
//! - `check-cuda`: builds `seg-adapt` with `--features cuda` into `target/cuda` (no GPU needed;
//!   CUDA 13.0's `nvcc` on `PATH`).
//! - `bench-compare [--python PATH] [--skip-vgg] [--skip-ssd] [--rounds N]`: criterion benchmarks and the PyTorch / numpy
//!   references back to back, and a table of ratios against the goals.
//! - `crash-test [--trials N] [--steps N]`: SIGKILLs training at random moments, resumes, and
//!   checks that nothing is half-written and the final weights equal an uninterrupted run's.

mod bench_compare;
mod crash_test;
mod tasks;
// One file with seg-adapt's (xtask has no dependencies to share it through).
#[path = "../../crates/seg-adapt/src/stdout_hook.rs"]
mod stdout_hook;

use std::process::ExitCode;

use stdout_hook::exit_cleanly_when_stdout_fails;

/// Every task with its options, as `--help` prints them.
const USAGE: &str = "usage: cargo xtask <task> [options]

tasks:
  train-seg --config FILE [--method M] [--steps N] [--seed S]
            [--out DIR (default runs/METHOD, runs/run without --method)]
            [--cuda] [--release|--debug] [-- extra seg-adapt train flags, e.g. --set key=value]
      build seg-adapt with cargo (the right features and profile) and run
      `seg-adapt train FILE`; paths are relative to the workspace root
  check-cuda
      build seg-adapt with --features cuda into target/cuda (no GPU needed)
  bench-compare [--python PATH] [--skip-vgg] [--skip-ssd] [--rounds N (default 2)]
      criterion benchmarks and the PyTorch / numpy references back to back, and a table of
      ratios against the goals (2 threads; the references in target/bench-venv)
  crash-test [--trials N (default 12)] [--steps N (default 200)]
      build seg-adapt with cargo, SIGKILL a DANN run on the quick benchmark at random moments,
      resume, and check that nothing is half-written and that the final weights equal an
      uninterrupted run's; works in target/crash-test (emptied first)

`cargo xtask <task> --help` prints this too.";

fn main() -> ExitCode {
    exit_cleanly_when_stdout_fails();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::FAILURE;
    };
    // Flags after `--` belong to seg-adapt (`cargo xtask train-seg ... -- --help` is its help).
    let ours = rest.split(|a| a == "--").next().unwrap_or_default();
    let known = matches!(
        task.as_str(),
        "train-seg" | "check-cuda" | "crash-test" | "bench-compare"
    );
    if matches!(task.as_str(), "--help" | "-h" | "help") || (known && ours.iter().any(|a| a == "--help" || a == "-h")) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = match task.as_str() {
        "train-seg" => tasks::train_seg(rest),
        "check-cuda" => tasks::check_cuda(rest),
        "crash-test" => crash_test::run(rest, &tasks::root()),
        "bench-compare" => bench_compare::run_task(rest, &tasks::root()),
        other => Err(format!(
            "unknown task `{other}`: expected train-seg, check-cuda, crash-test or bench-compare"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
