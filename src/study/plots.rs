//! The study's PNG plots, drawn with `plotters` into a pixel buffer, encoded with `image`
//! and written atomically: a confusion-matrix heat map, horizontal bars (accuracy by
//! prompt variant), the few-shot curve against reference lines, and training curves.
//!
//! Text is drawn with `ab_glyph` from a subset of DejaVu Sans embedded in the binary
//! (`assets/fonts/`), so plots render the same on a machine without any system font.
//! Characters outside the subset (Latin, Greek, common punctuation) show as boxes.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::ImageEncoder;
use plotters::chart::MeshStyle;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::probe::FewShotPoint;

/// DejaVu Sans, cut to the characters a plot needs (see `assets/fonts/README.md`).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");
/// The family name plotters looks fonts up by; its charts default to it.
const FAMILY: &str = "sans-serif";

/// Series colours (matplotlib's tab10: distinct, and readable on white).
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];
/// The heat map's scale, from no images to all of a row's (matplotlib's "Blues").
const BLUES: [(f64, RGBColor); 5] = [
    (0.0, RGBColor(247, 251, 255)),
    (0.25, RGBColor(198, 219, 239)),
    (0.5, RGBColor(107, 174, 214)),
    (0.75, RGBColor(33, 113, 181)),
    (1.0, RGBColor(8, 48, 107)),
];
const INK: RGBColor = RGBColor(33, 33, 33);
const GRID: RGBColor = RGBColor(225, 225, 225);
/// Longest class or bar name drawn in full; longer ones are shortened with an ellipsis.
const MAX_LABEL_CHARS: usize = 28;
/// The confusion matrix's cells: as large as fit 720 pixels, within these bounds.
const CELL_PIXELS: std::ops::RangeInclusive<u32> = 3..=64;
/// Smallest cell that gets a class name beside it (fewer than 72 classes); below it the
/// names would overlap.
const LABELLED_CELL: u32 = 10;
/// Smallest cell that gets its count written in it.
const COUNTED_CELL: i32 = 22;

/// Why a plot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// There is nothing to plot.
    #[error("nothing to plot: {0} is empty")]
    Empty(&'static str),
    /// The confusion matrix does not match the classes.
    #[error("the confusion matrix must be {classes} x {classes} for {classes} classes; row {row} has {found} entries")]
    MatrixShape {
        /// Number of classes.
        classes: usize,
        /// The first row at fault (or the row count, when rows are missing).
        row: usize,
        /// Its length.
        found: usize,
    },
    /// A value to plot is NaN or infinite.
    #[error("{0} holds a value that is not a finite number")]
    NotFinite(&'static str),
    /// The embedded font could not be read.
    #[error("the embedded plot font could not be loaded")]
    Font,
    /// Drawing failed.
    #[error("drawing the plot failed: {0}")]
    Draw(String),
    /// PNG encoding failed.
    #[error("encoding the PNG failed: {0}")]
    Encode(#[from] image::ImageError),
    /// The file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for PlotError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        PlotError::Draw(e.to_string())
    }
}

/// The drawing surface every plot draws on.
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Registers the embedded font with plotters, once per process.
fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// A text style in the embedded font.
fn font(size: f64) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&INK)
}

/// Draws `size` pixels with `draw` on a white background and writes them to `path` as a
/// PNG, atomically (a reader never sees half a file).
fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area) -> Result<(), PlotError>,
) -> Result<(), PlotError> {
    ensure_font()?;
    let (width, height) = size;
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png).write_image(
        &pixels,
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )?;
    crate::util::write_atomic(path, &png).map_err(|source| PlotError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// `name`, shortened with an ellipsis past [`MAX_LABEL_CHARS`].
fn short_label(name: &str) -> String {
    if name.chars().count() <= MAX_LABEL_CHARS {
        name.to_string()
    } else {
        let kept: String = name.chars().take(MAX_LABEL_CHARS - 1).collect();
        format!("{kept}…")
    }
}

/// Draws `title` centred at the top of `area` and returns the area below it.
fn titled<'a>(area: &Area<'a>, title: &str) -> Result<Area<'a>, PlotError> {
    let (width, _) = area.dim_in_pixel();
    let style = font(22.0).pos(Pos::new(HPos::Center, VPos::Top));
    area.draw(&Text::new(title.to_string(), (width as i32 / 2, 12), style))?;
    Ok(area.split_vertically(48).1)
}

/// The heat-map colour of a share in 0..=1, interpolated between the [`BLUES`] stops.
fn heat(share: f64) -> RGBColor {
    let share = share.clamp(0.0, 1.0);
    let upper = BLUES
        .iter()
        .position(|&(at, _)| at >= share)
        .unwrap_or(0)
        .max(1);
    let (a, RGBColor(r0, g0, b0)) = BLUES[upper - 1];
    let (b, RGBColor(r1, g1, b1)) = BLUES[upper];
    let t = (share - a) / (b - a);
    let mix = |x: u8, y: u8| (f64::from(x) + (f64::from(y) - f64::from(x)) * t).round() as u8;
    RGBColor(mix(r0, r1), mix(g0, g1), mix(b0, b1))
}

/// Checks that `matrix` is square with one row per class.
fn check_square(classes: usize, matrix: &[Vec<usize>]) -> Result<(), PlotError> {
    if matrix.len() != classes {
        return Err(PlotError::MatrixShape {
            classes,
            row: matrix.len(),
            found: matrix.len(),
        });
    }
    match matrix.iter().position(|row| row.len() != classes) {
        Some(row) => Err(PlotError::MatrixShape {
            classes,
            row,
            found: matrix[row].len(),
        }),
        None => Ok(()),
    }
}

/// The confusion matrix as a heat map: rows true classes, columns predicted ones, each
/// cell coloured by its share of the row (the true class's images) and labelled with its
/// count when the cell is large enough to hold it. Class names are written beside the
/// rows and below the columns for up to 72 classes; with more, the grid stays readable
/// as a picture (3000 pixels for 1000 classes) and the axis titles say the names were left out.
pub fn confusion_png(
    path: &Path,
    title: &str,
    classes: &[String],
    matrix: &[Vec<usize>],
) -> Result<(), PlotError> {
    if classes.is_empty() {
        return Err(PlotError::Empty("the class list"));
    }
    check_square(classes.len(), matrix)?;
    let n = classes.len();
    let cell = (720 / n as u32).clamp(*CELL_PIXELS.start(), *CELL_PIXELS.end());
    let label_size = (f64::from(cell) * 0.5).clamp(10.0, 15.0);
    let labels: Vec<String> = if cell >= LABELLED_CELL {
        classes.iter().map(|c| short_label(c)).collect()
    } else {
        Vec::new()
    };
    ensure_font()?;
    let label_width = labels
        .iter()
        .map(|l| estimate_width(l, label_size))
        .max()
        .unwrap_or(0);
    let grid = cell * n as u32;
    let left = label_width + 50;
    let top = 60;
    let bottom = label_width + 50;
    let legend = 110;
    let width = (left + grid + legend).max(420);
    let height = top + grid + bottom;
    render(path, (width, height), |root| {
        titled(root, title)?;
        let x0 = left as i32;
        let y0 = top as i32;
        let cell = cell as i32;
        for (t, row) in matrix.iter().enumerate() {
            let support: usize = row.iter().sum();
            for (p, &count) in row.iter().enumerate() {
                let share = if support == 0 {
                    0.0
                } else {
                    count as f64 / support as f64
                };
                let (x, y) = (x0 + p as i32 * cell, y0 + t as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    heat(share).filled(),
                ))?;
                if cell >= COUNTED_CELL {
                    let ink = if share > 0.55 { WHITE } else { INK };
                    let style = font((f64::from(cell) * 0.36).min(16.0))
                        .color(&ink)
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    root.draw(&Text::new(
                        count.to_string(),
                        (x + cell / 2, y + cell / 2),
                        style,
                    ))?;
                }
            }
        }
        let grid = grid as i32;
        root.draw(&Rectangle::new(
            [(x0, y0), (x0 + grid, y0 + grid)],
            INK.stroke_width(1),
        ))?;
        let right_middle = Pos::new(HPos::Right, VPos::Center);
        for (i, label) in labels.iter().enumerate() {
            let centre = i as i32 * cell + cell / 2;
            let row_label = font(label_size).pos(right_middle);
            root.draw(&Text::new(label.clone(), (x0 - 6, y0 + centre), row_label))?;
            // Rotated to read upwards, its end at the grid's lower edge.
            let column_label = font(label_size)
                .pos(right_middle)
                .transform(FontTransform::Rotate270);
            root.draw(&Text::new(
                label.clone(),
                (x0 + centre, y0 + grid + 6),
                column_label,
            ))?;
        }
        let omitted = if labels.is_empty() {
            format!(" ({n} classes, names left out)")
        } else {
            String::new()
        };
        let axis = font(15.0).pos(Pos::new(HPos::Center, VPos::Bottom));
        root.draw(&Text::new(
            format!("Predicted class{omitted}"),
            (x0 + grid / 2, height as i32 - 10),
            axis.clone(),
        ))?;
        root.draw(&Text::new(
            format!("True class{omitted}"),
            (14, y0 + grid / 2),
            axis.pos(Pos::new(HPos::Center, VPos::Top))
                .transform(FontTransform::Rotate270),
        ))?;
        draw_share_scale(root, x0 + grid + 24, y0, grid.max(120))
    })
}

/// Width in pixels of `text` in the embedded font at `size`.
fn estimate_width(text: &str, size: f64) -> u32 {
    // Estimating needs no surface; the font is registered by the caller.
    font(size)
        .font
        .box_size(text)
        .map(|(w, _)| w)
        .unwrap_or((text.chars().count() as f64 * size * 0.6) as u32)
}

/// The heat map's colour scale: a vertical bar from 100% (top) to 0% of the true class.
fn draw_share_scale(root: &Area, x: i32, y: i32, height: i32) -> Result<(), PlotError> {
    let width = 16;
    for step in 0..height {
        let share = 1.0 - f64::from(step) / f64::from(height - 1);
        root.draw(&Rectangle::new(
            [(x, y + step), (x + width, y + step + 1)],
            heat(share).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(x, y), (x + width, y + height)],
        INK.stroke_width(1),
    ))?;
    let tick = font(12.0).pos(Pos::new(HPos::Left, VPos::Center));
    for (share, label) in [(1.0, "100%"), (0.5, "50%"), (0.0, "0%")] {
        let at = y + ((1.0 - share) * f64::from(height - 1)).round() as i32;
        root.draw(&Text::new(label, (x + width + 5, at), tick.clone()))?;
    }
    let caption = font(12.0)
        .pos(Pos::new(HPos::Center, VPos::Top))
        .transform(FontTransform::Rotate90);
    root.draw(&Text::new(
        "share of the true class",
        (x + width + 52, y + height / 2),
        caption,
    ))?;
    Ok(())
}

/// Checks that every value is a finite number.
fn check_finite<'v>(
    what: &'static str,
    values: impl IntoIterator<Item = &'v f64>,
) -> Result<(), PlotError> {
    if values.into_iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(PlotError::NotFinite(what))
    }
}

/// A value axis from 0 (or below, for negative values) to a little past the largest
/// value, room for the printed numbers; 0..1.1 for fractions.
fn value_range(values: impl Iterator<Item = f64> + Clone) -> Range<f64> {
    let lo = values.clone().fold(0.0, f64::min);
    let hi = values.fold(0.0, f64::max);
    if lo >= 0.0 && hi <= 1.0 {
        0.0..1.1
    } else {
        let span = (hi - lo).max(f64::EPSILON);
        (lo - if lo < 0.0 { span * 0.15 } else { 0.0 })..(hi + span * 0.15)
    }
}

/// Horizontal bars, one per `(name, value)`, top to bottom in the given order, each with
/// its value printed at its end (three decimals); `y_label` names the value axis.
pub fn bars_png(
    path: &Path,
    title: &str,
    y_label: &str,
    bars: &[(String, f64)],
) -> Result<(), PlotError> {
    if bars.is_empty() {
        return Err(PlotError::Empty("the list of bars"));
    }
    check_finite("a bar", bars.iter().map(|(_, v)| v))?;
    let n = bars.len();
    let names: Vec<String> = bars.iter().map(|(name, _)| short_label(name)).collect();
    ensure_font()?;
    let name_width = names
        .iter()
        .map(|l| estimate_width(l, 14.0))
        .max()
        .unwrap_or(0);
    let height = 130 + 40 * n as u32;
    let range = value_range(bars.iter().map(|(_, v)| *v));
    render(path, (900 + name_width, height), |root| {
        let area = titled(root, title)?;
        let mut chart = ChartBuilder::on(&area)
            .margin_right(30)
            .margin_bottom(10)
            .x_label_area_size(45)
            .y_label_area_size(name_width + 16)
            // An integer range is inclusive in plotters: 0..n - 1 makes n segments.
            .build_cartesian_2d(range.clone(), (0..n - 1).into_segmented())?;
        // Segment i from the bottom holds bar n - 1 - i, so the first bar is on top.
        let name_of = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < n => names[n - 1 - i].clone(),
            _ => String::new(),
        };
        house_style(&mut chart.configure_mesh())
            .disable_y_mesh()
            .x_desc(y_label)
            .y_labels(n)
            .y_label_formatter(&name_of)
            .draw()?;
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, value))| {
            let segment = n - 1 - i;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(segment)),
                    (*value, SegmentValue::Exact(segment + 1)),
                ],
                PALETTE[0].filled(),
            );
            bar.set_margin(6, 6, 0, 0);
            bar
        }))?;
        let span = range.end - range.start;
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, value))| {
            let at = (
                value.max(0.0) + span * 0.008,
                SegmentValue::CenterOf(n - 1 - i),
            );
            let style = font(14.0).pos(Pos::new(HPos::Left, VPos::Center));
            Text::new(format!("{value:.3}"), at, style)
        }))?;
        Ok(())
    })
}

/// The few-shot curve: mean test top-1 against labelled images per class (log2 axis),
/// a band of one standard deviation, the range of the draws, and a dashed horizontal
/// line for each `(label, top-1)` of `lines` (the CNN, zero-shot CLIP), labelled in the legend.
pub fn few_shot_png(
    path: &Path,
    title: &str,
    points: &[FewShotPoint],
    lines: &[(String, f64)],
) -> Result<(), PlotError> {
    if points.is_empty() {
        return Err(PlotError::Empty("the few-shot curve"));
    }
    check_finite(
        "the few-shot curve",
        points
            .iter()
            .flat_map(|p| [&p.mean, &p.std, &p.min, &p.max]),
    )?;
    check_finite("a reference line", lines.iter().map(|(_, v)| v))?;
    let mut points = points.to_vec();
    points.sort_by_key(|p| p.shots);
    let lowest = points[0].shots.max(1) as f64;
    let highest = points[points.len() - 1].shots.max(1) as f64;
    let x_range = (lowest / 1.5)..(highest * 1.5);
    let top = points
        .iter()
        .map(|p| p.max.max(p.mean + p.std))
        .chain(lines.iter().map(|(_, v)| *v))
        .fold(1.0, f64::max);
    let draws = points.iter().map(|p| p.runs.len()).max().unwrap_or(0);
    render(path, (960, 620), |root| {
        let area = titled(root, title)?;
        let mut chart = ChartBuilder::on(&area)
            .margin(20)
            .margin_top(0)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x_range.clone().log_scale().base(2.0), 0.0..top * 1.02)?;
        house_style(&mut chart.configure_mesh())
            .x_desc("labelled images per class (log scale)")
            .y_desc("test top-1")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .draw()?;
        let colour = PALETTE[0];
        let x = |p: &FewShotPoint| p.shots.max(1) as f64;
        let band: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (x(p), (p.mean + p.std).min(top)))
            .chain(
                points
                    .iter()
                    .rev()
                    .map(|p| (x(p), (p.mean - p.std).max(0.0))),
            )
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(
                band,
                colour.mix(0.18).filled(),
            )))?
            .label(format!("± 1 std over {draws} draws"))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 20, y + 6)], colour.mix(0.18).filled())
            });
        chart
            .draw_series(points.iter().map(|p| {
                PathElement::new(
                    vec![(x(p), p.min), (x(p), p.max)],
                    colour.mix(0.6).stroke_width(2),
                )
            }))?
            .label("min to max")
            .legend(move |(x, y)| {
                PathElement::new(
                    vec![(x + 10, y - 7), (x + 10, y + 7)],
                    colour.mix(0.6).stroke_width(2),
                )
            });
        chart
            .draw_series(
                LineSeries::new(
                    points.iter().map(|p| (x(p), p.mean)),
                    colour.stroke_width(3),
                )
                .point_size(5),
            )?
            .label("linear probe, mean top-1")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
            });
        for (i, (label, value)) in lines.iter().enumerate() {
            let colour = PALETTE[(i + 1) % PALETTE.len()];
            chart
                .draw_series(DashedLineSeries::new(
                    [(x_range.start, *value), (x_range.end, *value)],
                    10,
                    6,
                    colour.stroke_width(2),
                ))?
                .label(format!("{label} ({value:.3})"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)
    })
}

/// The axes every chart shares: faint major grid lines, no minor ones, the embedded font.
fn house_style<'m, 'a, 'b, X: Ranged, Y: Ranged>(
    mesh: &'m mut MeshStyle<'a, 'b, X, Y, BitMapBackend<'a>>,
) -> &'m mut MeshStyle<'a, 'b, X, Y, BitMapBackend<'a>> {
    // Minor lines are drawn transparent: `max_light_lines(0)` overflows in plotters 0.3.7
    // on an integer axis.
    mesh.light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .label_style(font(14.0))
        .axis_desc_style(font(15.0))
}

/// The legend box of a chart, in the embedded font.
fn draw_legend<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Result<(), PlotError>
where
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(GRID.stroke_width(1))
        .label_font(font(14.0))
        .draw()?;
    Ok(())
}

/// Learning curves: per `(epoch, train loss, val loss, train acc, val acc)`, the losses
/// in the left panel and the accuracies in the right. A NaN value (a pass that was not
/// made) leaves its point out.
pub fn learning_curves_png(
    path: &Path,
    title: &str,
    epochs: &[(usize, f64, f64, f64, f64)],
) -> Result<(), PlotError> {
    if epochs.is_empty() {
        return Err(PlotError::Empty("the list of epochs"));
    }
    if epochs
        .iter()
        .any(|e| [e.1, e.2, e.3, e.4].iter().any(|v| v.is_infinite()))
    {
        return Err(PlotError::NotFinite("the learning curves"));
    }
    let first = epochs.iter().map(|e| e.0).min().unwrap_or(0) as f64;
    let last = epochs.iter().map(|e| e.0).max().unwrap_or(0) as f64;
    let x_range = if last > first {
        first..last
    } else {
        (first - 0.5)..(last + 0.5)
    };
    let series = |pick: fn(&(usize, f64, f64, f64, f64)) -> f64| -> Vec<(f64, f64)> {
        epochs
            .iter()
            .map(|e| (e.0 as f64, pick(e)))
            .filter(|(_, v)| v.is_finite())
            .collect()
    };
    let losses = [
        ("train loss", series(|e| e.1)),
        ("val loss", series(|e| e.2)),
    ];
    let accuracies = [("train acc", series(|e| e.3)), ("val acc", series(|e| e.4))];
    let loss_top = losses
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let loss_range = 0.0..if loss_top > 0.0 { loss_top * 1.1 } else { 1.0 };
    render(path, (1280, 560), |root| {
        let area = titled(root, title)?;
        let panels = area.split_evenly((1, 2));
        let loss_panel = Panel {
            caption: "Loss",
            y_label: "loss",
            y_range: loss_range.clone(),
            legend: SeriesLabelPosition::UpperRight,
        };
        // Accuracy rises towards the top right: its legend goes below the curves.
        let accuracy_panel = Panel {
            caption: "Accuracy",
            y_label: "top-1",
            y_range: 0.0..1.05,
            legend: SeriesLabelPosition::LowerRight,
        };
        loss_panel.draw(&panels[0], x_range.clone(), &losses)?;
        accuracy_panel.draw(&panels[1], x_range.clone(), &accuracies)
    })
}

/// One panel of the learning curves.
struct Panel {
    caption: &'static str,
    y_label: &'static str,
    y_range: Range<f64>,
    legend: SeriesLabelPosition,
}

impl Panel {
    /// Draws named series of (epoch, value) on `area`, each in its colour.
    fn draw(
        self,
        area: &Area,
        x_range: Range<f64>,
        series: &[(&str, Vec<(f64, f64)>)],
    ) -> Result<(), PlotError> {
        let mut chart = ChartBuilder::on(area)
            .caption(self.caption, font(17.0))
            .margin(16)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range, self.y_range)?;
        house_style(&mut chart.configure_mesh())
            .x_desc("epoch")
            .y_desc(self.y_label)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        for (i, (name, points)) in series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(
                    LineSeries::new(points.iter().copied(), colour.stroke_width(2)).point_size(4),
                )?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        draw_legend(&mut chart, self.legend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Decodes the PNG at `path`: its size and number of distinct colours.
    fn inspect(path: &Path) -> ((u32, u32), usize) {
        let img = image::open(path).expect("a PNG that decodes").to_rgb8();
        let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        (img.dimensions(), colours.len())
    }

    fn names(k: usize) -> Vec<String> {
        [
            "cat",
            "dog",
            "golden retriever",
            "a very long class name indeed, too long",
            "fish",
        ]
        .iter()
        .cycle()
        .take(k)
        .map(|s| s.to_string())
        .collect()
    }

    fn point(shots: usize, mean: f64) -> FewShotPoint {
        FewShotPoint {
            shots,
            mean,
            std: 0.05,
            min: mean - 0.08,
            max: mean + 0.07,
            runs: vec![mean - 0.08, mean, mean + 0.07],
            short_classes: Vec::new(),
        }
    }

    #[test]
    fn confusion_heat_map_is_a_png_of_the_expected_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confusion.png");
        let matrix = vec![
            vec![8, 1, 1, 0],
            vec![2, 7, 1, 0],
            vec![0, 0, 10, 0],
            vec![3, 0, 0, 7],
        ];
        confusion_png(&path, "ResNet18 on shapes", &names(4), &matrix).unwrap();
        let ((w, h), colours) = inspect(&path);
        assert!(w >= 420 && h > 4 * 64, "{w}x{h}");
        assert!(colours > 20, "{colours} colours");
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn bars_few_shot_and_learning_curves_are_pngs_of_the_expected_size() {
        let dir = tempfile::tempdir().unwrap();
        let bars_path = dir.path().join("bars.png");
        let bars: Vec<(String, f64)> = vec![
            ("{}".into(), 0.55),
            ("a photo of a {}.".into(), 0.625),
            ("80-template ensemble".into(), 0.66),
        ];
        bars_png(&bars_path, "Top-1 by prompt", "top-1", &bars).unwrap();
        let ((w, h), colours) = inspect(&bars_path);
        assert_eq!(h, 130 + 40 * 3);
        assert!(w > 900 && colours > 20, "{w} {colours}");

        let shots_path = dir.path().join("few_shot.png");
        let points = [
            point(1, 0.4),
            point(2, 0.55),
            point(4, 0.7),
            point(8, 0.8),
            point(16, 0.86),
        ];
        let lines = [
            ("ResNet18".to_string(), 0.8),
            ("zero-shot CLIP".to_string(), 0.62),
        ];
        few_shot_png(&shots_path, "Few-shot linear probe", &points, &lines).unwrap();
        let (size, colours) = inspect(&shots_path);
        assert_eq!(size, (960, 620));
        assert!(colours > 20, "{colours}");

        let curves_path = dir.path().join("curves.png");
        let epochs: Vec<(usize, f64, f64, f64, f64)> = (1..=10)
            .map(|e| {
                let t = e as f64;
                (e, 2.0 / t, 2.2 / t + 0.1, 1.0 - 0.5 / t, 0.95 - 0.5 / t)
            })
            .collect();
        learning_curves_png(&curves_path, "ResNet18 training", &epochs).unwrap();
        let (size, colours) = inspect(&curves_path);
        assert_eq!(size, (1280, 560));
        assert!(colours > 20, "{colours}");
    }

    #[test]
    fn degenerate_inputs_still_plot() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        // One class, one epoch, one shot count, a missing validation pass, many classes.
        confusion_png(&p("one.png"), "one", &names(1), &[vec![0]]).unwrap();
        let many = 300;
        let matrix: Vec<Vec<usize>> = (0..many)
            .map(|i| (0..many).map(|j| usize::from(i == j)).collect())
            .collect();
        confusion_png(&p("many.png"), "many", &names(many), &matrix).unwrap();
        few_shot_png(&p("shot.png"), "one point", &[point(4, 0.5)], &[]).unwrap();
        learning_curves_png(
            &p("epoch.png"),
            "one epoch",
            &[(1, 0.5, f64::NAN, 0.8, f64::NAN)],
        )
        .unwrap();
        bars_png(
            &p("neg.png"),
            "signed",
            "change",
            &[("a".into(), -0.2), ("b".into(), 3.0)],
        )
        .unwrap();
    }

    #[test]
    fn empty_or_malformed_inputs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        let empty = |r: Result<(), PlotError>| matches!(r, Err(PlotError::Empty(_)));
        assert!(empty(confusion_png(&p, "t", &[], &[])));
        assert!(empty(bars_png(&p, "t", "y", &[])));
        assert!(empty(few_shot_png(&p, "t", &[], &[])));
        assert!(empty(learning_curves_png(&p, "t", &[])));
        assert!(matches!(
            confusion_png(&p, "t", &names(2), &[vec![1, 2], vec![3]]),
            Err(PlotError::MatrixShape {
                row: 1,
                found: 1,
                ..
            })
        ));
        assert!(matches!(
            bars_png(&p, "t", "y", &[("a".into(), f64::NAN)]),
            Err(PlotError::NotFinite(_))
        ));
        assert!(!p.exists());
        let missing = dir.path().join("no/such/dir/x.png");
        assert!(matches!(
            bars_png(&missing, "t", "y", &[("a".into(), 0.5)]),
            Err(PlotError::Write { .. })
        ));
    }

    /// Writes one of each plot to the folder named by `CLIPSCOPE_PLOT_GALLERY`, to look at
    /// (`CLIPSCOPE_PLOT_GALLERY=/tmp/plots cargo test --lib plot_gallery`); without it,
    /// does nothing.
    #[test]
    fn plot_gallery() {
        let Some(dir) = std::env::var_os("CLIPSCOPE_PLOT_GALLERY") else {
            return;
        };
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let classes: Vec<String> = [
            "tench",
            "English springer",
            "cassette player",
            "chain saw",
            "church",
            "French horn",
            "garbage truck",
            "gas pump",
            "golf ball",
            "parachute",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let matrix: Vec<Vec<usize>> = (0..10)
            .map(|t| {
                (0..10)
                    .map(|p| if t == p { 30 + t } else { (t * 7 + p * 3) % 5 })
                    .collect()
            })
            .collect();
        confusion_png(
            &dir.join("confusion.png"),
            "ResNet18 on Imagenette (made-up counts)",
            &classes,
            &matrix,
        )
        .unwrap();
        for k in [40, 200] {
            let many: Vec<String> = (0..k).map(|i| format!("{} {i}", classes[i % 10])).collect();
            let diagonal: Vec<Vec<usize>> = (0..k)
                .map(|t| {
                    (0..k)
                        .map(|p| {
                            if t == p {
                                9
                            } else {
                                usize::from((t + p) % 13 == 0)
                            }
                        })
                        .collect()
                })
                .collect();
            let title = format!("{k} classes (made-up counts)");
            confusion_png(
                &dir.join(format!("confusion{k}.png")),
                &title,
                &many,
                &diagonal,
            )
            .unwrap();
        }
        let shapes: Vec<String> = ["circle", "square", "triangle", "star"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let small = vec![
            vec![18, 2, 0, 0],
            vec![1, 17, 2, 0],
            vec![0, 3, 15, 2],
            vec![4, 0, 0, 16],
        ];
        confusion_png(
            &dir.join("confusion4.png"),
            "demo CLIP on shapes (made-up counts)",
            &shapes,
            &small,
        )
        .unwrap();
        let bars: Vec<(String, f64)> = vec![
            ("bare name: {}".into(), 0.512),
            ("a photo of a {}.".into(), 0.581),
            ("a picture of a {}.".into(), 0.575),
            ("an image showing a {}.".into(), 0.566),
            ("a close-up photo of the {}.".into(), 0.559),
            ("poor: {} or something else entirely".into(), 0.204),
            ("80-template ensemble".into(), 0.613),
        ];
        bars_png(
            &dir.join("bars.png"),
            "Top-1 by prompt variant (made-up values)",
            "test top-1",
            &bars,
        )
        .unwrap();
        let points: Vec<FewShotPoint> = [(1, 0.41), (2, 0.55), (4, 0.68), (8, 0.77), (16, 0.83)]
            .iter()
            .map(|&(k, m)| point(k, m))
            .collect();
        let lines = [
            ("ResNet18 fine-tuned".to_string(), 0.79),
            ("CLIP zero-shot".to_string(), 0.62),
        ];
        few_shot_png(
            &dir.join("few_shot.png"),
            "Few-shot linear probe on CLIP embeddings (made-up values)",
            &points,
            &lines,
        )
        .unwrap();
        let epochs: Vec<(usize, f64, f64, f64, f64)> = (1..=12)
            .map(|e| {
                let t = e as f64;
                (e, 1.6 / t, 1.5 / t.sqrt(), 1.0 - 0.6 / t, 0.85 - 0.5 / t)
            })
            .collect();
        learning_curves_png(
            &dir.join("curves.png"),
            "ResNet18 training (made-up values)",
            &epochs,
        )
        .unwrap();
    }
}
