//! The Train pane: training runs of the CNN baseline will be started and watched here.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::Frame;

use crate::tui::app::App;

/// Draw the pane.
pub fn draw(f: &mut Frame, _app: &App, area: Rect) {
    let text = vec![
        Line::from("Training is not available in this version of clipscope."),
        Line::from(""),
        Line::from("The ResNet18 baseline (fine-tuning, live loss and accuracy) will run here."),
    ];
    f.render_widget(
        Paragraph::new(text)
            .style(Style::default().fg(Color::Gray))
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title(" Train ")),
        area,
    );
}
