//! Messages on stderr in one style, `clipscope: warning: …`, as ripgrep and fd write
//! theirs: coloured only on a terminal and never when `NO_COLOR` is set.

use std::fmt;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

static QUIET: AtomicBool = AtomicBool::new(false);

/// Whether `-q` was given: no progress bars, only errors.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Whether stderr gets colour: a terminal, and `NO_COLOR` unset or empty
/// (<https://no-color.org>).
pub fn stderr_colour() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// `word` in `colour` (an SGR code) when stderr takes colour.
fn paint(word: &str, colour: &str, on: bool) -> String {
    if on {
        format!("\x1b[{colour}m{word}\x1b[0m")
    } else {
        word.to_string()
    }
}

/// The one-line error the binary prints before it exits.
pub fn error_line(message: &str) -> String {
    format!(
        "clipscope: {}: {}",
        paint("error", "1;31", stderr_colour()),
        clipscope::util::printable(message)
    )
}

/// clap's multi-line usage error (`error: …`, its hints, usage and "For more
/// information" lines) as the one line of [`error_line`]'s message: the usage line is
/// dropped (`--help` has it), hints follow after semicolons.
pub fn usage_error_message(rendered: &str) -> String {
    let mut message = String::new();
    for line in rendered.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("Usage:") {
            continue;
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        let line = match line.strip_prefix("For more information, ") {
            Some(rest) => rest.trim_end_matches('.'),
            None => line,
        };
        if !message.is_empty() {
            // A list of values, or the arguments a line ending in ':' announces, belongs
            // to that line; anything else is a hint of its own.
            let joins = message.ends_with(':') || line.starts_with('[') || line.starts_with('-');
            message.push_str(if joins { " " } else { "; " });
        }
        message.push_str(line);
    }
    message
}

/// Formats events as `clipscope: warning: message field=value`.
struct Style {
    colour: bool,
}

impl<S, N> FormatEvent<S, N> for Style
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        let tag = match level {
            Level::ERROR => paint("error: ", "1;31", self.colour),
            Level::WARN => paint("warning: ", "1;33", self.colour),
            Level::INFO => String::new(),
            _ => paint("debug: ", "2", self.colour),
        };
        write!(writer, "clipscope: {tag}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Set up logging on stderr: warnings by default, `-v` info (progress), `-vv` debug,
/// `-q` errors only; `CLIPSCOPE_LOG` (an `EnvFilter` directive) overrides them.
pub fn init(verbose: u8, quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("CLIPSCOPE_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // To stderr, but to a log file and the status bar while the app owns the terminal.
        .with_writer(clipscope::tui::logsink::log_writer)
        .event_format(Style {
            colour: stderr_colour(),
        })
        .init();
}

/// A progress bar on stderr, hidden under `-q` (indicatif hides it off a terminal).
pub fn progress_bar(len: u64) -> indicatif::ProgressBar {
    if quiet() {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(len)
    }
}

/// Download progress on stderr, silent under `-q`.
pub fn download_progress() -> Box<clipscope::hub::ProgressFn<'static>> {
    if quiet() {
        Box::new(|_: &str, _: u64, _: Option<u64>| {})
    } else {
        Box::new(clipscope::hub::stderr_progress())
    }
}

#[cfg(test)]
mod tests {
    use super::usage_error_message;

    #[test]
    fn clap_usage_errors_become_one_line() {
        let invalid = "error: invalid value 'xml' for '--format <FORMAT>'\n  [possible values: text, json, csv]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_error_message(invalid),
            "invalid value 'xml' for '--format <FORMAT>' [possible values: text, json, csv]; try '--help'"
        );
        let missing = "error: the following required arguments were not provided:\n  --output <OUTPUT>\n\nUsage: clipscope preprocess --output <OUTPUT> <IMAGE>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_error_message(missing),
            "the following required arguments were not provided: --output <OUTPUT>; try '--help'"
        );
        let tip = "error: unexpected argument '-1' found\n\n  tip: to pass '-1' as a value, use '-- -1'\n\nUsage: clipscope classify [OPTIONS]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_error_message(tip),
            "unexpected argument '-1' found; tip: to pass '-1' as a value, use '-- -1'; try '--help'"
        );
    }
}
