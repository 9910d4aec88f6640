//! The terminal app: the picture on screen, a label editor, live CLIP probabilities.
//!
//! The Elm shape: terminal events, worker responses and timers come in, `App` updates,
//! requests go out to the model worker (a dedicated thread), and the screen is drawn
//! from the state. The UI task never does model work or picture work: images are decoded
//! on a blocking thread, pictures are scaled and encoded for the terminal on the
//! encoder thread (`graphics::encoder`), and those threads and the model's run at a
//! lower priority, on one core less than the machine has.

pub mod action;
pub mod app;
pub mod detect;
pub mod export;
pub mod graphics;
pub mod keymap;
pub mod logsink;
pub mod panes;
pub mod picker;
pub mod results_state;
pub mod screen;
#[cfg(test)]
pub(crate) mod testing;
pub mod text;
pub mod theme;
pub mod trace;
pub mod train_state;
pub mod ui;
pub mod worker;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crossterm::event::{
    DisableBracketedPaste, EnableBracketedPaste, Event, EventStream, KeyEventKind,
};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use futures::StreamExt;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::clip::PromptStyle;
use crate::data::{collect_images, load_image};
use crate::hub::ModelSource;
use app::{App, DecodedImage};
use graphics::layer::Layer;
use graphics::Graphics;
use keymap::Keymap;
use results_state::{find_reports, load_report, LoadedReport, ResultsEffect};
use screen::{Output, Term};
use trace::Trace;
use worker::{Request, WorkerConfig};

/// How images are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageProtocol {
    /// Ask the terminal (only on a TTY), falling back to half-blocks.
    Auto,
    /// Kitty graphics.
    Kitty,
    /// Sixel.
    Sixel,
    /// iTerm2 inline images.
    Iterm2,
    /// Unicode half-blocks: works everywhere.
    Halfblocks,
}

/// How the app was asked to start.
#[derive(Clone, Debug)]
pub struct TuiOptions {
    /// An image, or a folder whose first image is opened.
    pub input: Option<PathBuf>,
    /// Labels to start with (commas or new lines).
    pub labels: String,
    /// The model.
    pub source: ModelSource,
    /// `auto`, `cpu` or `cuda[:N]`.
    pub device: String,
    /// The dense layers' number format.
    pub precision: crate::clip::Precision,
    /// How labels become prompts.
    pub style: PromptStyle,
    /// Graphics protocol.
    pub protocol: ImageProtocol,
    /// Keymap: `default` or `vim`.
    pub keymap: String,
    /// A standing note beside the model's name (what the demo model is, when it stands
    /// in for a real one).
    pub notice: Option<String>,
    /// Answer "none of these" when the top probability is below this.
    pub abstain: Option<f64>,
    /// A report folder (or `report.json`) for the Results pane.
    pub report: Option<PathBuf>,
}

/// Why the app could not run.
#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    /// The terminal could not be set up or drawn to.
    #[error("terminal: {0}")]
    Io(#[from] std::io::Error),
    /// The keymap is invalid.
    #[error(transparent)]
    Keymap(#[from] keymap::KeymapError),
    /// The app needs a terminal.
    #[error("the terminal app needs a terminal on stdin and stdout; for scripts use the headless commands (clipscope classify, embed, ...: see clipscope --help)")]
    NotATerminal,
}

/// Set to any value, the app panics on purpose right after its first frame: the tests
/// use it to check that a panic puts the terminal back before the message is printed.
pub const DEBUG_PANIC_VAR: &str = "CLIPSCOPE_TUI_DEBUG_PANIC";

/// Write what puts the screen back: bracketed paste off, the main screen, the cursor.
pub fn write_restore(out: &mut impl Write) -> std::io::Result<()> {
    crossterm::queue!(
        out,
        DisableBracketedPaste,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    )?;
    out.flush()
}

/// Leave raw mode and the alternate screen. Safe to call more than once.
fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = write_restore(&mut std::io::stdout());
}

/// Run `restore` before the panic hook that was in place (which prints the message),
/// so that the message lands on the normal screen with the terminal in cooked mode.
fn install_panic_hook(restore: fn()) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}

/// Puts the terminal back however the app ends: normally, by error, or by panic.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> std::io::Result<Self> {
        install_panic_hook(restore_terminal);
        // crossterm drops every colour under NO_COLOR, the picture's half blocks too; the
        // theme already leaves out the app's own colours then (docs/tui.md).
        crossterm::style::force_color_output(true);
        enable_raw_mode()?;
        let guard = TerminalGuard;
        execute!(
            std::io::stdout(),
            EnterAlternateScreen,
            EnableBracketedPaste
        )?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// The terminal's cell size in pixels, from the kernel's window size when it knows it.
fn cell_size_from_window() -> Option<(u16, u16)> {
    let ws = crossterm::terminal::window_size().ok()?;
    (ws.width > 0 && ws.height > 0 && ws.columns > 0 && ws.rows > 0)
        .then(|| (ws.width / ws.columns, ws.height / ws.rows))
        .filter(|(w, h)| *w > 0 && *h > 0)
}

/// Give the calling thread a lower scheduling priority (nice 10), so that model work,
/// training and picture encoding yield to the UI thread. Threads it starts inherit it.
pub(crate) fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls about the calling thread itself.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// Leave the UI a core: candle and rayon size their pools from `RAYON_NUM_THREADS`
/// when they start, so set it to one less than the cores unless the user did.
fn leave_a_core_for_the_ui() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Before any other thread exists, so nothing reads the environment concurrently.
        std::env::set_var(
            "RAYON_NUM_THREADS",
            cores.saturating_sub(1).max(1).to_string(),
        );
    }
}

/// What the training thread tells the app.
#[derive(Debug)]
pub enum TrainMessage {
    /// Progress.
    Event(crate::cnn::train::TrainEvent),
    /// The run ended: `Ok(stopped)` or the error.
    Done(Result<bool, String>),
}

/// Run training on its own thread, reporting to the UI; ImageNet weights are fetched
/// there first when asked for.
fn spawn_training(
    mut cfg: crate::cnn::train::TrainConfig,
    imagenet: bool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tx: UnboundedSender<TrainMessage>,
) -> Option<std::thread::JoinHandle<()>> {
    use crate::cnn::train::{Pretrained, TrainEvent};
    std::thread::Builder::new()
        .name("clipscope-train".into())
        .spawn(move || {
            lower_thread_priority();
            let log = |line: String| {
                let _ = tx.send(TrainMessage::Event(TrainEvent::Log(line)));
            };
            if imagenet {
                let mut last = u64::MAX;
                let fetched = crate::hub::ensure_builtin_cnn_weights(
                    cfg.arch.name(),
                    &mut |file, done, total| {
                        if let Some(t) = total.filter(|t| *t > 0) {
                            let pct = done * 100 / t;
                            if pct / 10 != last {
                                last = pct / 10;
                                log(format!("downloading {file}: {pct}%"));
                            }
                        }
                    },
                );
                match fetched {
                    Ok(path) => {
                        cfg.pretrained = Pretrained::File {
                            path,
                            label: "imagenet".into(),
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(TrainMessage::Done(Err(format!("ImageNet weights: {e}"))));
                        return;
                    }
                }
            }
            let result = crate::cnn::train::train(&cfg, &stop, &mut |ev| {
                let _ = tx.send(TrainMessage::Event(ev));
            });
            let _ = tx.send(TrainMessage::Done(
                result.map(|o| o.stopped).map_err(|e| e.to_string()),
            ));
        })
        .ok()
}

type Decoded = (PathBuf, Result<DecodedImage, String>);

/// The log lines captured while the app runs: the file they go to, and the warnings
/// for the status bar.
struct Logs {
    path: Option<PathBuf>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// What the Results pane's background work sends back.
enum ResultsMessage {
    Found(Vec<PathBuf>),
    Loaded(PathBuf, Result<Box<LoadedReport>, String>),
    Image(PathBuf, Result<DecodedImage, String>),
}

/// Run the Results pane's disk work on a blocking thread: finding and reading reports
/// and decoding the step-through's images.
fn run_results_effect(effect: ResultsEffect, tx: UnboundedSender<ResultsMessage>) {
    tokio::task::spawn_blocking(move || {
        let msg = match effect {
            ResultsEffect::FindReports(root) => ResultsMessage::Found(find_reports(&root)),
            ResultsEffect::LoadReport(path) => {
                let result = load_report(&path).map(Box::new).map_err(|e| e.to_string());
                ResultsMessage::Loaded(path, result)
            }
            ResultsEffect::DecodeImage(path) => {
                let result = load_image(&path)
                    .map(DecodedImage::new)
                    .map_err(|e| e.to_string());
                ResultsMessage::Image(path, result)
            }
        };
        let _ = tx.send(msg);
    });
}

/// Decode an image (and make its display copy) on a blocking thread and send it back to
/// the UI task.
fn decode_in_background(path: PathBuf, tx: UnboundedSender<Decoded>) {
    tokio::task::spawn_blocking(move || {
        let result = load_image(&path)
            .map(DecodedImage::new)
            .map_err(|e| e.to_string());
        let _ = tx.send((path, result));
    });
}

/// Run the app until the user quits.
pub fn run(opts: TuiOptions) -> Result<(), TuiError> {
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return Err(TuiError::NotATerminal);
    }
    leave_a_core_for_the_ui();
    let config_dir =
        directories::ProjectDirs::from("", "", "clipscope").map(|d| d.config_dir().to_path_buf());
    let keymap = Keymap::load(&opts.keymap, config_dir.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // From here until the app returns, log lines go to the log file and the status bar.
    let (log_tx, log_rx) = unbounded_channel::<String>();
    let log_capture = logsink::capture(logsink::default_log_path().as_deref(), log_tx);
    let logs = Logs {
        path: log_capture.path.clone(),
        lines: log_rx,
    };
    let _guard = TerminalGuard::enter()?;
    let (graphics, typed) = graphics::setup(opts.protocol, cell_size_from_window());
    let (output, written) = Output::stdout();
    let mut terminal = Terminal::new(CrosstermBackend::new(output))?;
    let result = runtime.block_on(event_loop(
        &mut terminal,
        opts,
        keymap,
        graphics,
        typed,
        &written,
        logs,
    ));
    let _ = terminal.backend_mut().flush();
    result
}

/// Open the image or folder given on the command line.
fn open_first(app: &mut App, input: &std::path::Path, decoded: &UnboundedSender<Decoded>) {
    let first = collect_images(&[input.to_path_buf()]).into_iter().next();
    match first {
        Some(Ok(path)) => {
            if let Some(p) = app.open(path) {
                decode_in_background(p, decoded.clone());
            }
        }
        Some(Err(e)) => {
            app.notice = Some(app::Notice {
                text: e.to_string(),
                error: true,
            })
        }
        None => {
            app.notice = Some(app::Notice {
                text: format!("{}: no images", input.display()),
                error: true,
            })
        }
    }
}

async fn event_loop(
    terminal: &mut Term,
    opts: TuiOptions,
    keymap: Keymap,
    graphics: Graphics,
    typed: Vec<u8>,
    written: &std::sync::atomic::AtomicU64,
    logs: Logs,
) -> Result<(), TuiError> {
    let mut log_rx = logs.lines;
    let mut trace = Trace::from_env();
    trace.record(json!({
        "ev": "graphics",
        "mode": graphics.mode.name(),
        "note": graphics.note,
        "cell": [graphics.cell.0, graphics.cell.1],
        "tmux": graphics.tmux,
        "background": graphics.background,
    }));
    let (resp_tx, mut resp_rx) = unbounded_channel();
    let (decoded_tx, mut decoded_rx) = unbounded_channel::<Decoded>();
    let (train_tx, mut train_rx) = unbounded_channel::<TrainMessage>();
    let (prepared_tx, mut prepared_rx) = unbounded_channel();
    let (results_tx, mut results_rx) = unbounded_channel::<ResultsMessage>();
    let encoder = graphics::encoder::spawn(graphics.clone(), prepared_tx);
    let mut training: Option<std::thread::JoinHandle<()>> = None;
    let worker = worker::spawn(
        WorkerConfig {
            source: opts.source.clone(),
            device: opts.device.clone(),
            precision: opts.precision,
            style: opts.style.clone(),
        },
        resp_tx,
    );
    let send = |reqs: Vec<Request>| {
        for r in reqs {
            let _ = worker.send(r);
        }
    };
    let mut app = App::new(keymap, graphics, &opts.labels);
    app.theme = theme::Theme::from_env();
    app.abstain = opts.abstain;
    app.style = opts.style.clone();
    app.source = Some(opts.source.clone());
    app.log_path = logs.path;
    app.effects
        .push(ResultsEffect::FindReports(PathBuf::from(".")));
    if let Some(report) = &opts.report {
        app.open_report(report.clone());
    }
    app.type_startup_keys(&typed, Instant::now());
    app.model_note = opts.notice.clone();
    if let Some(input) = &opts.input {
        open_first(&mut app, input, &decoded_tx);
    }
    let debug_panic = std::env::var_os(DEBUG_PANIC_VAR).is_some();
    let mut layer = Layer::default();
    let mut events = EventStream::new();
    #[cfg(unix)]
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(unix)]
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        for effect in app.effects.drain(..) {
            run_results_effect(effect, results_tx.clone());
        }
        if let Some(job) = screen::draw_frame(terminal, &mut app, &mut layer, &mut trace, written)?
        {
            let _ = encoder.send(job);
        }
        if debug_panic {
            panic!("{DEBUG_PANIC_VAR} is set: a panic on purpose, to test the terminal restore");
        }
        let deadline = app
            .debounce_deadline()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + std::time::Duration::from_secs(3600));
        let terminate = async {
            #[cfg(unix)]
            tokio::select! { _ = sigterm.recv() => {}, _ = sighup.recv() => {} }
            #[cfg(not(unix))]
            std::future::pending::<()>().await
        };
        // Input first: the next piece of a picture waits while keys are to be handled.
        let drawing = layer.busy();
        tokio::select! {
            biased;
            ev = events.next() => match ev {
                Some(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => {
                    if trace.on() {
                        trace.record(json!({"ev": "key", "key": format!("{:?}", key.code)}));
                    }
                    let (open, reqs) = app.on_key(key, Instant::now());
                    send(reqs);
                    if let Some(p) = open {
                        decode_in_background(p, decoded_tx.clone());
                    }
                }
                Some(Ok(Event::Paste(text))) => {
                    if let Some(p) = app.on_paste(&text, Instant::now()) {
                        decode_in_background(p, decoded_tx.clone());
                    }
                }
                Some(Ok(_)) => {} // resize and the rest: redrawn at the top of the loop
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
            Some(resp) = resp_rx.recv() => app.on_response(resp, Instant::now()),
            Some(line) = log_rx.recv() => app.on_log(line),
            Some((path, result)) = decoded_rx.recv() => {
                send(app.on_image_decoded(path, result, Instant::now()));
            }
            Some(done) = prepared_rx.recv() => {
                if trace.on() {
                    trace.record(json!({
                        "ev": "prepared",
                        "area": [done.area.width, done.area.height],
                        "encode_ms": done.encode_ms,
                    }));
                }
                app.on_picture_prepared(done);
            }
            Some(msg) = train_rx.recv() => app.on_train_message(msg),
            Some(msg) = results_rx.recv() => match msg {
                ResultsMessage::Found(found) => app.results.on_found(found),
                ResultsMessage::Loaded(path, result) => {
                    app.on_report_loaded(path, result.map(|r| *r))
                }
                ResultsMessage::Image(path, result) => app.on_results_image(path, result),
            },
            _ = tokio::time::sleep_until(deadline) => {
                send(app.on_debounce(Instant::now()).into_iter().collect());
            }
            _ = terminate => app.should_quit = true,
            _ = std::future::ready(()), if drawing => {}
        }
        if let Some((cfg, imagenet)) = app.pending_training.take() {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            app.train_stop = Some(stop.clone());
            training = spawn_training(cfg, imagenet, stop, train_tx.clone());
        }
        if app.should_quit {
            break;
        }
    }
    // A kitty picture is removed and its pixels freed before the screen is left.
    let _ = terminal.backend_mut().write_all(layer.finish().as_bytes());
    let _ = worker.send(Request::Shutdown);
    // A run in progress stops after its current step and saves its checkpoint.
    if let (Some(flag), Some(handle)) = (app.train_stop.take(), training.take()) {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = handle.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restore_path_leaves_the_alternate_screen_and_shows_the_cursor() {
        let mut out = Vec::new();
        write_restore(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "\x1b[?2004l\x1b[?1049l\x1b[?25h");
    }
}
