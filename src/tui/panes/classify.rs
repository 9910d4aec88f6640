//! The Classify pane: the image, the label editor and the live probabilities.

use std::rc::Rc;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::Frame;

use crate::tui::action::Action;
use crate::tui::app::{App, ModelState};
use crate::tui::graphics::Prepared;
use crate::tui::text::{fit_columns, printable};
use crate::util::bar;

/// Width of the probability bars, in cells.
const BAR: usize = 20;

/// What the pane answers when the top probability is below the abstain threshold.
pub const NONE_OF_THESE: &str = "none of these";

/// The image pane on the left, the labels and probabilities on the right.
fn columns(area: Rect) -> Rc<[Rect]> {
    Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).split(area)
}

/// The inside of the image pane, where the picture goes, for the pane's `area`.
pub fn image_area(area: Rect) -> Rect {
    Block::default()
        .borders(Borders::ALL)
        .inner(columns(area)[0])
}

/// Draw the pane into `area`. An escape-sequence picture (sixel, kitty direct) is left
/// out unless `escape_picture` says nothing covers it.
pub fn draw(f: &mut Frame, app: &mut App, area: Rect, escape_picture: bool) {
    let cols = columns(area);
    draw_image(f, app, cols[0], escape_picture);
    let right =
        Layout::vertical([Constraint::Percentage(40), Constraint::Percentage(60)]).split(cols[1]);
    let editor_block = Block::default()
        .borders(Borders::ALL)
        .title(" Labels (one a line, or commas) ")
        .border_style(app.theme.fg(Color::Cyan));
    app.classify.editor.set_block(editor_block);
    f.render_widget(&app.classify.editor, right[0]);
    draw_predictions(f, app, right[1]);
}

fn draw_image(f: &mut Frame, app: &App, area: Rect, escape_picture: bool) {
    let title = image_title(app);
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    if app.classify.image_path.is_none() {
        f.render_widget(
            Paragraph::new(vec![
                Line::from(""),
                Line::from("Open an image: Ctrl-O, or paste or drop a path here."),
            ])
            .wrap(Wrap { trim: true }),
            inner,
        );
        return;
    }
    // Until the picture is prepared for this size, the pane stays empty.
    match app.picture_in(inner) {
        Some((_, Prepared::Escape(_))) if !escape_picture => {}
        Some((rect, picture)) => picture.render(rect, f.buffer_mut()),
        None => {}
    }
}

/// The image pane's title: the file's name and, when its folder holds more than one
/// image, its place among them ("3 of 12"), as PgDn/PgUp step through them.
fn image_title(app: &App) -> String {
    let Some(name) = app.classify.image_path.as_ref().and_then(|p| p.file_name()) else {
        return " no image ".into();
    };
    let name = name.to_string_lossy();
    match app.classify.position {
        Some((n, count)) if count > 1 => format!(" {} ({n} of {count}) ", printable(&name)),
        _ => format!(" {} ", printable(&name)),
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
    let theme = app.theme;
    let lines: Vec<Line> = if preds.is_empty() {
        let hint = match (&app.classify.image_path, app.no_labels(), &app.model) {
            (None, _, _) => "No image yet.".to_string(),
            (_, true, _) => "Type some labels.".to_string(),
            (_, _, ModelState::Failed(_)) => match app.keymap.keys_for(Action::ShowMessage).first()
            {
                Some(k) => format!("No model: it could not be loaded ({k} shows why)."),
                None => "No model: it could not be loaded.".to_string(),
            },
            _ => "Scoring…".to_string(),
        };
        vec![Line::from(Span::styled(hint, theme.dim()))]
    } else {
        let label_w = (inner.width as usize).saturating_sub(BAR + 10).max(8);
        let abstained = app.abstains(preds);
        let verdict = abstained.then(|| {
            let threshold = app.abstain.unwrap_or(0.0) * 100.0;
            let mut style = theme.fg(Color::Magenta).add_modifier(Modifier::BOLD);
            if updating {
                style = style.add_modifier(Modifier::DIM);
            }
            Line::from(Span::styled(
                format!("{NONE_OF_THESE} (top < {threshold:.0}%)"),
                style,
            ))
        });
        let rows = (inner.height as usize).saturating_sub(usize::from(abstained));
        let lines = preds.iter().take(rows).enumerate().map(|(i, p)| {
            // Below the threshold no label is the answer: none is drawn as the leader.
            let mut style = if i == 0 && !abstained {
                theme.fg(Color::Green).add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            };
            if updating {
                style = style.add_modifier(Modifier::DIM);
            }
            let label = fit_columns(&printable(&p.label), label_w);
            Line::from(vec![
                Span::styled(label, style),
                Span::styled(format!(" {:>6.2}% ", p.probability * 100.0), style),
                Span::styled(
                    bar(p.probability, BAR),
                    style.patch(theme.fg(if i == 0 && !abstained {
                        Color::Green
                    } else {
                        Color::Blue
                    })),
                ),
            ])
        });
        verdict.into_iter().chain(lines).collect()
    };
    f.render_widget(Paragraph::new(lines), inner);
}
