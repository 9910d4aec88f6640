//! `clipscope compare`: the comparison study from the command line. Resolves the models,
//! shows progress on stderr, and hands over to `study::compare` and `study::write_outputs`.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clipscope::cnn::checkpoint::run_folder;
use indicatif::ProgressStyle;

use clipscope::hub::{self, ModelSource};
use clipscope::study::{compare as run_study, write_outputs, CompareConfig, Report, StudyEvent};

use super::args::{CompareArgs, SummaryFormat};
use super::{EXIT_OK, EXIT_SOME_FAILED};

/// Check a probability flag (`--abstain`).
pub fn check_probability(flag: &str, p: Option<f64>) -> Result<()> {
    match p {
        Some(p) if p.is_nan() => bail!("{flag} nan: expected a probability from 0 to 1"),
        Some(p) if !(0.0..=1.0).contains(&p) => {
            bail!("{flag} {p}: expected a probability from 0 to 1")
        }
        _ => Ok(()),
    }
}

/// The study's settings from the arguments, checked before any model is loaded.
fn config(a: &CompareArgs) -> Result<CompareConfig> {
    check_probability("--abstain", a.abstain)?;
    // Before any model is fetched: a wrong device must not cost a download.
    let device = a.device.resolve()?;
    super::input::expect_folder("--data", &a.data)?;
    for (flag, dir) in a
        .cnn
        .iter()
        .map(|d| ("--cnn", d))
        .chain(a.model_dirs.iter().map(|d| ("--model-dir", d)))
        .chain(a.train.iter().map(|d| ("--train", d)))
        .chain(a.open_set.iter().map(|d| ("--open-set", d)))
    {
        // A run's checkpoint.json stands for its folder, as in eval and predict.
        let dir = if flag == "--cnn" {
            run_folder(dir)
        } else {
            dir.clone()
        };
        super::input::expect_folder(flag, &dir)?;
    }
    if let Some(f) = &a.classes {
        super::input::expect_file("--classes", f)?;
    }
    if a.bootstrap == 0 {
        bail!("--bootstrap 0: expected at least 1 resample");
    }
    if a.few_shot_seeds == 0 {
        bail!("--few-shot-seeds 0: expected at least 1 draw");
    }
    if a.shots.is_empty() || a.shots.contains(&0) {
        bail!("--shots: expected counts of at least 1, separated by commas");
    }
    let mut sources: Vec<ModelSource> = a
        .models
        .iter()
        .map(|n| ModelSource::Named(Some(n.clone())))
        .chain(a.model_dirs.iter().map(|d| ModelSource::Dir(d.clone())))
        .collect();
    if sources.is_empty() {
        sources.push(ModelSource::Named(None));
    }
    let mut clip_models = Vec::with_capacity(sources.len());
    let mut names: Vec<String> = Vec::new();
    for source in &sources {
        let mut files = hub::resolve_files(source, &mut super::log::download_progress())
            .with_context(|| format!("cannot get the model {}", describe(source)))?;
        files.name = table_name(source, &files.name, &names);
        names.push(files.name.clone());
        clip_models.push(files);
    }
    Ok(CompareConfig {
        data: a.data.clone(),
        cnn_runs: a.cnn.iter().map(|p| run_folder(p)).collect(),
        clip_models,
        train: a.train.clone(),
        classes_file: a.classes.clone(),
        open_set: a.open_set.clone(),
        abstain: a.abstain,
        seed: a.seed,
        bootstrap: a.bootstrap,
        shots: a.shots.clone(),
        few_shot_seeds: a.few_shot_seeds,
        device,
    })
}

/// A model's name in the report's tables: a folder by its last component (the report
/// keeps the full path as the model's source), made unique among `taken`.
fn table_name(source: &ModelSource, name: &str, taken: &[String]) -> String {
    let base = match source {
        ModelSource::Dir(d) => d
            .file_name()
            .map_or_else(|| name.to_string(), |n| n.to_string_lossy().to_string()),
        ModelSource::Named(_) => name.to_string(),
    };
    let mut out = base.clone();
    let mut n = 2;
    while taken.contains(&out) {
        out = format!("{base} ({n})");
        n += 1;
    }
    out
}

fn describe(source: &ModelSource) -> String {
    match source {
        ModelSource::Named(Some(n)) => format!("--model {n}"),
        ModelSource::Named(None) => "(the default model)".into(),
        ModelSource::Dir(d) => format!("--model-dir {}", d.display()),
    }
}

/// Refuses, before the study runs, an `--output` that is a file or that holds an
/// earlier report, unless `--force`: a study can take hours, and a report written into
/// its folder replaces the last one's files.
fn check_report_folder(output: &std::path::Path, force: bool) -> Result<()> {
    clipscope::util::check_output_is_folder(output, "--output").map_err(anyhow::Error::msg)?;
    let earlier = clipscope::study::report::earlier_outputs(output);
    match earlier.first() {
        _ if force => Ok(()),
        None => Ok(()),
        Some(json) if json.ends_with(clipscope::study::report::REPORT_JSON) => bail!(
            "{} holds the report of an earlier comparison; give --force to replace it, or another --output",
            output.display()
        ),
        Some(file) => bail!(
            "{} would be written over by the report; move it, give --force to replace it, or choose another --output",
            file.display()
        ),
    }
}

/// `clipscope compare`.
pub fn compare(a: &CompareArgs) -> Result<u8> {
    check_report_folder(&a.output, a.force)?;
    let cfg = config(a)?;
    let bar = super::log::progress_bar(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let report = run_study(&cfg, &mut |ev| match ev {
        StudyEvent::Phase(name, n) => {
            bar.set_message(name);
            bar.set_length(n as u64);
            bar.set_position(0);
        }
        StudyEvent::Done(k) => bar.set_position(k as u64),
    });
    bar.finish_and_clear();
    let report = report.context("the comparison failed")?;
    let files = write_outputs(&report, &a.output).context("cannot write the report")?;
    match a.format {
        SummaryFormat::Text => summary(&report, &files, &mut std::io::stdout().lock())?,
        SummaryFormat::Json => print_summary_json(&report, &files)?,
    }
    if report.skipped > 0 {
        tracing::warn!(
            "{} unreadable test files were skipped (for every model)",
            report.skipped
        );
        return Ok(EXIT_SOME_FAILED);
    }
    Ok(EXIT_OK)
}

/// The summary table as JSON on standard output: per model its top-1 with the interval,
/// macro F1 and speed, the prompt variants, the linear probe, and the files written.
pub(super) fn print_summary_json(report: &Report, files: &[std::path::PathBuf]) -> Result<()> {
    let models: Vec<serde_json::Value> = report
        .models
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "kind": m.kind,
                "top1": m.top1,
                "top1_ci": m.top1_ci,
                "macro_f1": m.macro_f1,
                "ms_per_image": m.latency_ms_per_image,
            })
        })
        .collect();
    let probes: Vec<serde_json::Value> = report
        .linear_probe
        .iter()
        .flatten()
        .map(|p| serde_json::json!({"model": p.model, "top1": p.top1}))
        .collect();
    let prompts: Vec<serde_json::Value> = report
        .prompt_variants
        .iter()
        .map(|v| serde_json::json!({"name": v.name, "top1": v.top1}))
        .collect();
    let summary = serde_json::json!({
        "images": report.images.len(),
        "classes": report.classes,
        "models": models,
        "prompt_variants": prompts,
        "linear_probe": probes,
        "files": files,
    });
    serde_json::to_writer_pretty(std::io::stdout().lock(), &summary)?;
    println!();
    Ok(())
}

/// A short table of the models and the files written.
fn summary(report: &Report, files: &[std::path::PathBuf], out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "{} test images, {} classes",
        report.images.len(),
        report.classes.len()
    )?;
    let width = report
        .models
        .iter()
        .map(|m| m.name.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    writeln!(
        out,
        "{:<width$}  {:<14} {:>6}  {:>15}  {:>8}  {:>9}",
        "MODEL", "KIND", "TOP-1", "95% CI", "MACRO F1", "MS/IMAGE"
    )?;
    for m in &report.models {
        writeln!(
            out,
            "{:<width$}  {:<14} {:>5.1}%  {:>6.1}% - {:>5.1}%  {:>8.3}  {:>9.1}",
            m.name,
            m.kind,
            m.top1 * 100.0,
            m.top1_ci[0] * 100.0,
            m.top1_ci[1] * 100.0,
            m.macro_f1,
            m.latency_ms_per_image
        )?;
    }
    for p in report.linear_probe.iter().flatten() {
        writeln!(
            out,
            "linear probe on {}: top-1 {:.1}%",
            p.model,
            p.top1 * 100.0
        )?;
    }
    if let Some(dir) = files.first().and_then(|f| f.parent()) {
        writeln!(out, "wrote {} files to {}", files.len(), dir.display())?;
    }
    Ok(())
}
