//! `train`, `eval` and `data fetch`: the CNN baseline from the command line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use clipscope::clip::Prediction;
use clipscope::cnn::checkpoint::CheckpointMeta;
use clipscope::cnn::eval::{evaluate, CnnClassifier, EvalReport};
use clipscope::cnn::network::Arch;
use clipscope::cnn::optim::OptimizerKind;
use clipscope::cnn::train::{
    train as run_training, Pretrained, TrainConfig, TrainEvent, TrainOutcome,
};
use clipscope::data::fetch::{fetch_imagenette, ImagenetteSize};
use clipscope::hub;

use super::args::{
    DataAction, EvalArgs, Format, ImagenetteSizeArg, OptimizerArg, PredictArgs, ScenesLayout,
    SummaryFormat, TrainArgs,
};
use super::output::{ClassifyReport, ImageResult};
use super::EXIT_OK;
use clipscope::data::display_name;

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn resolve_pretrained(spec: &str, model: &str) -> Result<Pretrained> {
    Ok(match spec {
        "none" => Pretrained::None,
        "imagenet" => {
            let path = hub::ensure_builtin_cnn_weights(model, &mut super::log::download_progress())
                .with_context(|| format!("cannot download ImageNet weights for {model}"))?;
            Pretrained::File {
                path,
                label: "imagenet".into(),
            }
        }
        file => {
            let path = PathBuf::from(file);
            if !path.is_file() {
                let what = if path.exists() {
                    "not a file"
                } else {
                    "no such file"
                };
                bail!("--pretrained {file}: {what}; give imagenet, none, or a safetensors file");
            }
            Pretrained::File {
                path,
                label: file.to_string(),
            }
        }
    })
}

/// A stop flag that the first Ctrl-C sets (training then finishes its step, saves and
/// returns); a second Ctrl-C exits at once.
pub(super) fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    set_on_ctrl_c(stop.clone());
    stop
}

/// The number of the signal that asked a run to stop; 0 while none has.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Ctrl-C's signal, SIGINT, which a stop is taken to be when no other was recorded.
const SIGINT: i32 = 2;

/// The exit status of a run that a signal stopped: 128 plus the signal's number, as a
/// shell reports a process the signal ended (130 for Ctrl-C, 143 for SIGTERM).
pub(super) fn stopped_status() -> u8 {
    let signal = match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => SIGINT,
        n => n,
    };
    u8::try_from(128 + signal).unwrap_or(130)
}

/// From now on, the first Ctrl-C (SIGINT), SIGTERM or SIGHUP sets `flag` instead of
/// ending the process; a second ends it at once.
#[cfg(unix)]
pub(super) fn set_on_ctrl_c(flag: Arc<AtomicBool>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Handlers for these signals are set once, by the first caller.
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            return;
        };
        std::thread::spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    silence_closed_terminal();
                }
                let _ = STOP_SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
                if flag.swap(true, Ordering::SeqCst) {
                    std::process::exit(128 + signal);
                }
            }
        });
    });
}

/// Point standard output and error that are the terminal at /dev/null: after SIGHUP
/// (the terminal closed) a write to it fails, and the lines the run prints after it
/// saved (`println!`) would end it with a panic instead of its exit status.
#[cfg(unix)]
fn silence_closed_terminal() {
    // SAFETY: plain descriptor calls; /dev/null is opened, duplicated and closed here.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null < 0 {
            return;
        }
        for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
            // A terminal that hung up fails isatty's ioctl, but is still a character
            // device; files and pipes are left alone.
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut stat) == 0 && stat.st_mode & libc::S_IFMT == libc::S_IFCHR {
                libc::dup2(null, fd);
            }
        }
        libc::close(null);
    }
}

/// From now on, the first Ctrl-C sets `flag` instead of ending the process.
#[cfg(not(unix))]
pub(super) fn set_on_ctrl_c(flag: Arc<AtomicBool>) {
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
}

/// A line above the progress bar, or, off a terminal where no bar is drawn, an info
/// line that `-v` shows.
pub(super) fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        tracing::info!("{line}");
    } else {
        bar.println(line);
    }
}

/// The warning for a resumed run whose epochs are all done.
pub(super) fn nothing_to_train(done: usize) -> String {
    let s = if done == 1 { "" } else { "s" };
    format!("{done} epoch{s} done: nothing to train; give a larger --epochs to train on")
}

/// Draws training progress on `bar` (stderr) and writes one line per epoch to `out`.
pub(super) fn train_progress<'a>(
    bar: &'a ProgressBar,
    epochs: usize,
    frozen: bool,
    out: &'a mut dyn Write,
) -> impl FnMut(TrainEvent) + 'a {
    // With a frozen backbone each step reads features computed once: its rate is not a
    // network's throughput and says so.
    let unit = if frozen {
        "img/s on cached features"
    } else {
        "img/s"
    };
    bar.set_style(bar_style("epoch {prefix} [{bar:30}] {pos}/{len} {msg}"));
    move |ev| match ev {
        TrainEvent::Ready {
            classes,
            train,
            val,
            skipped,
            first_epoch,
            steps_per_epoch,
        } => {
            let plan = if first_epoch > epochs {
                // Said whether or not a bar is drawn: a run that does nothing should not
                // pass for one that trained.
                bar.suspend(|| tracing::warn!("{}", nothing_to_train(first_epoch - 1)));
                "nothing to train".to_string()
            } else {
                format!("epochs {first_epoch}..{epochs}")
            };
            say(
                bar,
                format!(
                    "{} classes ({}), {train} training and {val} held-out images{}; {plan}",
                    classes.len(),
                    classes.join(", "),
                    if skipped > 0 {
                        format!(", {skipped} unreadable files skipped")
                    } else {
                        String::new()
                    },
                ),
            );
            bar.set_length(steps_per_epoch as u64);
        }
        TrainEvent::Log(line) => say(bar, line),
        TrainEvent::Step {
            epoch,
            step,
            loss,
            lr,
            images_per_sec,
            ..
        } => {
            bar.set_prefix(format!("{epoch}/{epochs}"));
            bar.set_position(step as u64);
            // Off a terminal no bar is drawn: -v logs a tenth of an epoch at a time.
            let tenth = (bar.length().unwrap_or(10) as usize / 10).max(1);
            if bar.is_hidden() && step % tenth == 0 {
                tracing::info!(
                    "epoch {epoch}/{epochs} step {step}/{} loss {loss:.3} lr {lr:.2e} {images_per_sec:.1} {unit}",
                    bar.length().unwrap_or(0)
                );
            }
            bar.set_message(format!(
                "loss {loss:.3} lr {lr:.2e} {images_per_sec:.1} {unit}"
            ));
        }
        TrainEvent::Epoch(m) => {
            bar.suspend(|| {
                let _ = writeln!(
                    out,
                    "epoch {:>3}  train loss {:.4} acc {:.4}  val loss {:.4} acc {:.4}  {:.1} s  {:.1} {unit}",
                    m.epoch, m.train_loss, m.train_acc, m.val_loss, m.val_acc, m.seconds, m.images_per_sec
                );
            });
            bar.reset();
        }
        TrainEvent::Saved(_) => {}
    }
}

/// `--seed` and `--val-fraction`, defaulting to those of the data folder's split
/// manifest when it has one (so that leaving them out reuses the split, and giving
/// others is refused by the library rather than silently ignored).
pub(super) fn split_options(
    data: &std::path::Path,
    separate_val: bool,
    seed: Option<u64>,
    val_fraction: Option<f64>,
) -> Result<(u64, f64)> {
    let made = if separate_val {
        None
    } else {
        clipscope::data::folder::split_settings(data)?
    };
    let (made_seed, made_fraction) = made.unwrap_or((0, 0.2));
    Ok((
        seed.unwrap_or(made_seed),
        val_fraction.unwrap_or(made_fraction),
    ))
}

/// The checkpoint record of the run `train --resume` continues.
fn resumed_run(a: &TrainArgs) -> Result<Option<CheckpointMeta>> {
    if !a.resume {
        return Ok(None);
    }
    clipscope::cnn::checkpoint::load_meta(&a.output)
        .map(Some)
        .with_context(|| {
            format!(
                "--resume: cannot continue {}; leave out --resume to start a new run",
                a.output.display()
            )
        })
}

/// `clipscope train`'s configuration: each option as given, else (resuming) the run's,
/// else its default. A resumed run that gets a different value is refused by the
/// library, which names the option.
fn train_config(a: &TrainArgs, prior: Option<&CheckpointMeta>) -> Result<TrainConfig> {
    let saved = prior.map(|m| &m.config);
    let model = (a.model.clone())
        .or_else(|| saved.map(|c| c.model.clone()))
        .unwrap_or_else(|| Arch::Resnet18.name().to_string());
    let Some(arch) = Arch::from_name(&model) else {
        let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
        bail!("--model {model}: expected one of {}", names.join(", "));
    };
    let image_size = (a.image_size)
        .or(prior.map(|m| m.image_size))
        .unwrap_or(224);
    // Before any download: a 553 MB VGG16 fetch should not precede a usage error.
    if let Err(why) = arch.check_image_size(image_size as u32) {
        bail!(why);
    }
    let optimizer = match a.optimizer {
        Some(OptimizerArg::Sgd) => OptimizerKind::Sgd,
        Some(OptimizerArg::Adamw) => OptimizerKind::Adamw,
        None => saved.map_or(OptimizerKind::Sgd, |c| c.optimizer),
    };
    let (default_lr, default_wd) = match optimizer {
        OptimizerKind::Sgd => (0.01, 1e-4),
        OptimizerKind::Adamw => (1e-3, 0.01),
    };
    let pretrained = if a.resume {
        Pretrained::None
    } else {
        resolve_pretrained(&a.pretrained, &model)?
    };
    let data = match (&a.data, prior) {
        (Some(data), _) => data.clone(),
        (None, Some(run)) => run.data.root.clone(),
        (None, None) => bail!("give --data DIR"),
    };
    let val = (a.val.clone()).or_else(|| prior.and_then(|m| m.data.val.clone()));
    let seed = a.seed.or(saved.map(|c| c.seed));
    let (seed, val_fraction) = split_options(&data, val.is_some(), seed, a.val_fraction)?;
    Ok(TrainConfig {
        arch,
        data,
        val,
        pretrained,
        freeze_backbone: a.freeze_backbone || saved.is_some_and(|c| c.freeze_backbone),
        epochs: a.epochs.or(saved.map(|c| c.epochs)).unwrap_or(10),
        batch_size: a.batch_size.or(saved.map(|c| c.batch_size)).unwrap_or(32),
        image_size,
        optimizer,
        lr: a.lr.or(saved.map(|c| c.lr)).unwrap_or(default_lr),
        weight_decay: (a.weight_decay)
            .or(saved.map(|c| c.weight_decay))
            .unwrap_or(default_wd),
        seed,
        output: a.output.clone(),
        resume: a.resume,
        val_fraction,
        crop_scale: (0.25, 1.0),
        device: a.device.resolve()?,
    })
}

/// `clipscope train`.
pub fn train(a: &TrainArgs) -> Result<u8> {
    clipscope::util::check_run_folder(&a.output, a.resume, a.force).map_err(anyhow::Error::msg)?;
    let prior = resumed_run(a)?;
    let cfg = train_config(a, prior.as_ref())?;
    let stop = stop_on_ctrl_c();
    let bar = super::log::progress_bar(0);
    // Epoch lines on standard output in text; in JSON one object at the end instead.
    let mut out: Box<dyn Write> = match a.format {
        SummaryFormat::Text => Box::new(std::io::stdout()),
        SummaryFormat::Json => Box::new(std::io::sink()),
    };
    let outcome = match prior.filter(|m| !m.interrupted && m.epochs_done >= cfg.epochs) {
        // Nothing to train: said before any data is decoded or a model built.
        Some(done) => {
            clipscope::cnn::train::check_resumable(&cfg, &done)?;
            tracing::warn!("{}", nothing_to_train(done.epochs_done));
            TrainOutcome {
                metrics: done.metrics,
                stopped: false,
                checkpoint: a.output.join(clipscope::cnn::checkpoint::CHECKPOINT_JSON),
            }
        }
        None => run_training(
            &cfg,
            &stop,
            &mut train_progress(&bar, cfg.epochs, cfg.freeze_backbone, &mut out),
        )
        .with_context(|| format!("training on {} failed", cfg.data.display()))?,
    };
    bar.finish_and_clear();
    match a.format {
        SummaryFormat::Text => {
            println!("checkpoint: {}", outcome.checkpoint.display());
            if outcome.stopped {
                println!("stopped; continue with --resume");
            }
        }
        SummaryFormat::Json => {
            let summary = serde_json::json!({
                "checkpoint": outcome.checkpoint,
                "stopped": outcome.stopped,
                "epochs": outcome.metrics,
            });
            serde_json::to_writer_pretty(std::io::stdout().lock(), &summary)?;
            println!();
        }
    }
    Ok(if outcome.stopped {
        stopped_status()
    } else {
        EXIT_OK
    })
}

/// One row per true class (its images, top-1 and its row of the confusion matrix, one
/// column per predicted class), then a row `(all)` with top-1 and top-5.
fn write_eval_csv(r: &EvalReport, out: &mut dyn Write) -> Result<()> {
    let mut w = csv::Writer::from_writer(out);
    let mut header = vec![
        "class".to_string(),
        "images".into(),
        "top1".into(),
        "top5".into(),
    ];
    header.extend(r.confusion.classes.iter().map(|c| format!("predicted {c}")));
    w.write_record(&header)?;
    for (c, row) in r.confusion.classes.iter().zip(&r.confusion.matrix) {
        let images: usize = row.iter().sum();
        let acc = r
            .per_class
            .get(c)
            .map_or(String::new(), |a| format!("{a:.6}"));
        let mut rec = vec![c.clone(), images.to_string(), acc, String::new()];
        rec.extend(row.iter().map(|v| v.to_string()));
        w.write_record(&rec)?;
    }
    let mut all = vec![
        "(all)".to_string(),
        r.n.to_string(),
        format!("{:.6}", r.top1),
        format!("{:.6}", r.top5),
    ];
    all.extend(r.confusion.classes.iter().map(|_| String::new()));
    w.write_record(&all)?;
    w.flush()?;
    Ok(())
}

fn write_eval_text(r: &EvalReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "checkpoint {}  data {}", r.checkpoint, r.data)?;
    // With five classes or fewer, top-5 is 1 whatever the model: not worth a column.
    let top5 = if r.per_class.len() > 5 {
        format!("  top-5 {:.4}", r.top5)
    } else {
        String::new()
    };
    writeln!(
        out,
        "n {}  top-1 {:.4}{top5}{}",
        r.n,
        r.top1,
        if r.skipped > 0 {
            format!("  ({} unreadable skipped)", r.skipped)
        } else {
            String::new()
        }
    )?;
    writeln!(out, "\nper class:")?;
    for (c, acc) in &r.per_class {
        writeln!(out, "  {acc:>7.4}  {c}")?;
    }
    writeln!(out, "\nconfusion (rows: true, columns: predicted):")?;
    let w = r
        .confusion
        .classes
        .iter()
        .map(|c| c.len())
        .max()
        .unwrap_or(4)
        .min(20);
    for (c, row) in r.confusion.classes.iter().zip(&r.confusion.matrix) {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:>5}")).collect();
        writeln!(
            out,
            "  {:<w$} {}",
            c.chars().take(w).collect::<String>(),
            cells.join("")
        )?;
    }
    Ok(())
}

/// `clipscope eval`.
pub fn eval(a: &EvalArgs) -> Result<u8> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let bar = super::log::progress_bar(0);
    bar.set_style(bar_style("eval [{bar:30}] {pos}/{len}"));
    let device = a.device.resolve()?;
    let report = evaluate(
        &a.checkpoint,
        &a.data,
        a.batch_size,
        device,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )
    .context("cannot evaluate")?;
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    match a.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
        Format::Csv => write_eval_csv(&report, &mut out)?,
        Format::Text => write_eval_text(&report, &mut out)?,
    }
    // As for classify and compare: the report stands, but some inputs failed.
    Ok(if report.skipped > 0 {
        super::EXIT_SOME_FAILED
    } else {
        EXIT_OK
    })
}

/// The library's Imagenette size for `--size`.
pub(super) fn imagenette_size(arg: ImagenetteSizeArg) -> ImagenetteSize {
    match arg {
        ImagenetteSizeArg::S160 => ImagenetteSize::S160,
        ImagenetteSizeArg::S320 => ImagenetteSize::S320,
        ImagenetteSizeArg::Full => ImagenetteSize::Full,
    }
}

/// Refuses a `data shapes` / `data scenes` folder that is not empty, unless `force`,
/// which removes a set either generator wrote there before: a second set written over
/// the first would mix the two (the first's extra pictures or classes, its split).
fn make_room(to: &std::path::Path, force: bool) -> Result<()> {
    clipscope::util::check_output_is_folder(to, "--to").map_err(anyhow::Error::msg)?;
    if !clipscope::util::is_occupied_folder(to) {
        return Ok(());
    }
    if !force {
        bail!(
            "--to {}: not empty; give --force to replace the set there, or another --to",
            to.display()
        );
    }
    let generated = |parts: &[&str]| {
        clipscope::data::synthetic::is_shapes_file(parts)
            || clipscope::data::scenes::is_scenes_file(parts)
    };
    clipscope::data::remove_generated(to, generated)
        .with_context(|| format!("cannot clear {}", to.display()))?;
    Ok(())
}

/// `clipscope data fetch`.
pub fn data(action: &DataAction) -> Result<u8> {
    match action {
        DataAction::Fetch { dataset, size, to } => {
            if dataset != "imagenette" {
                bail!("unknown data set {dataset:?} (known: imagenette)");
            }
            let size = imagenette_size(*size);
            let mut progress = super::log::download_progress();
            let name = size.archive().0;
            let dir = fetch_imagenette(size, to, &mut |done, total| progress(name, done, total))
                .with_context(|| {
                    format!(
                        "cannot fetch Imagenette (offline, put {name} from another machine into {} \
                         and run this again, or set CLIPSCOPE_DATA_URL to a mirror)",
                        to.display()
                    )
                })?;
            println!("Imagenette is in {}", dir.display());
        }
        DataAction::Scenes {
            to,
            count,
            layout,
            seed,
            force,
        } => {
            if *count == 0 {
                bail!("--count 0: give at least 1 picture");
            }
            make_room(to, *force)?;
            use clipscope::data::scenes::{write_scenes, Layout};
            let layout = match layout {
                ScenesLayout::Captions => Layout::Captions,
                ScenesLayout::Folders => Layout::Folders,
            };
            write_scenes(to, *count, layout, *seed)
                .with_context(|| format!("cannot write {}", to.display()))?;
            println!("{count} pictures in {}", to.display());
        }
        DataAction::Shapes {
            to,
            per_class,
            size,
            seed,
            force,
        } => {
            if *per_class == 0 {
                bail!("--per-class 0: give at least 1 image per shape");
            }
            if !(8..=1024).contains(size) {
                bail!("--size {size}: give a side between 8 and 1024 pixels");
            }
            make_room(to, *force)?;
            clipscope::data::synthetic::make_shapes(to, *per_class, *size, *seed)
                .with_context(|| format!("cannot write {}", to.display()))?;
            println!("{} images of 4 shapes in {}", per_class * 4, to.display());
        }
    }
    Ok(EXIT_OK)
}

/// Pictures per forward pass in `predict`.
const PREDICT_BATCH: usize = 32;

/// `clipscope predict`: a trained CNN's class probabilities for images, written as
/// `classify` writes CLIP's.
pub fn predict(a: &PredictArgs) -> Result<u8> {
    if a.inputs.is_empty() {
        bail!("no images: give image files or folders, or - for one image on standard input");
    }
    if a.top_k == Some(0) {
        bail!("--top-k must be at least 1");
    }
    let mut paths = a.inputs.clone();
    let stdin = super::input::stdin_image_inputs(&mut paths, false)?;
    let device = a.device.resolve()?;
    let cnn =
        CnnClassifier::load_on(&a.checkpoint, device).context("cannot load the checkpoint")?;
    let classes: Vec<String> = cnn
        .meta()
        .class_names
        .iter()
        .map(|c| display_name(c))
        .collect();
    let items = clipscope::data::collect_images(&paths);
    let name = |item: &Result<std::path::PathBuf, clipscope::data::ImageError>| {
        let path = item.as_ref().map_or_else(|e| e.path(), |p| p.as_path());
        match &stdin {
            Some(s) if s.path() == path => "-".to_string(),
            _ => path.display().to_string(),
        }
    };
    let rows = cnn.probabilities_of_files(&items, PREDICT_BATCH)?;
    let results: Vec<ImageResult> = items
        .iter()
        .zip(rows)
        .map(|(item, row)| {
            let (predictions, error) = match row {
                Ok(row) => (Some(ranked(&classes, &row, a.top_k)), None),
                Err(e) => (None, Some(e)),
            };
            ImageResult {
                image: name(item),
                answer: None,
                predictions,
                error,
            }
        })
        .collect();
    let failed = results.iter().any(|r| r.error.is_some());
    super::report_failures(results.iter().filter_map(|r| r.error.as_deref()));
    let report = ClassifyReport {
        model: format!("{} ({})", a.checkpoint.display(), cnn.meta().config.model),
        prompts: None,
        abstain: None,
        results,
    };
    super::output::write_classify(&report, a.format, &mut std::io::stdout().lock())?;
    Ok(if failed {
        super::EXIT_SOME_FAILED
    } else {
        EXIT_OK
    })
}

/// Classes with their probabilities, most probable first, the first `top_k` if given.
fn ranked(classes: &[String], probs: &[f32], top_k: Option<usize>) -> Vec<Prediction> {
    let mut preds: Vec<Prediction> = classes
        .iter()
        .zip(probs)
        .map(|(c, &p)| Prediction {
            label: c.clone(),
            probability: f64::from(p),
        })
        .collect();
    preds.sort_by(|x, y| y.probability.total_cmp(&x.probability));
    if let Some(k) = top_k {
        preds.truncate(k);
    }
    preds
}
