//! Drawing the whole screen: tabs, the visible pane, the status bar, overlays.

use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Tabs, Wrap};
use ratatui::Frame;

use super::action::Action;
use super::app::{App, ModelState, Pane, PromptFor};
use super::panes;

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
}

impl ScreenLayout {
    /// The image area, if a picture drawn there would be seen: an escape-sequence
    /// picture would hide an overlay over it (Konsole and kitty draw pictures above
    /// text), so it is left out while the help covers it.
    pub fn uncovered_image_area(&self) -> Option<Rect> {
        let area = self.image_area?;
        match self.help {
            Some(help) if help.intersects(area) => None,
            _ => Some(area),
        }
    }
}

/// Lay out a screen of `area` for the app's state.
pub fn layout(area: Rect, app: &App) -> ScreenLayout {
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
    }
}

/// Draw the app.
pub fn draw(f: &mut Frame, app: &mut App) {
    let layout = layout(f.area(), app);
    draw_layout(f, app, &layout);
}

/// Draw the app into a layout made by [`layout`] for this frame's size.
pub fn draw_layout(f: &mut Frame, app: &mut App, layout: &ScreenLayout) {
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
        f.render_widget(Clear, area);
        f.render_widget(help_paragraph(app), area);
    }
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
pub fn status_text(app: &App) -> Vec<Span<'static>> {
    let theme = app.theme;
    let model = match &app.model {
        ModelState::Loading(line) => Span::styled(line.clone(), theme.status_busy()),
        ModelState::Ready { name, device } => {
            // A model folder is shown by its last component: the status bar is one line.
            let short = std::path::Path::new(name)
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .filter(|_| name.contains('/'))
                .unwrap_or_else(|| name.clone());
            Span::raw(format!("{short} on {device}"))
        }
        ModelState::Failed(_) => Span::styled("model failed", theme.status_error()),
    };
    let latency = app
        .last_latency_ms
        .map(|ms| format!("update {ms:.0} ms"))
        .unwrap_or_else(|| "update -".into());
    let graphics = match &app.graphics.note {
        Some(note) => format!("{}: {note}", app.graphics.mode.name()),
        None => app.graphics.mode.name().to_string(),
    };
    let mut spans = vec![model];
    if let (ModelState::Ready { .. }, Some(note)) = (&app.model, &app.model_note) {
        spans.push(Span::styled(format!(" ({note})"), theme.status_busy()));
    }
    spans.push(Span::raw(format!("  │ {latency} │ {graphics} │ ")));
    if let Some(n) = &app.notice {
        let style = if n.error {
            theme.status_error()
        } else {
            theme.status()
        };
        spans.push(Span::styled(n.text.clone(), style));
    }
    spans
}

fn draw_status(f: &mut Frame, app: &App, area: Rect) {
    f.render_widget(
        Paragraph::new(Line::from(status_text(app))).style(app.theme.status()),
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
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .block(Block::default().borders(Borders::ALL).title(" Help "))
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
