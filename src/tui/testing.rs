//! Test helpers: draw the app into ratatui's TestBackend as the event loop would.

use ratatui::backend::TestBackend;
use ratatui::layout::{Position, Rect};
use ratatui::Terminal;

use super::app::App;
use super::graphics::{self, encoder::Done};
use super::ui;

/// Draw a frame (the picture prepared in line: the app does it on its encoder thread)
/// and return the terminal.
pub fn draw(app: &mut App, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    let layout = ui::layout(
        Rect::from((Position::ORIGIN, terminal.size().unwrap())),
        app,
    );
    if let Some(job) = layout.image_area.and_then(|a| app.picture_job(a.as_size())) {
        let result = graphics::prepare(&job.image, job.area, &app.graphics);
        app.on_picture_prepared(Done {
            picture: job.picture,
            area: job.area,
            result,
            encode_ms: 0.0,
        });
    }
    terminal.draw(|f| ui::draw(f, app)).unwrap();
    terminal
}

/// The text of the terminal's screen, each row's trailing blanks trimmed.
pub fn text(terminal: &Terminal<TestBackend>) -> String {
    let buf = terminal.backend().buffer();
    (0..buf.area.height)
        .map(|y| {
            let line: String = (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect();
            line.trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Draw a frame and return the screen's text.
pub fn screen(app: &mut App, width: u16, height: u16) -> String {
    text(&draw(app, width, height))
}
