//! Drawing the whole screen: tabs, the visible pane, the status bar, overlays.

use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Tabs, Wrap};
use ratatui::Frame;

use super::action::Action;
use super::app::{App, ModelState, Pane, PromptFor};
use super::panes;
use super::text::{fit, printable};

/// The smallest screen the app lays out; below it, a message says so.
pub const MIN_WIDTH: u16 = 40;
/// See [`MIN_WIDTH`].
pub const MIN_HEIGHT: u16 = 10;

/// Where everything goes on a screen of a given size. The event loop computes it before
/// drawing, to know where the picture goes and whether anything covers it.
#[derive(Clone, Debug, PartialEq)]
pub struct ScreenLayout {
    /// The tab bar.
    pub tabs: Rect,
    /// The visible pane.
    pub body: Rect,
    /// The open-image prompt (zero height when closed).
    pub prompt: Rect,
    /// The status bar.
    pub status: Rect,
    /// Where the picture goes: the inside of the Classify pane's image box, or of the
    /// Results pane's step-through picture box.
    pub image_area: Option<Rect>,
    /// The help overlay, when open.
    pub help: Option<Rect>,
    /// The model picker or the message popup, when open.
    pub popup: Option<Rect>,
    /// The screen is smaller than [`MIN_WIDTH`] x [`MIN_HEIGHT`]: only a message is drawn.
    pub too_small: bool,
}

impl ScreenLayout {
    /// The image area, if a picture drawn there would be seen: an escape-sequence
    /// picture would hide an overlay over it (Konsole and kitty draw pictures above
    /// text), so it is left out while the help covers it.
    pub fn uncovered_image_area(&self) -> Option<Rect> {
        let area = self.image_area?;
        let covered = [self.help, self.popup]
            .into_iter()
            .flatten()
            .any(|over| over.intersects(area));
        (!covered).then_some(area)
    }
}

/// Lay out a screen of `area` for the app's state.
pub fn layout(area: Rect, app: &App) -> ScreenLayout {
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let nothing = Rect::new(area.x, area.y, 0, 0);
        return ScreenLayout {
            tabs: nothing,
            body: area,
            prompt: nothing,
            status: nothing,
            image_area: None,
            help: None,
            popup: None,
            too_small: true,
        };
    }
    let prompt_h = if app.prompt.is_some() { 3 } else { 0 };
    let rows = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(prompt_h),
        Constraint::Length(1),
    ])
    .split(area);
    ScreenLayout {
        tabs: rows[0],
        body: rows[1],
        prompt: rows[2],
        status: rows[3],
        image_area: match app.pane {
            Pane::Classify => Some(panes::classify::image_area(rows[1])),
            Pane::Results => panes::results::image_area(rows[1], &app.results),
            Pane::Train => None,
        },
        help: app.show_help.then(|| help_area(area, &help_paragraph(app))),
        popup: match &app.picker {
            Some(picker) => Some(picker.area(area)),
            None => app
                .show_message
                .then(|| message_paragraph(app))
                .flatten()
                .map(|p| help_area(area, &p)),
        },
        too_small: false,
    }
}

/// Draw the app.
pub fn draw(f: &mut Frame, app: &mut App) {
    let layout = layout(f.area(), app);
    draw_layout(f, app, &layout);
}

/// Draw the app into a layout made by [`layout`] for this frame's size.
pub fn draw_layout(f: &mut Frame, app: &mut App, layout: &ScreenLayout) {
    if layout.too_small {
        draw_too_small(f, layout.body);
        return;
    }
    draw_tabs(f, app, layout.tabs);
    match app.pane {
        Pane::Classify => {
            let picture = layout.uncovered_image_area().is_some();
            panes::classify::draw(f, app, layout.body, picture)
        }
        Pane::Train => panes::train::draw(f, app, layout.body),
        Pane::Results => {
            let picture = layout.uncovered_image_area().is_some();
            panes::results::draw(f, app, layout.body, picture)
        }
    }
    if app.prompt.is_some() {
        draw_prompt(f, app, layout.prompt);
    }
    draw_status(f, app, layout.status);
    if let Some(area) = layout.help {
        // Kept within the text, so that a key back up moves it at once after End.
        app.help_scroll = app.help_scroll.min(help_hidden_lines(app, area));
        f.render_widget(Clear, area);
        f.render_widget(scrolled_help(app, area), area);
    }
    if let Some(picker) = &app.picker {
        picker.draw(f, f.area(), app.theme, &current_model_and_style(app));
    } else if let (Some(area), Some(message)) = (layout.popup, message_paragraph(app)) {
        f.render_widget(Clear, area);
        f.render_widget(message, area);
    }
}

/// The message that replaces the app on a screen too small for it.
fn draw_too_small(f: &mut Frame, area: Rect) {
    let text = format!(
        "terminal too small (need at least {MIN_WIDTH}x{MIN_HEIGHT}, have {}x{})",
        area.width, area.height
    );
    let lines = Paragraph::new(text)
        .wrap(Wrap { trim: true })
        .alignment(Alignment::Center);
    let height = (lines.line_count(area.width) as u16).min(area.height);
    let at = Rect {
        y: area.y + (area.height - height) / 2,
        height,
        ..area
    };
    f.render_widget(Clear, area);
    f.render_widget(lines, at);
}

/// The model's name and the prompt style, for the picker's title.
fn current_model_and_style(app: &App) -> String {
    let model = match &app.model {
        ModelState::Ready { name, .. } => short_name(name),
        ModelState::Loading(_) => "loading".into(),
        ModelState::Failed(_) => "failed".into(),
    };
    format!("{model}, {}", app.style.describe())
}

/// The full text of the latest error, wrapped in a box (closed by any key).
fn message_paragraph(app: &App) -> Option<Paragraph<'static>> {
    let message = app.latest_error()?;
    let title = if matches!(app.model, ModelState::Failed(_)) {
        " The model could not be loaded (any key closes) "
    } else {
        " Error (any key closes) "
    };
    let mut lines = vec![Line::from(printable(message).into_owned())];
    if let Some(path) = &app.log_path {
        lines.push(Line::from(""));
        lines.push(Line::from(format!(
            "Every log line of this session: {}",
            printable(&path.display().to_string())
        )));
    }
    Some(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(title)),
    )
}

/// A model folder is shown by its last component (the status bar is one line); a
/// registry name, which may hold a slash (ViT-B/32), whole.
fn short_name(name: &str) -> String {
    let path = std::path::Path::new(name);
    path.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .filter(|_| name.contains('/') && path.is_dir())
        .unwrap_or_else(|| name.to_string())
}

fn draw_tabs(f: &mut Frame, app: &App, area: Rect) {
    let titles: Vec<String> = Pane::ALL.iter().map(|p| p.title().to_string()).collect();
    let selected = Pane::ALL.iter().position(|p| *p == app.pane).unwrap_or(0);
    let help = app
        .keymap
        .keys_for(Action::Help)
        .first()
        .map(|k| format!("{k} help"))
        .unwrap_or_default();
    let cols = Layout::horizontal([
        Constraint::Min(10),
        Constraint::Length(help.len() as u16 + 12),
    ])
    .split(area);
    f.render_widget(
        Tabs::new(titles)
            .select(selected)
            .highlight_style(app.theme.selected()),
        cols[0],
    );
    f.render_widget(
        Paragraph::new(format!("clipscope  {help}")).alignment(Alignment::Right),
        cols[1],
    );
}

fn draw_prompt(f: &mut Frame, app: &mut App, area: Rect) {
    let border = app.theme.fg(Color::Yellow);
    let Some(prompt) = app.prompt.as_mut() else {
        return;
    };
    let what = match prompt.purpose {
        PromptFor::Image => "Open image",
        PromptFor::Report => "Open report folder",
    };
    let title = if prompt.candidates.is_empty() {
        format!(" {what} (Tab completes, Enter opens, Esc cancels) ")
    } else {
        format!(" {} ", prompt.candidates.join("  "))
    };
    prompt.input.set_block(
        Block::default()
            .borders(Borders::ALL)
            .title(title)
            .border_style(border),
    );
    f.render_widget(&prompt.input, area);
}

/// The status bar's text: model, device, latency, how pictures are drawn (and why, when
/// it is not the obvious way), and the latest notice.
///
/// The notice (or a model's failure, which holds the start of what was tried and, at its
/// end, why it failed) is cut in the middle to the room left in `width` columns, and
/// the key that shows it in full is named.
pub fn status_text(app: &App, width: u16) -> Vec<Span<'static>> {
    let theme = app.theme;
    let message_key = app
        .keymap
        .keys_for(Action::ShowMessage)
        .first()
        .map(|k| k.to_string());
    let model = match &app.model {
        ModelState::Loading(line) => {
            Span::styled(printable(line).into_owned(), theme.status_busy())
        }
        ModelState::Ready { name, device } => {
            Span::raw(format!("{} on {device}", printable(&short_name(name))))
        }
        ModelState::Failed(_) => Span::styled("model failed", theme.status_error()),
    };
    let latency = app
        .last_latency_ms
        .map(|ms| format!("update {ms:.0} ms"))
        .unwrap_or_else(|| "update -".into());
    // With no newer notice, a model's failure says why (cut to fit; the key shows all).
    let failure = match (&app.notice, &app.model) {
        (None, ModelState::Failed(why)) => Some(super::app::Notice {
            text: format!("model: {why}"),
            error: true,
        }),
        _ => None,
    };
    let message = app.notice.as_ref().or(failure.as_ref());
    // How pictures are drawn, and why: a standing note that gives way to a message.
    let graphics = match (&app.graphics.note, message) {
        (Some(note), None) => format!("{}: {note}", app.graphics.mode.name()),
        _ => app.graphics.mode.name().to_string(),
    };
    let mut spans = vec![model];
    // The model's note (what the demo model is) gives way to a notice.
    if let (ModelState::Ready { .. }, Some(note), None) = (&app.model, &app.model_note, &app.notice)
    {
        spans.push(Span::styled(format!(" ({note})"), theme.status_busy()));
    }
    spans.push(Span::raw(format!("  │ {latency} │ {graphics} │ ")));
    if let Some(n) = message {
        let style = if n.error {
            theme.status_error()
        } else {
            theme.status()
        };
        let used: usize = spans.iter().map(|s| s.width()).sum();
        let room = usize::from(width).saturating_sub(used).max(12);
        let text = printable(&n.text);
        let cut = text.chars().count() > room;
        let text = match (&message_key, cut && n.error) {
            (Some(k), true) => {
                let hint = format!(" ({k}: all)");
                let keep = room.saturating_sub(hint.chars().count()).max(8);
                format!("{}{hint}", fit(&text, keep))
            }
            _ => fit(&text, room),
        };
        spans.push(Span::styled(text, style));
    }
    spans
}

fn draw_status(f: &mut Frame, app: &App, area: Rect) {
    f.render_widget(
        Paragraph::new(Line::from(status_text(app, area.width))).style(app.theme.status()),
        area,
    );
}

/// The help overlay: every binding of the active keymap, wrapped to the box.
fn help_paragraph(app: &App) -> Paragraph<'static> {
    let mut lines = vec![
        Line::from(Span::styled(
            format!("Keys ({} keymap)", app.keymap.name),
            Style::default().add_modifier(Modifier::BOLD),
        )),
        Line::from(""),
        Line::from("  Ctrl-C          quit (always)"),
    ];
    for action in Action::ALL {
        let keys: Vec<String> = app
            .keymap
            .keys_for(action)
            .iter()
            .map(|k| k.to_string())
            .collect();
        if keys.is_empty() {
            continue;
        }
        lines.push(Line::from(format!(
            "  {:<15} {}",
            keys.join(", "),
            action.describe()
        )));
    }
    lines.push(Line::from(""));
    lines.push(Line::from(
        "  Paste or drop an image path to open it; type labels to score them.",
    ));
    lines.push(Line::from(
        "  Path prompt: Ctrl-U, Ctrl-W, Ctrl-A, Ctrl-E edit as in a shell.",
    ));
    lines.push(Line::from(
        "  Labels: Ctrl-W deletes a word, Ctrl-J / Ctrl-K to the line's start / end,",
    ));
    lines.push(Line::from("          Ctrl-U undoes, Ctrl-R redoes."));
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .block(Block::default().borders(Borders::ALL).title(" Help "))
}

/// The help overlay in `area`, scrolled as far as the user asked but no further than
/// its last line; when it does not fit, its title says how to scroll.
fn scrolled_help(app: &App, area: Rect) -> Paragraph<'static> {
    let help = help_paragraph(app);
    let hidden = help_hidden_lines(app, area);
    if hidden == 0 {
        return help;
    }
    let scroll = app.help_scroll.min(hidden);
    let title = match (scroll > 0, scroll < hidden) {
        (false, _) => " Help (↓ PgDn: more) ",
        (true, true) => " Help (↑ ↓ PgUp PgDn: scroll) ",
        (true, false) => " Help (↑ PgUp: back, end) ",
    };
    help.block(Block::default().borders(Borders::ALL).title(title))
        .scroll((scroll, 0))
}

/// How many of the help's lines do not fit in `area` at once.
fn help_hidden_lines(app: &App, area: Rect) -> u16 {
    let lines = help_paragraph(app).line_count(area.width.saturating_sub(2)) as u16;
    lines.saturating_sub(area.height)
}

/// The help box: wide enough for its longest line where the screen allows, tall enough
/// for its lines once wrapped, centred.
fn help_area(screen: Rect, help: &Paragraph) -> Rect {
    const WIDEST: u16 = 80;
    let width = WIDEST.min(screen.width);
    // The text wraps inside the borders; the count adds the top and bottom ones.
    let height = (help.line_count(width.saturating_sub(2)) as u16).min(screen.height);
    Rect {
        x: screen.x + (screen.width - width) / 2,
        y: screen.y + (screen.height - height) / 2,
        width,
        height,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Instant;

    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    use super::*;
    use crate::clip::zeroshot::Prediction;
    use crate::tui::app::DecodedImage;
    use crate::tui::graphics::Graphics;
    use crate::tui::keymap::Keymap;
    use crate::tui::picker::{self, Picker};
    use crate::tui::testing::{draw, screen};
    use crate::tui::worker::Response;

    /// A folder of fixture images, by a relative path so that snapshots hold no
    /// machine's paths (tests run in the crate's folder).
    const IMAGES: &str = "tests/fixtures/images";

    fn app(labels: &str) -> App {
        App::new(
            Keymap::builtin("default").unwrap(),
            Graphics::halfblocks(),
            labels,
        )
    }

    /// An app showing `name` from the fixture images, scored with `predictions`.
    fn app_with_image(labels: &str, name: &str, predictions: &[(&str, f64)]) -> App {
        let mut a = app(labels);
        let now = Instant::now();
        let path = a.open(PathBuf::from(IMAGES).join(name)).unwrap();
        let img = crate::data::load_image(&path).unwrap();
        a.on_image_decoded(path.clone(), Ok(DecodedImage::new(img)), now);
        a.model = ModelState::Ready {
            name: "demo".into(),
            device: "cpu".into(),
        };
        a.on_response(
            Response::Scores {
                generation: 1,
                path,
                predictions: predictions
                    .iter()
                    .map(|(label, probability)| Prediction {
                        label: label.to_string(),
                        probability: *probability,
                    })
                    .collect(),
                compute_ms: 1.0,
            },
            now,
        );
        a
    }

    fn press(a: &mut App, code: KeyCode, mods: KeyModifiers) {
        a.on_key(KeyEvent::new(code, mods), Instant::now());
    }

    /// No cell of the screen holds a control character.
    fn assert_no_controls(a: &mut App, width: u16, height: u16) {
        let terminal = draw(a, width, height);
        let buf = terminal.backend().buffer();
        for cell in buf.content() {
            assert!(
                !cell.symbol().chars().any(char::is_control),
                "control character in {:?}",
                cell.symbol()
            );
        }
    }

    #[test]
    fn pasted_lines_are_labels_and_nothing_drawn_holds_a_control_character() {
        let mut a = app_with_image("", "small.png", &[("cat\x1b[2J", 0.7), ("dog\u{9b}", 0.3)]);
        a.on_paste("cat\rdog\r\nred\x1b[31m car\u{85}", Instant::now());
        a.notify_for_test("bad\x1b]0;title\x07.png: not a readable image");
        assert_no_controls(&mut a, 100, 24);
        insta::assert_snapshot!(screen(&mut a, 100, 24));
    }

    #[test]
    fn a_small_window_says_how_large_it_must_be() {
        let mut a = app_with_image("cat", "small.png", &[("cat", 1.0)]);
        insta::assert_snapshot!(screen(&mut a, 39, 9));
        let text = screen(&mut a, MIN_WIDTH, MIN_HEIGHT);
        assert!(
            !text.contains("too small") && text.contains("Labels"),
            "{text}"
        );
    }

    #[test]
    fn every_size_from_1x1_to_200x60_draws_without_panicking() {
        let mut a = app_with_image("cat,dog", "tall.png", &[("cat", 0.6), ("dog", 0.4)]);
        a.train.log_line("x".repeat(300));
        let states: [fn(&mut App); 6] = [
            |_| {},
            |a| a.show_help = true,
            |a| {
                a.show_help = false;
                a.picker = Some(Picker::new(picker::entries_with(&a.style, None)));
            },
            |a| {
                a.picker = None;
                a.pane = Pane::Train;
            },
            |a| a.pane = Pane::Results,
            |a| {
                a.pane = Pane::Classify;
                a.on_action(crate::tui::action::Action::OpenImage, Instant::now());
            },
        ];
        for (i, state) in states.iter().enumerate() {
            state(&mut a);
            // Every size for the first state; a coarser grid for the others.
            let step = if i == 0 { 1 } else { 7 };
            for w in (1..=200).step_by(step) {
                for h in (1..=60).step_by(step) {
                    draw(&mut a, w, h);
                }
            }
        }
    }

    #[test]
    fn the_folder_position_and_the_path_prompt() {
        let mut a = app_with_image("cat", "chelsea.png", &[("cat", 1.0)]);
        press(&mut a, KeyCode::Char('o'), KeyModifiers::CONTROL);
        insta::assert_snapshot!(screen(&mut a, 100, 20));
    }

    #[test]
    fn the_model_picker_lists_models_and_prompt_styles() {
        let mut a = app_with_image("cat", "small.png", &[("cat", 1.0)]);
        a.picker = Some(Picker::new(picker::entries_with(&a.style, None)));
        insta::assert_snapshot!(screen(&mut a, 100, 24));
    }

    #[test]
    fn a_model_that_failed_says_why_in_full() {
        let mut a = app("cat");
        let why = "cannot get the model: downloading https://huggingface.co/openai/clip-vit-base-patch32/resolve/refs%2Fpr%2F15/config.json: io: failed to lookup address information: Temporary failure in name resolution; fetch the model elsewhere and give --model-dir DIR";
        a.on_response(Response::ModelFailed(why.into()), Instant::now());
        let status = screen(&mut a, 100, 20);
        let last = status.lines().last().unwrap();
        assert!(
            last.contains("model: cannot get") && last.ends_with("(F3: all)"),
            "{last}"
        );
        press(&mut a, KeyCode::F(3), KeyModifiers::NONE);
        insta::assert_snapshot!(screen(&mut a, 100, 20));
    }

    #[test]
    fn the_train_log_wraps_and_shows_the_newest_line() {
        let mut a = app("");
        a.pane = Pane::Train;
        for i in 0..6 {
            a.train.log_line(format!(
                "line {i}: epoch {i} finished, validation loss 0.{i}41, accuracy 0.8{i}, checkpoint saved to runs/imagenette/epoch-{i}.safetensors"
            ));
        }
        insta::assert_snapshot!(screen(&mut a, 100, 30));
    }

    #[test]
    fn help_taller_than_the_window_scrolls_to_its_last_line() {
        let mut a = app("");
        press(&mut a, KeyCode::F(1), KeyModifiers::NONE);
        let last = "Ctrl-U undoes";
        let top = screen(&mut a, 80, 24);
        assert!(top.contains("↓ PgDn: more") && !top.contains(last), "{top}");
        press(&mut a, KeyCode::End, KeyModifiers::NONE);
        let end = screen(&mut a, 80, 24);
        assert!(end.contains(last) && end.contains("↑ PgUp: back"), "{end}");
        // One line up from the end shows at once.
        press(&mut a, KeyCode::Up, KeyModifiers::NONE);
        assert!(screen(&mut a, 80, 24).contains("↑ ↓ PgUp PgDn: scroll"));
        press(&mut a, KeyCode::Home, KeyModifiers::NONE);
        assert_eq!(screen(&mut a, 80, 24), top);
        // PgDn scrolls the help, not the picture behind it (it is bound to next_image).
        press(&mut a, KeyCode::PageDown, KeyModifiers::NONE);
        assert!(screen(&mut a, 80, 24).contains("PgUp"));
        assert_eq!(a.help_scroll, 10);
        // Where it fits, no scrolling is offered.
        assert!(!screen(&mut a, 120, 60).contains("PgDn: more"));
    }

    #[test]
    fn a_notice_takes_the_status_bar_from_the_pictures_standing_note() {
        let mut a = app("");
        a.graphics.note = Some("tmux has allow-passthrough off; set it on for pictures".into());
        assert!(screen(&mut a, 120, 24).contains("allow-passthrough"));
        a.notify_for_test("exported /home/me/results/predictions.csv and .json");
        let shown = screen(&mut a, 120, 24);
        assert!(
            shown.contains("exported /home/me/results/predictions.csv and .json")
                && !shown.contains("allow-passthrough"),
            "{shown}"
        );
    }

    #[test]
    fn a_registry_name_with_a_slash_is_shown_whole_a_folder_by_its_last_part() {
        assert_eq!(short_name("ViT-B/32"), "ViT-B/32");
        assert_eq!(short_name("tests/fixtures/tiny-clip"), "tiny-clip");
    }
}
