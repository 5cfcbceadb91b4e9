//! The `seg-adapt` binary's commands as a library: the run configuration (parsed and validated
//! before any work starts), the wiring of readers, models, heads and metrics into runs, and one
//! module per subcommand. `main.rs` only sets up logging and dispatches; the fuzz targets
//! (`fuzz/`) and tests reach the config parser through here.

pub mod cmd;
pub mod config;
pub mod run;
