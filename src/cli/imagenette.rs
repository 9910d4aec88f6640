//! `clipscope study imagenette`: settings from the arguments, progress on stderr, a
//! summary on stdout, and errors that say how to work offline.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use indicatif::ProgressStyle;

use clipscope::data::fetch::FetchError;
use clipscope::hub::{DownloadOptions, HubError, ModelSource};
use clipscope::study::compare::{Report, StudyEvent};
use clipscope::study::imagenette::{
    run, ImagenetteError, ImagenetteEvent, ImagenetteOutcome, ImagenetteStudy,
};

use super::args::{ImagenetteSizeArg, ImagenetteStudyArgs, StudyAction, SummaryFormat};
use super::cnn::{imagenette_size, set_on_ctrl_c, train_progress};
use super::EXIT_OK;

/// `clipscope study`.
pub fn study(action: &StudyAction) -> Result<u8> {
    match action {
        StudyAction::Imagenette(a) => imagenette(a),
    }
}

fn settings(a: &ImagenetteStudyArgs) -> Result<ImagenetteStudy> {
    if a.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    clipscope::util::check_output_is_folder(&a.output, "--output").map_err(anyhow::Error::msg)?;
    let data_dir = match &a.data_dir {
        Some(dir) => dir.clone(),
        None => DownloadOptions::from_env()?.cache_root.join("data"),
    };
    let clip = match &a.model_dir {
        Some(dir) => ModelSource::Dir(dir.clone()),
        None => ModelSource::Named(Some(a.model.clone())),
    };
    let default_side = match a.size {
        ImagenetteSizeArg::S160 => 160,
        ImagenetteSizeArg::S320 | ImagenetteSizeArg::Full => 224,
    };
    Ok(ImagenetteStudy {
        size: imagenette_size(a.size),
        data_dir,
        output: a.output.clone(),
        clip,
        cnn_weights: a.cnn_weights.clone(),
        full: a.full,
        epochs: a.epochs,
        batch_size: a.batch_size,
        image_size: a.image_size.unwrap_or(default_side),
        lr: a.lr,
        seed: a.seed,
        probe: !a.no_probe,
        device: a.device.resolve()?,
    })
}

fn imagenette(a: &ImagenetteStudyArgs) -> Result<u8> {
    let cfg = settings(a)?;
    // Ctrl-C ends downloads at once; only from training on does it stop and save.
    let stop = Arc::new(AtomicBool::new(false));
    let mut catching = false;
    let train_bar = super::log::progress_bar(0);
    // Stage lines and epoch lines are progress: -q keeps stderr to errors.
    let quiet = super::log::quiet();
    let mut progress_out: Box<dyn Write> = if quiet {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::stderr())
    };
    let mut on_train = train_progress(&train_bar, cfg.epochs, !cfg.full, &mut progress_out);
    let mut on_download = super::log::download_progress();
    let compare_bar = super::log::progress_bar(0);
    compare_bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let outcome = run(&cfg, &stop, &mut |event| match event {
        ImagenetteEvent::Stage(what) => {
            train_bar.finish_and_clear();
            if !quiet {
                eprintln!("study: {what}");
            }
        }
        ImagenetteEvent::Note(line) if !quiet => eprintln!("study:   {line}"),
        ImagenetteEvent::Note(_) => {}
        ImagenetteEvent::Download { file, done, total } => on_download(&file, done, total),
        ImagenetteEvent::Train(e) => {
            if !catching {
                set_on_ctrl_c(stop.clone());
                catching = true;
            }
            on_train(e)
        }
        ImagenetteEvent::Compare(StudyEvent::Phase(what, n)) => {
            compare_bar.reset();
            compare_bar.set_length(n as u64);
            compare_bar.set_message(what);
        }
        ImagenetteEvent::Compare(StudyEvent::Done(k)) => compare_bar.set_position(k as u64),
    });
    train_bar.finish_and_clear();
    compare_bar.finish_and_clear();
    match outcome.map_err(|e| offline_hint(e, &cfg))? {
        ImagenetteOutcome::Stopped { run } => {
            println!(
                "stopped; the training run is saved in {}: run the same command again to continue",
                run.display()
            );
            Ok(super::cnn::stopped_status())
        }
        ImagenetteOutcome::Done(report) => {
            match a.format {
                SummaryFormat::Text => write_summary(&report, &cfg, &mut std::io::stdout().lock())?,
                SummaryFormat::Json => {
                    super::compare::print_summary_json(&report, &[cfg.output.join("report.json")])?
                }
            }
            Ok(EXIT_OK)
        }
    }
}

/// A failed download, with the way to do without it (the study's own, in place of the
/// hub's generic next step when the server could not be reached).
fn offline_hint(e: ImagenetteError, cfg: &ImagenetteStudy) -> anyhow::Error {
    let (hub, hint) = match &e {
        ImagenetteError::Data(FetchError::Download(hub)) => (
            hub,
            format!(
                "offline, put {} (or the folder it unpacks to) into a folder and pass \
                 --data-dir DIR, or set CLIPSCOPE_DATA_URL to a mirror",
                cfg.size.archive().0
            ),
        ),
        ImagenetteError::CnnWeights(hub) => (
            hub,
            "offline, pass --cnn-weights FILE (ResNet18 ImageNet weights in torchvision \
             naming, safetensors), or set HF_ENDPOINT to a mirror"
                .to_string(),
        ),
        ImagenetteError::Clip(hub) => (
            hub,
            "offline, pass --model-dir DIR (config.json, model.safetensors, tokenizer.json), \
             or set HF_ENDPOINT to a mirror"
                .to_string(),
        ),
        _ => return anyhow!(e),
    };
    let what = match hub {
        HubError::Download { .. } => e.to_string(),
        HubError::Unreachable { url, reason, .. } => {
            let prefix = match &e {
                ImagenetteError::CnnWeights(_) => "ImageNet weights for resnet18: ",
                _ => "",
            };
            format!("{prefix}cannot reach {url} ({reason})")
        }
        _ => return anyhow!(e),
    };
    anyhow!("{what}; {hint}")
}

fn write_summary(report: &Report, cfg: &ImagenetteStudy, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "{} validation images of {} classes, the same for every model",
        report.images.len(),
        report.classes.len()
    )?;
    let w = report
        .models
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(0)
        .max(5);
    writeln!(
        out,
        "\n{:<w$} {:>6}  {:<15} {:>8}",
        "model", "top-1", "95% CI", "macro F1"
    )?;
    for m in &report.models {
        writeln!(
            out,
            "{:<w$} {:>6.3}  [{:.3}, {:.3}]  {:>8.3}",
            m.name, m.top1, m.top1_ci[0], m.top1_ci[1], m.macro_f1
        )?;
    }
    writeln!(out, "\nprompt study:")?;
    for v in &report.prompt_variants {
        writeln!(out, "  {:>6.3}  {}", v.top1, v.name)?;
    }
    for p in report.linear_probe.iter().flatten() {
        writeln!(
            out,
            "\nlinear probe ({}): top-1 {:.3} [{:.3}, {:.3}] on {} training images",
            p.model, p.top1, p.top1_ci[0], p.top1_ci[1], p.train_images
        )?;
    }
    writeln!(
        out,
        "\nreport: {}",
        cfg.output.join("report.json").display()
    )?;
    Ok(())
}
