//! The app's state and its update logic, free of terminal I/O so that it can be tested.
//!
//! Events come in (`App::on_key`, `on_paste`, `on_response`, `on_image_decoded`), the
//! state changes, and requests for the worker go out; drawing reads the state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use image::DynamicImage;
use ratatui::layout::{Rect, Size};
use ratatui_textarea::TextArea;

use super::action::Action;
use super::graphics::encoder::{Done, Job};
use super::graphics::{centred, EscapePicture, Graphics, Prepared};
use super::keymap::Keymap;
use super::picker::{self, Picker, PickerOutcome};
use super::results_state::{LoadedReport, ResultsEffect, ResultsState};
use super::text::{paste_lines, paste_one_line};
use super::theme::Theme;
use super::train_state::TrainState;
use super::worker::{Configure, Request, Response};
use crate::clip::zeroshot::{parse_labels, Prediction};
use crate::clip::PromptStyle;
use crate::data::is_image_path;

/// How long typing must pause before the labels are scored again.
pub const DEBOUNCE: Duration = Duration::from_millis(120);

/// The most labels scored at once: a pasted megabyte can hold tens of thousands of
/// lines, and the text encoder would be busy for minutes; the rest are left out with a
/// notice.
pub const MAX_LABELS: usize = 1000;

/// The panes, in tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    /// Image, labels and live probabilities.
    Classify,
    /// Training runs (the CNN baseline).
    Train,
    /// Study reports, and this session's classifications.
    Results,
}

impl Pane {
    /// All panes in tab order.
    pub const ALL: [Pane; 3] = [Pane::Classify, Pane::Train, Pane::Results];

    /// The tab title.
    pub fn title(self) -> &'static str {
        match self {
            Pane::Classify => "Classify",
            Pane::Train => "Train",
            Pane::Results => "Results",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

/// The model's state, as the status bar shows it.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelState {
    /// Loading or downloading, with the latest progress line.
    Loading(String),
    /// Ready.
    Ready {
        /// Name.
        name: String,
        /// Device.
        device: String,
    },
    /// Failed to load.
    Failed(String),
}

/// A message for the status bar.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// The text.
    pub text: String,
    /// Whether it reports an error.
    pub error: bool,
}

/// What the path prompt asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptFor {
    /// An image to classify (Ctrl-O).
    Image,
    /// A report folder for the Results pane.
    Report,
}

/// The path prompt.
pub struct PathPrompt {
    /// What it asks for.
    pub purpose: PromptFor,
    /// The single-line editor.
    pub input: TextArea<'static>,
    /// Candidates shown after an ambiguous Tab.
    pub candidates: Vec<String>,
    /// Whether the text is still the pre-filled folder, unedited: typing `/` or `~`
    /// then starts a new path instead of appending to it.
    pub untouched: bool,
}

/// One finished classification, for the Results pane.
#[derive(Clone, Debug)]
pub struct ResultEntry {
    /// The image.
    pub path: PathBuf,
    /// Its predictions.
    pub predictions: Vec<Prediction>,
    /// Round-trip time of the update.
    pub latency_ms: f64,
}

/// A decoded image and the smaller copy that is drawn: made on a blocking thread, so
/// that the UI thread never touches a full-size image.
pub struct DecodedImage {
    /// The image as decoded, for the model.
    pub full: Arc<DynamicImage>,
    /// A copy at most 1024 pixels a side, for the picture.
    pub display: Arc<DynamicImage>,
}

impl DecodedImage {
    /// Keep `image` and make its display copy.
    pub fn new(image: DynamicImage) -> Self {
        const MAX_SIDE: u32 = 1024;
        let full = Arc::new(image);
        let display = if full.width().max(full.height()) > MAX_SIDE {
            Arc::new(full.thumbnail(MAX_SIDE, MAX_SIDE))
        } else {
            full.clone()
        };
        Self { full, display }
    }
}

/// The image on screen as a picture for the terminal, prepared off the UI thread for
/// the area it is drawn in.
pub struct Picture {
    /// Serial number of the opened image.
    pub id: u64,
    /// The display copy.
    pub image: Arc<DynamicImage>,
    /// The picture and the area size it was prepared for.
    pub prepared: Option<(Size, Prepared)>,
    /// The area size last asked of the encoder.
    asked: Option<Size>,
}

impl Picture {
    fn new(id: u64, image: Arc<DynamicImage>) -> Self {
        Self {
            id,
            image,
            prepared: None,
            asked: None,
        }
    }
}

/// The Classify pane's state.
pub struct ClassifyState {
    /// The label editor.
    pub editor: TextArea<'static>,
    /// The image on screen.
    pub image_path: Option<PathBuf>,
    /// Its picture.
    pub picture: Option<Picture>,
    /// The latest predictions (each names its label).
    pub predictions: Vec<Prediction>,
    /// The image's place among its folder's images: (1-based position, count).
    pub position: Option<(usize, usize)>,
}

/// The whole app.
pub struct App {
    /// The visible pane.
    pub pane: Pane,
    /// The Classify pane.
    pub classify: ClassifyState,
    /// Session history for the Results pane, newest last.
    pub history: Vec<ResultEntry>,
    /// The Results pane.
    pub results: ResultsState,
    /// Answer "none of these" when the top probability is below this.
    pub abstain: Option<f64>,
    /// Work the Results pane asked for, for the event loop to run off the UI thread.
    pub effects: Vec<ResultsEffect>,
    /// The Train pane.
    pub train: TrainState,
    /// A run the user asked for, for the event loop to start (config, fetch ImageNet weights).
    pub pending_training: Option<(crate::cnn::train::TrainConfig, bool)>,
    /// The stop flag of the run in progress.
    pub train_stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Key bindings.
    pub keymap: Keymap,
    /// Whether the help overlay is open.
    pub show_help: bool,
    /// How many lines the help overlay is scrolled down, where the screen is too short
    /// for all of it.
    pub help_scroll: u16,
    /// The open-image prompt, when open.
    pub prompt: Option<PathPrompt>,
    /// The model and template picker, when open.
    pub picker: Option<Picker>,
    /// Whether the popup with the full latest error is open.
    pub show_message: bool,
    /// How labels become prompts (as the worker was last told).
    pub style: PromptStyle,
    /// Where log lines go while the app runs, if the log file could be created.
    pub log_path: Option<PathBuf>,
    /// The model the worker was last asked for (the picker lists it).
    pub source: Option<crate::hub::ModelSource>,
    /// The model's state.
    pub model: ModelState,
    /// How pictures are drawn.
    pub graphics: Graphics,
    /// Styles.
    pub theme: Theme,
    /// Round-trip time of the last update.
    pub last_latency_ms: Option<f64>,
    /// The latest notice.
    pub notice: Option<Notice>,
    /// The latest error notice, kept for F3 after later notices replace it.
    last_error: Option<String>,
    /// A standing note on the model, kept beside its name (what the demo model is).
    pub model_note: Option<String>,
    /// Set when the app should exit.
    pub should_quit: bool,
    /// Serial number of the latest opened image.
    picture_serial: u64,
    generation: u64,
    /// When the latest score request went out, while it is unanswered.
    in_flight: Option<Instant>,
    /// When to score again after typing.
    debounce_until: Option<Instant>,
    /// An image being decoded, so that a late decode of an older one is ignored.
    decoding: Option<PathBuf>,
}

impl PathPrompt {
    /// A prompt for `purpose`, starting with `start` typed.
    fn new(purpose: PromptFor, start: String) -> Self {
        Self {
            purpose,
            input: one_line(start),
            candidates: Vec::new(),
            untouched: true,
        }
    }

    /// The text typed.
    pub fn text(&self) -> String {
        self.input.lines().join("")
    }

    /// Replace the text, cursor at the end.
    fn set_text(&mut self, text: String) {
        self.input = one_line(text);
    }

    /// A line-editing key (as in a shell); false if the key is not one.
    fn edit(&mut self, key: &KeyEvent) -> bool {
        use ratatui_textarea::CursorMove;
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match (key.code, ctrl) {
            (KeyCode::Char('u'), true) => {
                self.input.delete_line_by_head();
            }
            (KeyCode::Char('k'), true) => {
                self.input.delete_line_by_end();
            }
            (KeyCode::Char('w'), true) | (KeyCode::Backspace, true) => {
                self.input.delete_word();
            }
            (KeyCode::Char('a'), true) | (KeyCode::Home, _) => {
                self.input.move_cursor(CursorMove::Head)
            }
            (KeyCode::Char('e'), true) | (KeyCode::End, _) => {
                self.input.move_cursor(CursorMove::End)
            }
            // A one-line field: the editor's own new-line keys do nothing.
            (KeyCode::Char('m' | 'j'), true) => {}
            _ => return false,
        }
        true
    }

    /// Type a key: `/` or `~` on the untouched pre-filled folder starts a new path.
    fn type_key(&mut self, key: KeyEvent) {
        let starts_path = matches!(key.code, KeyCode::Char('/' | '~'))
            && !key
                .modifiers
                .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT);
        if self.untouched && starts_path {
            self.set_text(String::new());
        }
        if !self.edit(&key) {
            if let KeyCode::Char(c) = key.code {
                if c.is_control() {
                    return;
                }
            }
            self.input.input(key);
        }
        self.untouched = false;
    }

    /// Paste text: its first line, cleaned; a path from the root or home replaces the
    /// untouched pre-filled folder.
    fn paste(&mut self, text: &str) {
        let line = paste_one_line(text);
        if self.untouched && line.starts_with(['/', '~']) {
            self.set_text(String::new());
        }
        self.input.insert_str(line);
        self.untouched = false;
    }
}

/// A one-line text field holding `text`, cursor at the end.
fn one_line(text: String) -> TextArea<'static> {
    let mut input = TextArea::new(vec![text]);
    input.move_cursor(ratatui_textarea::CursorMove::End);
    input.set_cursor_line_style(ratatui::style::Style::default());
    input
}

/// What a typed path means: a path typed from the root or home after a pre-filled
/// folder (`/photos//tmp/x.png`, `/photos/~/x.png`) is that path alone.
pub fn typed_path(text: &str) -> PathBuf {
    let restart = text
        .match_indices("//")
        .map(|(i, _)| i + 1)
        .chain(text.match_indices("/~").map(|(i, _)| i + 1))
        .max();
    expand_path(restart.map_or(text, |i| &text[i..]))
}

/// Text area with the app's look.
fn editor(text: &str) -> TextArea<'static> {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    // The cursor starts on a line of its own: what is typed first is a new label, not
    // the end of the last one.
    if lines.last().is_some_and(|l| !l.is_empty()) {
        lines.push(String::new());
    }
    let mut ta = TextArea::new(lines);
    ta.set_cursor_line_style(ratatui::style::Style::default());
    ta.move_cursor(ratatui_textarea::CursorMove::Bottom);
    ta.move_cursor(ratatui_textarea::CursorMove::End);
    ta
}

impl App {
    /// A new app with the labels given on the command line.
    pub fn new(keymap: Keymap, graphics: Graphics, labels: &str) -> Self {
        // Commas and line breaks both separate labels; show one a line.
        let text = parse_labels(&paste_lines(labels)).join("\n");
        Self {
            pane: Pane::Classify,
            classify: ClassifyState {
                editor: editor(&text),
                image_path: None,
                picture: None,
                predictions: Vec::new(),
                position: None,
            },
            history: Vec::new(),
            results: ResultsState::default(),
            abstain: None,
            effects: Vec::new(),
            train: TrainState::default(),
            pending_training: None,
            train_stop: None,
            keymap,
            show_help: false,
            help_scroll: 0,
            prompt: None,
            picker: None,
            show_message: false,
            style: PromptStyle::default(),
            log_path: None,
            source: None,
            model: ModelState::Loading("starting…".into()),
            graphics,
            theme: Theme::default(),
            last_latency_ms: None,
            notice: None,
            last_error: None,
            model_note: None,
            should_quit: false,
            picture_serial: 0,
            generation: 0,
            in_flight: None,
            debounce_until: None,
            decoding: None,
        }
    }

    /// Whether the shown predictions fall below the abstain threshold: the answer is
    /// "none of these". Compared in f32, as the study does, so that a probability equal
    /// to the threshold as written is answered.
    pub fn abstains(&self, predictions: &[Prediction]) -> bool {
        match (self.abstain, predictions.first()) {
            (Some(threshold), Some(top)) => (top.probability as f32) < threshold as f32,
            _ => false,
        }
    }

    /// The labels in the editor.
    pub fn labels(&self) -> Vec<String> {
        parse_labels(&self.classify.editor.lines().join("\n"))
    }

    /// Whether the editor holds no label (cheaper than parsing them, for every frame).
    pub fn no_labels(&self) -> bool {
        self.classify
            .editor
            .lines()
            .iter()
            .all(|l| l.split(',').all(|part| part.trim().is_empty()))
    }

    /// The latest error worth reading in full: the model's failure, else the last error
    /// notice, even once a later warning or message has taken its place in the status bar.
    pub fn latest_error(&self) -> Option<&str> {
        match &self.model {
            ModelState::Failed(message) => Some(message),
            _ => self.last_error.as_deref(),
        }
    }

    /// A warning logged while the app runs (the log file has every line): shown in the
    /// status bar.
    pub fn on_log(&mut self, line: String) {
        let error = line.starts_with("ERROR");
        self.show_notice(line, error);
    }

    /// Whether the shown predictions are for older labels than those in the editor
    /// (an update is pending or running): they are drawn dimmed.
    pub fn updating(&self) -> bool {
        self.debounce_until.is_some() || self.in_flight.is_some()
    }

    /// When the pending debounce fires, if one is pending.
    pub fn debounce_deadline(&self) -> Option<Instant> {
        self.debounce_until
    }

    /// Show an error notice (for tests of how notices are drawn).
    #[cfg(test)]
    pub(crate) fn notify_for_test(&mut self, text: &str) {
        self.notify(text, true);
    }

    /// Show `text` in the status bar and write it to the log file, which is to hold
    /// everything the app said.
    fn notify(&mut self, text: impl Into<String>, error: bool) {
        let text = text.into();
        let level = if error { "ERROR" } else { "INFO" };
        super::logsink::record(&format!("{level} app: {text}"));
        self.show_notice(text, error);
    }

    /// Show `text` in the status bar (a log line is in the file already).
    fn show_notice(&mut self, text: String, error: bool) {
        if error {
            self.last_error = Some(text.clone());
        }
        self.notice = Some(Notice { text, error });
    }

    /// Ask for `path` to be opened: an image, or a folder's first image. A path that
    /// cannot be opened is a notice.
    pub fn open(&mut self, path: PathBuf) -> Option<PathBuf> {
        let path = if path.is_dir() {
            match folder_images(&path).into_iter().next() {
                Some(first) => first,
                None => {
                    self.notify(
                        format!("{}: no images in this folder", path.display()),
                        true,
                    );
                    return None;
                }
            }
        } else {
            path
        };
        if !path.exists() {
            self.notify(format!("{}: no such file", path.display()), true);
            return None;
        }
        if !path.is_file() {
            self.notify(format!("{}: not a regular file", path.display()), true);
            return None;
        }
        self.decoding = Some(path.clone());
        self.notify(format!("opening {}…", path.display()), false);
        Some(path)
    }

    /// A decoded image (or the error) arrived; returns requests for the worker.
    pub fn on_image_decoded(
        &mut self,
        path: PathBuf,
        result: Result<DecodedImage, String>,
        now: Instant,
    ) -> Vec<Request> {
        if self.decoding.as_ref() != Some(&path) {
            return Vec::new(); // superseded by a newer open
        }
        self.decoding = None;
        match result {
            Err(message) => {
                self.notify(message, true);
                Vec::new()
            }
            Ok(decoded) => {
                self.classify.picture = Some(self.new_picture(decoded.display));
                self.classify.position = folder_position(&path);
                self.classify.image_path = Some(path.clone());
                self.classify.predictions.clear();
                self.notice = None;
                let mut reqs = vec![Request::SetImage {
                    path,
                    image: decoded.full,
                }];
                reqs.extend(self.score_now(now));
                reqs
            }
        }
    }

    /// A picture with the next serial number.
    fn new_picture(&mut self, image: Arc<DynamicImage>) -> Picture {
        self.picture_serial += 1;
        Picture::new(self.picture_serial, image)
    }

    /// The picture the visible pane shows: the Classify pane's image, or the Results
    /// pane's misclassified image.
    fn shown_picture(&self) -> Option<&Picture> {
        match self.pane {
            Pane::Classify => self.classify.picture.as_ref(),
            Pane::Results if self.results.shows_picture() => self.results.picture.as_ref(),
            _ => None,
        }
    }

    fn shown_picture_mut(&mut self) -> Option<&mut Picture> {
        match self.pane {
            Pane::Classify => self.classify.picture.as_mut(),
            Pane::Results if self.results.shows_picture() => self.results.picture.as_mut(),
            _ => None,
        }
    }

    /// The picture to prepare for an image area of `area` cells, unless it is prepared
    /// for that size or already asked for.
    pub fn picture_job(&mut self, area: Size) -> Option<Job> {
        let picture = self.shown_picture_mut()?;
        let prepared_for = picture.prepared.as_ref().map(|(size, _)| *size);
        if area.width == 0 || area.height == 0 || prepared_for == Some(area) {
            return None;
        }
        if picture.asked == Some(area) {
            return None;
        }
        picture.asked = Some(area);
        Some(Job {
            picture: picture.id,
            image: picture.image.clone(),
            area,
        })
    }

    /// The encoder prepared a picture; kept if it is for the image on screen.
    pub fn on_picture_prepared(&mut self, done: Done) {
        let Some(picture) = [&mut self.classify.picture, &mut self.results.picture]
            .into_iter()
            .flatten()
            .find(|p| p.id == done.picture)
        else {
            return; // an image opened since
        };
        match done.result {
            Ok(prepared) => picture.prepared = Some((done.area, prepared)),
            Err(message) => self.notify(format!("picture: {message}"), true),
        }
    }

    /// Drop the prepared picture, so that it is prepared (and sent) again.
    pub fn forget_prepared_picture(&mut self) {
        for picture in [&mut self.classify.picture, &mut self.results.picture]
            .into_iter()
            .flatten()
        {
            picture.prepared = None;
            picture.asked = None;
        }
    }

    /// The picture prepared for an image area `area` and where it goes in it.
    pub fn picture_in(&self, area: Rect) -> Option<(Rect, &Prepared)> {
        let (size, prepared) = self.shown_picture()?.prepared.as_ref()?;
        (*size == area.as_size()).then(|| (centred(area, prepared.size()), prepared))
    }

    /// The escape-sequence picture to show in image area `area`, if it is ready.
    pub fn escape_picture_in(&self, area: Rect) -> Option<(Rect, &EscapePicture)> {
        match self.picture_in(area)? {
            (rect, Prepared::Escape(e)) => Some((rect, e)),
            _ => None,
        }
    }

    /// Score the current labels now (no debounce).
    fn score_now(&mut self, now: Instant) -> Option<Request> {
        self.debounce_until = None;
        let mut labels = self.labels();
        if labels.len() > MAX_LABELS {
            self.notify(
                format!("scoring the first {MAX_LABELS} of {} labels", labels.len()),
                false,
            );
            labels.truncate(MAX_LABELS);
        }
        if labels.is_empty() || self.classify.image_path.is_none() {
            self.classify.predictions.clear();
            self.in_flight = None;
            return None;
        }
        if matches!(self.model, ModelState::Failed(_)) {
            // No model: old probabilities for other labels would mislead.
            self.classify.predictions.clear();
            return None;
        }
        self.generation += 1;
        self.in_flight = Some(now);
        Some(Request::Score {
            generation: self.generation,
            labels,
        })
    }

    /// The debounce timer fired.
    pub fn on_debounce(&mut self, now: Instant) -> Option<Request> {
        match self.debounce_until {
            Some(t) if t <= now => self.score_now(now),
            _ => None,
        }
    }

    /// A message from the worker.
    pub fn on_response(&mut self, resp: Response, now: Instant) {
        match resp {
            Response::Progress(line) => self.model = ModelState::Loading(line),
            Response::ModelReady {
                source,
                name,
                device,
                load_ms,
            } => {
                self.source = Some(source);
                self.model = ModelState::Ready { name, device };
                tracing::info!("model ready in {load_ms:.0} ms");
            }
            Response::ModelFailed(message) => {
                self.in_flight = None;
                self.notify(format!("model: {message}"), true);
                self.model = ModelState::Failed(message);
            }
            Response::ModelKept {
                source,
                tried,
                name,
                device,
            } => {
                let kept = ModelState::Ready {
                    name: name.clone(),
                    device,
                };
                let why = match std::mem::replace(&mut self.model, kept) {
                    ModelState::Failed(why) => why,
                    _ => String::new(),
                };
                // The worker went back to the model in use; so does the picker.
                self.source = Some(source);
                let chosen = match tried {
                    crate::hub::ModelSource::Dir(dir) => dir.display().to_string(),
                    crate::hub::ModelSource::Named(Some(n)) => n,
                    crate::hub::ModelSource::Named(None) => "the default model".to_string(),
                };
                self.notify(
                    format!("still using {name}; {chosen} did not load: {why}"),
                    true,
                );
                // Labels typed while the other model was tried are scored now.
                self.debounce_until = Some(now);
            }
            Response::Scores {
                generation,
                path,
                predictions,
                compute_ms: _,
            } => {
                // Only the answer to the latest request is shown: never a stale result.
                if generation != self.generation {
                    return;
                }
                let latency = self
                    .in_flight
                    .take()
                    .map(|t| now.duration_since(t).as_secs_f64() * 1e3);
                self.last_latency_ms = latency;
                self.classify.predictions = predictions.clone();
                self.history.push(ResultEntry {
                    path,
                    predictions,
                    latency_ms: latency.unwrap_or(0.0),
                });
            }
            Response::Failed {
                generation,
                message,
            } => {
                if generation == 0 || generation == self.generation {
                    self.in_flight = None;
                    self.notify(message, true);
                }
            }
        }
    }

    /// A key press; returns a path to open, if the key asked for one, and worker requests.
    pub fn on_key(&mut self, key: KeyEvent, now: Instant) -> (Option<PathBuf>, Vec<Request>) {
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            self.should_quit = true;
            return (None, Vec::new());
        }
        let key = match key.code {
            // A line feed or carriage return read as a character is Enter.
            KeyCode::Char('\n' | '\r') => KeyEvent::new(KeyCode::Enter, key.modifiers),
            KeyCode::Char(c) if c.is_control() => return (None, Vec::new()), // never typed
            _ => key,
        };
        if self.prompt.is_some() {
            // The prompt owns the keyboard (Tab completes, Enter opens) but for Cancel.
            if self.keymap.action_for(&key, true) == Some(Action::Cancel) {
                self.prompt = None;
                return (None, Vec::new());
            }
            return (self.prompt_key(key), Vec::new());
        }
        if let Some(picker) = self.picker.as_mut() {
            return match picker.on_key(key) {
                PickerOutcome::Open => (None, Vec::new()),
                PickerOutcome::Closed => {
                    self.picker = None;
                    (None, Vec::new())
                }
                PickerOutcome::Chosen(entry) => {
                    self.picker = None;
                    (None, self.reconfigure(entry.change, now))
                }
            };
        }
        if self.show_message {
            // The message popup closes on any key.
            self.show_message = false;
            return (None, Vec::new());
        }
        if self.show_help && self.scroll_help(key.code) {
            // The help's own keys come first: PgDn must not turn the picture behind it.
            return (None, Vec::new());
        }
        let typing = !self.show_help
            && (self.pane == Pane::Classify
                || (self.pane == Pane::Train && self.train.is_editing()));
        let action = self
            .keymap
            .action_for(&key, typing)
            .filter(|a| !a.results_only() || (self.pane == Pane::Results && !self.show_help));
        if let Some(action) = action {
            return self.on_action(action, now);
        }
        if self.show_help {
            return (None, Vec::new());
        }
        if self.pane == Pane::Train {
            self.train.on_key(key);
            return (None, Vec::new());
        }
        if self.pane == Pane::Classify && self.classify.editor.input(key) {
            self.debounce_until = Some(now + DEBOUNCE);
        }
        (None, Vec::new())
    }

    /// Scroll the help overlay with the arrow and page keys (the drawing keeps it from
    /// going past the end); whether `code` was one of them.
    fn scroll_help(&mut self, code: KeyCode) -> bool {
        const PAGE: u16 = 10;
        self.help_scroll = match code {
            KeyCode::Down | KeyCode::Char('j') => self.help_scroll.saturating_add(1),
            KeyCode::Up | KeyCode::Char('k') => self.help_scroll.saturating_sub(1),
            KeyCode::PageDown | KeyCode::Char(' ') => self.help_scroll.saturating_add(PAGE),
            KeyCode::PageUp => self.help_scroll.saturating_sub(PAGE),
            KeyCode::Home => 0,
            KeyCode::End => u16::MAX,
            _ => return false,
        };
        true
    }

    /// Run an action.
    pub fn on_action(&mut self, action: Action, now: Instant) -> (Option<PathBuf>, Vec<Request>) {
        let mut open = None;
        let mut reqs = Vec::new();
        match action {
            Action::Quit => self.should_quit = true,
            Action::Help => {
                self.show_help = !self.show_help;
                self.help_scroll = 0;
            }
            Action::Cancel => {
                self.show_help = false;
                self.prompt = None;
                self.train.editing = None;
            }
            Action::StartTraining => self.start_training(),
            Action::StopTraining => match &self.train_stop {
                Some(flag) => {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    self.train
                        .log_line("stopping after this step; a checkpoint will be saved…");
                }
                None => self.notify("no training run to stop", false),
            },
            Action::NextPane => self.pane = Pane::ALL[(self.pane.index() + 1) % 3],
            Action::PrevPane => self.pane = Pane::ALL[(self.pane.index() + 2) % 3],
            Action::ShowClassify => self.pane = Pane::Classify,
            Action::ShowTrain => self.pane = Pane::Train,
            Action::ShowResults => self.pane = Pane::Results,
            Action::OpenImage => {
                let start = self
                    .classify
                    .image_path
                    .as_ref()
                    .and_then(|p| p.parent())
                    .map(|d| format!("{}/", d.display()))
                    .unwrap_or_default();
                self.prompt = Some(PathPrompt::new(PromptFor::Image, start));
            }
            Action::OpenReport => {
                let start = self
                    .results
                    .loaded
                    .as_ref()
                    .map(|l| format!("{}/", l.dir.display()))
                    .unwrap_or_default();
                self.prompt = Some(PathPrompt::new(PromptFor::Report, start));
            }
            Action::NextView | Action::PrevView => {
                let effect = self.results.step_view(action == Action::NextView);
                self.effects.extend(effect);
            }
            Action::NextRow | Action::PrevRow => self.results.step_row(action == Action::NextRow),
            Action::NextError | Action::PrevError => {
                let effect = self.results.step_error(action == Action::NextError);
                self.effects.extend(effect);
            }
            Action::Choose => {
                let effect = self.results.choose();
                self.effects.extend(effect);
            }
            Action::NextImage | Action::PrevImage => {
                match self
                    .classify
                    .image_path
                    .as_deref()
                    .and_then(|p| neighbour(p, action == Action::NextImage))
                {
                    Some(p) => open = self.open(p),
                    None => self.notify("no other image in this folder", false),
                }
            }
            Action::ClearLabels => {
                self.classify.editor = editor("");
                reqs.extend(self.score_now(now));
            }
            Action::PickModel => {
                self.show_help = false;
                let mut entries = picker::entries(&self.style);
                if let Some(crate::hub::ModelSource::Dir(dir)) = &self.source {
                    picker::add_folder(&mut entries, dir);
                }
                self.picker = Some(Picker::new(entries).at_model(self.source.as_ref()));
            }
            Action::ShowMessage => {
                self.show_help = false;
                match self.latest_error() {
                    Some(_) => self.show_message = true,
                    None => {
                        let log = self
                            .log_path
                            .as_ref()
                            .map_or(String::new(), |p| format!(" (the log is {})", p.display()));
                        self.notify(format!("no error to show{log}"), false)
                    }
                }
            }
            Action::Export => self.export_to(Path::new(".")),
        }
        (open, reqs)
    }

    fn prompt_key(&mut self, key: KeyEvent) -> Option<PathBuf> {
        let prompt = self.prompt.as_mut()?;
        match key.code {
            KeyCode::Enter => {
                let path = typed_path(&prompt.text());
                let purpose = prompt.purpose;
                self.prompt = None;
                match purpose {
                    PromptFor::Image => self.open(path),
                    PromptFor::Report => {
                        self.open_report(path);
                        None
                    }
                }
            }
            KeyCode::Tab => {
                let text = typed_path(&prompt.text()).display().to_string();
                let (completed, candidates) = complete_path(&text, prompt.purpose);
                prompt.set_text(completed);
                prompt.candidates = candidates;
                prompt.untouched = false;
                None
            }
            _ => {
                prompt.type_key(key);
                None
            }
        }
    }

    /// Read a report folder (or `report.json`) off the UI thread and show it.
    pub fn open_report(&mut self, path: PathBuf) {
        let effect = self.results.load(path);
        self.effects.push(effect);
        self.pane = Pane::Results;
    }

    /// A report was read (or failed to be).
    pub fn on_report_loaded(&mut self, path: PathBuf, result: Result<LoadedReport, String>) {
        if let Err(message) = &result {
            if self.results.loading.as_ref() == Some(&path) {
                self.notify(format!("report: {message}"), true);
            }
        }
        let effect = self.results.on_loaded(path, result);
        self.effects.extend(effect);
    }

    /// The step-through's image was decoded (or failed to be).
    pub fn on_results_image(&mut self, path: PathBuf, result: Result<DecodedImage, String>) {
        if self.results.decoding.as_ref() != Some(&path) {
            return; // the user stepped on since
        }
        let picture = result.map(|decoded| self.new_picture(decoded.display));
        self.results.on_image(&path, picture);
    }

    fn start_training(&mut self) {
        if self.train.progress.running {
            self.notify("a training run is already going (F6 stops it)", false);
            return;
        }
        match self.train.config() {
            Ok((cfg, imagenet)) => {
                self.train.start(cfg.epochs);
                self.train.log_line(format!(
                    "starting: {} epochs on {} into {}",
                    cfg.epochs,
                    cfg.data.display(),
                    cfg.output.display()
                ));
                self.pending_training = Some((cfg, imagenet));
                self.pane = Pane::Train;
            }
            Err(message) => {
                self.train.log_line(message.clone());
                self.notify(message, true);
            }
        }
    }

    /// A message from the training thread.
    pub fn on_train_message(&mut self, msg: super::TrainMessage) {
        match msg {
            super::TrainMessage::Event(ev) => self.train.on_event(ev),
            super::TrainMessage::Done(result) => {
                self.train.progress.running = false;
                self.train_stop = None;
                match result {
                    Ok(true) => self
                        .train
                        .log_line("stopped; continue with clipscope train --resume"),
                    Ok(false) => self.train.log_line("training finished"),
                    Err(e) => {
                        self.train.log_line(format!("failed: {e}"));
                        self.notify(format!("training: {e}"), true);
                    }
                }
            }
        }
    }

    /// Keys typed while the terminal was being queried, as raw bytes: printable text,
    /// Enter and Backspace go to the label editor, Ctrl-C quits. Nothing typed is lost.
    pub fn type_startup_keys(&mut self, bytes: &[u8], now: Instant) {
        for c in String::from_utf8_lossy(bytes).chars() {
            let code = match c {
                '\x03' => {
                    self.should_quit = true;
                    return;
                }
                '\r' | '\n' => KeyCode::Enter,
                '\x7f' | '\x08' => KeyCode::Backspace,
                c if !c.is_control() => KeyCode::Char(c),
                _ => continue,
            };
            if self
                .classify
                .editor
                .input(KeyEvent::new(code, KeyModifiers::NONE))
            {
                self.debounce_until = Some(now + DEBOUNCE);
            }
        }
    }

    /// Text pasted into the terminal: a path to an existing file opens it; anything
    /// else is typed into the focused editor.
    pub fn on_paste(&mut self, text: &str, now: Instant) -> Option<PathBuf> {
        let one_line = paste_one_line(text.trim());
        let pasted_file = pasted_path_spellings(&one_line)
            .into_iter()
            .map(|p| expand_path(&p))
            .find(|p| p.is_file());
        if let (false, Some(file)) = (text.trim().contains(['\r', '\n']), pasted_file) {
            self.prompt = None;
            return self.open(file);
        }
        if let Some(p) = self.prompt.as_mut() {
            p.paste(text);
        } else if self.pane == Pane::Classify && self.picker.is_none() {
            // Line breaks (CR, LF, CRLF) become lines; no control character gets in.
            let lines = paste_lines(text);
            let ratatui_textarea::DataCursor(row, col) = self.classify.editor.cursor();
            let line = &self.classify.editor.lines()[row];
            if lines.contains('\n') && col > 0 && col == line.chars().count() {
                // A list pasted after a label starts on a line of its own.
                self.classify.editor.insert_newline();
            }
            self.classify.editor.insert_str(lines);
            self.debounce_until = Some(now + DEBOUNCE);
        }
        None
    }
}

/// The ways a pasted line may spell a path: as it is, without quotes, without a
/// `file://` prefix, and with what shells and file managers add undone (a backslash
/// before a space, `%20` in a dropped file's URL).
fn pasted_path_spellings(line: &str) -> Vec<String> {
    let bare = line.trim().trim_matches(['\'', '"']);
    let (path, url) = match bare.strip_prefix("file://") {
        Some(rest) => (rest, true),
        None => (bare, false),
    };
    let mut spellings = vec![path.to_string()];
    if path.contains('\\') {
        spellings.push(shell_unescaped(path));
    }
    if url && path.contains('%') {
        spellings.push(percent_decoded(path));
    }
    spellings
}

/// `text` with each backslash escape (`\ `, `\(`) replaced by the character escaped.
fn shell_unescaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// A URL's path with its `%XX` escapes decoded (left as it is where they do not decode
/// to UTF-8).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

impl App {
    /// Tell the worker to load another model or use another prompt style, and score
    /// again with it (the worker loads on its own thread; the status bar shows progress).
    fn reconfigure(&mut self, change: Configure, now: Instant) -> Vec<Request> {
        if let Some(style) = &change.style {
            self.style = style.clone();
            self.notify(format!("prompts: {}", style.describe()), false);
        }
        if let Some(source) = &change.source {
            self.source = Some(source.clone());
            self.model = ModelState::Loading("loading model…".into());
            self.model_note = None;
        }
        let mut reqs = vec![Request::Configure(change)];
        reqs.extend(self.score_now(now));
        reqs
    }

    /// Export the session's classifications and the probabilities on screen into `dir`
    /// (CSV and JSON, written atomically); the status bar names the files.
    pub fn export_to(&mut self, dir: &Path) {
        let current = self
            .classify
            .image_path
            .as_deref()
            .filter(|_| !self.classify.predictions.is_empty())
            .map(|image| super::export::Current {
                image,
                predictions: &self.classify.predictions,
            });
        let stem = super::export::stem_now();
        match super::export::export(dir, &stem, &self.history, current.as_ref()) {
            Ok([csv, json]) => {
                let json_ext = json
                    .extension()
                    .map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
                self.notify(format!("exported {} and {json_ext}", csv.display()), false)
            }
            Err(e) => self.notify(format!("export: {e}"), true),
        }
    }
}

/// `~/x` to the home folder.
fn expand_path(text: &str) -> PathBuf {
    match text.strip_prefix("~/") {
        Some(rest) => directories::BaseDirs::new()
            .map(|d| d.home_dir().join(rest))
            .unwrap_or_else(|| PathBuf::from(text)),
        None => PathBuf::from(text),
    }
}

/// Complete a path as far as it is unambiguous; list the candidates when it is not.
/// Folders are offered, and image files (or `.json` files, for a report).
pub fn complete_path(text: &str, purpose: PromptFor) -> (String, Vec<String>) {
    let (dir_part, prefix) = match text.rfind('/') {
        Some(i) => (&text[..=i], &text[i + 1..]),
        None => ("", text),
    };
    let dir = if dir_part.is_empty() {
        PathBuf::from(".")
    } else {
        expand_path(dir_part)
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return (text.to_string(), Vec::new());
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with(prefix) || (name.starts_with('.') && !prefix.starts_with('.')) {
                return None;
            }
            let is_dir = e.path().is_dir();
            let wanted = match purpose {
                PromptFor::Image => is_image_path(&e.path()),
                PromptFor::Report => name.ends_with(".json"),
            };
            (is_dir || wanted).then(|| if is_dir { format!("{name}/") } else { name })
        })
        .collect();
    names.sort();
    let common = names
        .iter()
        .skip(1)
        .fold(names.first().cloned().unwrap_or_default(), |acc, n| {
            acc.chars()
                .zip(n.chars())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a)
                .collect()
        });
    let completed = if common.len() > prefix.len() {
        format!("{dir_part}{common}")
    } else {
        text.to_string()
    };
    let candidates = if names.len() > 1 { names } else { Vec::new() };
    (completed, candidates)
}

/// The image files in `dir`, in name order.
pub fn folder_images(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image_path(p))
        .collect();
    files.sort();
    files
}

/// `path`'s folder and its images, and `path`'s index among them.
fn place_in_folder(path: &Path) -> Option<(Vec<PathBuf>, usize)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let files = folder_images(dir);
    let name = path.file_name()?;
    let i = files.iter().position(|p| p.file_name() == Some(name))?;
    Some((files, i))
}

/// `path`'s place among its folder's images: (1-based position, count).
pub fn folder_position(path: &Path) -> Option<(usize, usize)> {
    place_in_folder(path).map(|(files, i)| (i + 1, files.len()))
}

/// The next or previous image file in `path`'s folder, in name order, wrapping around.
pub fn neighbour(path: &Path, forward: bool) -> Option<PathBuf> {
    let (files, i) = place_in_folder(path)?;
    if files.len() < 2 {
        return None;
    }
    let j = if forward {
        (i + 1) % files.len()
    } else {
        (i + files.len() - 1) % files.len()
    };
    Some(files[j].clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::KeyEvent;

    fn app(labels: &str) -> App {
        App::new(
            Keymap::builtin("default").unwrap(),
            Graphics::halfblocks(),
            labels,
        )
    }

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    fn pred(label: &str, p: f64) -> Prediction {
        Prediction {
            label: label.into(),
            probability: p,
        }
    }

    fn with_image(a: &mut App, now: Instant) -> Vec<Request> {
        let path = PathBuf::from("img.png");
        a.decoding = Some(path.clone());
        let img = DecodedImage::new(DynamicImage::new_rgb8(8, 8));
        a.on_image_decoded(path, Ok(img), now)
    }

    #[test]
    fn labels_from_the_command_line_are_one_a_line() {
        let a = app("cat, dog,,red car");
        // And the cursor on a line of its own, so typing adds a label.
        assert_eq!(a.classify.editor.lines(), ["cat", "dog", "red car", ""]);
        assert_eq!(a.classify.editor.cursor(), (3, 0));
        assert_eq!(a.labels(), ["cat", "dog", "red car"]);
    }

    #[test]
    fn opening_an_image_embeds_it_and_scores_at_once() {
        let mut a = app("cat,dog");
        let reqs = with_image(&mut a, Instant::now());
        assert!(matches!(reqs[0], Request::SetImage { .. }));
        assert!(matches!(&reqs[1], Request::Score { generation: 1, labels } if labels.len() == 2));
        assert!(a.updating());
    }

    #[test]
    fn typing_is_debounced_and_only_the_latest_result_is_shown() {
        let t0 = Instant::now();
        let mut a = app("cat");
        with_image(&mut a, t0);
        a.on_key(key('\n'), t0);
        a.on_key(key('x'), t0);
        assert!(a.on_debounce(t0).is_none(), "not before the pause");
        let req = a.on_debounce(t0 + DEBOUNCE).unwrap();
        let Request::Score { generation, labels } = req else {
            panic!()
        };
        assert_eq!(
            (generation, labels),
            (2, vec!["cat".to_string(), "x".to_string()])
        );
        // The answer to the older request arrives late: dropped, never shown.
        a.on_response(
            Response::Scores {
                generation: 1,
                path: "img.png".into(),
                predictions: vec![pred("cat", 1.0)],
                compute_ms: 1.0,
            },
            t0,
        );
        assert!(a.classify.predictions.is_empty());
        a.on_response(
            Response::Scores {
                generation: 2,
                path: "img.png".into(),
                predictions: vec![pred("x", 0.6), pred("cat", 0.4)],
                compute_ms: 1.0,
            },
            t0 + Duration::from_millis(200),
        );
        assert_eq!(a.classify.predictions.len(), 2);
        assert!(!a.updating());
        assert_eq!(a.history.len(), 1);
        // Latency runs from the request (after the pause) to the answer.
        assert!((a.last_latency_ms.unwrap() - 80.0).abs() < 1.0);
    }

    #[test]
    fn keys_typed_during_the_terminal_query_are_kept() {
        let mut a = app("cat");
        a.type_startup_keys(b"\rdog\x7fg", Instant::now());
        assert_eq!(a.labels(), ["cat", "dog"]);
        assert!(a.debounce_deadline().is_some());
        a.type_startup_keys(b"\x03", Instant::now());
        assert!(a.should_quit);
    }

    #[test]
    fn ctrl_c_quits_whatever_the_keymap() {
        let mut a = app("");
        let mut map = Keymap::builtin("default").unwrap();
        map.apply("u", "[bindings]\n\"ctrl-c\" = \"help\"").unwrap();
        a.keymap = map;
        a.on_key(
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Instant::now(),
        );
        assert!(a.should_quit);
    }

    #[test]
    fn panes_cycle_and_help_toggles() {
        let mut a = app("");
        let now = Instant::now();
        a.on_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE), now);
        assert_eq!(a.pane, Pane::Train);
        a.on_key(KeyEvent::new(KeyCode::BackTab, KeyModifiers::SHIFT), now);
        a.on_key(KeyEvent::new(KeyCode::BackTab, KeyModifiers::SHIFT), now);
        assert_eq!(a.pane, Pane::Results);
        a.on_key(KeyEvent::new(KeyCode::F(1), KeyModifiers::NONE), now);
        assert!(a.show_help);
        a.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE), now);
        assert!(!a.show_help);
    }

    #[test]
    fn pasting_a_path_opens_it_and_text_is_typed() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("x.png");
        image::RgbImage::new(4, 4).save(&img).unwrap();
        let mut a = app("");
        let now = Instant::now();
        assert_eq!(
            a.on_paste(&format!("'{}'\n", img.display()), now),
            Some(img)
        );
        assert_eq!(a.on_paste("cat, dog", now), None);
        assert_eq!(a.labels(), ["cat", "dog"]);
        assert!(a.debounce_deadline().is_some());
        // As shells escape a name and file managers drop it.
        let spaced = dir.path().join("my (1) cat.png");
        image::RgbImage::new(4, 4).save(&spaced).unwrap();
        let escaped = spaced
            .display()
            .to_string()
            .replace(' ', "\\ ")
            .replace('(', "\\(")
            .replace(')', "\\)");
        assert_eq!(a.on_paste(&escaped, now), Some(spaced.clone()));
        let url = format!("file://{}", spaced.display()).replace(' ', "%20");
        assert_eq!(a.on_paste(&url, now), Some(spaced));
        assert_eq!(a.labels(), ["cat", "dog"], "no path became a label");
    }

    #[test]
    fn a_failed_decode_is_a_notice_not_a_crash() {
        let mut a = app("cat");
        let path = PathBuf::from("bad.png");
        a.decoding = Some(path.clone());
        let reqs = a.on_image_decoded(
            path,
            Err("bad.png: not a readable image".into()),
            Instant::now(),
        );
        assert!(reqs.is_empty());
        assert!(a.notice.as_ref().unwrap().error);
        assert!(a.open(PathBuf::from("/no/such/file.png")).is_none());
    }

    #[test]
    fn the_open_prompt_completes_with_tab_and_opens_with_enter() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("coffee.png");
        image::RgbImage::new(4, 4).save(&img).unwrap();
        let mut a = app("");
        let now = Instant::now();
        a.on_action(Action::OpenImage, now);
        let prompt = a.prompt.as_mut().unwrap();
        prompt
            .input
            .insert_str(format!("{}/co", dir.path().display()));
        a.on_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE), now);
        assert_eq!(
            a.pane,
            Pane::Classify,
            "Tab completes instead of switching panes"
        );
        assert_eq!(
            a.prompt.as_ref().unwrap().input.lines()[0],
            img.display().to_string()
        );
        let (open, _) = a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE), now);
        assert_eq!(open, Some(img));
        assert!(a.prompt.is_none());
    }

    #[test]
    fn paths_complete_and_neighbours_wrap() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["apple.png", "apricot.jpg", "banana.png", "notes.txt"] {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("album")).unwrap();
        let base = format!("{}/", dir.path().display());
        let (done, cands) = complete_path(&format!("{base}b"), PromptFor::Image);
        assert_eq!(done, format!("{base}banana.png"));
        assert!(cands.is_empty());
        let (done, cands) = complete_path(&format!("{base}a"), PromptFor::Image);
        assert_eq!(done, format!("{base}a"));
        assert_eq!(cands, ["album/", "apple.png", "apricot.jpg"]);
        let (done, _) = complete_path(&format!("{base}apr"), PromptFor::Image);
        assert_eq!(done, format!("{base}apricot.jpg"));
        let banana = dir.path().join("banana.png");
        assert_eq!(
            neighbour(&banana, true).unwrap(),
            dir.path().join("apple.png")
        );
        assert_eq!(
            neighbour(&banana, false).unwrap(),
            dir.path().join("apricot.jpg")
        );
    }

    fn ctrl(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
    }

    fn no_control_in(lines: &[String]) -> bool {
        lines.iter().all(|l| !l.chars().any(char::is_control))
    }

    #[test]
    fn a_paste_with_carriage_returns_becomes_one_label_a_line() {
        let mut a = app("");
        let now = Instant::now();
        a.on_paste("cat\rdog\r\nred\x1b[2J car\nfox\x07\u{9b}\x7f", now);
        assert_eq!(a.labels(), ["cat", "dog", "red[2J car", "fox"]);
        assert!(no_control_in(a.classify.editor.lines()));
        // Labels from the command line are cleaned the same way.
        let mut b = app("owl\rbat\x1b");
        assert_eq!(b.labels(), ["owl", "bat"]);
        // A list pasted after the last label starts a line of its own.
        b.on_paste("cow\rhen\r", now);
        assert_eq!(b.labels(), ["owl", "bat", "cow", "hen"]);
        // A control character typed as a key never reaches the editor.
        a.on_key(
            KeyEvent::new(KeyCode::Char('\x1b'), KeyModifiers::NONE),
            now,
        );
        assert!(no_control_in(a.classify.editor.lines()));
    }

    #[test]
    fn a_megabyte_paste_is_taken_at_once_and_scores_a_bounded_label_set() {
        let mut a = app("");
        let t0 = Instant::now();
        with_image(&mut a, t0);
        let mut paste = String::new();
        let mut n = 0;
        while paste.len() < 1 << 20 {
            paste.push_str(&format!("label number {n}\r"));
            n += 1;
        }
        let start = Instant::now();
        a.on_paste(&paste, t0);
        let taken = start.elapsed();
        assert_eq!(a.classify.editor.lines().len(), n + 1);
        let Some(Request::Score { labels, .. }) = a.on_debounce(t0 + DEBOUNCE) else {
            panic!("one score request after the pause")
        };
        assert_eq!(labels.len(), MAX_LABELS);
        assert!(a
            .notice
            .as_ref()
            .unwrap()
            .text
            .contains(&format!("of {n} labels")));
        let start = Instant::now();
        crate::tui::testing::screen(&mut a, 120, 40);
        let drawn = start.elapsed();
        assert!(
            taken < Duration::from_secs(2) && drawn < Duration::from_secs(2),
            "paste {taken:?}, frame {drawn:?}"
        );
    }

    #[test]
    fn a_thousand_keystrokes_send_one_score_request() {
        let mut a = app("");
        let t0 = Instant::now();
        with_image(&mut a, t0);
        let mut sent = Vec::new();
        for i in 0..1000 {
            let c = if i % 50 == 49 { '\n' } else { 'a' };
            let (_, reqs) = a.on_key(key(c), t0 + Duration::from_micros(i));
            sent.extend(reqs);
            // The debounce timer fires only after a pause, never within the burst.
            sent.extend(a.on_debounce(t0 + Duration::from_micros(i)));
        }
        assert!(sent.is_empty(), "nothing goes out while keys keep coming");
        let req = a.on_debounce(t0 + Duration::from_millis(1) + DEBOUNCE);
        assert!(matches!(req, Some(Request::Score { labels, .. }) if labels.len() == 20));
        assert!(a.on_debounce(t0 + DEBOUNCE * 3).is_none(), "and only once");
    }

    #[test]
    fn a_path_typed_from_the_root_or_home_replaces_the_prefilled_folder() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.png");
        image::RgbImage::new(4, 4).save(&img).unwrap();
        let mut a = app("");
        let now = Instant::now();
        with_image(&mut a, now);
        a.classify.image_path = Some(PathBuf::from("photos/cats/x.png"));
        a.on_action(Action::OpenImage, now);
        assert_eq!(a.prompt.as_ref().unwrap().text(), "photos/cats/");
        for c in img.display().to_string().chars() {
            a.on_key(key(c), now);
        }
        assert_eq!(a.prompt.as_ref().unwrap().text(), img.display().to_string());
        let (open, _) = a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE), now);
        assert_eq!(open, Some(img.clone()));
        // A pasted path does the same; a doubled slash typed later still means the root.
        a.on_action(Action::OpenImage, now);
        a.on_paste("~/pictures/x.png\r", now);
        assert!(a.prompt.as_ref().unwrap().text().starts_with("~/"));
        assert_eq!(typed_path("photos//tmp/x.png"), PathBuf::from("/tmp/x.png"));
        assert_eq!(typed_path("photos/x.png"), PathBuf::from("photos/x.png"));
    }

    #[test]
    fn the_path_prompt_has_the_usual_line_editing_keys() {
        let mut a = app("");
        let now = Instant::now();
        a.on_action(Action::OpenImage, now);
        let text = |a: &App| a.prompt.as_ref().unwrap().text();
        for c in "photos/my cats".chars() {
            a.on_key(key(c), now);
        }
        a.on_key(ctrl('w'), now);
        assert_eq!(text(&a), "photos/my ");
        a.on_key(ctrl('a'), now);
        a.on_key(key('x'), now);
        assert_eq!(text(&a), "xphotos/my ");
        a.on_key(KeyEvent::new(KeyCode::End, KeyModifiers::NONE), now);
        a.on_key(key('!'), now);
        a.on_key(KeyEvent::new(KeyCode::Home, KeyModifiers::NONE), now);
        a.on_key(KeyEvent::new(KeyCode::Delete, KeyModifiers::NONE), now);
        assert_eq!(text(&a), "photos/my !");
        a.on_key(ctrl('e'), now);
        a.on_key(ctrl('u'), now);
        assert_eq!(text(&a), "", "Ctrl-U clears to the start");
        a.on_key(ctrl('m'), now);
        assert_eq!(a.prompt.as_ref().unwrap().input.lines().len(), 1);
        assert!(!a.should_quit && a.pane == Pane::Classify);
    }

    #[test]
    fn a_path_that_cannot_be_opened_is_a_notice() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = app("");
        assert!(a.open(dir.path().join("missing.png")).is_none());
        assert!(a.notice.as_ref().unwrap().text.contains("no such file"));
        assert!(a.open(dir.path().to_path_buf()).is_none());
        assert!(a
            .notice
            .as_ref()
            .unwrap()
            .text
            .contains("no images in this folder"));
        for n in ["b.png", "a.png"] {
            image::RgbImage::new(2, 2).save(dir.path().join(n)).unwrap();
        }
        assert_eq!(
            a.open(dir.path().to_path_buf()),
            Some(dir.path().join("a.png"))
        );
    }

    #[test]
    fn the_folder_position_is_known_after_opening() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["a.png", "b.png", "c.png", "notes.txt"] {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        assert_eq!(folder_position(&dir.path().join("b.png")), Some((2, 3)));
        let mut a = app("");
        let path = dir.path().join("c.png");
        a.open(path.clone()).unwrap();
        let img = DecodedImage::new(DynamicImage::new_rgb8(4, 4));
        a.on_image_decoded(path, Ok(img), Instant::now());
        assert_eq!(a.classify.position, Some((3, 3)));
    }

    #[test]
    fn choosing_from_the_picker_reconfigures_the_worker_and_scores_again() {
        let mut a = app("cat,dog");
        let now = Instant::now();
        with_image(&mut a, now);
        a.model = ModelState::Ready {
            name: "demo".into(),
            device: "cpu".into(),
        };
        a.on_key(ctrl('p'), now);
        let entries = &a.picker.as_ref().unwrap().entries;
        let ensemble = entries
            .iter()
            .position(|e| e.text.contains("imagenet7"))
            .unwrap();
        for _ in 0..ensemble {
            a.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE), now);
        }
        let (_, reqs) = a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE), now);
        assert!(a.picker.is_none());
        assert!(
            matches!(&reqs[0], Request::Configure(c) if c.source.is_none()
            && matches!(&c.style, Some(PromptStyle::Ensemble { name, .. }) if name == "imagenet7"))
        );
        assert!(matches!(&reqs[1], Request::Score { .. }), "scored again");
        // The first entry is a model: it is loaded by the worker, the app shows loading.
        a.on_key(ctrl('p'), now);
        let (_, reqs) = a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE), now);
        assert!(matches!(&reqs[0], Request::Configure(c) if c.source.is_some()));
        assert!(matches!(a.model, ModelState::Loading(_)));
        a.on_key(ctrl('p'), now);
        a.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE), now);
        assert!(a.picker.is_none());
    }

    #[test]
    fn a_failed_model_is_shown_in_full_on_a_key_and_logs_reach_the_status_bar() {
        let mut a = app("cat");
        let now = Instant::now();
        let why = "downloading https://huggingface.co/openai/clip-vit-base-patch32/resolve/refs%2Fpr%2F15/config.json: io: failed to lookup address information";
        a.on_response(Response::ModelFailed(why.into()), now);
        assert_eq!(a.latest_error(), Some(why));
        a.on_key(KeyEvent::new(KeyCode::F(3), KeyModifiers::NONE), now);
        assert!(a.show_message);
        a.on_key(key('x'), now);
        assert!(!a.show_message, "any key closes it");
        assert_eq!(a.labels(), ["cat"], "and is not typed");
        a.on_log("WARN prompt too long".into());
        assert_eq!(a.notice.as_ref().unwrap().text, "WARN prompt too long");
    }

    fn demo() -> crate::hub::ModelSource {
        crate::hub::ModelSource::Named(Some("demo".into()))
    }

    #[test]
    fn a_model_that_fails_to_replace_another_leaves_it_scoring() {
        let mut a = app("cat");
        let t0 = Instant::now();
        with_image(&mut a, t0);
        a.on_response(
            Response::ModelReady {
                source: demo(),
                name: "demo".into(),
                device: "cpu".into(),
                load_ms: 1.0,
            },
            t0,
        );
        a.on_response(Response::ModelFailed("ViT-B/32: offline".into()), t0);
        a.on_key(key('s'), t0);
        assert!(
            a.on_debounce(t0 + DEBOUNCE).is_none(),
            "no model, no request"
        );
        assert!(a.classify.predictions.is_empty(), "no stale probabilities");
        a.on_response(
            Response::ModelKept {
                source: demo(),
                tried: crate::hub::ModelSource::Named(Some("ViT-B/32".into())),
                name: "demo".into(),
                device: "cpu".into(),
            },
            t0,
        );
        assert!(matches!(&a.model, ModelState::Ready { name, .. } if name == "demo"));
        assert_eq!(
            a.source,
            Some(demo()),
            "the picker is back on the model in use"
        );
        let text = &a.notice.as_ref().unwrap().text;
        assert!(
            text.contains("still using demo; ViT-B/32 did not load") && text.contains("offline"),
            "{text}"
        );
        let text = text.clone();
        assert_eq!(a.latest_error(), Some(text.as_str()), "F3 shows why");
        a.on_log("WARN demo has never seen these words: cats".into());
        assert_eq!(
            a.latest_error(),
            Some(text.as_str()),
            "F3 still shows why after a warning took the status bar"
        );
        assert!(
            matches!(a.on_debounce(t0), Some(Request::Score { labels, .. }) if labels == ["cat", "s"]),
            "the labels typed meanwhile are scored"
        );
    }

    #[test]
    fn export_writes_the_session_and_names_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = app("cat");
        a.export_to(dir.path());
        assert!(a.notice.as_ref().unwrap().error, "nothing to export yet");
        let t0 = Instant::now();
        with_image(&mut a, t0);
        a.on_response(
            Response::Scores {
                generation: 1,
                path: "img.png".into(),
                predictions: vec![pred("cat", 1.0)],
                compute_ms: 1.0,
            },
            t0,
        );
        a.export_to(dir.path());
        let notice = a.notice.clone().unwrap();
        assert!(!notice.error, "{}", notice.text);
        let files: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 2);
        let csv = files
            .iter()
            .find(|f| f.extension().unwrap() == "csv")
            .unwrap();
        assert!(files.iter().any(|f| f.extension().unwrap() == "json"));
        assert_eq!(notice.text, format!("exported {} and .json", csv.display()));
    }
}
