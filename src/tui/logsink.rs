//! Where log lines go while the app owns the terminal: never to stderr (that would be
//! drawn over the app). While the app runs, every line is appended to a log file in
//! clipscope's state folder (`tui.log`) and warnings and errors are also sent to the
//! app, whose status bar shows the latest one. Before and after, lines go to stderr.
//!
//! The binary's tracing subscriber writes through [`LogWriter`]; the app calls
//! [`capture`] when it takes the terminal and drops the guard when it gives it back.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::mpsc::UnboundedSender;

use super::text::printable;

/// The capture in force, if the app owns the terminal.
static CAPTURE: Mutex<Option<Capture>> = Mutex::new(None);

struct Capture {
    file: Option<File>,
    to_app: UnboundedSender<String>,
}

/// The log file's default place: `tui.log` in the state folder (on Linux
/// `~/.local/state/clipscope/`), else in the cache folder.
pub fn default_log_path() -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "clipscope")?;
    let dir = dirs.state_dir().unwrap_or(dirs.cache_dir());
    Some(dir.join("tui.log"))
}

/// Stops the capture when dropped: later lines go to stderr again.
pub struct CaptureGuard {
    /// The file lines are written to, if it could be created.
    pub path: Option<PathBuf>,
}

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        if let Ok(mut capture) = CAPTURE.lock() {
            *capture = None;
        }
    }
}

/// From now on, send log lines to `path` (created anew; none if `None` or it cannot be
/// created) and warnings to `to_app`.
pub fn capture(path: Option<&Path>, to_app: UnboundedSender<String>) -> CaptureGuard {
    let file = path.and_then(|p| {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        File::create(p).ok()
    });
    let opened = file
        .is_some()
        .then(|| path.map(Path::to_path_buf))
        .flatten();
    if let Ok(mut current) = CAPTURE.lock() {
        *current = Some(Capture { file, to_app });
    }
    CaptureGuard { path: opened }
}

/// Remove ANSI escape sequences (tracing colours its level names) and any other control
/// character, so that a line is plain text for the file and the status bar.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte (0x40..=0x7e).
            if chars.clone().next() == Some('[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    printable(out.trim()).into_owned()
}

/// Whether a formatted line is a warning or an error: the binary writes
/// `clipscope: warning: …`; tracing's default format puts the level name first.
fn is_warning(line: &str) -> bool {
    let head = line.trim_start();
    let head = head.strip_prefix("clipscope: ").unwrap_or(head);
    ["WARN", "ERROR", "warning:", "error:"]
        .iter()
        .any(|l| head.starts_with(l))
}

/// Write `bytes` to the capture; false when no capture is in force.
fn write_captured(bytes: &[u8]) -> bool {
    let Ok(mut current) = CAPTURE.lock() else {
        return false;
    };
    let Some(capture) = current.as_mut() else {
        return false;
    };
    for line in String::from_utf8_lossy(bytes).lines() {
        let line = plain(line);
        if line.is_empty() {
            continue;
        }
        if let Some(file) = capture.file.as_mut() {
            let _ = writeln!(file, "{line}");
        }
        if is_warning(&line) {
            let shown = line.strip_prefix("clipscope: ").unwrap_or(&line);
            let _ = capture.to_app.send(shown.to_string());
        }
    }
    true
}

/// Append `line` (a message the app showed itself, not through the log) to the log
/// file, so that the file holds everything the status bar said; nothing when no file
/// is open.
pub fn record(line: &str) {
    if let Ok(mut current) = CAPTURE.lock() {
        if let Some(file) = current.as_mut().and_then(|c| c.file.as_mut()) {
            let _ = writeln!(file, "{}", printable(line));
        }
    }
}

/// A log writer: to the capture while the app owns the terminal, else to stderr.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if write_captured(buf) {
            Ok(buf.len())
        } else {
            io::stderr().write_all(buf).map(|_| buf.len())
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// The writer factory for `tracing_subscriber::fmt().with_writer(...)`.
pub fn log_writer() -> LogWriter {
    LogWriter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binarys_warning_style_reaches_the_status_bar() {
        assert!(is_warning(
            "clipscope: warning: repeated labels scored once"
        ));
        assert!(is_warning("clipscope: error: x"));
        assert!(!is_warning("clipscope: classifying 3 inputs"));
        assert!(!is_warning("clipscope: debug: x"));
    }

    #[test]
    fn lines_go_to_the_file_and_warnings_to_the_app_while_captured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/tui.log");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let guard = capture(Some(&path), tx);
        assert_eq!(guard.path.as_deref(), Some(path.as_path()));
        let long = "x".repeat(100_000);
        LogWriter
            .write_all(format!("\x1b[33m WARN\x1b[0m prompt too long: {long}\r\n").as_bytes())
            .unwrap();
        LogWriter.write_all(b" INFO model ready\n").unwrap();
        drop(guard);
        let warning = rx.try_recv().unwrap();
        assert!(
            warning.starts_with("WARN prompt too long: xxx"),
            "{warning:.40}"
        );
        assert!(!warning.chars().any(char::is_control));
        assert!(rx.try_recv().is_err(), "info lines stay in the file");
        let logged = std::fs::read_to_string(&path).unwrap();
        assert_eq!(logged.lines().count(), 2);
        assert!(logged.contains("INFO model ready"));
        assert!(!logged.contains('\x1b'));
        assert!(!write_captured(b"after\n"), "released when the guard drops");
    }
}
