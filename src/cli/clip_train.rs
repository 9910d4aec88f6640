//! `finetune` and `demo`: training CLIP from the command line.

use std::io::Write;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use clipscope::clip::demo::{self, DemoEvent, DemoTrainOptions};
use clipscope::clip::finetune::{self, FinetuneConfig, FinetuneEvent, Task};
use clipscope::clip::train::Trainable;

use super::args::{DemoAction, DemoTrainArgs, FinetuneArgs, Format, ModelArgs, SummaryFormat};
use super::{load_model, model_files, EXIT_OK};

fn bar(template: &str) -> ProgressBar {
    let bar = super::log::progress_bar(0);
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// The learning rate when none is given: small when whole blocks learn (they are
/// pretrained), larger when only projections or LayerNorms do.
fn default_lr(trainable: &Trainable) -> f64 {
    match trainable {
        Trainable::All | Trainable::LastBlocks(_) => 1e-5,
        Trainable::Projections | Trainable::LayerNorms => 1e-3,
    }
}

/// Fine-tuning runs on the CPU in f32 (the library's `finetune`): other `--device` and
/// `--precision` values are refused rather than ignored.
fn check_finetune_device(model: &super::args::ModelArgs) -> Result<()> {
    let auto = model.device.spec.eq_ignore_ascii_case("auto");
    if !model.device.resolve()?.is_cpu() && !auto {
        bail!(
            "--device {}: fine-tuning runs on the CPU only; give --device cpu or leave it out",
            model.device.spec
        );
    }
    if model.precision != clipscope::clip::Precision::F32 {
        bail!(
            "--precision {}: fine-tuning trains in f32; leave --precision out (the fine-tuned model classifies at any precision)",
            format!("{:?}", model.precision).to_lowercase()
        );
    }
    Ok(())
}

/// `clipscope finetune`'s configuration: each option as given, else (resuming) the
/// run's, else its default. A resumed run that gets a different value is refused by the
/// library, which names the option.
fn finetune_config(a: &FinetuneArgs, saved: Option<&FinetuneConfig>) -> Result<FinetuneConfig> {
    let (saved_val, saved_template) = match saved.map(|c| &c.task) {
        Some(Task::Classify { val, template, .. }) => (val.clone(), Some(template.clone())),
        _ => (None, None),
    };
    let task = match (&a.data, &a.captions, saved.map(|c| &c.task)) {
        (None, Some(file), _) => Task::Captions { file: file.clone() },
        // Resumed with neither: the run's own captions file.
        (None, None, Some(task @ Task::Captions { .. })) => task.clone(),
        // Classification on the data given, or resumed without it, on the run's.
        (Some(data), None, _) | (None, None, Some(Task::Classify { data, .. })) => Task::Classify {
            data: data.clone(),
            val: a.val.clone().or(saved_val),
            template: (a.template.clone())
                .or(saved_template)
                .unwrap_or_else(|| "a photo of a {}.".to_string()),
        },
        _ => bail!("give --data DIR (classification) or --captions FILE (contrastive)"),
    };
    let seed = a.seed.or(saved.map(|c| c.seed));
    let val_fraction = a.val_fraction.or(saved.map(|c| c.val_fraction));
    let (seed, val_fraction) = match &task {
        Task::Classify { data, val, .. } => {
            super::cnn::split_options(data, val.is_some(), seed, val_fraction)?
        }
        _ => (seed.unwrap_or(0), val_fraction.unwrap_or(0.2)),
    };
    let trainable = (a.trainable.clone())
        .or_else(|| saved.map(|c| c.trainable.clone()))
        .unwrap_or(Trainable::All);
    let classify = matches!(task, Task::Classify { .. });
    Ok(FinetuneConfig {
        // Flips are on for classification unless --no-flip, or the resumed run had none.
        flip: classify && !a.no_flip && saved.is_none_or(|c| c.flip),
        task,
        epochs: a.epochs.or(saved.map(|c| c.epochs)).unwrap_or(5),
        batch_size: a.batch_size.or(saved.map(|c| c.batch_size)).unwrap_or(32),
        lr: (a.lr)
            .or(saved.map(|c| c.lr))
            .unwrap_or_else(|| default_lr(&trainable)),
        trainable,
        weight_decay: a
            .weight_decay
            .or(saved.map(|c| c.weight_decay))
            .unwrap_or(0.1),
        warmup_fraction: a.warmup.or(saved.map(|c| c.warmup_fraction)).unwrap_or(0.1),
        seed,
        val_fraction,
        wise_alpha: a.wise_alpha.or(saved.map(|c| c.wise_alpha)).unwrap_or(1.0),
    })
}

/// `clipscope finetune`.
pub fn finetune(a: &FinetuneArgs) -> Result<u8> {
    // Checked before the model loads, so a typo costs nothing and names the flag.
    for (flag, dir) in [("--data", &a.data), ("--val", &a.val)] {
        if let Some(dir) = dir {
            super::input::expect_folder(flag, dir)?;
        }
    }
    if let Some(file) = &a.captions {
        super::input::expect_file("--captions", file)?;
    }
    check_finetune_device(&a.model)?;
    // Before the model is fetched: a download should not precede this refusal.
    clipscope::util::check_run_folder(&a.output, a.resume, a.force).map_err(anyhow::Error::msg)?;
    let prior = if a.resume {
        Some(finetune::read_record(&a.output)?)
    } else {
        None
    };
    let cfg = finetune_config(a, prior.as_ref().map(|r| &r.config))?;
    let mut base = match (&prior, &a.model.model, &a.model.model_dir) {
        // Resumed without a model named: the one the run started from.
        (Some(run), None, None) => {
            // A model folder is recorded by its absolute path, a registry model by its
            // name (which a folder in the working directory could share).
            let recorded = std::path::PathBuf::from(&run.base_model);
            let source = if recorded.is_absolute() && recorded.is_dir() {
                clipscope::hub::ModelSource::Dir(recorded)
            } else {
                clipscope::hub::ModelSource::Named(Some(run.base_model.clone()))
            };
            clipscope::hub::resolve_files(&source, &mut super::log::download_progress())
                .with_context(|| {
                    format!(
                        "cannot get the model {} the run was fine-tuned from; give it with --model or --model-dir",
                        run.base_model
                    )
                })?
        }
        (prior, _, _) => {
            if let Some(run) = prior {
                // Refused before a download, which could be the whole model.
                let asked = match (&a.model.model_dir, &a.model.model) {
                    (Some(dir), _) => clipscope::util::absolute(dir).display().to_string(),
                    (None, Some(name)) => super::check_model_name(name)?,
                    (None, None) => clipscope::hub::source_name(&super::model_source(&a.model))?,
                };
                run.check_base_model(&asked)?;
            }
            model_files(&a.model)?
        }
    };
    if let Some(dir) = &a.model.model_dir {
        // Recorded absolute, so that --resume from another folder finds the same model.
        base.name = clipscope::util::absolute(dir).display().to_string();
    }
    let stop = super::cnn::stop_on_ctrl_c();
    let progress = bar("epoch {prefix} [{bar:30}] {pos}/{len} {msg}");
    // Epoch lines on standard output in text; in JSON one object at the end instead.
    let mut out: Box<dyn Write> = match a.format {
        SummaryFormat::Text => Box::new(std::io::stdout()),
        SummaryFormat::Json => Box::new(std::io::sink()),
    };
    let epochs = cfg.epochs;
    let outcome = finetune::finetune(
        &base,
        &cfg,
        &a.output,
        a.resume,
        a.force,
        &stop,
        &mut |ev| match ev {
            FinetuneEvent::Log(line) => super::cnn::say(&progress, line),
            FinetuneEvent::Ready {
                train,
                val,
                steps_per_epoch,
                first_epoch,
            } => {
                let plan = if first_epoch > epochs {
                    // Said whether or not a bar is drawn, as train does.
                    progress.suspend(|| {
                        tracing::warn!(
                            "{} (the model is written again, WiSE-FT alpha {})",
                            super::cnn::nothing_to_train(first_epoch - 1),
                            cfg.wise_alpha
                        )
                    });
                    "nothing to train".to_string()
                } else {
                    format!("epochs {first_epoch}..{epochs}")
                };
                super::cnn::say(
                    &progress,
                    format!("{train} training and {val} held-out examples; {plan}"),
                );
                progress.set_length(steps_per_epoch as u64);
            }
            FinetuneEvent::Step {
                epoch,
                step,
                loss,
                lr,
                images_per_sec,
            } => {
                progress.set_prefix(format!("{epoch}/{epochs}"));
                progress.set_position(step as u64);
                progress.set_message(format!(
                    "loss {loss:.4} lr {lr:.2e} {images_per_sec:.1} img/s"
                ));
            }
            FinetuneEvent::Epoch(m) => {
                progress.suspend(|| {
                    let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
                    let what = if m.epoch == 0 {
                        "before training".to_string()
                    } else {
                        format!(
                            "epoch {:>3}  train loss {}  {:.1} s  {:.1} img/s",
                            m.epoch,
                            num(m.train_loss),
                            m.seconds,
                            m.images_per_sec
                        )
                    };
                    let _ = writeln!(
                        out,
                        "{what}  val loss {}  val top-1 {}",
                        num(m.val_loss),
                        num(m.val_top1)
                    );
                });
                progress.reset();
            }
            FinetuneEvent::Saved(_) => {}
        },
    )
    .with_context(|| format!("fine-tuning {} failed", base.name))?;
    progress.finish_and_clear();
    if a.format == SummaryFormat::Json {
        serde_json::to_writer_pretty(std::io::stdout().lock(), &outcome.record)?;
        println!();
    } else {
        println!(
            "model folder: {} (use it with --model-dir; WiSE-FT alpha {})",
            a.output.display(),
            cfg.wise_alpha
        );
    }
    if outcome.stopped {
        eprintln!("clipscope: stopped; continue with --resume");
        return Ok(super::cnn::stopped_status());
    }
    Ok(EXIT_OK)
}

/// `clipscope demo`.
pub fn demo(action: &DemoAction) -> Result<u8> {
    match action {
        DemoAction::Train(args) => demo_train(args),
        DemoAction::Eval {
            model,
            per_label,
            seed,
            data,
            format,
        } => demo_eval(model, *per_label, *seed, data.as_deref(), *format),
    }
}

fn demo_train(args: &DemoTrainArgs) -> Result<u8> {
    let (output, steps, lr) = (&args.output, args.steps, args.lr);
    if steps == 0 || args.batch_size < 2 {
        bail!("--steps must be at least 1 and --batch-size at least 2");
    }
    if !(lr > 0.0 && lr.is_finite()) {
        bail!("--lr must be a positive number");
    }
    clipscope::util::check_output_is_folder(output, "--output").map_err(anyhow::Error::msg)?;
    if output.join("model.safetensors").exists() && !args.force {
        bail!(
            "{} already holds a model; give --force to replace it, or another --output",
            output.display()
        );
    }
    let opts = DemoTrainOptions {
        steps,
        batch_size: args.batch_size,
        lr,
        weight_decay: DemoTrainOptions::default().weight_decay,
        warmup: args.warmup,
        seed: args.seed,
        eval_every: args.eval_every,
        easy_steps: args.easy_steps,
        sincos_positions: args.sincos_positions,
        shape_negatives: usize::from(args.shape_negatives),
    };
    let stop = super::cnn::stop_on_ctrl_c();
    let progress = bar("[{bar:30}] {pos}/{len} {msg}");
    progress.set_length(steps as u64);
    let outcome = demo::train_demo(&opts, output, &stop, &mut |ev| match ev {
        DemoEvent::Step {
            step,
            loss,
            lr,
            pairs_per_sec,
            ..
        } => {
            progress.set_position(step as u64);
            progress.set_message(format!(
                "loss {loss:.4} lr {lr:.2e} {pairs_per_sec:.1} pairs/s"
            ));
        }
        DemoEvent::Eval { step, top1 } => {
            super::cnn::say(
                &progress,
                format!("step {step}: twelve-label top-1 {top1:.3}"),
            );
        }
    })
    .context("training the demo model failed")?;
    progress.finish_and_clear();
    println!(
        "{} steps in {:.0} s ({:.1} pairs/s); twelve-label top-1 {:.3}; model in {}",
        outcome.steps,
        outcome.seconds,
        outcome.pairs_per_sec,
        outcome.benchmark_top1,
        output.display()
    );
    Ok(if outcome.stopped {
        super::cnn::stopped_status()
    } else {
        EXIT_OK
    })
}

fn demo_eval(
    model: &ModelArgs,
    per_label: usize,
    seed: u64,
    data: Option<&std::path::Path>,
    format: Format,
) -> Result<u8> {
    if per_label == 0 {
        bail!("--per-label must be at least 1");
    }
    if let Some(dir) = data {
        super::input::expect_folder("--data", dir)?;
    }
    let mut model = ModelArgs {
        model: model.model.clone(),
        model_dir: model.model_dir.clone(),
        device: model.device.clone(),
        precision: model.precision,
    };
    if model.model.is_none() && model.model_dir.is_none() {
        model.model = Some(clipscope::hub::DEMO_MODEL.to_string());
    }
    let clip = load_model(&model)?;
    let r = demo::evaluate(&clip, per_label, seed, data).context("the demo benchmark failed")?;
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &r)?;
            writeln!(out)?;
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(["set", "label", "top1", "n"])?;
            let sets = [
                Some(("generated", &r.benchmark)),
                r.folders.as_ref().map(|f| ("folders", f)),
            ];
            for (name, set) in sets.into_iter().flatten() {
                w.write_record([name, "all", &format!("{:.4}", set.top1), &set.n.to_string()])?;
                for l in &set.per_label {
                    let top1 = l.top1.map_or(String::new(), |t| format!("{t:.4}"));
                    w.write_record([name, &l.label, &top1, &l.n.to_string()])?;
                }
            }
            // The held-out combinations, as the text and JSON give them (their n is not
            // recorded per row; 'all' rows carry it).
            let b = &r.binding;
            for (label, value) in [
                ("held-out combinations", b.held_out_top1),
                ("trained combinations", b.trained_top1),
                ("held-out: right shape", b.held_out_shape_right),
                ("held-out: right colour", b.held_out_colour_right),
            ] {
                w.write_record(["binding", label, &format!("{value:.4}"), ""])?;
            }
            w.flush()?;
        }
        Format::Text => {
            writeln!(out, "model {}  pictures seed {}", r.model, r.seed)?;
            let sets = [
                Some(("generated pictures", &r.benchmark)),
                r.folders.as_ref().map(|f| ("class folders", f)),
            ];
            for (name, set) in sets.into_iter().flatten() {
                writeln!(
                    out,
                    "\n{name}: twelve-label top-1 {:.4} on {} pictures",
                    set.top1, set.n
                )?;
                for l in &set.per_label {
                    match l.top1 {
                        Some(top1) => writeln!(out, "  {top1:>7.4}  {}", l.label)?,
                        None => writeln!(out, "  {:>7}  {} (no pictures)", "n/a", l.label)?,
                    }
                }
            }
            let b = &r.binding;
            writeln!(
                out,
                "\nheld-out combinations ({}): top-1 among 60 colour-shape labels {:.4} \
                 (trained combinations {:.4}); right shape {:.4}, right colour {:.4}",
                b.held_out.join(", "),
                b.held_out_top1,
                b.trained_top1,
                b.held_out_shape_right,
                b.held_out_colour_right
            )?;
        }
    }
    Ok(EXIT_OK)
}
