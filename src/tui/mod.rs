//! The terminal app: the picture on screen, a label editor, live CLIP probabilities.
//!
//! The Elm shape: terminal events, worker responses and timers come in, `App` updates,
//! requests go out to the model worker (a dedicated thread), and the screen is drawn
//! from the state. The UI task never does model work; image decoding also runs on a
//! blocking thread.

pub mod action;
pub mod app;
pub mod detect;
pub mod keymap;
pub mod panes;
pub mod train_state;
pub mod ui;
pub mod worker;

use std::io::{IsTerminal, Stdout};
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
use image::DynamicImage;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use ratatui_image::picker::{Picker, ProtocolType};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::clip::PromptStyle;
use crate::data::{collect_images, load_image};
use crate::hub::ModelSource;
use app::App;
use keymap::Keymap;
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
    /// `cpu` or `cuda[:N]`.
    pub device: String,
    /// How labels become prompts.
    pub style: PromptStyle,
    /// Graphics protocol.
    pub protocol: ImageProtocol,
    /// Keymap: `default` or `vim`.
    pub keymap: String,
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
    #[error("the terminal app needs a terminal on stdin and stdout")]
    NotATerminal,
}

/// Leave raw mode and the alternate screen. Safe to call more than once.
fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        DisableBracketedPaste,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Puts the terminal back however the app ends: normally, by error, or by panic.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> std::io::Result<(Self, Terminal<CrosstermBackend<Stdout>>)> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        enable_raw_mode()?;
        let guard = TerminalGuard;
        execute!(
            std::io::stdout(),
            EnterAlternateScreen,
            EnableBracketedPaste
        )?;
        let terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
        Ok((guard, terminal))
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

/// Choose the graphics protocol, and return the keys typed while the terminal was
/// asked. The terminal is queried only for `auto`, in raw mode, before the event
/// reader starts, and never inside tmux (which needs passthrough for graphics).
fn make_picker(protocol: ImageProtocol) -> (Picker, Vec<u8>) {
    let forced = match protocol {
        ImageProtocol::Auto => None,
        ImageProtocol::Kitty => Some(ProtocolType::Kitty),
        ImageProtocol::Sixel => Some(ProtocolType::Sixel),
        ImageProtocol::Iterm2 => Some(ProtocolType::Iterm2),
        ImageProtocol::Halfblocks => Some(ProtocolType::Halfblocks),
    };
    let in_tmux = std::env::var_os("TMUX").is_some();
    let dumb = std::env::var("TERM").map_or(true, |t| t == "dumb");
    let detected = if forced.is_none() && !in_tmux && !dumb {
        detect::query(std::time::Duration::from_millis(1000)).unwrap_or_default()
    } else {
        detect::Detected::default()
    };
    let iterm = matches!(
        std::env::var("TERM_PROGRAM").as_deref(),
        Ok("iTerm.app") | Ok("WezTerm")
    );
    let chosen = forced
        .or(detected.protocol)
        .or(iterm.then_some(ProtocolType::Iterm2))
        .unwrap_or(ProtocolType::Halfblocks);
    let cell = cell_size_from_window()
        .or(detected.cell_size)
        .unwrap_or((10, 20));
    let mut picker = Picker::from_fontsize(cell);
    picker.set_protocol_type(chosen);
    (picker, detected.typed)
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

type Decoded = (PathBuf, Result<Arc<DynamicImage>, String>);

/// Decode an image on a blocking thread and send it back to the UI task.
fn decode_in_background(path: PathBuf, tx: UnboundedSender<Decoded>) {
    tokio::task::spawn_blocking(move || {
        let result = load_image(&path).map(Arc::new).map_err(|e| e.to_string());
        let _ = tx.send((path, result));
    });
}

/// Run the app until the user quits.
pub fn run(opts: TuiOptions) -> Result<(), TuiError> {
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return Err(TuiError::NotATerminal);
    }
    let config_dir =
        directories::ProjectDirs::from("", "", "clipscope").map(|d| d.config_dir().to_path_buf());
    let keymap = Keymap::load(&opts.keymap, config_dir.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (_guard, mut terminal) = TerminalGuard::enter()?;
    let (picker, typed) = make_picker(opts.protocol);
    runtime.block_on(event_loop(&mut terminal, opts, keymap, picker, typed))
}

async fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    opts: TuiOptions,
    keymap: Keymap,
    picker: Picker,
    typed: Vec<u8>,
) -> Result<(), TuiError> {
    let (resp_tx, mut resp_rx) = unbounded_channel();
    let (decoded_tx, mut decoded_rx) = unbounded_channel::<Decoded>();
    let (train_tx, mut train_rx) = unbounded_channel::<TrainMessage>();
    let mut training: Option<std::thread::JoinHandle<()>> = None;
    let worker = worker::spawn(
        WorkerConfig {
            source: opts.source.clone(),
            device: opts.device.clone(),
            style: opts.style.clone(),
        },
        resp_tx,
    );
    let send = |reqs: Vec<Request>| {
        for r in reqs {
            let _ = worker.send(r);
        }
    };
    let mut app = App::new(keymap, picker, &opts.labels);
    app.type_startup_keys(&typed, Instant::now());
    if let Some(input) = &opts.input {
        let first = collect_images(std::slice::from_ref(input))
            .into_iter()
            .next();
        match first {
            Some(Ok(path)) => {
                if let Some(p) = app.open(path) {
                    decode_in_background(p, decoded_tx.clone());
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
    let mut events = EventStream::new();
    #[cfg(unix)]
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(unix)]
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        terminal.draw(|f| ui::draw(f, &mut app))?;
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
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => {
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
            Some((path, result)) = decoded_rx.recv() => {
                send(app.on_image_decoded(path, result, Instant::now()));
            }
            Some(msg) = train_rx.recv() => app.on_train_message(msg),
            _ = tokio::time::sleep_until(deadline) => {
                send(app.on_debounce(Instant::now()).into_iter().collect());
            }
            _ = terminate => app.should_quit = true,
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
    let _ = worker.send(Request::Shutdown);
    // A run in progress stops after its current step and saves its checkpoint.
    if let (Some(flag), Some(handle)) = (app.train_stop.take(), training.take()) {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = handle.join();
    }
    Ok(())
}
