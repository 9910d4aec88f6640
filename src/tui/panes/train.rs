//! The Train pane: the run's options, live loss and accuracy charts, a progress gauge with
//! throughput and time left, and the log.

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Borders, Chart, Dataset, Gauge, GraphType, Paragraph, Wrap};
use ratatui::Frame;

use crate::tui::app::App;
use crate::tui::text::printable;
use crate::tui::train_state::Field;

/// Draw the pane.
pub fn draw(f: &mut Frame, app: &mut App, area: Rect) {
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Length(44), Constraint::Min(20)])
        .split(area);
    let left = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(Field::ALL.len() as u16 + 3),
            Constraint::Length(3),
            Constraint::Min(3),
        ])
        .split(cols[0]);
    draw_form(f, app, left[0]);
    draw_gauge(f, app, left[1]);
    draw_log(f, app, left[2]);
    let charts = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
        .split(cols[1]);
    draw_chart(f, app, charts[0], true);
    draw_chart(f, app, charts[1], false);
}

fn draw_form(f: &mut Frame, app: &mut App, area: Rect) {
    let theme = app.theme;
    let t = &mut app.train;
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" Run: ↑↓ Enter edit, F5 start, F6 stop ");
    let inner = block.inner(area);
    f.render_widget(block, area);
    for (i, field) in Field::ALL.iter().enumerate() {
        let row = Rect {
            x: inner.x,
            y: inner.y + i as u16,
            width: inner.width,
            height: 1,
        };
        if row.y >= inner.y + inner.height {
            break;
        }
        let label = format!("{:<16}", field.label());
        let selected = i == t.selected;
        let style = if selected {
            theme.selected()
        } else {
            Style::default()
        };
        f.render_widget(
            Paragraph::new(Span::styled(label, style)),
            Rect { width: 16, ..row },
        );
        let value_area = Rect {
            x: row.x + 17,
            width: row.width.saturating_sub(17),
            ..row
        };
        match (&t.editing, selected) {
            (Some(editor), true) => f.render_widget(editor, value_area),
            _ => f.render_widget(Paragraph::new(t.values[i].clone()), value_area),
        }
    }
}

fn draw_gauge(f: &mut Frame, app: &App, area: Rect) {
    let p = &app.train.progress;
    let (epoch, step, steps, total) = p.position;
    let left = p
        .time_left()
        .map(|d| {
            let s = d.as_secs();
            format!("{}m{:02}s left", s / 60, s % 60)
        })
        .unwrap_or_else(|| "-".into());
    let label = if p.running || !p.step_loss.is_empty() {
        format!(
            "epoch {epoch}/{total} · step {step}/{steps} · {:.1} img/s · {left}",
            p.images_per_sec
        )
    } else {
        "no run yet".into()
    };
    f.render_widget(
        Gauge::default()
            .block(Block::default().borders(Borders::ALL).title(if p.running {
                " Training "
            } else {
                " Progress "
            }))
            .gauge_style(app.theme.fg(Color::Green))
            .ratio(p.fraction())
            .label(label),
        area,
    );
}

fn draw_log(f: &mut Frame, app: &App, area: Rect) {
    let block = Block::default().borders(Borders::ALL).title(" Log ");
    let inner = block.inner(area);
    let lines: Vec<Line> = app
        .train
        .log
        .iter()
        .map(|l| Line::from(printable(l).into_owned()))
        .collect();
    // Long lines wrap; the view is scrolled so that the newest line is the last row.
    let log = Paragraph::new(lines).wrap(Wrap { trim: false });
    let rows = log.line_count(inner.width);
    let scroll = rows.saturating_sub(usize::from(inner.height));
    f.render_widget(
        log.scroll((u16::try_from(scroll).unwrap_or(u16::MAX), 0))
            .block(block),
        area,
    );
}

/// Moving average over `n` points, to make per-step accuracy readable.
fn smooth(points: &[(f64, f64)], n: usize) -> Vec<(f64, f64)> {
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let lo = i.saturating_sub(n - 1);
            let w = &points[lo..=i];
            (x, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
        })
        .collect()
}

fn draw_chart(f: &mut Frame, app: &App, area: Rect, loss: bool) {
    let p = &app.train.progress;
    let (steps, total) = (p.position.2.max(1), p.position.3.max(1));
    let x_max = (steps * total) as f64;
    let per_step = if loss {
        p.step_loss.clone()
    } else {
        smooth(&p.step_acc, 10)
    };
    let per_epoch: Vec<(f64, f64)> = p
        .epochs
        .iter()
        .map(|(x, m)| (*x, if loss { m.val_loss } else { m.val_acc }))
        .collect();
    let y_max = if loss {
        per_step
            .iter()
            .chain(&per_epoch)
            .map(|p| p.1)
            .filter(|v| v.is_finite())
            .fold(0.5f64, f64::max)
            * 1.1
    } else {
        1.0
    };
    let (name, title) = if loss {
        ("train loss (step)", " Loss ")
    } else {
        ("train acc (step, avg of 10)", " Accuracy ")
    };
    let datasets = vec![
        Dataset::default()
            .name(name)
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(app.theme.fg(Color::Cyan))
            .data(&per_step),
        Dataset::default()
            .name(if loss {
                "val loss (epoch)"
            } else {
                "val acc (epoch)"
            })
            .marker(Marker::Dot)
            .graph_type(GraphType::Line)
            .style(app.theme.fg(Color::Yellow).add_modifier(Modifier::BOLD))
            .data(&per_epoch),
    ];
    let chart = Chart::new(datasets)
        .block(Block::default().borders(Borders::ALL).title(title))
        .x_axis(
            Axis::default()
                .title("step")
                .bounds([0.0, x_max])
                .labels(vec![
                    Span::raw("0"),
                    Span::raw(format!("{}", x_max as usize)),
                ]),
        )
        .y_axis(
            Axis::default()
                .bounds([0.0, y_max])
                .labels(vec![Span::raw("0"), Span::raw(format!("{y_max:.2}"))]),
        );
    f.render_widget(chart, area);
}
