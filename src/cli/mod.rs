//! The headless commands: a thin layer over the library that parses arguments, adds
//! context to errors and renders results.

pub mod args;
mod bench;
mod cnn;
pub mod output;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use image::DynamicImage;

use clipscope::clip::zeroshot::{self, parse_labels};
use clipscope::clip::{preprocess, Clip, LabelSet, PromptStyle};
use clipscope::data::{collect_images, load_image, ImageError};
use clipscope::hub::{self, DownloadOptions, ModelSource, Registry};

use args::{ClassifyArgs, Command, EmbedArgs, ModelArgs, ModelsAction, PreprocessArgs};
use output::{ClassifyReport, EmbedItem, EmbedReport, ImageResult};

/// Exit status when every input succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit status when some inputs failed but the others were processed.
pub const EXIT_SOME_FAILED: u8 = 1;
/// Exit status for usage and model errors (nothing was processed).
pub const EXIT_ERROR: u8 = 2;

/// Images decoded and embedded at a time, bounding memory on large folders.
const CHUNK: usize = 32;

/// Run one command; `Ok` carries the exit status.
pub fn run(command: Command) -> Result<ExitCode> {
    let code = match command {
        Command::Tui(a) => tui(a)?,
        Command::Classify(a) => classify(&a)?,
        Command::Embed(a) => embed(&a)?,
        Command::Preprocess(a) => preprocess_cmd(&a)?,
        Command::Bench(a) => bench::run(&a)?,
        Command::Train(a) => cnn::train(&a)?,
        Command::Eval(a) => cnn::eval(&a)?,
        Command::Data { action } => cnn::data(&action)?,
        Command::Models { action } => models(&action)?,
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
    let device = clipscope::clip::parse_device(&args.device)?;
    let source = model_source(args);
    let (dir, name) =
        hub::resolve_model(&source, &mut hub::stderr_progress()).context("cannot get the model")?;
    Clip::load(&dir, &name, device)
        .with_context(|| format!("cannot load model {name} from {}", dir.display()))
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

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// One input's embedding, or the message of why it failed.
type Embedded = Result<Vec<f32>, String>;

/// Decode a chunk of paths; failures are returned in place.
fn decode_all(paths: &[PathBuf]) -> Vec<Result<DynamicImage, ImageError>> {
    paths.iter().map(|p| load_image(p)).collect()
}

/// Embed the images that decoded; each result keeps its input's place.
fn embed_decoded(
    clip: &Clip,
    decoded: Vec<Result<DynamicImage, ImageError>>,
) -> Result<Vec<Embedded>> {
    let ok: Vec<&DynamicImage> = decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
    let mut embeddings = clip.embed_images(&ok)?.into_iter();
    Ok(decoded
        .into_iter()
        .map(|d| match d {
            Ok(_) => embeddings
                .next()
                .ok_or_else(|| "missing embedding".to_string()),
            Err(e) => Err(e.to_string()),
        })
        .collect())
}

/// Expand inputs, embed every image in chunks, and keep failures in place.
fn embed_inputs(clip: &Clip, inputs: &[PathBuf]) -> Result<Vec<(String, Embedded)>> {
    let mut out = Vec::new();
    let mut pending: Vec<PathBuf> = Vec::new();
    let flush = |pending: &mut Vec<PathBuf>, out: &mut Vec<_>| -> Result<()> {
        let names: Vec<String> = pending.iter().map(|p| display(p)).collect();
        let results = embed_decoded(clip, decode_all(pending))?;
        out.extend(names.into_iter().zip(results));
        pending.clear();
        Ok(())
    };
    for item in collect_images(inputs) {
        match item {
            Ok(p) => {
                pending.push(p);
                if pending.len() == CHUNK {
                    flush(&mut pending, &mut out)?;
                }
            }
            Err(e) => {
                flush(&mut pending, &mut out)?;
                let name = match &e {
                    ImageError::Missing { path } | ImageError::Walk { path, .. } => display(path),
                    _ => String::new(),
                };
                out.push((name, Err(e.to_string())));
            }
        }
    }
    flush(&mut pending, &mut out)?;
    Ok(out)
}

fn classify(args: &ClassifyArgs) -> Result<u8> {
    let labels = read_labels(args)?;
    let style = prompt_style(&args.prompt.template, args.prompt.ensemble.as_deref())?;
    if args.top_k == Some(0) {
        bail!("--top-k must be at least 1");
    }
    let clip = load_model(&args.model)?;
    let label_set = LabelSet::build(&clip, &labels, &style)?;
    let scale = clip.logit_scale();
    let mut failed = false;
    let results = embed_inputs(&clip, &args.inputs)?
        .into_iter()
        .map(|(image, emb)| match emb {
            Ok(e) => {
                let mut preds = zeroshot::classify(&e, &label_set, scale);
                if let Some(k) = args.top_k {
                    preds.truncate(k);
                }
                ImageResult {
                    image,
                    predictions: Some(preds),
                    error: None,
                }
            }
            Err(msg) => {
                failed = true;
                ImageResult {
                    image,
                    predictions: None,
                    error: Some(msg),
                }
            }
        })
        .collect();
    let report = ClassifyReport {
        model: clip.name().to_string(),
        prompts: style.describe(),
        results,
    };
    let stdout = std::io::stdout();
    output::write_classify(&report, args.format, &mut stdout.lock())?;
    Ok(if failed { EXIT_SOME_FAILED } else { EXIT_OK })
}

fn embed(args: &EmbedArgs) -> Result<u8> {
    let clip = load_model(&args.model)?;
    let mut failed = false;
    let items = if let Some(text) = &args.text {
        let style = PromptStyle::template(&args.template)?;
        let texts = parse_labels(text);
        if texts.is_empty() {
            bail!("--text: no texts given");
        }
        let prompts: Vec<String> = texts.iter().flat_map(|t| style.prompts(t)).collect();
        let embeddings = clip.embed_texts(&prompts)?;
        texts
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
            .collect()
    } else {
        embed_inputs(&clip, &args.images)?
            .into_iter()
            .map(|(image, emb)| {
                failed |= emb.is_err();
                let (embedding, error) = match emb {
                    Ok(e) => (Some(e), None),
                    Err(msg) => (None, Some(msg)),
                };
                EmbedItem {
                    image: Some(image),
                    text: None,
                    prompt: None,
                    embedding,
                    error,
                }
            })
            .collect()
    };
    let report = EmbedReport {
        model: clip.name().to_string(),
        items,
    };
    output::write_embed(&report, args.format, &mut std::io::stdout().lock())?;
    Ok(if failed { EXIT_SOME_FAILED } else { EXIT_OK })
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

fn models(action: &ModelsAction) -> Result<u8> {
    let registry = Registry::builtin()?;
    let opts = DownloadOptions::from_env()?;
    match action {
        ModelsAction::List => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<14} {:<9} {:>8}  DESCRIPTION",
                "NAME", "STATUS", "SIZE"
            )?;
            for m in &registry.models {
                let have = hub::is_cached(m, &opts);
                let default = if m.name == registry.default {
                    " (default)"
                } else {
                    ""
                };
                writeln!(
                    out,
                    "{:<14} {:<9} {:>5} MB  {}{}",
                    m.name,
                    if have { "cached" } else { "-" },
                    m.size_mb,
                    m.description,
                    default
                )?;
            }
            for c in &registry.cnn {
                let have = hub::cnn_weights_path(c, &opts).is_file();
                writeln!(
                    out,
                    "{:<14} {:<9} {:>5} MB  {} (CNN weights, train --pretrained imagenet)",
                    c.name,
                    if have { "cached" } else { "-" },
                    c.size_mb,
                    c.description
                )?;
            }
            writeln!(out, "\ncache: {}", opts.cache_root.join("models").display())?;
        }
        ModelsAction::Download { name } => {
            let entry = registry.find(name)?;
            let dir = hub::ensure_model(entry, &opts, &mut hub::stderr_progress())
                .with_context(|| format!("cannot download model {}", entry.name))?;
            println!("{} is in {}", entry.name, dir.display());
        }
    }
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
    clipscope::tui::run(TuiOptions {
        input: args.input,
        labels: args.labels,
        source,
        device: args.device.unwrap_or_else(|| "cpu".into()),
        style,
        protocol,
        keymap: args.keymap.unwrap_or_else(|| "default".into()),
    })?;
    Ok(EXIT_OK)
}
