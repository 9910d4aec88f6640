//! The study's files: `report.json`, `report.md` (tables and a discussion generated from
//! the numbers), `predictions.csv` and the PNG plots, all written atomically into one
//! folder.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::compare::{ModelReport, Report, StudyError, MAIN_TEMPLATE};
use super::plots;
use crate::util::write_atomic;

/// The report's JSON file.
pub const REPORT_JSON: &str = "report.json";
/// The report for people.
pub const REPORT_MD: &str = "report.md";
/// One row per test image.
pub const PREDICTIONS_CSV: &str = "predictions.csv";
/// Accuracy by prompt variant.
pub const PROMPTS_PNG: &str = "prompt-variants.png";

/// The files in `out_dir` that [`write_outputs`] would write over, `report.json` first
/// when there (the sign of an earlier report rather than a user's own files).
pub fn earlier_outputs(out_dir: &Path) -> Vec<PathBuf> {
    let fixed = [REPORT_JSON, REPORT_MD, PREDICTIONS_CSV, PROMPTS_PNG]
        .iter()
        .map(|name| out_dir.join(name))
        .filter(|path| path.exists());
    // The plots named after models: their names depend on the report, their prefixes not.
    let mut plots: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.ends_with(".png") && PLOT_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        })
        .collect();
    plots.sort();
    fixed.chain(plots).collect()
}

/// How the names of the plots written per model start.
const PLOT_PREFIXES: [&str; 2] = ["confusion-", "few-shot-"];

/// Write every output of the study into `out_dir` (created if needed): `report.json`,
/// `report.md`, `predictions.csv` and the plots. Returns the files written, in order.
pub fn write_outputs(report: &Report, out_dir: &Path) -> Result<Vec<PathBuf>, StudyError> {
    std::fs::create_dir_all(out_dir).map_err(|source| StudyError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let earlier_plots = plots_of_earlier_report(out_dir);
    let mut written = Vec::new();
    let json = serde_json::to_vec_pretty(report)
        .map_err(|e| StudyError::Config(format!("cannot serialise the report: {e}")))?;
    written.push(write_file(out_dir, REPORT_JSON, &json)?);
    written.push(write_file(
        out_dir,
        PREDICTIONS_CSV,
        &predictions_csv(report)?,
    )?);
    let plot_files = write_plots(report, out_dir)?;
    let md = markdown(report, &plot_files);
    written.push(write_file(out_dir, REPORT_MD, md.as_bytes())?);
    written.extend(plot_files.into_iter().map(|p| out_dir.join(p.file)));
    // A report written again into the same folder leaves none of the last one's plots
    // behind (another model's learning curves, say) to be mistaken for this one's.
    for name in earlier_plots {
        let path = out_dir.join(&name);
        if !written.contains(&path) {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(written)
}

/// The plot files an earlier report in `out_dir` links from its report.md (plain file
/// names ending in .png; nothing else is ever removed). None without its report.json:
/// a report.md alone is someone else's, and so are the pictures it shows.
fn plots_of_earlier_report(out_dir: &Path) -> Vec<String> {
    if !out_dir.join(REPORT_JSON).is_file() {
        return Vec::new();
    }
    let Ok(md) = std::fs::read_to_string(out_dir.join(REPORT_MD)) else {
        return Vec::new();
    };
    md.lines()
        .filter_map(|l| l.strip_prefix("![")?.split_once("](")?.1.strip_suffix(')'))
        .filter(|f| f.ends_with(".png") && !f.contains(['/', '\\']))
        .map(str::to_string)
        .collect()
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, StudyError> {
    let path = dir.join(name);
    write_atomic(&path, bytes).map_err(|source| StudyError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// `predictions.csv`: the image (relative to the test folder), its true class folder, then
/// per model its predicted class folder and that class's probability.
pub fn predictions_csv(report: &Report) -> Result<Vec<u8>, StudyError> {
    let csv_error = |e: csv::Error| StudyError::Config(format!("cannot write the CSV: {e}"));
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["image".to_string(), "true_class".to_string()];
    for m in &report.models {
        header.push(format!("{} prediction", m.name));
        header.push(format!("{} confidence", m.name));
    }
    w.write_record(&header).map_err(csv_error)?;
    let folder = |k: usize| report.classes.get(k).map_or("?", |c| c.folder.as_str());
    for p in &report.predictions {
        let mut row = vec![p.image.clone(), folder(p.truth).to_string()];
        for (k, confidence) in &p.answers {
            row.push(folder(*k).to_string());
            row.push(format!("{confidence:.6}"));
        }
        w.write_record(&row).map_err(csv_error)?;
    }
    w.into_inner()
        .map_err(|e| StudyError::Config(format!("cannot write the CSV: {e}")))
}

/// A plot that was written, with what it shows.
#[derive(Clone, Debug)]
pub struct PlotFile {
    /// The file name inside the output folder.
    pub file: String,
    /// What it shows, for the Markdown report.
    pub caption: String,
}

/// A file-name-safe form of a model name, unique among `taken`.
fn slug(name: &str, taken: &mut Vec<String>) -> String {
    let mut s = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    let base = s.trim_matches('-').to_string();
    let base = if base.is_empty() {
        "model".to_string()
    } else {
        base
    };
    let mut out = base.clone();
    let mut n = 2;
    while taken.contains(&out) {
        out = format!("{base}-{n}");
        n += 1;
    }
    taken.push(out.clone());
    out
}

fn plot_error(dir: &Path, file: &str, e: plots::PlotError) -> StudyError {
    StudyError::Plot {
        path: dir.join(file),
        message: e.to_string(),
    }
}

/// The plots: a confusion matrix per model, accuracy by prompt variant, a few-shot curve
/// per CLIP model against the CNNs' lines, and each CNN's learning curves.
fn write_plots(report: &Report, dir: &Path) -> Result<Vec<PlotFile>, StudyError> {
    let mut out = Vec::new();
    let mut taken = Vec::new();
    let names: Vec<String> = report.classes.iter().map(|c| c.name.clone()).collect();
    let slugs: Vec<String> = report
        .models
        .iter()
        .map(|m| slug(&m.name, &mut taken))
        .collect();
    for (m, s) in report.models.iter().zip(&slugs) {
        let file = format!("confusion-{s}.png");
        let title = format!("{}: confusion matrix", m.name);
        plots::confusion_png(&dir.join(&file), &title, &names, &m.confusion)
            .map_err(|e| plot_error(dir, &file, e))?;
        out.push(PlotFile {
            file,
            caption: format!("Confusion matrix of {} (rows: true class)", m.name),
        });
    }
    if !report.prompt_variants.is_empty() {
        let several = clip_models(report).count() > 1;
        let bars: Vec<(String, f64)> = report
            .prompt_variants
            .iter()
            .map(|v| {
                let label = if several {
                    format!("{}: {}", v.model, v.name)
                } else {
                    v.name.clone()
                };
                (label, v.top1)
            })
            .collect();
        plots::bars_png(
            &dir.join(PROMPTS_PNG),
            "Zero-shot top-1 by prompt",
            "top-1",
            &bars,
        )
        .map_err(|e| plot_error(dir, PROMPTS_PNG, e))?;
        out.push(PlotFile {
            file: PROMPTS_PNG.into(),
            caption: "Zero-shot top-1 by prompt variant".into(),
        });
    }
    for curve in report.few_shot.iter().flatten() {
        let s = slug(&format!("few-shot {}", curve.model), &mut taken);
        let file = format!("{s}.png");
        let mut lines: Vec<(String, f64)> = cnn_models(report)
            .map(|m| (m.name.clone(), m.top1))
            .collect();
        if let Some(zs) = report
            .models
            .iter()
            .find(|m| m.kind == "clip-zero-shot" && m.name == curve.model)
        {
            lines.push((format!("{} zero-shot", zs.name), zs.top1));
        }
        let title = format!("{}: few-shot linear probe", curve.model);
        plots::few_shot_png(&dir.join(&file), &title, &curve.points, &lines)
            .map_err(|e| plot_error(dir, &file, e))?;
        out.push(PlotFile {
            file,
            caption: format!("Few-shot top-1 of {} against the CNNs", curve.model),
        });
    }
    for (m, s) in report.models.iter().zip(&slugs) {
        if m.learning_curve.is_empty() {
            continue;
        }
        let file = format!("learning-curves-{s}.png");
        let epochs: Vec<(usize, f64, f64, f64, f64)> = m
            .learning_curve
            .iter()
            .map(|e| (e.epoch, e.train_loss, e.val_loss, e.train_acc, e.val_acc))
            .collect();
        let title = format!("{}: training", m.name);
        plots::learning_curves_png(&dir.join(&file), &title, &epochs)
            .map_err(|e| plot_error(dir, &file, e))?;
        out.push(PlotFile {
            file,
            caption: format!("Learning curves of {}", m.name),
        });
    }
    Ok(out)
}

fn is_clip(m: &ModelReport) -> bool {
    m.kind.starts_with("clip")
}

fn clip_models(report: &Report) -> impl Iterator<Item = &ModelReport> {
    report.models.iter().filter(|m| m.kind == "clip-zero-shot")
}

fn cnn_models(report: &Report) -> impl Iterator<Item = &ModelReport> {
    report.models.iter().filter(|m| m.kind == "cnn")
}

/// A fraction as a percentage with one decimal.
fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", x * 100.0)
    } else {
        "n/a".into()
    }
}

fn ci(c: [f64; 2]) -> String {
    format!("[{}, {}]", pct(c[0]), pct(c[1]))
}

/// A table cell: no pipes or line breaks.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| cell(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

/// `report.md`: the tables a reader wants and a discussion generated from the numbers.
pub fn markdown(report: &Report, plots: &[PlotFile]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Comparison study: CLIP zero-shot against CNNs\n");
    let _ = writeln!(
        out,
        "Test data: `{}`: {} images of {} classes{}. Timings on {}.\n",
        report.data,
        report.images.len(),
        report.classes.len(),
        if report.skipped > 0 {
            format!(
                " ({} unreadable files skipped for every model)",
                report.skipped
            )
        } else {
            String::new()
        },
        report.machine
    );
    let _ = writeln!(out, "## Discussion\n");
    for line in discussion(report) {
        let _ = writeln!(out, "- {line}");
    }
    out.push('\n');
    models_section(&mut out, report);
    per_class_section(&mut out, report);
    confusion_section(&mut out, report);
    prompt_section(&mut out, report);
    probe_section(&mut out, report);
    open_set_section(&mut out, report);
    classes_section(&mut out, report);
    if !plots.is_empty() {
        let _ = writeln!(out, "## Plots\n");
        for p in plots {
            let _ = writeln!(out, "![{}]({})\n", p.caption, p.file);
        }
    }
    out
}

fn models_section(out: &mut String, report: &Report) {
    let _ = writeln!(out, "## Models\n");
    let k = report.models.first().map_or(5, |m| m.top5_k);
    let top_k = format!("top-{k}");
    let rows: Vec<Vec<String>> = report
        .models
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.kind.clone(),
                pct(m.top1),
                ci(m.top1_ci),
                pct(m.top5),
                format!("{:.3}", m.macro_f1),
                format!("{:.1}", m.latency_ms_per_image),
                format!("{:.1}", m.images_per_sec),
                format!("{:.1}", m.size_bytes as f64 / 1e6),
            ]
        })
        .collect();
    table(
        out,
        &[
            "model", "kind", "top-1", "95% CI", &top_k, "macro F1", "ms/image", "images/s", "MB",
        ],
        &rows,
    );
    let prompts: Vec<Vec<String>> = report
        .models
        .iter()
        .filter_map(|m| {
            m.prompt
                .as_ref()
                .map(|p| vec![m.name.clone(), format!("`{p}`")])
        })
        .collect();
    if !prompts.is_empty() {
        let _ = writeln!(out, "CLIP's prompts in this table:\n");
        table(out, &["model", "prompt"], &prompts);
    }
    let gaps: Vec<Vec<String>> = report
        .models
        .iter()
        .filter_map(|m| {
            m.training_gap.as_ref().map(|g| {
                vec![
                    m.name.clone(),
                    g.epoch.to_string(),
                    pct(g.train_acc),
                    pct(g.val_acc),
                    format!("{:+.1} points", g.gap * 100.0),
                ]
            })
        })
        .collect();
    if !gaps.is_empty() {
        let _ = writeln!(
            out,
            "The CNNs' last epoch (training accuracy is on augmented crops):\n"
        );
        table(
            out,
            &["model", "epoch", "train top-1", "validation top-1", "gap"],
            &gaps,
        );
    }
    let abstains: Vec<Vec<String>> = report
        .models
        .iter()
        .filter_map(|m| {
            m.abstain.as_ref().map(|a| {
                vec![
                    m.name.clone(),
                    format!("{:.2}", a.threshold),
                    pct(a.coverage),
                    pct(a.accuracy_answered),
                    a.abstained.to_string(),
                ]
            })
        })
        .collect();
    if !abstains.is_empty() {
        let _ = writeln!(
            out,
            "With abstaining (\"none of these\" below the threshold), on the test set:\n"
        );
        table(
            out,
            &[
                "model",
                "threshold",
                "answered",
                "top-1 of answered",
                "abstained",
            ],
            &abstains,
        );
    }
}

fn per_class_section(out: &mut String, report: &Report) {
    let _ = writeln!(out, "## Per-class accuracy (recall)\n");
    let mut header = vec!["class", "images"];
    header.extend(report.models.iter().map(|m| m.name.as_str()));
    let rows: Vec<Vec<String>> = report
        .classes
        .iter()
        .enumerate()
        .map(|(c, class)| {
            let support = report
                .models
                .first()
                .and_then(|m| m.per_class.get(c))
                .map_or(0, |p| p.support);
            let mut row = vec![class.folder.clone(), support.to_string()];
            row.extend(
                report
                    .models
                    .iter()
                    .map(|m| m.per_class.get(c).map_or("n/a".into(), |p| pct(p.recall))),
            );
            row
        })
        .collect();
    table(out, &header, &rows);
}

/// The largest off-diagonal cells of a confusion matrix: (true, predicted, count).
fn top_confusions(confusion: &[Vec<usize>], n: usize) -> Vec<(usize, usize, usize)> {
    let mut cells: Vec<(usize, usize, usize)> = confusion
        .iter()
        .enumerate()
        .flat_map(|(t, row)| {
            row.iter()
                .enumerate()
                .filter(move |&(p, &count)| p != t && count > 0)
                .map(move |(p, &count)| (t, p, count))
        })
        .collect();
    cells.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    cells.truncate(n);
    cells
}

/// Largest class count for which the full matrices are printed.
const FULL_MATRIX_CLASSES: usize = 12;

fn confusion_section(out: &mut String, report: &Report) {
    let _ = writeln!(out, "## Confusions\n");
    let folder = |k: usize| report.classes.get(k).map_or("?", |c| c.folder.as_str());
    let rows: Vec<Vec<String>> = report
        .models
        .iter()
        .map(|m| {
            let top = top_confusions(&m.confusion, 3);
            let text = if top.is_empty() {
                "none".to_string()
            } else {
                top.iter()
                    .map(|(t, p, n)| format!("{} → {} ({n})", folder(*t), folder(*p)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![m.name.clone(), text]
        })
        .collect();
    table(
        out,
        &["model", "most frequent errors (true → predicted)"],
        &rows,
    );
    if report.classes.len() > FULL_MATRIX_CLASSES {
        return;
    }
    for m in &report.models {
        let _ = writeln!(out, "{} (rows: true class, columns: predicted):\n", m.name);
        let mut header = vec!["true \\ predicted"];
        header.extend(report.classes.iter().map(|c| c.folder.as_str()));
        let rows: Vec<Vec<String>> = m
            .confusion
            .iter()
            .enumerate()
            .map(|(t, row)| {
                let mut r = vec![folder(t).to_string()];
                r.extend(row.iter().map(ToString::to_string));
                r
            })
            .collect();
        table(out, &header, &rows);
    }
}

fn prompt_section(out: &mut String, report: &Report) {
    if report.prompt_variants.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Prompt study\n");
    let rows: Vec<Vec<String>> = report
        .prompt_variants
        .iter()
        .map(|v| {
            let templates = if v.templates.len() == 1 {
                format!("`{}`", v.templates[0])
            } else {
                format!("{} templates", v.templates.len())
            };
            vec![v.model.clone(), v.name.clone(), templates, pct(v.top1)]
        })
        .collect();
    table(out, &["model", "variant", "templates", "top-1"], &rows);
    for m in clip_models(report) {
        if let Some(s) = prompt_spread(report, &m.name) {
            let _ = writeln!(
                out,
                "{}: spread {:.1} points, from {} ({}) to {} ({}).\n",
                m.name,
                s.spread * 100.0,
                pct(s.worst.1),
                s.worst.0,
                pct(s.best.1),
                s.best.0
            );
        }
    }
}

/// The best and worst prompt variant of one CLIP model.
struct Spread {
    best: (String, f64),
    worst: (String, f64),
    spread: f64,
}

fn prompt_spread(report: &Report, model: &str) -> Option<Spread> {
    let variants: Vec<_> = report
        .prompt_variants
        .iter()
        .filter(|v| v.model == model)
        .collect();
    let best = variants.iter().max_by(|a, b| a.top1.total_cmp(&b.top1))?;
    let worst = variants.iter().min_by(|a, b| a.top1.total_cmp(&b.top1))?;
    Some(Spread {
        best: (best.name.clone(), best.top1),
        worst: (worst.name.clone(), worst.top1),
        spread: best.top1 - worst.top1,
    })
}

fn probe_section(out: &mut String, report: &Report) {
    if let Some(probes) = &report.linear_probe {
        let _ = writeln!(out, "## Linear probe on frozen CLIP image embeddings\n");
        let rows: Vec<Vec<String>> = probes
            .iter()
            .map(|p| {
                vec![
                    p.model.clone(),
                    p.train_images.to_string(),
                    format!("{:e}", p.lambda),
                    pct(p.val_top1),
                    pct(p.top1),
                    ci(p.top1_ci),
                ]
            })
            .collect();
        table(
            out,
            &[
                "model",
                "training images",
                "L2 strength",
                "validation top-1",
                "test top-1",
                "95% CI",
            ],
            &rows,
        );
    }
    for curve in report.few_shot.iter().flatten() {
        let _ = writeln!(
            out,
            "Few-shot, {} (L2 strength {:e}):\n",
            curve.model, curve.lambda
        );
        let rows: Vec<Vec<String>> = curve
            .points
            .iter()
            .map(|p| {
                vec![
                    shots_cell(p),
                    pct(p.mean),
                    format!("{:.1}", p.std * 100.0),
                    format!("{} – {}", pct(p.min), pct(p.max)),
                    p.runs.len().to_string(),
                ]
            })
            .collect();
        table(
            out,
            &[
                "images per class",
                "mean top-1",
                "std (points)",
                "range",
                "draws",
            ],
            &rows,
        );
        for (cnn, shots) in &curve.shots_to_match {
            let _ = writeln!(
                out,
                "Images per class to match {cnn}: {}.\n",
                shots.map_or("not reached".to_string(), |k| k.to_string())
            );
        }
    }
}

/// A few-shot point's images per class as asked, and as drawn where classes had fewer
/// (each of those contributes all of its images).
fn shots_cell(p: &crate::study::probe::FewShotPoint) -> String {
    match p.short_classes.iter().map(|c| c.available).max() {
        None => p.shots.to_string(),
        Some(most) => format!(
            "{} ({} classes have fewer: at most {most} drawn)",
            p.shots,
            p.short_classes.len()
        ),
    }
}

fn open_set_section(out: &mut String, report: &Report) {
    let Some(o) = &report.open_set else {
        return;
    };
    let names: Vec<&str> = o.classes.iter().map(|c| c.name.as_str()).collect();
    let _ = writeln!(out, "## Open set\n");
    let _ = writeln!(
        out,
        "`{}`: {} images of classes the CNNs never saw ({}); abstain threshold {:.2}.\n",
        o.data,
        o.images,
        names.join(", "),
        o.threshold
    );
    if !o.cnn.is_empty() {
        let rows: Vec<Vec<String>> = o
            .cnn
            .iter()
            .map(|c| {
                let mut answers = c.answers.clone();
                answers.sort_by_key(|a| std::cmp::Reverse(a.1));
                let answers: Vec<String> = answers
                    .iter()
                    .filter(|a| a.1 > 0)
                    .map(|(name, n)| format!("{name} ({n})"))
                    .collect();
                vec![
                    c.name.clone(),
                    pct(c.mean_confidence),
                    pct(c.confident_share),
                    answers.join(", "),
                    pct(c.abstain.accuracy),
                ]
            })
            .collect();
        table(
            out,
            &[
                "CNN",
                "mean confidence on unseen",
                "answered with ≥ 50%",
                "its answers",
                "accuracy with abstaining (test + unseen)",
            ],
            &rows,
        );
    }
    if !o.clip.is_empty() {
        let rows: Vec<Vec<String>> = o
            .clip
            .iter()
            .map(|c| {
                vec![
                    c.model.clone(),
                    pct(c.named_top1),
                    pct(c.named_test_top1),
                    pct(c.forced_accuracy),
                    pct(c.abstain.accuracy),
                    pct(c.abstain.coverage),
                ]
            })
            .collect();
        table(
            out,
            &[
                "CLIP",
                "top-1 on unseen, given their names",
                "top-1 on test, all names",
                "accuracy without abstaining (test + unseen)",
                "with abstaining",
                "answered",
            ],
            &rows,
        );
    }
}

fn classes_section(out: &mut String, report: &Report) {
    let _ = writeln!(out, "## Classes\n");
    let rows: Vec<Vec<String>> = report
        .classes
        .iter()
        .map(|c| vec![c.folder.clone(), c.name.clone()])
        .collect();
    table(out, &["folder", "name in CLIP's prompts"], &rows);
}

/// The qualitative discussion: sentences generated from the numbers.
pub fn discussion(report: &Report) -> Vec<String> {
    let mut lines = Vec::new();
    let folder = |k: usize| report.classes.get(k).map_or("?", |c| c.folder.as_str());
    let best = |it: &mut dyn Iterator<Item = &ModelReport>| {
        it.max_by(|a, b| a.top1.total_cmp(&b.top1)).cloned()
    };
    let best_clip = best(&mut report.models.iter().filter(|m| is_clip(m)));
    let best_cnn = best(&mut cnn_models(report));
    if let Some(top) = best(&mut report.models.iter()) {
        lines.push(format!(
            "Highest top-1: {} with {} (95% CI {}) on {} images.",
            top.name,
            pct(top.top1),
            ci(top.top1_ci),
            top.n
        ));
    }
    if let (Some(clip), Some(cnn)) = (&best_clip, &best_cnn) {
        lines.push(head_to_head(clip, cnn));
        lines.push(class_wins(report, clip, cnn));
        if cnn.latency_ms_per_image > 0.0 && cnn.size_bytes > 0 {
            lines.push(format!(
                "Cost: {} takes {:.1} ms per image and {:.0} MB on disk, {} {:.1} ms and {:.0} MB ({:.1}x the time).",
                clip.name,
                clip.latency_ms_per_image,
                clip.size_bytes as f64 / 1e6,
                cnn.name,
                cnn.latency_ms_per_image,
                cnn.size_bytes as f64 / 1e6,
                clip.latency_ms_per_image / cnn.latency_ms_per_image
            ));
        }
    }
    for m in &report.models {
        lines.push(match top_confusions(&m.confusion, 1).first() {
            Some((t, p, n)) => {
                let support: usize = m.confusion[*t].iter().sum();
                format!(
                    "{} most often took {} for {} ({n} of {support} {} images).",
                    m.name,
                    folder(*t),
                    folder(*p),
                    folder(*t)
                )
            }
            None => format!("{} made no errors on the test set.", m.name),
        });
    }
    for m in clip_models(report) {
        if let Some(s) = prompt_spread(report, &m.name) {
            lines.push(format!(
                "Prompt wording moved {} by {:.1} points: best {} ({}), worst {} ({}); the table's `{}` gives {}.",
                m.name,
                s.spread * 100.0,
                s.best.0,
                pct(s.best.1),
                s.worst.0,
                pct(s.worst.1),
                MAIN_TEMPLATE,
                pct(m.top1)
            ));
        }
    }
    for p in report.linear_probe.iter().flatten() {
        let mut s = format!(
            "A linear probe on {}'s frozen embeddings ({} training images) reaches {}",
            p.model,
            p.train_images,
            pct(p.top1)
        );
        if let Some(zs) = report
            .models
            .iter()
            .find(|m| m.kind == "clip-zero-shot" && m.name == p.model)
        {
            let _ = write!(s, " against {} zero-shot", pct(zs.top1));
        }
        if let Some(cnn) = &best_cnn {
            let _ = write!(s, " and {} for {}", pct(cnn.top1), cnn.name);
        }
        s.push('.');
        lines.push(s);
    }
    for curve in report.few_shot.iter().flatten() {
        for (cnn, shots) in &curve.shots_to_match {
            lines.push(match shots {
                Some(k) => format!(
                    "With {k} labelled image{} per class, {}'s few-shot probe matches {cnn} on average.",
                    if *k == 1 { "" } else { "s" },
                    curve.model
                ),
                None => {
                    let most = curve.points.iter().map(|p| p.shots).max().unwrap_or(0);
                    format!(
                        "Up to {most} labelled images per class, {}'s few-shot probe does not match {cnn} on average.",
                        curve.model
                    )
                }
            });
        }
    }
    if let Some(o) = &report.open_set {
        for c in &o.cnn {
            lines.push(format!(
                "Open set: {} must answer a known class for each of the {} unseen images; its mean confidence there is {}, and {} of them get at least 50%.",
                c.name,
                o.images,
                pct(c.mean_confidence),
                pct(c.confident_share)
            ));
        }
        for c in &o.clip {
            lines.push(format!(
                "Open set: {}, handed the new class names, gets {} of the unseen images right with no retraining; with only the known names, abstaining below {:.2} takes its accuracy over test and unseen images from {} to {}.",
                c.model,
                pct(c.named_top1),
                o.threshold,
                pct(c.forced_accuracy),
                pct(c.abstain.accuracy)
            ));
        }
    }
    for m in cnn_models(report) {
        if let Some(g) = &m.training_gap {
            lines.push(format!(
                "{}'s last epoch: {} on its (augmented) training crops against {} on validation, a gap of {:+.1} points{}.",
                m.name,
                pct(g.train_acc),
                pct(g.val_acc),
                g.gap * 100.0,
                if g.gap > 0.1 { ", a sign of over-fitting" } else { "" }
            ));
        }
    }
    lines
}

/// Whether two intervals overlap.
fn overlap(a: [f64; 2], b: [f64; 2]) -> bool {
    a[0] <= b[1] && b[0] <= a[1]
}

fn head_to_head(clip: &ModelReport, cnn: &ModelReport) -> String {
    let diff = (clip.top1 - cnn.top1) * 100.0;
    let (leader, other) = if diff >= 0.0 {
        (clip, cnn)
    } else {
        (cnn, clip)
    };
    let verdict = if overlap(clip.top1_ci, cnn.top1_ci) {
        "their 95% intervals overlap, so this test set does not separate them"
    } else {
        "their 95% intervals do not overlap"
    };
    if diff == 0.0 {
        return format!(
            "{} and {} tie at {} top-1.",
            clip.name,
            cnn.name,
            pct(clip.top1)
        );
    }
    format!(
        "{} leads {} by {:.1} points of top-1 ({} against {}); {verdict}.",
        leader.name,
        other.name,
        diff.abs(),
        pct(leader.top1),
        pct(other.top1)
    )
}

/// Where CLIP wins and where the CNN wins, class by class.
fn class_wins(report: &Report, clip: &ModelReport, cnn: &ModelReport) -> String {
    let mut clip_wins = Vec::new();
    let mut cnn_wins = Vec::new();
    for (c, (a, b)) in clip.per_class.iter().zip(&cnn.per_class).enumerate() {
        let name = report.classes.get(c).map_or("?", |c| c.folder.as_str());
        // Each entry reads winner first.
        if a.recall > b.recall {
            clip_wins.push(format!("{name} ({} vs {})", pct(a.recall), pct(b.recall)));
        } else if b.recall > a.recall {
            cnn_wins.push(format!("{name} ({} vs {})", pct(b.recall), pct(a.recall)));
        }
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "no class".to_string()
        } else {
            v.join(", ")
        }
    };
    format!(
        "Per class, {} is ahead on {} and {} on {}.",
        clip.name,
        list(&clip_wins),
        cnn.name,
        list(&cnn_wins)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_report_of_its_own_has_its_plots_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(super::REPORT_MD), "![mine](mine.png)\n").unwrap();
        assert!(super::plots_of_earlier_report(dir.path()).is_empty());
        std::fs::write(dir.path().join(super::REPORT_JSON), "{}").unwrap();
        assert_eq!(super::plots_of_earlier_report(dir.path()), ["mine.png"]);
        assert!(super::earlier_outputs(dir.path())[0].ends_with(super::REPORT_JSON));
    }

    #[test]
    fn a_few_shot_row_says_when_classes_had_fewer_images_than_asked() {
        use crate::study::probe::{FewShotPoint, ShortClass};
        let point = |short: Vec<ShortClass>| FewShotPoint {
            shots: 100,
            mean: 0.5,
            std: 0.0,
            min: 0.5,
            max: 0.5,
            runs: vec![0.5],
            short_classes: short,
        };
        assert_eq!(super::shots_cell(&point(Vec::new())), "100");
        let short = vec![
            ShortClass {
                class: 0,
                available: 16,
            },
            ShortClass {
                class: 2,
                available: 12,
            },
        ];
        assert_eq!(
            super::shots_cell(&point(short)),
            "100 (2 classes have fewer: at most 16 drawn)"
        );
    }

    use super::*;

    #[test]
    fn only_the_plots_an_earlier_report_linked_are_taken_for_its_own() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(REPORT_MD),
            "# r\n\n![curves](learning-curves-a.png)\n\n![x](../elsewhere.png)\n![t](notes.txt)\nsee (b.png)\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(REPORT_JSON), "{}").unwrap();
        assert_eq!(
            plots_of_earlier_report(dir.path()),
            ["learning-curves-a.png"]
        );
        assert!(plots_of_earlier_report(&dir.path().join("none")).is_empty());
    }
}
