//! The `clipscope` binary: parses arguments and hands over to the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// candle's pool for elementwise ops spins up to 25,000 times after each op before it
/// sleeps; on a machine with few cores that spinning thread takes the CPU from rayon's
/// (gemm, convolutions). Parking at once measured faster for both CLIP inference and CNN
/// training on 2 cores (docs/benchmarks.md). A value set by the user wins.
const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Die quietly on a closed pipe (`clipscope classify … | head`) as other Unix tools do,
/// instead of Rust's default of a failed write (a panic in `println!`).
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of a signal, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Help and version as clap prints them; a usage error as one `clipscope: error:` line,
/// exit status 2, as every other error.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind::{
        DisplayHelp, DisplayHelpOnMissingArgumentOrSubcommand, DisplayVersion,
    };
    if matches!(
        e.kind(),
        DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let mut message = cli::log::usage_error_message(&e.render().to_string());
    if let Some(hint) = unknown_flag_hint(&e) {
        message.push_str("; ");
        message.push_str(hint);
    }
    eprintln!("{}", cli::log::error_line(&message));
    ExitCode::from(cli::EXIT_ERROR)
}

/// Where the setting a user reached for with a flag clipscope does not have lives.
fn unknown_flag_hint(e: &clap::Error) -> Option<&'static str> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = arg.split('=').next().unwrap_or(arg);
    match flag {
        "--threads" | "--jobs" | "-j" | "--num-threads" => Some(
            "the model's threads are set with RAYON_NUM_THREADS=N (default: one per core), decoding's with --decode-threads N",
        ),
        "--batch-size" | "--batch" | "-b" if command_is(&["classify", "embed"]) => Some(
            "classify and embed pick their own batches (16 images); `clipscope bench --batch 1,16` times sizes",
        ),
        _ => None,
    }
}

/// Whether the command line's subcommand (its first word that is no flag) is one of
/// `names`.
fn command_is(names: &[&str]) -> bool {
    // The global options that take a value in the next word.
    const WITH_VALUE: [&str; 2] = ["--max-file-size", "--max-pixels"];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return names.contains(&arg.as_str());
        }
    }
    false
}

fn main() -> ExitCode {
    default_sigpipe();
    if std::env::var_os(SPIN_LIMIT_VAR).is_none() {
        // Before any thread exists, so nothing reads the environment concurrently.
        std::env::set_var(SPIN_LIMIT_VAR, "0");
    }
    let args = match cli::args::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => return usage_error(e),
    };
    if args
        .command
        .as_ref()
        .is_some_and(cli::args::Command::trains_or_evaluates)
    {
        // Before any other thread exists (see its doc).
        clipscope::util::use_one_heap();
    }
    cli::log::init(args.verbose, args.quiet);
    cli::set_input_limits(&args.limits);
    let command = args
        .command
        .unwrap_or_else(|| cli::args::Command::Tui(Default::default()));
    match cli::run(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "{}",
                cli::log::error_line(&clipscope::util::error_line(e.as_ref()))
            );
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
