//! The drawing path: the terminal's output, and one frame from layout to picture.
//!
//! A frame is laid out first, so that before anything is drawn it is known which
//! picture should be on the screen and where; [`Layer`] says whether the screen must be
//! cleared (a picture must go) and which picture bytes to write after ratatui's diff.
//! The UI thread only copies bytes prepared by the encoder thread.

use std::io::{BufWriter, Stdout, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ratatui::backend::{Backend, ClearType, CrosstermBackend};
use ratatui::layout::{Position, Rect};
use ratatui::Terminal;
use serde_json::json;

use super::app::App;
use super::graphics::encoder::Job;
use super::graphics::layer::{Layer, Wanted};
use super::graphics::Mode;
use super::trace::Trace;
use super::ui;

/// The terminal's output: stdout through a buffer large enough that a frame leaves in
/// few writes, counting bytes for the trace.
pub struct Output {
    inner: BufWriter<Stdout>,
    written: Arc<AtomicU64>,
}

impl Output {
    /// Buffered stdout, and a counter of the bytes written to it.
    pub fn stdout() -> (Self, Arc<AtomicU64>) {
        let written = Arc::new(AtomicU64::new(0));
        let output = Self {
            inner: BufWriter::with_capacity(1 << 16, std::io::stdout()),
            written: written.clone(),
        };
        (output, written)
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The app's terminal.
pub type Term = Terminal<CrosstermBackend<Output>>;

/// Forget what the screen shows and clear it, so that the next frame draws every cell.
/// (ratatui's own `clear` asks the terminal for the cursor position first: a round trip
/// that waits behind whatever picture the terminal is still drawing.)
fn clear_screen(terminal: &mut Term) -> std::io::Result<()> {
    terminal.backend_mut().clear_region(ClearType::All)?;
    // Swapping resets the buffer holding the last frame; the current one is empty.
    terminal.swap_buffers();
    Ok(())
}

/// Draw one frame, and at most one piece of a picture (the loop comes back for the next
/// piece once no input is waiting); returns a picture the encoder should prepare, if
/// the image area needs one it does not have.
pub fn draw_frame(
    terminal: &mut Term,
    app: &mut App,
    layer: &mut Layer,
    trace: &mut Trace,
    written: &AtomicU64,
) -> std::io::Result<Option<Job>> {
    let size = terminal.size()?;
    if layer.resizes_to(size) && app.graphics.mode == Mode::KittyPlaceholders {
        // kitty frees pictures' pixels when ratatui clears the resized screen; the
        // placeholder cells would then show nothing: transmit the picture again.
        app.forget_prepared_picture();
    }
    let layout = ui::layout(Rect::from((Position::ORIGIN, size)), app);
    let job = layout
        .image_area
        .and_then(|area| app.picture_job(area.as_size()));
    let wanted = layout
        .uncovered_image_area()
        .and_then(|area| app.escape_picture_in(area))
        .map(|(rect, picture)| Wanted { rect, picture });
    let plan = layer.plan(size, wanted);
    let before = written.load(Ordering::Relaxed);
    terminal.backend_mut().write_all(plan.before.as_bytes())?;
    if plan.clear {
        clear_screen(terminal)?;
    }
    terminal.draw(|f| ui::draw_layout(f, app, &layout))?;
    let piece = layer.next_piece();
    if let Some((at, bytes)) = &piece {
        let backend = terminal.backend_mut();
        backend.set_cursor_position(*at)?;
        backend.write_all(bytes.as_bytes())?;
        Backend::flush(backend)?;
    }
    if trace.on() {
        let shown = layout
            .image_area
            .and_then(|area| app.picture_in(area))
            .map(|(rect, _)| rect);
        trace.record(json!({
            "ev": "frame",
            "bytes": written.load(Ordering::Relaxed) - before,
            "clear": plan.clear,
            "picture_bytes": piece.as_ref().map_or(0, |(_, b)| b.len()),
            "picture_pending": layer.busy(),
            "size": [size.width, size.height],
            "pane": app.pane.title(),
            "image": app.classify.image_path.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy()),
            "image_area": layout.image_area.map(rect_json),
            "picture": shown.map(rect_json),
            "help": layout.help.map(rect_json),
        }));
    }
    Ok(job)
}

/// `[x, y, width, height]`.
pub fn rect_json(r: Rect) -> serde_json::Value {
    json!([r.x, r.y, r.width, r.height])
}
