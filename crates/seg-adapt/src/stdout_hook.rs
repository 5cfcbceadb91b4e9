//! What a command line tool does when its standard output or error cannot be written: one
//! file, compiled into `seg-adapt` and into `xtask` (which has no dependencies to share it
//! through) by path.

/// `println!` panics when standard output cannot be written (a full disk, `> /dev/full`; a
/// closed pipe where SIGPIPE is ignored): that becomes an error line and a failed exit instead
/// of a panic message, and a closed pipe a quiet exit, as for any Unix tool.
pub(crate) fn exit_cleanly_when_stdout_fails() {
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
