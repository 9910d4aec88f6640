//! A record of what the app draws, for the terminal tests: with `CLIPSCOPE_TUI_TRACE`
//! set to a file path, one JSON object a line (the graphics chosen, each key, each
//! frame with the bytes written and where the picture is), each with `t_ms` since the
//! app started. Off (and free) when the variable is not set.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::Instant;

/// The trace file, if one was asked for.
pub struct Trace {
    out: Option<BufWriter<File>>,
    start: Instant,
}

impl Trace {
    /// Open the file named by `CLIPSCOPE_TUI_TRACE`; a file that cannot be created means
    /// no trace (the app itself is not affected).
    pub fn from_env() -> Self {
        let out = std::env::var_os("CLIPSCOPE_TUI_TRACE")
            .and_then(|path| File::create(path).ok())
            .map(BufWriter::new);
        Self {
            out,
            start: Instant::now(),
        }
    }

    /// Whether records are kept (to skip building them otherwise).
    pub fn on(&self) -> bool {
        self.out.is_some()
    }

    /// Append `record` (an object) with the time since start.
    pub fn record(&mut self, mut record: serde_json::Value) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        if let Some(map) = record.as_object_mut() {
            let ms = self.start.elapsed().as_secs_f64() * 1e3;
            map.insert(
                "t_ms".into(),
                serde_json::json!((ms * 1000.0).round() / 1000.0),
            );
        }
        // A trace that cannot be written is dropped rather than disturbing the app.
        if writeln!(out, "{record}").and_then(|_| out.flush()).is_err() {
            self.out = None;
        }
    }
}
