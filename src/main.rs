//! The `clipscope` binary: parses arguments and hands over to the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// candle's pool for elementwise ops spins up to 25,000 times after each op before it
/// sleeps; on a machine with few cores that spinning thread takes the CPU from rayon's
/// (gemm, convolutions). Parking at once measured faster for both CLIP inference and CNN
/// training on 2 cores (docs/benchmarks.md). A value set by the user wins.
const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

fn main() -> ExitCode {
    if std::env::var_os(SPIN_LIMIT_VAR).is_none() {
        // Before any thread exists, so nothing reads the environment concurrently.
        std::env::set_var(SPIN_LIMIT_VAR, "0");
    }
    let args = cli::args::Cli::parse();
    let level = match args.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CLIPSCOPE_LOG").unwrap_or_else(|_| EnvFilter::new(level)),
        )
        // To stderr, but to a log file and the status bar while the app owns the terminal.
        .with_writer(clipscope::tui::logsink::log_writer)
        .without_time()
        .with_target(false)
        .init();
    let command = args
        .command
        .unwrap_or_else(|| cli::args::Command::Tui(Default::default()));
    match cli::run(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("clipscope: error: {e:#}");
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
