//! The Results pane: every classification of this session, newest first.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, Borders, Row, Table};
use ratatui::Frame;

use crate::tui::app::App;

/// Draw the pane.
pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let rows = app.history.iter().rev().map(|r| {
        let top = r.predictions.first();
        Row::new(vec![
            r.path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            top.map(|p| p.label.clone()).unwrap_or_default(),
            top.map(|p| format!("{:.2}%", p.probability * 100.0))
                .unwrap_or_default(),
            r.predictions.len().to_string(),
            format!("{:.0} ms", r.latency_ms),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Percentage(30),
            Constraint::Percentage(35),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(9),
        ],
    )
    .header(
        Row::new(vec!["image", "top label", "prob.", "labels", "latency"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(format!(" Results: {} this session ", app.history.len())),
    );
    f.render_widget(table, area);
}
