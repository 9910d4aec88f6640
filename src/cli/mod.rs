//! The headless commands: a thin layer over the library that parses arguments, adds
//! context to errors and renders results.

pub mod args;
mod bench;
mod clip_train;
mod cnn;
mod compare;
mod imagenette;
mod input;
mod jobs;
pub mod log;
mod models;
pub mod output;

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use clipscope::clip::pipeline::{self, ImageOutcome};
use clipscope::clip::zeroshot::{self, dedupe_labels, parse_label_lines, parse_labels};
use clipscope::clip::{preprocess, Clip, LabelSet, ModelFiles, PromptStyle};
use clipscope::data::load_image;
use clipscope::hub::{self, ModelSource, Registry};
use clipscope::scale::{self, Precision};
use clipscope::study::metrics::{answers, NONE_OF_THESE};

use args::{
    ClassifyArgs, Command, EmbedArgs, MergeArgs, ModelArgs, ModelsAction, NpyDtype, PreprocessArgs,
};
use output::{ClassifyReport, EmbedItem, EmbedReport, ImageResult};

/// Exit status when every input succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit status when some inputs failed but the others were processed.
pub const EXIT_SOME_FAILED: u8 = 1;
/// Exit status for usage and model errors (nothing was processed).
pub const EXIT_ERROR: u8 = 2;

/// Apply `--max-file-size` and `--max-pixels` to every image read from now on.
pub fn set_input_limits(limits: &args::LimitArgs) {
    clipscope::data::set_input_limits(clipscope::data::InputLimits {
        max_file_bytes: limits.max_file_size,
        max_pixels: limits.max_pixels,
    });
}

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
        Command::Predict(a) => cnn::predict(&a)?,
        Command::Finetune(a) => clip_train::finetune(&a)?,
        Command::Demo { action } => clip_train::demo(&action)?,
        Command::Data { action } => cnn::data(&action)?,
        Command::Study { action } => imagenette::study(&action)?,
        Command::Models { action } => models::models(&action.unwrap_or(ModelsAction::List {
            format: args::ListFormat::Text,
        }))?,
        Command::Completions { shell } => completions(shell)?,
        Command::Man { out_dir, dir } => man(out_dir.or(dir).as_deref())?,
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
    let device = args.device.resolve()?;
    let files = model_files(args)?;
    tracing::debug!("model files: {files:?}");
    let started = std::time::Instant::now();
    // A folder is named by the file at fault in the error itself.
    let clip = match &args.model_dir {
        Some(_) => files
            .load_with(device, args.precision)
            .context("cannot load the model")?,
        None => files
            .load_with(device, args.precision)
            .with_context(|| format!("cannot load model {}", files.name))?,
    };
    tracing::info!(
        "model {} loaded in {} ms",
        files.name,
        started.elapsed().as_millis()
    );
    Ok((clip, files))
}

/// Record the model's `--precision` in a job's settings, so that resuming or merging
/// refuses to mix precisions. Only when not f32: f32 jobs' manifests stay as they were.
fn with_model_precision(settings: &mut serde_json::Value, clip: &Clip) {
    if clip.precision() != clipscope::clip::Precision::F32 {
        settings["model_precision"] = clip.precision().as_str().into();
    }
}

/// The files of the model named by `--model` / `--model-dir`, downloaded if needed.
pub fn model_files(args: &ModelArgs) -> Result<ModelFiles> {
    if let Some(name) = &args.model {
        check_model_name(name)?;
    }
    hub::resolve_files(&model_source(args), &mut log::download_progress())
        .context("cannot get the model")
}

/// The registry's own name for a `--model` (whatever alias picked it), found before
/// anything is fetched or the app takes the terminal; a name that is no model's is
/// refused, and a folder given there is pointed at `--model-dir`.
pub(crate) fn check_model_name(name: &str) -> Result<String> {
    match hub::source_name(&ModelSource::Named(Some(name.to_string()))) {
        Ok(known) => Ok(known),
        Err(_) if std::path::Path::new(name).is_dir() => bail!(
            "--model {name}: a folder, not a model name; give a model folder with --model-dir {name}"
        ),
        Err(unknown) => Err(anyhow::Error::new(unknown).context("cannot get the model")),
    }
}

fn read_labels(args: &ClassifyArgs) -> Result<Vec<String>> {
    let labels = match (&args.labels, &args.labels_file) {
        (Some(l), _) => {
            if let Some(line) = clipscope::clip::zeroshot::unclosed_quote(l) {
                bail!("--labels '{line}': a double quote is never closed; close it (\"cat, sitting\",dog), or leave quotes out of labels without commas");
            }
            parse_labels(l)
        }
        (None, Some(f)) => parse_label_lines(&input::read_text_file(f, "--labels-file")?),
        (None, None) => {
            bail!("no labels: give --labels \"cat,dog\" or --labels-file FILE (one a line)")
        }
    };
    if let (true, Some(f)) = (labels.is_empty(), &args.labels_file) {
        bail!(
            "--labels-file {}: holds no labels; write one label a line",
            f.display()
        );
    }
    if labels.is_empty() {
        bail!(
            "no labels given: --labels takes labels separated by commas (quote one that holds a comma: '\"cat, sitting\",dog'), --labels-file one a line"
        );
    }
    let (labels, repeats) = dedupe_labels(labels);
    if !repeats.is_empty() {
        tracing::warn!(
            "repeated labels scored once (a copy would split the probability): {}",
            repeats.join(", ")
        );
    }
    Ok(labels)
}

/// Once the run can go ahead: a single label's softmax is 1 whatever the image.
fn warn_one_label(labels: &[String]) {
    if let [only] = labels {
        tracing::warn!(
            "one label ({only}) scores 100% on every image; give two or more to compare"
        );
    }
}

/// Warn about words of labels or texts the model has no embedding for: such labels
/// cannot be told apart.
fn warn_unknown_words(clip: &Clip, labels: &[String]) -> Result<()> {
    clip.warn_unknown(&clip.unknown_words_in(labels)?);
    Ok(())
}

/// Report the inputs that failed on stderr, one line each, as ripgrep reports files it
/// cannot read.
pub(crate) fn report_failures<'a>(errors: impl Iterator<Item = &'a str>) {
    for e in errors {
        eprintln!("{}", log::error_line(e));
    }
}

/// The inputs from the command line and `--inputs`, with an input `-` read from
/// standard input into a temporary file (kept alive by the returned guard) and the name
/// that file should have in outputs.
fn gather_inputs(
    positional: &[std::path::PathBuf],
    job: &args::JobArgs,
) -> Result<(Vec<std::path::PathBuf>, Option<input::StdinImage>)> {
    let mut paths = jobs::input_paths(positional, job)?;
    let stdin = input::stdin_image_inputs(&mut paths, job.list_from_stdin())?;
    if stdin.is_some() && job.shard.is_some() {
        bail!("-: an image from standard input cannot be part of a sharded job");
    }
    Ok((paths, stdin))
}

/// Output names with the temporary file of an image from standard input shown as `-`.
fn stdin_named(names: Vec<String>, stdin: Option<&input::StdinImage>) -> Vec<String> {
    names
        .into_iter()
        .map(|n| input::stdin_shown(n, stdin))
        .collect()
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
    if args.inputs.is_empty() && args.job.input_list.is_none() {
        bail!("no images: give image files or folders, - for one image on standard input, or --inputs LIST (one path a line)");
    }
    let images_from_stdin =
        args.inputs.iter().any(|p| input::is_stdin(p)) || args.job.list_from_stdin();
    if images_from_stdin && args.labels_file.as_deref().is_some_and(input::is_stdin) {
        bail!("--labels-file -: standard input can feed only one of `-`, --inputs - and --labels-file -; give the labels in a file or with --labels");
    }
    let labels = read_labels(args)?;
    let style = prompt_style(&args.prompt.template, args.prompt.ensemble.as_deref())?;
    if args.top_k == Some(0) {
        bail!("--top-k must be at least 1");
    }
    compare::check_probability("--abstain", args.abstain)?;
    let shard = jobs::checked_shard(&args.job)?;
    jobs::check_output(args.output.as_deref(), false, shard, &args.job)?;
    let (paths, stdin) = gather_inputs(&args.inputs, &args.job)?;
    if stdin.is_some() && args.output.is_some() {
        bail!("-: an image from standard input cannot go into a resumable --output job");
    }
    let (clip, files) = load_model_and_files(&args.model)?;
    let opts = jobs::pipeline_options(&args.job, &clip, &files);
    warn_unknown_words(&clip, &labels)?;
    warn_one_label(&labels);
    let classifier = Classifier {
        labels: pipeline::label_set(&clip, &labels, &style, opts.cache.as_ref())?,
        scale: clip.logit_scale(),
        top_k: args.top_k,
        abstain: args.abstain,
    };
    if let Some(out) = &args.output {
        let mut settings = serde_json::json!({
            "labels": labels,
            "prompts": style.describe(),
            "top_k": args.top_k,
            "abstain": args.abstain,
        });
        with_model_precision(&mut settings, &clip);
        let job = jobs::Job::new(&clip, paths, shard, settings, args.job.earlier(), &opts);
        return job.classify_to_file(&classifier, out);
    }
    let (items, names) = jobs::expand(&paths, shard);
    let names = stdin_named(names, stdin.as_ref());
    tracing::info!(
        "classifying {} input(s) against {} labels with {} ({}, {})",
        items.len(),
        labels.len(),
        clip.name(),
        clip.device_name(),
        clip.precision()
    );
    let started = std::time::Instant::now();
    let mut results = Vec::with_capacity(items.len());
    pipeline::embed_expanded(&clip, items, &opts, |i, outcome| {
        let mut result = classifier.result(names[i].clone(), outcome);
        result.error = result.error.map(|e| input::stdin_shown(e, stdin.as_ref()));
        results.push(result);
        Ok::<(), anyhow::Error>(())
    })?;
    let failed = results.iter().any(|r| r.error.is_some());
    report_failures(results.iter().filter_map(|r| r.error.as_deref()));
    tracing::info!(
        "{} input(s) in {:.2} s ({} failed)",
        results.len(),
        started.elapsed().as_secs_f64(),
        results.iter().filter(|r| r.error.is_some()).count()
    );
    let report = ClassifyReport {
        model: clip.name().to_string(),
        prompts: Some(style.describe()),
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
    if args.images.is_empty() && args.job.input_list.is_none() {
        bail!("nothing to embed: give image files or folders, - for one image on standard input, --inputs LIST, or --text \"a cat,a dog\"");
    }
    let shard = jobs::checked_shard(&args.job)?;
    jobs::check_output(args.output.as_deref(), true, shard, &args.job)?;
    let (paths, stdin) = gather_inputs(&args.images, &args.job)?;
    if stdin.is_some() && args.output.is_some() {
        bail!("-: an image from standard input cannot go into a resumable --output job");
    }
    let (clip, files) = load_model_and_files(&args.model)?;
    let opts = jobs::pipeline_options(&args.job, &clip, &files);
    if let Some(out) = &args.output {
        let precision = match args.npy_dtype {
            Some(NpyDtype::F32) => Precision::F32,
            Some(NpyDtype::F16) => Precision::F16,
            // Before --npy-dtype, `--precision f16` chose f16 files: it still does.
            None if args.model.precision == clipscope::clip::Precision::F16 => Precision::F16,
            None => Precision::F32,
        };
        let mut settings = serde_json::json!({ "precision": precision });
        with_model_precision(&mut settings, &clip);
        let job = jobs::Job::new(&clip, paths, shard, settings, args.job.earlier(), &opts);
        return job.embed_to_dir(out, precision);
    }
    let (items, names) = jobs::expand(&paths, shard);
    let names = stdin_named(names, stdin.as_ref());
    let mut failed = false;
    let mut out = Vec::with_capacity(items.len());
    pipeline::embed_expanded(&clip, items, &opts, |i, outcome| {
        failed |= outcome.is_err();
        out.push(EmbedItem {
            image: Some(names[i].clone()),
            text: None,
            prompt: None,
            error: outcome
                .as_ref()
                .err()
                .map(|e| input::stdin_shown(e.to_string(), stdin.as_ref())),
            embedding: outcome.ok(),
        });
        Ok::<(), anyhow::Error>(())
    })?;
    report_failures(out.iter().filter_map(|i| i.error.as_deref()));
    write_embeddings(&clip, out, args.format)?;
    Ok(if failed { EXIT_SOME_FAILED } else { EXIT_OK })
}

fn embed_texts(args: &EmbedArgs, text: &str) -> Result<u8> {
    let style = PromptStyle::template(&args.template)?;
    let texts = parse_labels(text);
    if texts.is_empty() {
        bail!("--text: no texts given (separate them with commas; quote one that holds a comma)");
    }
    let clip = load_model(&args.model)?;
    // As for labels: texts of unknown words all get the same embedding.
    warn_unknown_words(&clip, &texts)?;
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
        scale::merge_embeddings(&args.parts, &args.output, args.force)?
    } else if args.parts.iter().all(|p| p.is_file()) {
        scale::merge_results(&args.parts, &args.output, args.force)?
    } else {
        bail!("give classify's result files or embed's output folders, not both");
    };
    println!(
        "merged {} into {}: {}, {} failed",
        clipscope::util::count(summary.shards, "shard"),
        args.output.display(),
        clipscope::util::count(summary.items, "input"),
        summary.failed
    );
    Ok(EXIT_OK)
}

fn preprocess_cmd(args: &PreprocessArgs) -> Result<u8> {
    let size = match (args.size, &args.model) {
        (Some(s), _) => s,
        (None, Some(name)) if name == hub::DEMO_MODEL => {
            clipscope::clip::config::ClipConfig::from_json(clipscope::clip::demo::DEMO_CONFIG_JSON)?
                .vision
                .image_size
        }
        (None, Some(name)) => Registry::builtin()?.find(name)?.image_size,
        (None, None) => Registry::builtin()?.default_model()?.image_size,
    };
    if !(1..=4096).contains(&size) {
        bail!("--size {size}: expected 1 to 4096");
    }
    let format = output_image_format(&args.output)?;
    input::expect_output_file("--output", &args.output, "crop.png")?;
    if args.image.is_dir() {
        bail!(
            "{}: a folder; preprocess takes one image file (classify and embed take folders)",
            args.image.display()
        );
    }
    // `-` reads the image from standard input, as `classify -` does.
    let mut image = [args.image.clone()];
    let stdin = input::stdin_image_inputs(&mut image, false)?;
    let img = load_image(&image[0])
        .map_err(|e| anyhow::anyhow!(input::stdin_shown(format!("{e:#}"), stdin.as_ref())))?;
    let crop = preprocess::center_crop_rgb(&img, size);
    let mut bytes = std::io::Cursor::new(Vec::new());
    encode_picture(&crop, format, &args.output, &mut bytes)
        .with_context(|| format!("cannot encode {}", args.output.display()))?;
    clipscope::util::write_atomic(&args.output, bytes.get_ref())
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(EXIT_OK)
}

/// `clipscope completions SHELL`: the script on standard output.
fn completions(shell: clap_complete::Shell) -> Result<u8> {
    use clap::CommandFactory;
    let mut cmd = args::Cli::command();
    clap_complete::generate(shell, &mut cmd, "clipscope", &mut std::io::stdout().lock());
    Ok(EXIT_OK)
}

/// `clipscope man`: the top page on standard output, or every command's page in a folder.
fn man(out_dir: Option<&std::path::Path>) -> Result<u8> {
    use clap::CommandFactory;
    let mut cmd = args::Cli::command().disable_help_subcommand(true);
    cmd.build();
    match out_dir {
        None => man_page(&cmd, &mut std::io::stdout().lock())?,
        Some(dir) => {
            clipscope::util::check_output_is_folder(dir, "folder").map_err(anyhow::Error::msg)?;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            write_man_pages(&cmd, dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
        }
    }
    Ok(EXIT_OK)
}

/// The sections every page ends with, which clap's help has no place for.
const MAN_TRAILER: &str = r#".SH "EXIT STATUS"
.TP
0
Every input was processed.
.TP
1
Some inputs failed (each has an error in its result; \fBeval\fR and \fBcompare\fR: test images skipped); the others were processed.
.TP
2
Usage error, or the model could not be found, downloaded or loaded, or a command that writes one result could not finish it.
.TP
130, 143, 129
Stopped by Ctrl-C (SIGINT), SIGTERM or SIGHUP: 128 plus the signal's number (training saves first; \fB--resume\fR continues).
.SH ENVIRONMENT
.TP
CLIPSCOPE_CACHE
Where models, prepared weights, embeddings and data sets are kept (default: the platform's cache folder).
.TP
HF_ENDPOINT
The Hugging Face mirror to download from (default: https://huggingface.co); HF_TOKEN, a token for it.
.TP
CLIPSCOPE_LOG
Log filter, as tracing's EnvFilter reads it (for example clipscope=debug); \fB-v\fR and \fB-q\fR set the level otherwise.
.TP
NO_COLOR
When set, no colours on the terminal.
.TP
CLIPSCOPE_DATA_URL, CLIPSCOPE_DATA_MD5
A mirror for the Imagenette archives (\fBdata fetch\fR, \fBstudy imagenette\fR), and the checksum its archive has.
.TP
CLIPSCOPE_AMX
0 keeps bf16 products off AMX tiles where the CPU has them.
.TP
RAYON_NUM_THREADS
Threads for the model's arithmetic (default: one per core).
.TP
SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX
Read by \fB--shard auto\fR: the task's place in a Slurm array or a Kubernetes indexed Job.
.SH "SEE ALSO"
The documentation in the repository's docs/ folder (docs/cli.md for scripts and exit statuses).
"#;

/// One command's page: clap's sections, then [`MAN_TRAILER`].
fn man_page(cmd: &clap::Command, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(cmd.clone()).render(out)?;
    out.write_all(MAN_TRAILER.as_bytes())
}

/// A page per command and subcommand in `dir`, named as man expects (`clipscope-train.1`).
fn write_man_pages(cmd: &clap::Command, dir: &std::path::Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub, dir)?;
    }
    let name = clap_mangen::Man::new(cmd.clone()).get_filename();
    let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join(name))?);
    man_page(cmd, &mut file)?;
    std::io::Write::flush(&mut file)
}

/// The format a picture is written in, from its file name's extension (PNG without one).
fn output_image_format(path: &std::path::Path) -> Result<image::ImageFormat> {
    use image::ImageFormat as F;
    let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
        return Ok(F::Png);
    };
    let netpbm_colour = ["ppm", "pnm", "pam"]
        .iter()
        .any(|e| ext.eq_ignore_ascii_case(e));
    match F::from_extension(ext) {
        Some(F::Pnm) if !netpbm_colour => bail!(
            "{}: cannot write .{ext} pictures (grey or black and white); use .ppm for Netpbm",
            path.display()
        ),
        Some(f @ (F::Png | F::Jpeg | F::Bmp | F::Tiff | F::Pnm | F::Qoi)) => Ok(f),
        _ => bail!(
            "{}: cannot write .{ext} pictures; use .png, .jpg, .bmp, .tif, .ppm or .qoi",
            path.display()
        ),
    }
}

/// `picture` encoded as `format`; Netpbm as a binary P6 pixmap, which every reader
/// takes, unless the file is named .pam (the image crate's default, P7).
fn encode_picture(
    picture: &image::RgbImage,
    format: image::ImageFormat,
    path: &std::path::Path,
    out: &mut std::io::Cursor<Vec<u8>>,
) -> image::ImageResult<()> {
    use image::codecs::pnm::{PnmEncoder, PnmSubtype, SampleEncoding};
    let pam = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("pam"));
    if format != image::ImageFormat::Pnm || pam {
        return picture.write_to(out, format);
    }
    PnmEncoder::new(out)
        .with_subtype(PnmSubtype::Pixmap(SampleEncoding::Binary))
        .encode(
            picture.as_raw().as_slice(),
            picture.width(),
            picture.height(),
            image::ExtendedColorType::Rgb8,
        )
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
    // A wrong --device is said here, on one line, not in the app's status bar.
    let device = args.device.unwrap_or_else(|| "auto".into());
    clipscope::clip::parse_device(&device)?;
    // A wrong --model too (downloading a right one is left to the app, which shows it).
    if let Some(name) = &args.model {
        check_model_name(name)?;
    }
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
        device,
        precision: args.precision,
        style,
        protocol,
        keymap: args.keymap.unwrap_or_else(|| "default".into()),
        abstain: args.abstain,
        report: args.report,
    })?;
    Ok(EXIT_OK)
}
