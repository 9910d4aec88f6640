//! The Results pane: a study report (`report.json` from `clipscope compare`) in views:
//! the models' headline numbers and per-class table, a confusion-matrix heat map, the
//! prompt study, a step-through of the misclassified images with every model's answer,
//! this session's classifications, and the reports found on disk.

use std::rc::Rc;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table, Tabs, Wrap};
use ratatui::Frame;

use crate::study::compare::{ModelReport, Report};
use crate::tui::action::Action;
use crate::tui::app::App;
use crate::tui::graphics::Prepared;
use crate::tui::results_state::{LoadedReport, ResultsState, View};
use crate::tui::theme::Theme;

/// The pane's rows: view bar, message (when there is one), the view, key hints.
fn rows(area: Rect, results: &ResultsState) -> Rc<[Rect]> {
    let message = u16::from(results.message.is_some());
    Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(message),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .split(area)
}

/// The picture on the left of the step-through, its details on the right.
fn error_columns(area: Rect) -> Rc<[Rect]> {
    Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).split(area)
}

/// The inside of the step-through's picture box, when the pane shows one.
pub fn image_area(area: Rect, results: &ResultsState) -> Option<Rect> {
    results.shows_picture().then(|| {
        let view = rows(area, results)[2];
        Block::default()
            .borders(Borders::ALL)
            .inner(error_columns(view)[0])
    })
}

/// Draw the pane. An escape-sequence picture (sixel, kitty direct) is left out unless
/// `escape_picture` says nothing covers it.
pub fn draw(f: &mut Frame, app: &App, area: Rect, escape_picture: bool) {
    let results = &app.results;
    let rows = rows(area, results);
    draw_view_bar(f, app, rows[0]);
    if let Some(message) = &results.message {
        let style = if results.loading.is_some() {
            app.theme.dim()
        } else {
            app.theme.fg(Color::Red).add_modifier(Modifier::BOLD)
        };
        f.render_widget(
            Paragraph::new(Span::styled(message.clone(), style)),
            rows[1],
        );
    }
    let body = rows[2];
    match (results.view, &results.loaded) {
        (View::Session, _) => draw_session(f, app, body),
        (View::Reports, _) => draw_reports(f, app, body),
        (_, None) => draw_no_report(f, app, body),
        (View::Models, Some(l)) => draw_models(f, app, &l.report, body),
        (View::Confusion, Some(l)) => draw_confusion(f, app, &l.report, body),
        (View::Prompts, Some(l)) => draw_prompts(f, &l.report, body),
        (View::Errors, Some(l)) => draw_errors(f, app, l, body, escape_picture),
    }
    f.render_widget(
        Paragraph::new(Span::styled(key_hints(app), app.theme.dim())),
        rows[3],
    );
}

fn draw_view_bar(f: &mut Frame, app: &App, area: Rect) {
    let results = &app.results;
    let selected = View::ALL
        .iter()
        .position(|v| *v == results.view)
        .unwrap_or(0);
    let source = match (&results.loaded, &results.loading) {
        (_, Some(path)) => format!("reading {}…", path.display()),
        (Some(l), None) => l.dir.display().to_string(),
        (None, None) => "no report".into(),
    };
    const TABS_WIDTH: u16 = 62;
    let cols = Layout::horizontal([Constraint::Length(TABS_WIDTH), Constraint::Min(0)]).split(area);
    if area.width >= TABS_WIDTH {
        f.render_widget(
            Tabs::new(View::ALL.iter().map(|v| v.title()))
                .select(selected)
                .highlight_style(app.theme.selected()),
            cols[0],
        );
    } else {
        // Too narrow for every view's name: the one shown and where it is in the list.
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled(format!(" {} ", results.view.title()), app.theme.selected()),
                Span::raw(format!(" view {} of {}", selected + 1, View::ALL.len())),
            ])),
            area,
        );
        return;
    }
    f.render_widget(
        Paragraph::new(Span::styled(source, app.theme.dim()))
            .alignment(ratatui::layout::Alignment::Right),
        cols[1],
    );
}

/// One line of the pane's keys, from the active keymap.
fn key_hints(app: &App) -> String {
    let first = |a: Action| {
        app.keymap
            .keys_for(a)
            .first()
            .map(|k| k.to_string())
            .unwrap_or_else(|| "-".into())
    };
    [
        (Action::NextView, Action::PrevView, "view"),
        (Action::NextRow, Action::PrevRow, "model"),
        (Action::NextError, Action::PrevError, "error"),
    ]
    .iter()
    .map(|(next, prev, what)| format!("{}/{} {what}", first(*next), first(*prev)))
    .chain([
        format!("{} open report", first(Action::OpenReport)),
        format!("{} read selected", first(Action::Choose)),
    ])
    .collect::<Vec<_>>()
    .join(" · ")
}

fn draw_no_report(f: &mut Frame, app: &App, area: Rect) {
    let results = &app.results;
    let open = app
        .keymap
        .keys_for(Action::OpenReport)
        .first()
        .map(|k| k.to_string())
        .unwrap_or_default();
    let found = match results.found.len() {
        0 => "No report.json found here or in the folders below.".to_string(),
        n => format!("{n} report(s) found: see the Reports view."),
    };
    let lines = vec![
        Line::from("No report loaded."),
        Line::from(found),
        Line::from(format!(
            "Press {open} to type a report folder, or start the app with --report DIR."
        )),
        Line::from(Span::styled(
            "Reports are written by: clipscope compare --data DIR --cnn RUN --output DIR",
            app.theme.dim(),
        )),
    ];
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL)),
        area,
    );
}

fn percent(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", x * 100.0)
    } else {
        "-".into()
    }
}

/// Bytes as KB, MB or GB (powers of 1000, as file managers show them).
fn size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0 => "-".into(),
        n if n < 1_000_000 => format!("{:.0} KB", b / 1e3),
        n if n < 1_000_000_000 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

fn header(cells: Vec<&'static str>) -> Row<'static> {
    Row::new(cells).style(Style::default().add_modifier(Modifier::BOLD))
}

fn model_row(m: &ModelReport) -> Row<'static> {
    let ci = format!(
        "{} [{:.1}–{:.1}]",
        percent(m.top1),
        m.top1_ci[0] * 100.0,
        m.top1_ci[1] * 100.0
    );
    Row::new(vec![
        m.name.clone(),
        m.kind.clone(),
        ci,
        format!("{} (k={})", percent(m.top5), m.top5_k),
        format!("{:.3}", m.macro_f1),
        format!("{:.1} ms", m.latency_ms_per_image),
        size(m.size_bytes),
    ])
}

fn draw_models(f: &mut Frame, app: &App, report: &Report, area: Rect) {
    let selected = app.results.model.min(report.models.len().saturating_sub(1));
    let models_h = (report.models.len() as u16 + 3).min(area.height / 2).max(3);
    let parts = Layout::vertical([Constraint::Length(models_h), Constraint::Min(3)]).split(area);
    let rows = report.models.iter().enumerate().map(|(i, m)| {
        let row = model_row(m);
        if i == selected {
            row.style(app.theme.selected())
        } else {
            row
        }
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(14),
            Constraint::Length(20),
            Constraint::Length(13),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(9),
        ],
    )
    .header(header(vec![
        "model",
        "kind",
        "top-1 [95% CI]",
        "top-k",
        "macro F1",
        "latency",
        "size",
    ]))
    .block(Block::default().borders(Borders::ALL).title(format!(
        " {} models on {} images of {} classes ",
        report.models.len(),
        report.images.len(),
        report.classes.len()
    )));
    f.render_widget(table, parts[0]);
    let Some(model) = report.models.get(selected) else {
        return;
    };
    let rows = model.per_class.iter().map(|c| {
        Row::new(vec![
            c.class.clone(),
            c.support.to_string(),
            percent(c.recall),
            percent(c.precision),
            format!("{:.3}", c.f1),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(7),
        ],
    )
    .header(header(vec!["class", "images", "recall", "precision", "F1"]))
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(format!(" Per class: {} ", model.name)),
    );
    f.render_widget(table, parts[1]);
}

/// The heat map's lines: a header of column numbers, then one row a true class with its
/// name (or number, when names do not fit) and its counts, coloured by the share of the
/// row; clipped to `width` x `height` with a note of what was left out.
pub fn heat_map(
    confusion: &[Vec<usize>],
    names: &[String],
    theme: Theme,
    width: usize,
    height: usize,
) -> Vec<Line<'static>> {
    let k = confusion.len();
    let widest = confusion.iter().flatten().max().copied().unwrap_or(0);
    let digits = widest
        .to_string()
        .len()
        .max(k.saturating_sub(1).to_string().len());
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let index_w = k.saturating_sub(1).to_string().len() + 1;
    // Roomy cells when the matrix fits with them, narrow ones otherwise; names as row
    // labels when the whole matrix still fits, class numbers otherwise.
    let cell = if index_w + 1 + k * (digits + 2) <= width {
        digits + 2
    } else {
        digits + 1
    };
    let named = longest.min(16) + 1 + k * cell <= width;
    let label_w = if named {
        longest.min(16) + 1
    } else {
        index_w + 1
    };
    let columns = (width.saturating_sub(label_w) / cell).min(k);
    // The header, the rows, and a note line when anything is left out.
    let clipped = |rows: usize| columns < k || rows < k;
    let mut rows = height.saturating_sub(1).min(k);
    if clipped(rows) && rows + 2 > height {
        rows = height.saturating_sub(2);
    }
    let mut lines = Vec::with_capacity(rows + 2);
    let mut head = vec![Span::raw(format!("{:>label_w$}", "t\\p "))];
    head.extend((0..columns).map(|j| Span::styled(format!("{j:>cell$}"), theme.dim())));
    lines.push(Line::from(head));
    for (i, row) in confusion.iter().take(rows).enumerate() {
        let total: usize = row.iter().sum();
        let label = if named {
            let name: String = names
                .get(i)
                .map_or("", |n| n.as_str())
                .chars()
                .take(16)
                .collect();
            format!("{name:<w$} ", w = label_w - 1)
        } else {
            format!("{i:>w$} ", w = label_w - 1)
        };
        let mut spans = vec![Span::raw(label)];
        spans.extend(row.iter().take(columns).enumerate().map(|(j, &count)| {
            let share = if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            };
            let text = if count == 0 {
                "·".to_string()
            } else {
                count.to_string()
            };
            Span::styled(format!("{text:>cell$}"), theme.heat(share, i == j))
        }));
        lines.push(Line::from(spans));
    }
    if clipped(rows) {
        lines.push(Line::from(Span::styled(
            format!(
                "{} of {k} rows, {columns} of {k} columns: enlarge the terminal for the rest",
                rows
            ),
            theme.dim(),
        )));
    }
    if !named && lines.len() < height {
        let legend: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{i} {n}"))
            .collect();
        lines.push(Line::from(Span::styled(legend.join("  "), theme.dim())));
    }
    lines
}

fn draw_confusion(f: &mut Frame, app: &App, report: &Report, area: Rect) {
    let Some(model) = report.models.get(app.results.model) else {
        return;
    };
    let block = Block::default().borders(Borders::ALL).title(format!(
        " Confusion: {} (rows true class, columns predicted; share of the row as colour) ",
        model.name
    ));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let names: Vec<String> = report.classes.iter().map(|c| c.name.clone()).collect();
    let lines = heat_map(
        &model.confusion,
        &names,
        app.theme,
        inner.width as usize,
        inner.height as usize,
    );
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
}

fn draw_prompts(f: &mut Frame, report: &Report, area: Rect) {
    let mut extra: Vec<Line> = Vec::new();
    let mut models: Vec<&str> = report
        .prompt_variants
        .iter()
        .map(|v| v.model.as_str())
        .collect();
    models.dedup();
    for model in &models {
        let top1 = report
            .prompt_variants
            .iter()
            .filter(|v| v.model == *model)
            .map(|v| v.top1);
        let (lo, hi) = top1.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        extra.push(Line::from(format!(
            "{model}: spread {:.1} points (worst {}, best {})",
            (hi - lo) * 100.0,
            percent(lo),
            percent(hi)
        )));
    }
    for p in report.linear_probe.iter().flatten() {
        extra.push(Line::from(format!(
            "linear probe {}: top-1 {} [{:.1}–{:.1}] from {} training images (L2 {})",
            p.model,
            percent(p.top1),
            p.top1_ci[0] * 100.0,
            p.top1_ci[1] * 100.0,
            p.train_images,
            p.lambda
        )));
    }
    for s in report.few_shot.iter().flatten() {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|p| format!("{}: {}", p.shots, percent(p.mean)))
            .collect();
        extra.push(Line::from(format!(
            "few-shot {} (shots per class: mean top-1): {}",
            s.model,
            points.join(", ")
        )));
    }
    let extra_h = (extra.len() as u16 + 2).min(area.height / 2);
    let parts = Layout::vertical([Constraint::Min(3), Constraint::Length(extra_h)]).split(area);
    let rows = report.prompt_variants.iter().map(|v| {
        let templates = match v.templates.as_slice() {
            [one] => one.clone(),
            many => format!("{} templates", many.len()),
        };
        Row::new(vec![
            v.model.clone(),
            v.name.clone(),
            percent(v.top1),
            templates,
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Percentage(20),
            Constraint::Percentage(28),
            Constraint::Length(7),
            Constraint::Min(10),
        ],
    )
    .header(header(vec![
        "model",
        "prompt variant",
        "top-1",
        "templates",
    ]))
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(" Prompt study (CLIP zero-shot) "),
    );
    f.render_widget(table, parts[0]);
    f.render_widget(
        Paragraph::new(extra)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL)),
        parts[1],
    );
}

fn draw_errors(f: &mut Frame, app: &App, loaded: &LoadedReport, area: Rect, escape_picture: bool) {
    let results = &app.results;
    let report = &loaded.report;
    let Some(prediction) = results
        .current_error()
        .and_then(|i| report.predictions.get(i))
    else {
        let text = if report.predictions.is_empty() {
            "The report lists no predictions."
        } else {
            "No misclassified images: every model got every image right."
        };
        f.render_widget(
            Paragraph::new(text).block(Block::default().borders(Borders::ALL)),
            area,
        );
        return;
    };
    let cols = error_columns(area);
    let block = Block::default()
        .borders(Borders::ALL)
        .title(format!(" {} ", prediction.image));
    let inner = block.inner(cols[0]);
    f.render_widget(block, cols[0]);
    match (&results.picture_error, app.picture_in(inner)) {
        (Some(message), _) => f.render_widget(
            Paragraph::new(Span::styled(message.clone(), app.theme.fg(Color::Red)))
                .wrap(Wrap { trim: true }),
            inner,
        ),
        (None, Some((_, Prepared::Escape(_)))) if !escape_picture => {}
        (None, Some((rect, picture))) => picture.render(rect, f.buffer_mut()),
        (None, None) => {} // until the picture is prepared for this size
    }
    let class = |i: usize| report.classes.get(i).map_or("?", |c| c.name.as_str());
    let theme = app.theme;
    let wrong = prediction
        .answers
        .iter()
        .filter(|(c, _)| *c != prediction.truth)
        .count();
    let rows = report
        .models
        .iter()
        .zip(&prediction.answers)
        .map(|(m, &(answer, probability))| {
            let right = answer == prediction.truth;
            let (mark, style) = if right {
                ("✓", theme.fg(Color::Green))
            } else {
                ("✗", theme.fg(Color::Red).add_modifier(Modifier::BOLD))
            };
            Row::new(vec![
                m.name.clone(),
                class(answer).to_string(),
                percent(probability),
                mark.to_string(),
            ])
            .style(style)
        });
    let block = Block::default().borders(Borders::ALL).title(format!(
        " Error {} of {} ",
        results.error + 1,
        loaded.errors.len()
    ));
    let inner = block.inner(cols[1]);
    f.render_widget(block, cols[1]);
    let parts = Layout::vertical([Constraint::Length(3), Constraint::Min(1)]).split(inner);
    let summary = vec![
        Line::from(vec![
            Span::raw("true class: "),
            Span::styled(
                class(prediction.truth).to_string(),
                Style::default().add_modifier(Modifier::BOLD),
            ),
        ]),
        Line::from(format!("{wrong} of {} models wrong", report.models.len())),
    ];
    f.render_widget(Paragraph::new(summary), parts[0]);
    let table = Table::new(
        rows,
        [
            Constraint::Min(10),
            Constraint::Min(10),
            Constraint::Length(7),
            Constraint::Length(2),
        ],
    )
    .header(header(vec!["model", "answer", "conf.", ""]));
    f.render_widget(table, parts[1]);
}

fn draw_session(f: &mut Frame, app: &App, area: Rect) {
    let rows = app.history.iter().rev().map(|r| {
        let top = r.predictions.first();
        let answer = if app.abstains(&r.predictions) {
            crate::tui::panes::classify::NONE_OF_THESE.to_string()
        } else {
            top.map(|p| p.label.clone()).unwrap_or_default()
        };
        Row::new(vec![
            r.path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            answer,
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
    .header(header(vec![
        "image",
        "top label",
        "prob.",
        "labels",
        "latency",
    ]))
    .block(Block::default().borders(Borders::ALL).title(format!(
        " This session: {} classifications ",
        app.history.len()
    )));
    f.render_widget(table, area);
}

fn draw_reports(f: &mut Frame, app: &App, area: Rect) {
    let results = &app.results;
    let loaded = results.loaded.as_ref().map(|l| l.dir.as_path());
    let mut lines: Vec<Line> = results
        .found
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let mark = if Some(dir.as_path()) == loaded {
                "● "
            } else {
                "  "
            };
            let text = format!("{mark}{}", dir.join("report.json").display());
            if i == results.found_selected {
                Line::from(Span::styled(text, app.theme.selected()))
            } else {
                Line::from(text)
            }
        })
        .collect();
    if lines.is_empty() {
        lines.push(Line::from(Span::styled(
            "No report.json in the current folder or the folders in it.",
            app.theme.dim(),
        )));
    }
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Reports here and in the folders below, newest first "),
        ),
        area,
    );
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    use super::*;
    use crate::clip::zeroshot::Prediction;
    use crate::tui::app::{DecodedImage, Pane};
    use crate::tui::graphics::Graphics;
    use crate::tui::keymap::Keymap;
    use crate::tui::results_state::{find_reports, load_report, ResultsEffect};

    /// The hand-made report of tests/fixtures/make_report_fixture.py, by a relative
    /// path (tests run in the crate's folder) so that snapshots hold no machine's paths.
    const FIXTURE: &str = "tests/fixtures/report";

    fn app(keymap: &str) -> App {
        App::new(Keymap::builtin(keymap).unwrap(), Graphics::halfblocks(), "")
    }

    /// Run the work the app asked for, as the event loop does on its blocking threads.
    fn settle(app: &mut App) {
        while !app.effects.is_empty() {
            for effect in std::mem::take(&mut app.effects) {
                match effect {
                    ResultsEffect::FindReports(root) => app.results.on_found(find_reports(&root)),
                    ResultsEffect::LoadReport(path) => {
                        let result = load_report(&path).map_err(|e| e.to_string());
                        app.on_report_loaded(path, result);
                    }
                    ResultsEffect::DecodeImage(path) => {
                        let result = crate::data::load_image(&path)
                            .map(DecodedImage::new)
                            .map_err(|e| e.to_string());
                        app.on_results_image(path, result);
                    }
                }
            }
        }
    }

    fn app_with_report() -> App {
        let mut a = app("default");
        a.open_report(PathBuf::from(FIXTURE));
        settle(&mut a);
        assert!(a.results.loaded.is_some(), "{:?}", a.results.message);
        a
    }

    fn press(app: &mut App, code: KeyCode) {
        app.on_key(KeyEvent::new(code, KeyModifiers::NONE), Instant::now());
        settle(app);
    }

    use crate::tui::testing::screen;

    #[test]
    fn the_models_view_lists_every_model_and_the_selected_ones_classes() {
        let mut a = app_with_report();
        assert_eq!(a.pane, Pane::Results);
        insta::assert_snapshot!(screen(&mut a, 110, 24));
    }

    #[test]
    fn the_confusion_view_is_a_heat_map_with_counts() {
        let mut a = app_with_report();
        press(&mut a, KeyCode::Right);
        assert_eq!(a.results.view, View::Confusion);
        insta::assert_snapshot!(screen(&mut a, 110, 16));
    }

    #[test]
    fn the_heat_map_fits_a_small_terminal() {
        let mut a = app_with_report();
        press(&mut a, KeyCode::Right);
        insta::assert_snapshot!(screen(&mut a, 40, 12));
    }

    #[test]
    fn heat_map_cells_are_coloured_by_their_share_of_the_row() {
        let names = ["a".to_string(), "b".to_string()];
        let lines = heat_map(&[vec![3, 1], vec![0, 4]], &names, Theme::default(), 40, 10);
        let cell = |row: usize, col: usize| lines[row].spans[col + 1].clone();
        assert_eq!(cell(1, 0).content.trim(), "3");
        assert_eq!(cell(1, 0).style, Theme::default().heat(0.75, true));
        assert_eq!(cell(1, 1).style, Theme::default().heat(0.25, false));
        assert_eq!(cell(2, 0).content.trim(), "·", "zero is a dot");
        assert_ne!(cell(1, 0).style.bg, cell(1, 1).style.bg);
        // Without colour the levels are modifiers only.
        let plain = heat_map(
            &[vec![3, 1], vec![0, 4]],
            &names,
            Theme { color: false },
            40,
            10,
        );
        assert!(plain
            .iter()
            .flat_map(|l| &l.spans)
            .all(|s| s.style.bg.is_none()));
        // Too narrow for names: class numbers label the rows, and a legend names them.
        let long = [
            "a long class name".to_string(),
            "another long one".to_string(),
        ];
        let narrow = heat_map(&[vec![3, 1], vec![0, 4]], &long, Theme::default(), 12, 10);
        assert_eq!(narrow[1].spans[0].content, " 0 ");
        assert_eq!(
            narrow.last().unwrap().spans[0].content,
            "0 a long class name  1 another long one"
        );
        // Too small for the matrix: the rows and columns that fit, and a note.
        let small = heat_map(&vec![vec![1; 9]; 9], &long, Theme::default(), 12, 5);
        assert_eq!(small.len(), 5);
        assert!(small[4].spans[0]
            .content
            .starts_with("3 of 9 rows, 4 of 9 columns"));
    }

    #[test]
    fn the_prompts_view_shows_each_variant_and_the_spread() {
        let mut a = app_with_report();
        press(&mut a, KeyCode::Right);
        press(&mut a, KeyCode::Right);
        assert_eq!(a.results.view, View::Prompts);
        insta::assert_snapshot!(screen(&mut a, 110, 30));
    }

    #[test]
    fn errors_step_through_with_the_picture_and_every_models_answer() {
        let mut a = app_with_report();
        // The report's errors: image 1 (demo-clip wrong), 3 (resnet), 5 (demo-clip).
        assert_eq!(a.results.loaded.as_ref().unwrap().errors, [1, 3, 5]);
        press(&mut a, KeyCode::Char('n'));
        assert_eq!((a.results.view, a.results.error), (View::Errors, 0));
        let first = screen(&mut a, 100, 20);
        assert!(
            first.contains('▀') || first.contains('▄'),
            "the picture is drawn"
        );
        insta::assert_snapshot!(first);
        press(&mut a, KeyCode::Char('n'));
        assert_eq!(a.results.current_error(), Some(3));
        let shown = a.results.picture_path.clone().unwrap();
        assert!(shown.ends_with("data/square/3.png"), "{}", shown.display());
        insta::assert_snapshot!(screen(&mut a, 100, 20));
        // Back, and around both ends.
        press(&mut a, KeyCode::Char('p'));
        press(&mut a, KeyCode::Char('p'));
        assert_eq!(a.results.current_error(), Some(5));
        press(&mut a, KeyCode::Char('n'));
        assert_eq!(a.results.current_error(), Some(1));
    }

    #[test]
    fn up_and_down_switch_the_model_and_only_in_the_results_pane() {
        let mut a = app_with_report();
        press(&mut a, KeyCode::Down);
        assert_eq!(a.results.model, 1);
        assert!(screen(&mut a, 110, 24).contains("Per class: resnet18-shapes"));
        press(&mut a, KeyCode::Up);
        press(&mut a, KeyCode::Up);
        assert_eq!(a.results.model, 2, "wraps around");
        // In the Train pane the arrows still move its form; Enter still edits the labels.
        a.pane = Pane::Train;
        let before = a.train.selected;
        press(&mut a, KeyCode::Down);
        assert_eq!((a.train.selected, a.results.model), (before + 1, 2));
        a.pane = Pane::Classify;
        press(&mut a, KeyCode::Char('x'));
        press(&mut a, KeyCode::Enter);
        press(&mut a, KeyCode::Char('n'));
        assert_eq!(a.classify.editor.lines(), ["x", "n"]);
        assert_eq!(a.results.view, View::Models);
    }

    #[test]
    fn vim_keys_step_views_models_and_errors() {
        let mut a = app("vim");
        a.open_report(PathBuf::from(FIXTURE));
        settle(&mut a);
        press(&mut a, KeyCode::Char('j'));
        assert_eq!(a.results.model, 1);
        press(&mut a, KeyCode::Char('l'));
        assert_eq!(a.results.view, View::Confusion);
        press(&mut a, KeyCode::Char('n'));
        press(&mut a, KeyCode::Char('N'));
        assert_eq!((a.results.view, a.results.error), (View::Errors, 2));
    }

    #[test]
    fn reports_are_found_and_read_from_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let report = std::fs::read(Path::new(FIXTURE).join("report.json")).unwrap();
        std::fs::write(dir.path().join("report.json"), &report).unwrap();
        std::fs::create_dir(dir.path().join("study")).unwrap();
        std::fs::write(dir.path().join("study/report.json"), &report).unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        let found = find_reports(dir.path());
        assert_eq!(found.len(), 2, "{found:?}");
        let mut a = app("default");
        a.pane = Pane::Results;
        a.effects
            .push(ResultsEffect::FindReports(dir.path().to_path_buf()));
        settle(&mut a);
        press(&mut a, KeyCode::Left);
        assert_eq!(a.results.view, View::Reports, "the views wrap around");
        press(&mut a, KeyCode::Down);
        press(&mut a, KeyCode::Enter);
        let loaded = a.results.loaded.as_ref().unwrap();
        assert_eq!(loaded.dir, found[1]);
        assert_eq!(a.results.view, View::Models, "reading a report shows it");
    }

    #[test]
    fn a_corrupt_or_missing_report_is_one_line_in_the_pane() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("report.json"),
            "{\"version\": 1, \"models\": [",
        )
        .unwrap();
        let mut a = app("default");
        a.open_report(dir.path().to_path_buf());
        settle(&mut a);
        assert!(a.results.loaded.is_none());
        let text = screen(&mut a, 100, 12);
        let line = text
            .lines()
            .find(|l| l.contains("not a clipscope report"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("report.json"));
        assert!(text.contains("No report loaded."));
        // An index out of range is refused on reading, not met while drawing.
        let mut report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(Path::new(FIXTURE).join("report.json")).unwrap())
                .unwrap();
        report["predictions"][0]["answers"][0][0] = 7.into();
        std::fs::write(dir.path().join("report.json"), report.to_string()).unwrap();
        let err = load_report(dir.path()).unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
        let err = load_report(&dir.path().join("nothing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nothing"), "{err}");
        // A missing picture is a line where the picture would be.
        let mut a = app_with_report();
        a.results.loaded.as_mut().unwrap().report.data = "/no/such/folder".into();
        press(&mut a, KeyCode::Char('n'));
        assert!(screen(&mut a, 100, 20).contains("/no/such/folder/circle/1.png"));
    }

    #[test]
    fn the_session_view_keeps_this_sessions_classifications() {
        let mut a = app_with_report();
        a.history.push(crate::tui::app::ResultEntry {
            path: "cat.png".into(),
            predictions: vec![Prediction {
                label: "cat".into(),
                probability: 0.9,
            }],
            latency_ms: 12.0,
        });
        a.results.show(View::Session);
        let text = screen(&mut a, 100, 10);
        assert!(
            text.lines()
                .any(|l| l.contains("cat.png") && l.contains("90.00%")),
            "{text}"
        );
    }

    fn classify_with(probabilities: &[(&str, f64)], abstain: Option<f64>) -> String {
        let mut a = app("default");
        a.abstain = abstain;
        a.classify.image_path = Some("shape.png".into());
        a.classify.predictions = probabilities
            .iter()
            .map(|(label, p)| Prediction {
                label: label.to_string(),
                probability: *p,
            })
            .collect();
        screen(&mut a, 90, 16)
    }

    #[test]
    fn below_the_abstain_threshold_the_answer_is_none_of_these() {
        let text = classify_with(
            &[("circle", 0.42), ("square", 0.35), ("triangle", 0.23)],
            Some(0.5),
        );
        insta::assert_snapshot!(text);
        assert!(text.contains("none of these (top < 50%)"));
        assert!(
            text.contains("42.00%") && text.contains("23.00%"),
            "probabilities stay"
        );
        // At or above the threshold, or without one, the leader is the answer.
        let at = classify_with(&[("circle", 0.5), ("square", 0.5)], Some(0.5));
        assert!(!at.contains("none of these"));
        let without = classify_with(&[("circle", 0.42), ("square", 0.58)], None);
        assert!(!without.contains("none of these"));
    }
}
