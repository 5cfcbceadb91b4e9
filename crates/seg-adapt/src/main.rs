//! `seg-adapt`: the composition root. It names the concrete readers, models, heads and metrics
//! and wires them to one subcommand each; the work itself lives in the library crates.

use clap::Parser;
use seg_adapt::cmd;

// Shared with xtask (which has no dependencies) by path.
mod stdout_hook;
use stdout_hook::exit_cleanly_when_stdout_fails;

/// Large buffers are reused across training steps instead of re-faulted (see `seg_alloc`).
#[global_allocator]
static ALLOC: seg_alloc::CachingAlloc = seg_alloc::CachingAlloc::new();

#[derive(Parser, Debug)]
#[command(
    name = "seg-adapt",
    version,
    about = "Train semantic segmentation on synthetic data and adapt it to real images"
)]
struct Cli {
    /// Where the commands that run a model compute (train, train-detector, check, eval
    /// --checkpoint, predict, demo): `cpu`, `cuda` (GPU 0) or `cuda:N` (a build with `--features
    /// cuda`); before or after the subcommand. The others (gen-toy, inspect, eval --pred) run on
    /// the CPU and refuse another device.
    #[arg(long, global = true, default_value = "cpu")]
    device: seg_adapt::run::DeviceName,
    #[command(subcommand)]
    command: cmd::Command,
}

fn main() -> std::process::ExitCode {
    // Output piped into a reader that stops early (`seg-adapt inspect ... | head`) ends the
    // process quietly, as for any Unix tool, instead of a panic in `println!`: Rust's runtime
    // ignores SIGPIPE, which turns the write into an error that `println!` panics on.
    exit_cleanly_when_stdout_fails();
    #[cfg(unix)]
    // SAFETY: called once, before any thread is started; SIG_DFL is a valid action for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let log = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEG_ADAPT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Lines above a progress bar, not glued to its end.
        .with_writer(seg_train::progress::LogWriter::default)
        .without_time()
        .with_target(false);
    // Colours for a terminal only (there tracing-subscriber honours NO_COLOR itself): a log
    // redirected to a file gets plain text.
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        log.init();
    } else {
        log.with_ansi(false).init();
    }
    // The kernels' runtime switches (`SEG_SGEMM`, `SEG_WINOGRAD`, `SEG_CUDNN`, ...), read once.
    seg_kernels::Settings::from_env().apply();
    seg_cuda::Settings::from_env().apply();
    // clap's own exit ignores a failed write: `--help > /dev/full` would exit 0 having said
    // nothing. Printed with clap's own rules (colours, NO_COLOR), its failure is an exit 1.
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let written = e.print().and_then(|()| std::io::Write::flush(&mut std::io::stdout()));
        if let Err(err) = written {
            let stream = if e.use_stderr() { "stderr" } else { "stdout" };
            eprintln!("error: failed printing to {stream}: {err}");
            std::process::exit(1);
        }
        std::process::exit(e.exit_code());
    });
    let demo = matches!(cli.command, cmd::Command::Demo(_));
    match cmd::run(cli.command, &cli.device) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if cmd::was_interrupted(&e) => {
            let next = match demo {
                true => "the same demo command continues it (finished runs are kept, the interrupted one resumes)",
                false => "the same command with --resume continues the run from there",
            };
            eprintln!("{e:#}\n{next}");
            std::process::ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
