//! The headless commands: a thin layer over the library that parses arguments, adds
//! context to errors and renders results.

pub mod args;
mod bench;
mod clip_train;
mod cnn;
mod compare;
mod imagenette;
mod jobs;
mod models;
pub mod output;

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use clipscope::clip::pipeline::{self, ImageOutcome};
use clipscope::clip::zeroshot::{self, parse_labels};
use clipscope::clip::{preprocess, Clip, LabelSet, ModelFiles, PromptStyle};
use clipscope::data::load_image;
use clipscope::hub::{self, ModelSource, Registry};
use clipscope::scale::{self, Precision};
use clipscope::study::metrics::{answers, NONE_OF_THESE};

use args::{ClassifyArgs, Command, EmbedArgs, MergeArgs, ModelArgs, PrecisionArg, PreprocessArgs};
use output::{ClassifyReport, EmbedItem, EmbedReport, ImageResult};

/// Exit status when every input succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit status when some inputs failed but the others were processed.
pub const EXIT_SOME_FAILED: u8 = 1;
/// Exit status for usage and model errors (nothing was processed).
pub const EXIT_ERROR: u8 = 2;

/// Run one command; `Ok` carries the exit status.
pub fn run(command: Command) -> Result<ExitCode> {
    let code = match command {
        Command::Tui(a) => tui(a)?,
        Command::Classify(a) => classify(&a)?,
        Command::Embed(a) => embed(&a)?,
        Command::Merge(a) => merge(&a)?,
        Command::Preprocess(a) => preprocess_cmd(&a)?,
        Command::Compare(a) => compare::compare(&a)?,
        Command::Bench(a) => bench::run(&a)?,
        Command::Train(a) => cnn::train(&a)?,
        Command::Eval(a) => cnn::eval(&a)?,
        Command::Finetune(a) => clip_train::finetune(&a)?,
        Command::Demo { action } => clip_train::demo(&action)?,
        Command::Data { action } => cnn::data(&action)?,
        Command::Study { action } => imagenette::study(&action)?,
        Command::Models { action } => models::models(&action)?,
    };
    Ok(ExitCode::from(code))
}

/// The model source named by `--model` / `--model-dir`.
pub fn model_source(args: &ModelArgs) -> ModelSource {
    match &args.model_dir {
        Some(dir) => ModelSource::Dir(dir.clone()),
        None => ModelSource::Named(args.model.clone()),
    }
}

/// Load the model named by `--model` / `--model-dir` (default: the registry default),
/// downloading it on first use with a progress bar on stderr.
pub fn load_model(args: &ModelArgs) -> Result<Clip> {
    Ok(load_model_and_files(args)?.0)
}

/// As [`load_model`], with the model's files (for the embedding cache's key).
pub fn load_model_and_files(args: &ModelArgs) -> Result<(Clip, ModelFiles)> {
    let device = clipscope::clip::parse_device(&args.device)?;
    let files = model_files(args)?;
    // A folder is named by the file at fault in the error itself.
    let clip = match &args.model_dir {
        Some(_) => files.load(device).context("cannot load the model")?,
        None => files
            .load(device)
            .with_context(|| format!("cannot load model {}", files.name))?,
    };
    Ok((clip, files))
}

/// The files of the model named by `--model` / `--model-dir`, downloaded if needed.
pub fn model_files(args: &ModelArgs) -> Result<ModelFiles> {
    hub::resolve_files(&model_source(args), &mut hub::stderr_progress())
        .context("cannot get the model")
}

fn read_labels(args: &ClassifyArgs) -> Result<Vec<String>> {
    let text = match (&args.labels, &args.labels_file) {
        (Some(l), _) => l.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read labels file {}", f.display()))?,
        (None, None) => bail!("give --labels or --labels-file"),
    };
    let labels = parse_labels(&text);
    if labels.is_empty() {
        bail!("no labels given (separate them with commas or new lines)");
    }
    Ok(labels)
}

fn prompt_style(template: &str, ensemble: Option<&str>) -> Result<PromptStyle> {
    Ok(match ensemble {
        Some(name) => PromptStyle::ensemble(name)?,
        None => PromptStyle::template(template)?,
    })
}

/// Classify results for one input's embedding: the labels' probabilities, or its error.
struct Classifier {
    labels: LabelSet,
    scale: f32,
    top_k: Option<usize>,
    /// Answer "none of these" below this top probability.
    abstain: Option<f64>,
}

impl Classifier {
    fn result(&self, image: String, outcome: ImageOutcome) -> ImageResult {
        match outcome {
            Ok(e) => {
                let mut preds = zeroshot::classify(&e, &self.labels, self.scale);
                let answer = self.abstain.map(|p| answer(&preds, p));
                if let Some(k) = self.top_k {
                    preds.truncate(k);
                }
                ImageResult {
                    image,
                    answer,
                    predictions: Some(preds),
                    error: None,
                }
            }
            Err(e) => ImageResult {
                image,
                answer: None,
                predictions: None,
                error: Some(e.to_string()),
            },
        }
    }
}

/// The top label, or "none of these" when its probability is below `threshold`.
fn answer(preds: &[clipscope::clip::Prediction], threshold: f64) -> String {
    match preds.first() {
        Some(top) if answers(top.probability as f32, threshold) => top.label.clone(),
        _ => NONE_OF_THESE.to_string(),
    }
}

fn classify(args: &ClassifyArgs) -> Result<u8> {
    let labels = read_labels(args)?;
    let style = prompt_style(&args.prompt.template, args.prompt.ensemble.as_deref())?;
    if args.top_k == Some(0) {
        bail!("--top-k must be at least 1");
    }
    compare::check_probability("--abstain", args.abstain)?;
    let shard = jobs::checked_shard(&args.job)?;
    let paths = jobs::input_paths(&args.inputs, &args.job)?;
    let (clip, files) = load_model_and_files(&args.model)?;
    let opts = jobs::pipeline_options(&args.job, &clip, &files);
    let classifier = Classifier {
        labels: pipeline::label_set(&clip, &labels, &style, opts.cache.as_ref())?,
        scale: clip.logit_scale(),
        top_k: args.top_k,
        abstain: args.abstain,
    };
    if let Some(out) = &args.output {
        let settings = serde_json::json!({
            "labels": labels,
            "prompts": style.describe(),
            "top_k": args.top_k,
            "abstain": args.abstain,
        });
        let job = jobs::Job::new(&clip, paths, shard, settings, args.job.resume, &opts);
        return job.classify_to_file(&classifier, out);
    }
    let (items, names) = jobs::expand(&paths, shard);
    let mut results = Vec::with_capacity(items.len());
    pipeline::embed_expanded(&clip, items, &opts, |i, outcome| {
        results.push(classifier.result(names[i].clone(), outcome));
        Ok::<(), anyhow::Error>(())
    })?;
    let failed = results.iter().any(|r| r.error.is_some());
    let report = ClassifyReport {
        model: clip.name().to_string(),
        prompts: style.describe(),
        abstain: args.abstain,
        results,
    };
    let stdout = std::io::stdout();
    output::write_classify(&report, args.format, &mut stdout.lock())?;
    Ok(if failed { EXIT_SOME_FAILED } else { EXIT_OK })
}

fn embed(args: &EmbedArgs) -> Result<u8> {
    if let Some(text) = &args.text {
        return embed_texts(args, text);
    }
    let shard = jobs::checked_shard(&args.job)?;
    let paths = jobs::input_paths(&args.images, &args.job)?;
    let (clip, files) = load_model_and_files(&args.model)?;
    let opts = jobs::pipeline_options(&args.job, &clip, &files);
    if let Some(out) = &args.output {
        let precision = match args.precision {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::F16 => Precision::F16,
        };
        let settings = serde_json::json!({ "precision": precision });
        let job = jobs::Job::new(&clip, paths, shard, settings, args.job.resume, &opts);
        return job.embed_to_dir(out, precision);
    }
    let (items, names) = jobs::expand(&paths, shard);
    let mut failed = false;
    let mut out = Vec::with_capacity(items.len());
    pipeline::embed_expanded(&clip, items, &opts, |i, outcome| {
        failed |= outcome.is_err();
        out.push(EmbedItem {
            image: Some(names[i].clone()),
            text: None,
            prompt: None,
            error: outcome.as_ref().err().map(|e| e.to_string()),
            embedding: outcome.ok(),
        });
        Ok::<(), anyhow::Error>(())
    })?;
    write_embeddings(&clip, out, args.format)?;
    Ok(if failed { EXIT_SOME_FAILED } else { EXIT_OK })
}

fn embed_texts(args: &EmbedArgs, text: &str) -> Result<u8> {
    let style = PromptStyle::template(&args.template)?;
    let texts = parse_labels(text);
    if texts.is_empty() {
        bail!("--text: no texts given");
    }
    let clip = load_model(&args.model)?;
    let prompts: Vec<String> = texts.iter().flat_map(|t| style.prompts(t)).collect();
    let embeddings = clip.embed_texts(&prompts)?;
    let items = texts
        .into_iter()
        .zip(prompts)
        .zip(embeddings)
        .map(|((text, prompt), e)| EmbedItem {
            image: None,
            text: Some(text),
            prompt: Some(prompt),
            embedding: Some(e),
            error: None,
        })
        .collect();
    write_embeddings(&clip, items, args.format)?;
    Ok(EXIT_OK)
}

fn write_embeddings(clip: &Clip, items: Vec<EmbedItem>, format: args::Format) -> Result<()> {
    let report = EmbedReport {
        model: clip.name().to_string(),
        items,
    };
    output::write_embed(&report, format, &mut std::io::stdout().lock())
}

fn merge(args: &MergeArgs) -> Result<u8> {
    if let Some(p) = args.parts.iter().find(|p| !p.exists()) {
        bail!("{}: no such file or folder", p.display());
    }
    let summary = if args.parts.iter().all(|p| p.is_dir()) {
        scale::merge_embeddings(&args.parts, &args.output)?
    } else if args.parts.iter().all(|p| p.is_file()) {
        scale::merge_results(&args.parts, &args.output)?
    } else {
        bail!("give classify's result files or embed's output folders, not both");
    };
    println!(
        "merged {} shards into {}: {} inputs, {} failed",
        summary.shards,
        args.output.display(),
        summary.items,
        summary.failed
    );
    Ok(EXIT_OK)
}

fn preprocess_cmd(args: &PreprocessArgs) -> Result<u8> {
    let size = match (args.size, &args.model) {
        (Some(s), _) => s,
        (None, Some(name)) => Registry::builtin()?.find(name)?.image_size,
        (None, None) => Registry::builtin()?.default_model()?.image_size,
    };
    if !(1..=4096).contains(&size) {
        bail!("--size {size}: expected 1 to 4096");
    }
    let img = load_image(&args.image)?;
    let crop = preprocess::center_crop_rgb(&img, size);
    crop.save_with_format(&args.output, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(EXIT_OK)
}

fn tui(args: args::TuiArgs) -> Result<u8> {
    use args::ImageProtocolArg as P;
    use clipscope::tui::{ImageProtocol, TuiOptions};
    let style = prompt_style(
        args.template
            .as_deref()
            .unwrap_or(zeroshot::DEFAULT_TEMPLATE),
        args.ensemble.as_deref(),
    )?;
    let protocol = match args.image_protocol.unwrap_or(P::Auto) {
        P::Auto => ImageProtocol::Auto,
        P::Kitty => ImageProtocol::Kitty,
        P::Sixel => ImageProtocol::Sixel,
        P::Iterm2 => ImageProtocol::Iterm2,
        P::Halfblocks => ImageProtocol::Halfblocks,
    };
    let source = match args.model_dir {
        Some(dir) => ModelSource::Dir(dir),
        None => ModelSource::Named(args.model),
    };
    let start = hub::app_start(source, args.input.is_some(), !args.labels.trim().is_empty());
    clipscope::tui::run(TuiOptions {
        input: args.input.or(start.picture),
        labels: start.labels.unwrap_or(args.labels),
        source: start.source,
        notice: start.notice,
        device: args.device.unwrap_or_else(|| "cpu".into()),
        style,
        protocol,
        keymap: args.keymap.unwrap_or_else(|| "default".into()),
        abstain: args.abstain,
        report: args.report,
    })?;
    Ok(EXIT_OK)
}
