//! Command-line arguments (clap derive). The shapes here are a documented interface:
//! scripts and tests depend on them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clipscope::clip::Precision;

/// Zero-shot image classification with OpenAI's CLIP.
#[derive(Debug, Parser)]
#[command(name = "clipscope", version, about, long_about = None)]
pub struct Cli {
    /// More log output on stderr (-v: progress and timings, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Global options")]
    pub verbose: u8,
    /// Only errors on stderr: no warnings, no progress bars.
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,
    /// Limits on input images.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The command (see `clipscope help COMMAND`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Limits on what an input image may cost, checked before it is read or decoded.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Refuse image files larger than this (bytes, or with K, M or G).
    #[arg(long, global = true, value_name = "SIZE", default_value = "512M", value_parser = byte_size, help_heading = "Global options")]
    pub max_file_size: u64,
    /// Refuse images whose header claims more pixels than this (width x height), such
    /// as decompression bombs.
    #[arg(
        long,
        global = true,
        value_name = "N",
        default_value_t = 178_956_970,
        value_parser = clap::value_parser!(u64).range(1..),
        help_heading = "Global options"
    )]
    pub max_pixels: u64,
}

/// A size in bytes: `1000`, `64K`, `512M`, `2G` (powers of 1024).
fn byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                _ => return Err(format!("unknown unit {c:?}: use K, M or G")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("expected a size such as 512M, got {s:?}"))?;
    n.checked_mul(1u64 << shift)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?}: expected a size above 0 and below 16 exabytes"))
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the terminal app (the default when no command is given).
    Tui(TuiArgs),
    /// Classify images zero-shot against a list of labels.
    Classify(ClassifyArgs),
    /// Print L2-normalised embeddings of images or texts.
    Embed(EmbedArgs),
    /// Join the outputs of a sharded job into one, checking that no input is missing
    /// or repeated.
    Merge(MergeArgs),
    /// Write the exact picture the model sees (after resize and crop, before normalisation).
    Preprocess(PreprocessArgs),
    /// Fine-tune (or train from scratch) the CNN baseline on an image folder.
    Train(TrainArgs),
    /// Evaluate a trained CNN checkpoint on held-out images.
    Eval(EvalArgs),
    /// Classify images with a trained CNN checkpoint (from `train`); output as classify's.
    Predict(PredictArgs),
    /// Fine-tune a CLIP model on an image folder (classification) or a captions file.
    Finetune(FinetuneArgs),
    /// The built-in demo CLIP: train it from scratch, or measure it.
    Demo {
        /// What to do.
        #[command(subcommand)]
        action: DemoAction,
    },
    /// Data sets: fetch Imagenette, or make a synthetic shapes set.
    Data {
        /// What to do.
        #[command(subcommand)]
        action: DataAction,
    },
    /// Whole studies in one command: `study imagenette` fetches Imagenette, fine-tunes
    /// ResNet18, downloads CLIP and compares them.
    Study {
        /// Which study.
        #[command(subcommand)]
        action: StudyAction,
    },
    /// The comparison study: CLIP zero-shot against trained CNNs on the same test
    /// images, with a prompt study, linear probe, few-shot curve and open-set part.
    Compare(CompareArgs),
    /// Time the model's encoders (median over repeated runs) for comparison with PyTorch.
    Bench(BenchArgs),
    /// Print a shell completion script (e.g. `clipscope completions bash >
    /// ~/.local/share/bash-completion/completions/clipscope`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a folder.
    Man {
        /// Write clipscope.1 and clipscope-COMMAND.1 pages here instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// The same as --out-dir DIR.
        #[arg(value_name = "DIR", conflicts_with = "out_dir")]
        dir: Option<PathBuf>,
    },
    /// List or download the models clipscope knows by name (without an action: list).
    Models {
        /// What to do.
        #[command(subcommand)]
        action: Option<ModelsAction>,
    },
}

impl Command {
    /// Whether the command trains or evaluates networks batch after batch from start
    /// to end, the case `clipscope::util::use_one_heap` is for.
    pub fn trains_or_evaluates(&self) -> bool {
        matches!(
            self,
            Command::Train(_)
                | Command::Eval(_)
                | Command::Predict(_)
                | Command::Finetune(_)
                | Command::Compare(_)
                | Command::Demo { .. }
                | Command::Study { .. }
        )
    }
}

/// `models list` and `models download`.
#[derive(Debug, Subcommand)]
pub enum ModelsAction {
    /// Show the known models and whether each is downloaded.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
    /// Download a model into the cache (no-op if already there).
    Download {
        /// Model name, e.g. ViT-B/32, or a CNN's (resnet18, vgg16) for its ImageNet weights.
        #[arg(value_parser = ModelName::any(), hide_possible_values = true)]
        name: String,
    },
}

/// Formats of `models list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// A table that fits 100 columns.
    Text,
    /// JSON: the cache folder and one object per model.
    Json,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Readable text: a table (for `embed`, a summary line per input).
    Text,
    /// JSON (the documented schema).
    Json,
    /// CSV with a header row.
    Csv,
}

/// Output formats of commands that print a summary rather than a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SummaryFormat {
    /// Readable lines.
    Text,
    /// JSON (the documented schema).
    Json,
}

/// `--device`, for every command that runs a model.
#[derive(Clone, Debug, Args)]
pub struct DeviceArg {
    /// Compute device: auto (the first GPU in builds with the `cuda` feature when one is
    /// usable, else the CPU), cpu, or cuda[:N] (builds with the `cuda` feature). On a GPU
    /// the CNNs run on candle's operations instead of clipscope's CPU kernels (the same
    /// arithmetic, tested on the CPU).
    #[arg(long = "device", value_name = "DEVICE", default_value = "auto", value_hint = clap::ValueHint::Other)]
    pub spec: String,
}

impl DeviceArg {
    /// The device named, checked: a one-line error for a bad name or an unusable GPU.
    pub fn resolve(&self) -> Result<candle_core::Device, clipscope::clip::ClipError> {
        clipscope::clip::parse_device(&self.spec)
    }
}

/// A CLIP model's name: any text (checked against the registry when the model is
/// fetched, with a message listing the known ones), offering the registry's names to
/// shell completion rather than file names.
#[derive(Clone)]
struct ModelName {
    /// Whether the CNNs' names (resnet18, vgg16) are offered too.
    with_cnns: bool,
}

impl ModelName {
    /// CLIP models: the demo and the registry's.
    fn clip() -> Self {
        Self { with_cnns: false }
    }

    /// CLIP models and the CNNs whose ImageNet weights the registry has.
    fn any() -> Self {
        Self { with_cnns: true }
    }
}

impl clap::builder::TypedValueParser for ModelName {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        clap::builder::StringValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        let registry = clipscope::hub::Registry::builtin().ok()?;
        let cnns = registry.cnn.into_iter().map(|c| c.name);
        let names: Vec<String> = std::iter::once(clipscope::hub::DEMO_MODEL.to_string())
            .chain(registry.models.into_iter().map(|m| m.name))
            .chain(cnns.filter(|_| self.with_cnns))
            .collect();
        Some(Box::new(
            names.into_iter().map(clap::builder::PossibleValue::new),
        ))
    }
}

/// Where the model comes from.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A model by name from the registry (downloaded to the cache on first use), or
    /// `demo` (built in, offline: a toy for coloured shapes); `clipscope models` lists
    /// them. Default: ViT-B/32. For a model folder, --model-dir.
    #[arg(long, conflicts_with = "model_dir", value_parser = ModelName::clip(), hide_possible_values = true)]
    pub model: Option<String>,
    /// A Hugging Face style folder: config.json, model.safetensors, tokenizer.json.
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Number format of the dense layers: f32 (the reference's), bf16 (faster on AMD CPUs
    /// with AVX512-BF16; on AMX tiles where the CPU has them, not yet timed there;
    /// slower on other CPUs; on GPUs through cuBLAS; embeddings measured within 0.9999
    /// cosine of f32), or f16 (half the weights' memory; slower on the CPU).
    #[arg(long, default_value = "f32", value_name = "FORMAT", ignore_case = true, value_parser = precision_parser())]
    pub precision: Precision,
}

/// `--precision`'s values, listed for the help and shell completions.
fn precision_parser() -> impl clap::builder::TypedValueParser<Value = Precision> {
    use clap::builder::TypedValueParser;
    // Only the listed names reach the map, and each parses.
    clap::builder::PossibleValuesParser::new(Precision::NAMES)
        .map(|s| s.parse::<Precision>().unwrap_or_default())
}

/// How labels become prompts.
#[derive(Debug, Args)]
pub struct PromptArgs {
    /// Prompt template; `{}` is replaced by the label. `{}` alone uses the label as typed.
    #[arg(long, conflicts_with = "ensemble", default_value = "a photo of a {}.")]
    pub template: String,
    /// Average OpenAI's prompt ensemble in embedding space: imagenet80 or imagenet7.
    #[arg(long, value_name = "NAME", value_parser = ["imagenet80", "imagenet7"])]
    pub ensemble: Option<String>,
}

/// Inputs from a list, sharding, resuming, the embedding cache and decoding threads:
/// what `classify` and `embed` share for large jobs.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Read more inputs from a file, one path a line (`-`: standard input).
    #[arg(long = "inputs", value_name = "LIST")]
    pub input_list: Option<PathBuf>,
    /// Process only shard I of N (numbered from 0) of the inputs, or `auto`: the Slurm
    /// array task or Kubernetes completion index from the environment.
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<String>,
    /// The number of shards for `--shard auto` (needed on Kubernetes: the Job's
    /// completions; on Slurm it overrides SLURM_ARRAY_TASK_COUNT).
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "N",
        requires = "shard"
    )]
    pub shard_count: Option<usize>,
    /// Continue an unfinished --output (killed or preempted): keep the results there
    /// and process only the inputs without one.
    #[arg(long, requires = "output", conflicts_with = "force")]
    pub resume: bool,
    /// Start --output over, discarding the results an earlier run left there (without
    /// this or --resume such an output is refused).
    #[arg(long, requires = "output")]
    pub force: bool,
    /// Neither read nor write the on-disk embedding cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Threads that read and decode images while the model runs (0: decode between
    /// batches, nothing overlapped). Default: one per core, at most 8.
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub decode_threads: Option<usize>,
}

/// `clipscope classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Images, or folders to search for images (`-`: one image on standard input).
    #[arg(value_name = "IMAGE_OR_DIR")]
    pub inputs: Vec<PathBuf>,
    /// Labels separated by commas, e.g. "cat,dog,a red car"; quote a label that holds
    /// a comma: '"cat, sitting",dog'. Repeats are scored once.
    #[arg(long, conflicts_with = "labels_file")]
    pub labels: Option<String>,
    /// A file of labels, one a line, commas included (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub labels_file: Option<PathBuf>,
    /// How labels become prompts.
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Show only the N most probable labels per image.
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub top_k: Option<usize>,
    /// Answer "none of these" when the top probability is below P (0 to 1).
    #[arg(long, allow_negative_numbers = true, value_name = "P")]
    pub abstain: Option<f64>,
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output format (on standard output; --output always writes JSON lines).
    #[arg(long, value_enum, default_value_t = Format::Text, conflicts_with = "output")]
    pub format: Format,
    /// Write results to this JSON-lines file as they come, one result a line (the
    /// objects of the JSON format's `results`), with a manifest beside it.
    #[arg(long, short, value_name = "FILE.jsonl")]
    pub output: Option<PathBuf>,
    /// Large jobs: input lists, shards, resuming, the cache.
    #[command(flatten)]
    pub job: JobArgs,
}

/// Floats in embedding files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NpyDtype {
    /// 32-bit floats, as computed.
    F32,
    /// 16-bit floats: half the size.
    F16,
}

/// `clipscope embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Images, or folders to search for images (`-`: one image on standard input).
    #[arg(value_name = "IMAGE_OR_DIR")]
    pub images: Vec<PathBuf>,
    /// Texts to embed instead, separated by commas (quote one that holds a comma).
    #[arg(long, conflicts_with_all = ["images", "input_list", "output", "shard"])]
    pub text: Option<String>,
    /// Template applied to each text (`{}` alone: the text as given).
    #[arg(long, default_value = "{}")]
    pub template: String,
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output format on standard output: json, csv, or text (a short summary per
    /// input: its dimension and first values); not with --output, which writes files.
    #[arg(long, value_enum, default_value_t = Format::Json, conflicts_with = "output")]
    pub format: Format,
    /// Write image embeddings to this folder instead: per shard, an .npy of rows, a
    /// JSON-lines table of their images in the same order, the failed inputs, and a
    /// manifest.
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Floats in the .npy files. Default: f16 with `--precision f16`, else f32.
    #[arg(long, value_enum, requires = "output")]
    pub npy_dtype: Option<NpyDtype>,
    /// Large jobs: input lists, shards, resuming, the cache.
    #[command(flatten)]
    pub job: JobArgs,
}

/// `clipscope merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The shards' outputs: classify's JSON-lines files, or embed's folders.
    #[arg(required = true, value_name = "PART")]
    pub parts: Vec<PathBuf>,
    /// The merged output: a JSON-lines file for classify results, a folder for
    /// embeddings.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Replace an earlier merged output there.
    #[arg(long)]
    pub force: bool,
}

/// `clipscope preprocess`.
#[derive(Debug, Args)]
pub struct PreprocessArgs {
    /// The image (`-`: read it from standard input).
    pub image: PathBuf,
    /// Where to write the picture; the extension picks the format (.png, .jpg, .bmp,
    /// .tif, .ppm, .qoi; PNG when there is none).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Side of the square crop in pixels (default: the model's, 224 for ViT-B/32).
    #[arg(long, allow_negative_numbers = true, conflicts_with = "model")]
    pub size: Option<usize>,
    /// Use the input size of this registry model (nothing is downloaded).
    #[arg(long, value_parser = ModelName::clip(), hide_possible_values = true)]
    pub model: Option<String>,
}

/// `clipscope bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image-encoder batch sizes to time, separated by commas.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value = "1,16",
        value_delimiter = ','
    )]
    pub batch: Vec<usize>,
    /// Timed runs per measurement (the median is reported).
    #[arg(long, allow_negative_numbers = true, default_value_t = 10)]
    pub iters: usize,
    /// An image to time decoding and preprocessing on.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Output format: text, json or csv.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Graphics protocols for the terminal app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImageProtocolArg {
    /// Ask the terminal, falling back to half-blocks.
    Auto,
    /// Kitty graphics protocol.
    Kitty,
    /// Sixel.
    Sixel,
    /// iTerm2 inline images.
    Iterm2,
    /// Unicode half-blocks (works everywhere, also over SSH and in tmux).
    Halfblocks,
}

/// `clipscope tui`.
#[derive(Debug, Args, Default)]
pub struct TuiArgs {
    /// An image, or a folder whose first image is opened.
    #[arg(value_name = "IMAGE_OR_DIR")]
    pub input: Option<PathBuf>,
    /// Labels to start with, separated by commas.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub labels: String,
    /// A model by name from the registry, or `demo`. Default: ViT-B/32 when it is in the
    /// cache, else the built-in demo model (no download on a first start).
    #[arg(long, conflicts_with = "model_dir", value_parser = ModelName::clip(), hide_possible_values = true)]
    pub model: Option<String>,
    /// A Hugging Face style model folder.
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Compute device: auto (the first GPU in builds with the `cuda` feature when one is
    /// usable, else the CPU), cpu, or cuda[:N] (builds with the `cuda` feature). Default:
    /// auto.
    #[arg(long)]
    pub device: Option<String>,
    /// Number format of the dense layers: f32 (the reference's), bf16 (faster on AMD CPUs
    /// with AVX512-BF16; on AMX tiles where the CPU has them, not yet timed there;
    /// slower on other CPUs; on GPUs through cuBLAS), or f16 (slower on the CPU).
    #[arg(long, default_value = "f32", value_name = "FORMAT", ignore_case = true, value_parser = precision_parser())]
    pub precision: Precision,
    /// Prompt template; `{}` is replaced by the label.
    #[arg(long, conflicts_with = "ensemble")]
    pub template: Option<String>,
    /// Average OpenAI's prompt ensemble: imagenet80 or imagenet7.
    #[arg(long, value_name = "NAME", value_parser = ["imagenet80", "imagenet7"])]
    pub ensemble: Option<String>,
    /// How to draw images. `auto` asks the terminal (skipped when not on a terminal).
    #[arg(long, value_enum)]
    pub image_protocol: Option<ImageProtocolArg>,
    /// Key bindings: default, vim, or a keymap file such as keymaps/vim.toml (a keymap.toml
    /// in the config folder, ~/.config/clipscope/ on Linux, overrides keys).
    #[arg(long)]
    pub keymap: Option<String>,
    /// Answer "none of these" when the top probability is below P (0 to 1); the
    /// probabilities stay on screen.
    #[arg(long, allow_negative_numbers = true, value_name = "P", value_parser = probability)]
    pub abstain: Option<f64>,
    /// A study report folder (or its report.json, from `clipscope compare`) to open in
    /// the Results pane.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

/// A probability: a number from 0 to 1.
fn probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "{text:?} is not a probability from 0 to 1 (e.g. 0.5)"
        )),
    }
}

/// Optimisers for `train`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    /// SGD with momentum 0.9.
    Sgd,
    /// AdamW.
    Adamw,
}

/// `clipscope train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Image folder: ROOT/<class>/*.jpg, or with train/ and val/ inside (with --resume,
    /// the run's when left out).
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// A separate validation folder (same class folders).
    #[arg(long, value_name = "DIR")]
    pub val: Option<PathBuf>,
    /// Architecture: resnet18 (the default) or vgg16 (138 M parameters: on a CPU, best
    /// with --freeze-backbone).
    #[arg(long, value_parser = ["resnet18", "vgg16"])]
    pub model: Option<String>,
    /// Starting weights: imagenet (downloaded once), none (from scratch), or a
    /// safetensors file in torchvision naming.
    #[arg(long, default_value = "imagenet")]
    pub pretrained: String,
    /// Train only the classifier, on backbone features computed once.
    #[arg(long)]
    pub freeze_backbone: bool,
    /// Epochs in all (default: 10). With --resume, a larger number trains on.
    #[arg(long, allow_negative_numbers = true)]
    pub epochs: Option<usize>,
    /// Images per step (default: 32).
    #[arg(long, allow_negative_numbers = true)]
    pub batch_size: Option<usize>,
    /// Input side in pixels (default: 224).
    #[arg(long, allow_negative_numbers = true)]
    pub image_size: Option<usize>,
    /// Optimiser (default: sgd).
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    /// Peak learning rate (default: 0.01 for SGD, 0.001 for AdamW).
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Weight decay (default: 1e-4 for SGD, 0.01 for AdamW).
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f64>,
    /// Seed for initialisation, split, order and augmentation (default: the data
    /// folder's split manifest's, else 0).
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Fraction held out when the data has no validation split, at least one image of
    /// every class that has two (from 0 to below 1; default: the split manifest's, else
    /// 0.2).
    #[arg(long, allow_negative_numbers = true)]
    pub val_fraction: Option<f64>,
    /// Run folder for checkpoints and metrics.
    #[arg(long, value_name = "RUN_DIR")]
    pub output: PathBuf,
    /// Continue the run in --output from its checkpoint, with its settings (options
    /// left out take the run's; one given must equal it, but for --epochs).
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Start a new run in --output even though it holds one (its files are replaced).
    #[arg(long)]
    pub force: bool,
    /// Output format on standard output: a line per epoch, or at the end one JSON
    /// object with every epoch's metrics.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// `clipscope predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A run folder written by `clipscope train`.
    #[arg(long, value_name = "RUN_DIR")]
    pub checkpoint: PathBuf,
    /// Images, or folders to search for images (`-`: one image on standard input).
    #[arg(value_name = "IMAGE_OR_DIR")]
    pub inputs: Vec<PathBuf>,
    /// Show only the N most probable classes per image.
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub top_k: Option<usize>,
    /// Output format: text, json or csv (as classify's).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// `clipscope eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A run folder written by `clipscope train`.
    #[arg(long, value_name = "RUN_DIR")]
    pub checkpoint: PathBuf,
    /// Data folder: its val/, its split manifest's held-out images, or all its images.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Images per forward pass.
    #[arg(long, allow_negative_numbers = true, default_value_t = 64)]
    pub batch_size: usize,
    /// Output format: text, json or csv.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// Imagenette sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImagenetteSizeArg {
    /// Short side 160 px (about 99 MB).
    #[value(name = "160")]
    S160,
    /// Short side 320 px (about 342 MB).
    #[value(name = "320")]
    S320,
    /// Full size (about 1.56 GB).
    Full,
}

/// `clipscope data`.
#[derive(Debug, Subcommand)]
pub enum DataAction {
    /// Download and unpack a data set, checking its checksum.
    Fetch {
        /// The data set (imagenette).
        dataset: String,
        /// Imagenette's image size.
        #[arg(long, value_enum, default_value_t = ImagenetteSizeArg::S160)]
        size: ImagenetteSizeArg,
        /// Folder to unpack into.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
    /// Make captioned pictures of coloured shapes (the demo CLIP's kind of data): a
    /// captions.csv for `finetune --captions`, or class folders.
    Scenes {
        /// Folder to write into.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Number of pictures.
        #[arg(long, allow_negative_numbers = true, default_value_t = 200)]
        count: usize,
        /// How to lay them out: captions (captions.csv beside the pictures) or folders
        /// (DIR/<colour>-<shape>/, for train, finetune --data and compare).
        #[arg(long, value_enum, default_value_t = ScenesLayout::Captions)]
        layout: ScenesLayout,
        /// Seed.
        #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
        seed: u64,
        /// Replace a set already in --to (its generated pictures, captions and split are
        /// removed first; other files are left).
        #[arg(long)]
        force: bool,
    },
    /// Make a synthetic four-class shapes set (circle, cross, square, triangle).
    Shapes {
        /// Folder to write ROOT/<shape>/*.png into.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Images per class.
        #[arg(long, allow_negative_numbers = true, default_value_t = 75)]
        per_class: usize,
        /// Image side in pixels.
        #[arg(long, allow_negative_numbers = true, default_value_t = 96)]
        size: u32,
        /// Seed.
        #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
        seed: u64,
        /// Replace a set already in --to (its generated pictures and split are removed
        /// first; other files are left).
        #[arg(long)]
        force: bool,
    },
}

/// How `data scenes` lays out its pictures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScenesLayout {
    /// Pictures plus captions.csv (`image,caption`).
    Captions,
    /// One folder per colour-shape combination.
    Folders,
}

/// `clipscope finetune`.
#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// Image folder for classification: ROOT/<class>/*, or with train/ and val/ inside.
    #[arg(long, value_name = "DIR", conflicts_with = "captions")]
    pub data: Option<PathBuf>,
    /// A separate validation folder (same class folders).
    #[arg(long, value_name = "DIR", requires = "data")]
    pub val: Option<PathBuf>,
    /// A CSV of image,caption rows (paths relative to the file) for contrastive training.
    #[arg(long, value_name = "FILE")]
    pub captions: Option<PathBuf>,
    /// Prompt template for the classification head's initial weights (default: "a photo
    /// of a {}.").
    #[arg(long)]
    pub template: Option<String>,
    /// The model to start from.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Which weights learn: all, projections, layernorms, or last:N (the last N blocks of
    /// each tower with the final LayerNorms and projections). Default: all.
    #[arg(long, value_parser = parse_trainable, value_hint = clap::ValueHint::Other)]
    pub trainable: Option<clipscope::clip::train::Trainable>,
    /// Epochs in all (default: 5). With --resume, a larger number trains on.
    #[arg(long, allow_negative_numbers = true)]
    pub epochs: Option<usize>,
    /// Images per step (default: 32).
    #[arg(long, allow_negative_numbers = true)]
    pub batch_size: Option<usize>,
    /// Peak learning rate, AdamW (default: 1e-5 when whole blocks learn, 1e-3 for
    /// projections or layernorms only).
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Weight decay on weight matrices (default: 0.1).
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f64>,
    /// Fraction of the steps spent warming the learning rate up (default: 0.1).
    #[arg(long, allow_negative_numbers = true)]
    pub warmup: Option<f64>,
    /// Seed for the split, the order and the flips (default: the data folder's split
    /// manifest's, else 0).
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Fraction held out when the data has no validation split, at least one image of
    /// every class that has two (from 0 to below 1; default: the split manifest's, else
    /// 0.2).
    #[arg(long, allow_negative_numbers = true)]
    pub val_fraction: Option<f64>,
    /// Do not flip training pictures left-right (flips are on for classification, off
    /// for captions, which may say "left" or "right").
    #[arg(long)]
    pub no_flip: bool,
    /// WiSE-FT: save (1 - A) * zero-shot + A * fine-tuned weights (0 gives the zero-shot
    /// model back exactly; 1, the default, the fine-tuned one).
    #[arg(long, allow_negative_numbers = true, value_name = "A")]
    pub wise_alpha: Option<f64>,
    /// The model folder to write (config.json, model.safetensors, tokenizer.json, ...).
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Continue the run in --output (or re-export it with another --wise-alpha), with its
    /// settings (options left out take the run's; one given must equal it, but for
    /// --epochs and --wise-alpha).
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Replace whatever is in --output.
    #[arg(long)]
    pub force: bool,
    /// Output format of the final summary.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
}

fn parse_trainable(s: &str) -> Result<clipscope::clip::train::Trainable, String> {
    s.parse()
}

/// `clipscope demo train`: the defaults are the recipe of the shipped model.
#[derive(Debug, Args)]
pub struct DemoTrainArgs {
    /// Folder to write the model into (the shipped one is models/demo).
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Optimiser steps.
    #[arg(long, allow_negative_numbers = true, default_value_t = 2400)]
    pub steps: usize,
    /// Image-caption pairs per step.
    #[arg(long, allow_negative_numbers = true, default_value_t = 64)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1e-3)]
    pub lr: f64,
    /// Linear warm-up steps before the cosine decay.
    #[arg(long, allow_negative_numbers = true, default_value_t = 100)]
    pub warmup: usize,
    /// Steps on easy pictures (large, centred, upright, clean) before the full mix.
    #[arg(long, allow_negative_numbers = true, default_value_t = 600)]
    pub easy_steps: usize,
    /// Start the vision tower's position embeddings as a 2-D sine-cosine grid (still
    /// learnt) instead of random values, so that patches know where they are from the
    /// first step.
    #[arg(long)]
    pub sincos_positions: bool,
    /// Add each caption again with its shape swapped for N other shapes (at most 5), as
    /// hard negatives (NegCLIP): colour alone then cannot match a picture to its caption.
    #[arg(long, allow_negative_numbers = true, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u8).range(0..=5))]
    pub shape_negatives: u8,
    /// Seed for the weights and the generated data.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate on fresh pictures every this many steps (0: only at the end).
    #[arg(long, allow_negative_numbers = true, default_value_t = 300)]
    pub eval_every: usize,
    /// Replace a model already in --output.
    #[arg(long)]
    pub force: bool,
}

/// `clipscope demo`.
#[derive(Debug, Subcommand)]
pub enum DemoAction {
    /// Train the demo CLIP from scratch on generated captioned shapes (the defaults are
    /// the shipped model's recipe: about half an hour on two cores).
    Train(DemoTrainArgs),
    /// Measure a demo-style model: top-1 on the twelve colour-shape labels ("a red
    /// circle", ... with template {}) on freshly generated pictures, the held-out
    /// combinations, and optionally class folders drawn by another program. The model
    /// is the built-in demo unless --model or --model-dir names another.
    Eval {
        /// The model (default: the built-in demo).
        #[command(flatten)]
        model: ModelArgs,
        /// Pictures per label.
        #[arg(long, allow_negative_numbers = true, default_value_t = 50)]
        per_label: usize,
        /// Seed of the fresh pictures.
        #[arg(long, allow_negative_numbers = true, default_value_t = 1000)]
        seed: u64,
        /// Also score class folders named <colour>-<shape> (e.g. red-circle/, as `data
        /// scenes --layout folders` makes): among the twelve labels when all are of them,
        /// else among every colour-shape combination.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// `clipscope study`.
#[derive(Debug, Subcommand)]
pub enum StudyAction {
    /// Fetch Imagenette, fine-tune the ImageNet-pretrained ResNet18 on its training
    /// images, get CLIP (ViT-B/32 by default) and compare both on its validation images,
    /// with the prompt study and the linear probe. Run it again to continue: what is
    /// downloaded, unpacked or trained is kept.
    Imagenette(ImagenetteStudyArgs),
}

/// `clipscope study imagenette`.
#[derive(Debug, Args)]
pub struct ImagenetteStudyArgs {
    /// The study's folder: the training run (resnet18-frozen/ or resnet18-full/) and
    /// report.json.
    #[arg(long, value_name = "OUT_DIR")]
    pub output: PathBuf,
    /// Imagenette's image size.
    #[arg(long, value_enum, default_value_t = ImagenetteSizeArg::S160)]
    pub size: ImagenetteSizeArg,
    /// Where Imagenette is or goes: a folder holding the archive or its unpacked
    /// folder, or the unpacked folder itself. Default: `data/` in the cache folder.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The CLIP model by name from the registry (downloaded on first use).
    #[arg(long, default_value = "ViT-B/32", conflicts_with = "model_dir", value_parser = ModelName::clip(), hide_possible_values = true)]
    pub model: String,
    /// The CLIP model from a Hugging Face style folder instead.
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Fine-tune all of ResNet18's layers (default: only the classifier, on features
    /// computed once).
    #[arg(long)]
    pub full: bool,
    /// Training epochs.
    #[arg(long, allow_negative_numbers = true, default_value_t = 10)]
    pub epochs: usize,
    /// Images per training step.
    #[arg(long, allow_negative_numbers = true, default_value_t = 32)]
    pub batch_size: usize,
    /// The CNN's input side in pixels (default: 160 with --size 160, else 224).
    #[arg(long, allow_negative_numbers = true)]
    pub image_size: Option<usize>,
    /// Peak learning rate (SGD with momentum 0.9, cosine schedule).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.01)]
    pub lr: f64,
    /// ResNet18 ImageNet weights in torchvision naming (safetensors) instead of
    /// downloading them.
    #[arg(long, value_name = "FILE")]
    pub cnn_weights: Option<PathBuf>,
    /// Seed for training, the bootstrap, the probe and the few-shot draws.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub seed: u64,
    /// Skip the linear probe and few-shot curve (they embed every training image).
    #[arg(long)]
    pub no_probe: bool,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Output format of the summary on standard output (the full report is in the
    /// output folder's report.json either way).
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
}

/// `clipscope compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Test images: class folders, or a data set with val/ or a split manifest (then its
    /// held-out images).
    #[arg(long, value_name = "TEST_DIR")]
    pub data: PathBuf,
    /// A CNN run folder written by `clipscope train` (repeat for several).
    #[arg(long = "cnn", value_name = "RUN_DIR")]
    pub cnn: Vec<PathBuf>,
    /// A CLIP model by registry name, or `demo` (repeat for several). Without --model and
    /// --model-dir: the registry's default model.
    #[arg(long = "model", value_name = "NAME", value_parser = ModelName::clip(), hide_possible_values = true)]
    pub models: Vec<String>,
    /// A Hugging Face style CLIP folder (repeat for several).
    #[arg(long = "model-dir", value_name = "DIR")]
    pub model_dirs: Vec<PathBuf>,
    /// Training images for the linear probe and the few-shot curve.
    #[arg(long, value_name = "TRAIN_DIR")]
    pub train: Option<PathBuf>,
    /// A file of `folder,name` lines: the names CLIP's prompts use for those classes.
    #[arg(long, value_name = "FILE")]
    pub classes: Option<PathBuf>,
    /// Images of classes the CNNs never saw (class folders), for the open-set part.
    #[arg(long, value_name = "DIR")]
    pub open_set: Option<PathBuf>,
    /// Answer "none of these" below this top probability (0 to 1); the open-set part
    /// uses 0.5 when it is not given.
    #[arg(long, allow_negative_numbers = true, value_name = "P")]
    pub abstain: Option<f64>,
    /// Seed for the bootstrap, the probe's validation split and the few-shot draws.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub seed: u64,
    /// Bootstrap resamples for the 95% confidence intervals.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Labelled images per class for the few-shot curve, separated by commas.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value = "1,2,4,8,16",
        value_delimiter = ','
    )]
    pub shots: Vec<usize>,
    /// Random draws per point of the few-shot curve.
    #[arg(long, allow_negative_numbers = true, default_value_t = 5)]
    pub few_shot_seeds: usize,
    /// Folder for report.json, report.md, predictions.csv and the plots.
    #[arg(long, value_name = "OUT_DIR")]
    pub output: PathBuf,
    /// Replace the report of an earlier comparison in --output.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Output format of the summary on standard output (the full report is in the
    /// output folder's report.json either way).
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
}
