//! Drawing the whole screen: tabs, the visible pane, the status bar, overlays.

use ratatui::layout::{Alignment, Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Tabs};
use ratatui::Frame;

use super::action::Action;
use super::app::{App, ModelState, Pane};
use super::panes;

/// Draw the app.
pub fn draw(f: &mut Frame, app: &mut App) {
    let prompt_h = if app.prompt.is_some() { 3 } else { 0 };
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(prompt_h),
            Constraint::Length(1),
        ])
        .split(f.area());
    draw_tabs(f, app, rows[0]);
    match app.pane {
        Pane::Classify => panes::classify::draw(f, app, rows[1]),
        Pane::Train => panes::train::draw(f, app, rows[1]),
        Pane::Results => panes::results::draw(f, app, rows[1]),
    }
    if app.prompt.is_some() {
        draw_prompt(f, app, rows[2]);
    }
    draw_status(f, app, rows[3]);
    if app.show_help {
        draw_help(f, app);
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
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([
            Constraint::Min(10),
            Constraint::Length(help.len() as u16 + 12),
        ])
        .split(area);
    f.render_widget(
        Tabs::new(titles)
            .select(selected)
            .highlight_style(Style::default().fg(Color::Black).bg(Color::Cyan)),
        cols[0],
    );
    f.render_widget(
        Paragraph::new(format!("clipscope  {help}")).alignment(Alignment::Right),
        cols[1],
    );
}

fn draw_prompt(f: &mut Frame, app: &mut App, area: Rect) {
    let Some(prompt) = app.prompt.as_mut() else {
        return;
    };
    let title = if prompt.candidates.is_empty() {
        " Open image (Tab completes, Enter opens, Esc cancels) ".to_string()
    } else {
        format!(" {} ", prompt.candidates.join("  "))
    };
    prompt.input.set_block(
        Block::default()
            .borders(Borders::ALL)
            .title(title)
            .border_style(Style::default().fg(Color::Yellow)),
    );
    f.render_widget(&prompt.input, area);
}

/// The status bar's text: model, device, latency, protocol, and the latest notice.
pub fn status_text(app: &App) -> Vec<Span<'static>> {
    let model = match &app.model {
        ModelState::Loading(line) => Span::styled(line.clone(), Style::default().fg(Color::Yellow)),
        ModelState::Ready { name, device } => {
            // A model folder is shown by its last component: the status bar is one line.
            let short = std::path::Path::new(name)
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .filter(|_| name.contains('/'))
                .unwrap_or_else(|| name.clone());
            Span::raw(format!("{short} on {device}"))
        }
        ModelState::Failed(_) => Span::styled("model failed", Style::default().fg(Color::Red)),
    };
    let latency = app
        .last_latency_ms
        .map(|ms| format!("update {ms:.0} ms"))
        .unwrap_or_else(|| "update -".into());
    let mut spans = vec![
        model,
        Span::raw(format!("  │ {latency} │ {} │ ", app.protocol)),
    ];
    if let Some(n) = &app.notice {
        let style = if n.error {
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::default().fg(Color::Gray)
        };
        spans.push(Span::styled(n.text.clone(), style));
    }
    spans
}

fn draw_status(f: &mut Frame, app: &App, area: Rect) {
    f.render_widget(
        Paragraph::new(Line::from(status_text(app))).style(Style::default().bg(Color::Black)),
        area,
    );
}

fn draw_help(f: &mut Frame, app: &App) {
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
    let h = (lines.len() as u16 + 2).min(f.area().height);
    let w = 76.min(f.area().width);
    let area = Rect {
        x: (f.area().width.saturating_sub(w)) / 2,
        y: (f.area().height.saturating_sub(h)) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, area);
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" Help ")),
        area,
    );
}
