//! `seg-adapt`: the composition root. It names the concrete readers, models, heads and metrics
//! and wires them to one subcommand each; the work itself lives in the library crates.

use clap::Parser;
use seg_adapt::cmd;

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
    /// Where to compute: `cpu`, `cuda` (GPU 0) or `cuda:N` (a build with `--features cuda`);
    /// before or after the subcommand.
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEG_ADAPT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
    // The kernels' runtime switches (`SEG_SGEMM`, `SEG_WINOGRAD`, `SEG_CUDNN`, ...), read once.
    seg_kernels::Settings::from_env().apply();
    seg_cuda::Settings::from_env().apply();
    let cli = Cli::parse();
    match cmd::run(cli.command, &cli.device) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `println!` panics when standard output cannot be written (a full disk, `> /dev/full`; a
/// closed pipe where SIGPIPE is ignored): that becomes an error line and a failed exit instead
/// of a panic message, and a closed pipe a quiet exit, as for any Unix tool.
fn exit_cleanly_when_stdout_fails() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stderr") {
            // Nowhere left to say it.
            std::process::exit(1);
        }
        if message.starts_with("failed printing to stdout") {
            if message.contains("Broken pipe") {
                std::process::exit(141);
            }
            eprintln!("error: {message}");
            std::process::exit(1);
        }
        default(info);
    }));
}
