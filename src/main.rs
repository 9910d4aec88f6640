//! The `clipscope` binary: parses arguments and hands over to the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
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
        .with_writer(std::io::stderr)
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
