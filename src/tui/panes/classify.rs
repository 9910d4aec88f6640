//! The Classify pane: the image, the label editor and the live probabilities.

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::Frame;
use ratatui_image::{FilterType, Resize, StatefulImage};

use crate::tui::app::App;
use crate::util::bar;

/// Width of the probability bars, in cells.
const BAR: usize = 20;

/// Draw the pane into `area`.
pub fn draw(f: &mut Frame, app: &mut App, area: Rect) {
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(55), Constraint::Percentage(45)])
        .split(area);
    draw_image(f, app, cols[0]);
    let right = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Percentage(40), Constraint::Percentage(60)])
        .split(cols[1]);
    let editor_block = Block::default()
        .borders(Borders::ALL)
        .title(" Labels (one a line, or commas) ")
        .border_style(Style::default().fg(Color::Cyan));
    app.classify.editor.set_block(editor_block);
    f.render_widget(&app.classify.editor, right[0]);
    draw_predictions(f, app, right[1]);
}

fn draw_image(f: &mut Frame, app: &mut App, area: Rect) {
    let title = app
        .classify
        .image_path
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| format!(" {} ", n.to_string_lossy()))
        .unwrap_or_else(|| " no image ".into());
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    match app.classify.picture.as_mut() {
        Some(picture) => f.render_stateful_widget(
            StatefulImage::default().resize(Resize::Scale(Some(FilterType::Triangle))),
            inner,
            picture,
        ),
        None => f.render_widget(
            Paragraph::new(vec![
                Line::from(""),
                Line::from("Open an image: Ctrl-O, or paste or drop a path here."),
            ])
            .wrap(Wrap { trim: true }),
            inner,
        ),
    }
}

fn draw_predictions(f: &mut Frame, app: &App, area: Rect) {
    let updating = app.updating();
    let title = if updating {
        " Probabilities (updating…) "
    } else {
        " Probabilities "
    };
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let preds = &app.classify.predictions;
    let lines: Vec<Line> = if preds.is_empty() {
        let hint = match (&app.classify.image_path, app.labels().is_empty()) {
            (None, _) => "No image yet.",
            (_, true) => "Type some labels.",
            _ => "Scoring…",
        };
        vec![Line::from(Span::styled(
            hint,
            Style::default().fg(Color::DarkGray),
        ))]
    } else {
        let label_w = (inner.width as usize).saturating_sub(BAR + 10).max(8);
        preds
            .iter()
            .take(inner.height as usize)
            .enumerate()
            .map(|(i, p)| {
                let mut style = if i == 0 {
                    Style::default()
                        .fg(Color::Green)
                        .add_modifier(Modifier::BOLD)
                } else {
                    Style::default()
                };
                if updating {
                    style = style.add_modifier(Modifier::DIM);
                }
                let label: String = p.label.chars().take(label_w).collect();
                Line::from(vec![
                    Span::styled(format!("{label:<label_w$}"), style),
                    Span::styled(format!(" {:>6.2}% ", p.probability * 100.0), style),
                    Span::styled(
                        bar(p.probability, BAR),
                        style.fg(if i == 0 { Color::Green } else { Color::Blue }),
                    ),
                ])
            })
            .collect()
    };
    f.render_widget(Paragraph::new(lines), inner);
}
