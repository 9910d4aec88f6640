//! Fine-tuning a CLIP model: the loop behind `clipscope finetune`.
//!
//! Two tasks. **Classification** on an image folder: a linear head over normalised image
//! embeddings, initialised from the text embeddings of the class prompts and scaled by
//! the model's temperature, so that before the first step the model classifies exactly
//! as zero-shot CLIP does; the image tower learns under cross entropy (the text tower is
//! not used after the head is made). **Contrastive** on a captions file: CLIP's own loss
//! on image-caption pairs, both towers learning.
//!
//! The result is a Hugging Face style model folder (`config.json`, `model.safetensors`,
//! `tokenizer.json`, plus `head.safetensors` and `head.json` for a classification head)
//! that every command takes with `--model-dir`. With `wise_alpha` the saved weights are
//! WiSE-FT's interpolation (Wortsman et al. 2022, "Robust fine-tuning of zero-shot
//! models"): `(1 - alpha) * zero-shot + alpha * fine-tuned`, head included; 0 gives the
//! zero-shot model back exactly. Checkpoints are written atomically after every epoch
//! and when stopped; `resume` continues a run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::model::{l2_normalize, ClipModel};
use super::preprocess::{center_crop_rgb, normalize_chw, PreprocessConfig};
use super::tokenizer::{id_batch, ClipTokenizer, Tokens};
use super::train::{
    clip_logits, contrastive_loss, interpolate, safetensors_bytes, ClipOptimizer, Params, Trainable,
};
use super::zeroshot::PromptStyle;
use super::{ClipError, ModelFiles};
use crate::cnn::optim::{cosine_lr, Optimizer, OptimizerKind, Param};
use crate::cnn::rng::Rng;
use crate::data::{load_image, load_split};

/// The run record inside an output folder.
pub const RUN_JSON: &str = "finetune.json";
/// The classification head's weights.
pub const HEAD_SAFETENSORS: &str = "head.safetensors";
/// The classification head's classes and prompts.
pub const HEAD_JSON: &str = "head.json";
/// Where resumable state lives inside an output folder.
const CHECKPOINT_DIR: &str = "checkpoint";
/// The head's weight name.
const HEAD_WEIGHT: &str = "classifier.weight";

/// What to fine-tune on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Task {
    /// An image folder (`ROOT/<class>/*`, or with `train/` and `val/`).
    Classify {
        /// The folder.
        data: PathBuf,
        /// A separate validation folder.
        val: Option<PathBuf>,
        /// How class names become prompts for the head's initial weights.
        template: String,
    },
    /// A CSV of `image,caption` rows (paths relative to the file's folder).
    Captions {
        /// The file.
        file: PathBuf,
    },
}

impl Task {
    /// The task with its paths made absolute, as the run's record keeps them (a later
    /// `--resume` from another folder then finds the same data).
    fn absolute(&self) -> Task {
        use crate::util::absolute;
        match self {
            Task::Classify {
                data,
                val,
                template,
            } => Task::Classify {
                data: absolute(data),
                val: val.as_deref().map(absolute),
                template: template.clone(),
            },
            Task::Captions { file } => Task::Captions {
                file: absolute(file),
            },
        }
    }
}

/// Everything a fine-tuning run needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneConfig {
    /// What to train on.
    pub task: Task,
    /// Which weights learn.
    #[serde(with = "trainable_text")]
    pub trainable: Trainable,
    /// Epochs.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Weight decay on matrices.
    pub weight_decay: f64,
    /// Fraction of the steps spent warming up.
    pub warmup_fraction: f64,
    /// Seed for the split, order and flips.
    pub seed: u64,
    /// Fraction held out when the data has no validation split.
    pub val_fraction: f64,
    /// Flip training images left-right at random.
    pub flip: bool,
    /// WiSE-FT's mixing weight for the saved model (1: as fine-tuned).
    pub wise_alpha: f64,
}

mod trainable_text {
    use super::Trainable;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Trainable, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Trainable, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Metrics of one epoch (epoch 0: the model before training).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch; 0 for the starting point.
    pub epoch: usize,
    /// Mean training loss (none for epoch 0).
    pub train_loss: Option<f64>,
    /// Held-out loss (none without held-out examples).
    pub val_loss: Option<f64>,
    /// Held-out top-1 (classification) or caption retrieval top-1 within batches
    /// (contrastive).
    pub val_top1: Option<f64>,
    /// Seconds spent training.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
}

/// The record written to `finetune.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// The model fine-tuned from.
    pub base_model: String,
    /// The settings.
    pub config: FinetuneConfig,
    /// Class names (folder names) for a classification run.
    pub classes: Vec<String>,
    /// Training and held-out examples.
    pub train_examples: usize,
    /// Held-out examples.
    pub val_examples: usize,
    /// Unreadable files skipped.
    pub skipped: usize,
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimiser steps taken.
    pub steps: u64,
    /// Where a stop left the current epoch, if it stopped mid-epoch.
    pub partial: Option<PartialEpoch>,
    /// Metrics per epoch, epoch 0 first.
    pub metrics: Vec<EpochRecord>,
}

impl RunRecord {
    /// Refuse to resume this run from a model other than the one it started from
    /// (`name` as [`crate::hub::source_name`] gives it, or a folder).
    pub fn check_base_model(&self, name: &str) -> Result<(), FinetuneError> {
        let same = self.base_model == name
            || crate::util::same_path(Path::new(&self.base_model), Path::new(name));
        if same {
            return Ok(());
        }
        Err(FinetuneError::Config(format!(
            "--resume: the run was fine-tuned from the model {}, not {name}; give that model (--model or --model-dir), or start a new run in another --output",
            self.base_model
        )))
    }
}

/// How far a stopped epoch got: resuming skips its first `steps` batches (same order,
/// same flips), so a stopped and resumed run ends where an uninterrupted one does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// The epoch.
    pub epoch: usize,
    /// Batches done.
    pub steps: usize,
    /// Sum of the batches' losses times their sizes.
    pub loss_sum: f64,
    /// Examples seen.
    pub seen: usize,
    /// Seconds spent.
    pub seconds: f64,
}

/// The classes and prompts of a classification head (`head.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HeadInfo {
    /// Folder names, in the head's row order.
    pub classes: Vec<String>,
    /// Readable class names (WordNet ids resolved), in the same order.
    pub names: Vec<String>,
    /// The template the head's initial rows were made with.
    pub template: String,
    /// The scale applied to cosine similarities (the model's temperature, fixed).
    pub logit_scale: f32,
}

/// Progress reports.
#[derive(Clone, Debug)]
pub enum FinetuneEvent {
    /// A line for the log.
    Log(String),
    /// Data decoded; training starts.
    Ready {
        /// Training examples.
        train: usize,
        /// Held-out examples.
        val: usize,
        /// Steps per epoch.
        steps_per_epoch: usize,
        /// First epoch to run.
        first_epoch: usize,
    },
    /// One optimiser step.
    Step {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step in the epoch.
        step: usize,
        /// The batch's loss.
        loss: f64,
        /// Learning rate used.
        lr: f64,
        /// Images per second in this epoch.
        images_per_sec: f64,
    },
    /// An epoch's metrics (epoch 0: before training).
    Epoch(EpochRecord),
    /// The model folder was written.
    Saved(PathBuf),
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct FinetuneOutcome {
    /// The run record.
    pub record: RunRecord,
    /// Whether it stopped before the last epoch.
    pub stopped: bool,
}

/// What can go wrong fine-tuning.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// The model could not be read.
    #[error(transparent)]
    Clip(#[from] ClipError),
    /// The data could not be used.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The settings are unusable, or clash with the run in the output folder.
    #[error("{0}")]
    Config(String),
    /// A captions file is malformed.
    #[error("{path}: line {line}: {message}")]
    Captions {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A tensor computation failed.
    #[error("fine-tuning computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FinetuneError + '_ {
    move |source| FinetuneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Decoded, preprocessed examples: the model's exact input pictures (before
/// normalisation), with a class index or a caption each.
struct Examples {
    crops: Vec<RgbImage>,
    classes: Vec<u32>,
    captions: Vec<String>,
}

impl Examples {
    fn len(&self) -> usize {
        self.crops.len()
    }
}

/// Decode and preprocess `paths` in parallel; unreadable files are skipped (counted).
fn decode(paths: &[PathBuf], size: usize) -> (Vec<Option<RgbImage>>, usize) {
    let crops: Vec<Option<RgbImage>> = paths
        .par_iter()
        .map(|p| {
            load_image(p)
                .map_err(|e| tracing::warn!("skipped: {e}"))
                .ok()
                .map(|img| center_crop_rgb(&img, size))
        })
        .collect();
    let skipped = crops.iter().filter(|c| c.is_none()).count();
    (crops, skipped)
}

fn examples_of(
    paths: &[PathBuf],
    classes: Vec<u32>,
    captions: Vec<String>,
    size: usize,
) -> (Examples, usize) {
    let (crops, skipped) = decode(paths, size);
    let mut out = Examples {
        crops: Vec::new(),
        classes: Vec::new(),
        captions: Vec::new(),
    };
    for (i, crop) in crops.into_iter().enumerate() {
        if let Some(c) = crop {
            out.crops.push(c);
            if let Some(&k) = classes.get(i) {
                out.classes.push(k);
            }
            if let Some(t) = captions.get(i) {
                out.captions.push(t.clone());
            }
        }
    }
    (out, skipped)
}

/// Read a captions CSV: `image,caption` rows, an optional header naming those columns,
/// paths relative to the file's folder.
pub fn read_captions(file: &Path) -> Result<Vec<(PathBuf, String)>, FinetuneError> {
    let base = file.parent().unwrap_or(Path::new("."));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(file)
        .map_err(|e| FinetuneError::Captions {
            path: file.to_path_buf(),
            line: 0,
            message: e.to_string(),
        })?;
    let mut out = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let bad = |message: String| FinetuneError::Captions {
            path: file.to_path_buf(),
            line: i + 1,
            message,
        };
        let row = row.map_err(|e| bad(e.to_string()))?;
        if i == 0 && row.get(0) == Some("image") && row.get(1) == Some("caption") {
            continue;
        }
        if row.len() != 2 {
            return Err(bad(format!(
                "expected 2 fields (image,caption; quote captions that hold commas), found {}",
                row.len()
            )));
        }
        let caption = row[1].trim();
        if caption.is_empty() {
            return Err(bad("empty caption".into()));
        }
        out.push((base.join(row[0].trim()), caption.to_string()));
    }
    if out.is_empty() {
        return Err(FinetuneError::Captions {
            path: file.to_path_buf(),
            line: 0,
            message: "no image,caption rows".into(),
        });
    }
    Ok(out)
}

/// The pixels of some crops, normalised, `(n, 3, S, S)`, flipped where asked.
fn pixel_batch(
    crops: &[&RgbImage],
    flips: &[bool],
    pp: &PreprocessConfig,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let s = pp.image_size;
    let data: Vec<f32> = crops
        .par_iter()
        .zip(flips)
        .flat_map_iter(|(c, &flip)| {
            if flip {
                normalize_chw(&image::imageops::flip_horizontal(*c), pp)
            } else {
                normalize_chw(c, pp)
            }
        })
        .collect();
    Tensor::from_vec(data, (crops.len(), 3, s, s), device)
}

/// The head: `scale * norm(image) · Wᵀ`.
struct Head {
    weight: Var,
    scale: f32,
}

impl Head {
    fn logits(&self, image_f: &Tensor) -> candle_core::Result<Tensor> {
        l2_normalize(image_f)?.matmul(&self.weight.as_tensor().t()?)? * f64::from(self.scale)
    }
}

/// Everything that turns examples into model inputs.
struct Ctx<'a> {
    tokenizer: &'a ClipTokenizer,
    pp: &'a PreprocessConfig,
    device: &'a Device,
    context: usize,
}

impl Ctx<'_> {
    fn tokens(&self, texts: &[&String]) -> Result<Vec<Tokens>, ClipError> {
        texts.iter().map(|t| self.tokenizer.encode(t)).collect()
    }

    /// Loss and correct count of one batch.
    fn batch_loss(
        &self,
        model: &ClipModel,
        head: Option<&Head>,
        ex: &Examples,
        idx: &[usize],
        flips: &[bool],
    ) -> Result<(Tensor, usize), FinetuneError> {
        let crops: Vec<&RgbImage> = idx.iter().map(|&i| &ex.crops[i]).collect();
        let pixels = pixel_batch(&crops, flips, self.pp, self.device)?;
        let image_f = model.image_features(&pixels)?;
        match head {
            Some(h) => {
                let logits = h.logits(&image_f)?;
                let y: Vec<u32> = idx.iter().map(|&i| ex.classes[i]).collect();
                let y = Tensor::new(y, self.device)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
                Ok((loss, correct(&logits, &y)?))
            }
            None => {
                let texts: Vec<&String> = idx.iter().map(|&i| &ex.captions[i]).collect();
                let (ids, eot) = id_batch(&self.tokens(&texts)?, 0, self.context, self.device)?;
                let logits = clip_logits(
                    &image_f,
                    &model.text_features(&ids, &eot)?,
                    model.logit_scale_tensor(),
                )?;
                // Identical captions in a batch describe each other's pictures too.
                let n = texts.len();
                let same: Vec<f32> = (0..n * n)
                    .map(|k| f32::from(u8::from(texts[k / n] == texts[k % n])))
                    .collect();
                let positives = Tensor::from_vec(same, (n, n), self.device)?;
                let loss = contrastive_loss(&logits, Some(&positives))?;
                let y = Tensor::new((0..n as u32).collect::<Vec<_>>(), self.device)?;
                Ok((loss, correct(&logits, &y)?))
            }
        }
    }

    /// Held-out loss and top-1, without gradients.
    fn evaluate(
        &self,
        model: &ClipModel,
        head: Option<&Head>,
        ex: &Examples,
        batch: usize,
    ) -> Result<(Option<f64>, Option<f64>), FinetuneError> {
        let n = ex.len();
        if n == 0 {
            return Ok((None, None));
        }
        let (mut loss_sum, mut hits) = (0.0, 0usize);
        let order: Vec<usize> = (0..n).collect();
        for idx in order.chunks(batch.max(2)) {
            let flips = vec![false; idx.len()];
            let (loss, c) = self.batch_loss(model, head, ex, idx, &flips)?;
            loss_sum += f64::from(loss.detach().to_scalar::<f32>()?) * idx.len() as f64;
            hits += c;
        }
        Ok((Some(loss_sum / n as f64), Some(hits as f64 / n as f64)))
    }
}

fn correct(logits: &Tensor, y: &Tensor) -> candle_core::Result<usize> {
    Ok(logits
        .argmax(D::Minus1)?
        .eq(y)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize)
}

fn validate(cfg: &FinetuneConfig) -> Result<(), FinetuneError> {
    let bad = |m: &str| Err(FinetuneError::Config(m.to_string()));
    if cfg.epochs == 0 {
        return bad("--epochs must be at least 1");
    }
    if cfg.batch_size < 2 {
        return bad("--batch-size must be at least 2");
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return bad("--lr must be a positive number");
    }
    if !(cfg.weight_decay >= 0.0 && cfg.weight_decay.is_finite()) {
        return bad("--weight-decay must be zero or positive");
    }
    if !(0.0..=1.0).contains(&cfg.wise_alpha) {
        return bad("--wise-alpha must be between 0 and 1");
    }
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        return bad("--val-fraction must be at least 0 and below 1");
    }
    if !(0.0..1.0).contains(&cfg.warmup_fraction) {
        return bad("--warmup must be at least 0 and below 1");
    }
    Ok(())
}

/// The training and held-out examples of a task, and the head's classes.
struct Data {
    train: Examples,
    val: Examples,
    classes: Vec<String>,
    names: Vec<String>,
    skipped: usize,
}

fn load_data(cfg: &FinetuneConfig, size: usize) -> Result<Data, FinetuneError> {
    match &cfg.task {
        Task::Classify { data, val, .. } => {
            let split = load_split(data, val.as_deref(), cfg.seed, cfg.val_fraction)?;
            let part = |set: &crate::data::Dataset| {
                let paths: Vec<PathBuf> = set.samples.iter().map(|s| s.path.clone()).collect();
                let labels = set.samples.iter().map(|s| s.label as u32).collect();
                examples_of(&paths, labels, Vec::new(), size)
            };
            let (train, st) = part(&split.train);
            let (val_ex, sv) = part(&split.val);
            Ok(Data {
                train,
                val: val_ex,
                names: split.train.display_names(),
                classes: split.train.classes,
                skipped: st + sv,
            })
        }
        Task::Captions { file } => {
            let mut rows = read_captions(file)?;
            Rng::new(cfg.seed).shuffle(&mut rows);
            let n_val = ((rows.len() as f64) * cfg.val_fraction).round() as usize;
            let n_val = n_val.min(rows.len().saturating_sub(2));
            let (val_rows, train_rows) = rows.split_at(n_val);
            let part = |rows: &[(PathBuf, String)]| {
                let paths: Vec<PathBuf> = rows.iter().map(|r| r.0.clone()).collect();
                let caps = rows.iter().map(|r| r.1.clone()).collect();
                examples_of(&paths, Vec::new(), caps, size)
            };
            let (train, st) = part(train_rows);
            let (val_ex, sv) = part(val_rows);
            Ok(Data {
                train,
                val: val_ex,
                classes: Vec::new(),
                names: Vec::new(),
                skipped: st + sv,
            })
        }
    }
}

/// Whether a weight learns: as `--trainable` says, except that classification never
/// uses the text tower or the temperature (the head's scale is fixed), so they stay
/// frozen there.
fn learns(cfg: &FinetuneConfig, name: &str, config: &super::config::ClipConfig) -> bool {
    let classify = matches!(cfg.task, Task::Classify { .. });
    if classify && (name.starts_with("text_") || name == "logit_scale") {
        return false;
    }
    cfg.trainable.includes(name, config)
}

/// Refuse to overwrite a run unless asked; check a resumed run matches.
fn check_output(
    output: &Path,
    resume: bool,
    force: bool,
) -> Result<Option<RunRecord>, FinetuneError> {
    if resume {
        return read_record(output).map(Some);
    }
    crate::util::check_run_folder(output, resume, force).map_err(FinetuneError::Config)?;
    Ok(None)
}

/// The record (`finetune.json`) of the fine-tuning run in `output`: what `--resume`
/// continues.
pub fn read_record(output: &Path) -> Result<RunRecord, FinetuneError> {
    let record = output.join(RUN_JSON);
    let text = std::fs::read_to_string(&record).map_err(|e| {
        FinetuneError::Config(format!(
            "--resume: cannot read {} ({e}); start a new run without --resume",
            record.display()
        ))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| FinetuneError::Config(format!("--resume: {}: {e}", record.display())))
}

/// A resumed run must keep its base model, its data and its settings but for the
/// number of epochs and WiSE-FT's alpha: the optimiser's state and the schedule belong
/// to them, and the zero-shot end of WiSE-FT's mix is the base model.
fn check_resumable(
    base: &ModelFiles,
    cfg: &FinetuneConfig,
    prior: &RunRecord,
) -> Result<(), FinetuneError> {
    let p = &prior.config;
    let refuse = |flag: &str, run: String, asked: String, hint: &str| {
        Err(FinetuneError::Config(format!(
            "--resume: the run was trained with {flag} {run}, not {asked}; give the run's own{hint}, or start a new run in another --output"
        )))
    };
    // Settings the CLI fills in from the run when left out; data flags it cannot.
    let differs = |flag: &str, run: String, asked: String| {
        refuse(flag, run, asked, &format!(" (or leave {flag} out)"))
    };
    let data_differs = |flag: &str, run: String, asked: String| refuse(flag, run, asked, "");
    prior.check_base_model(&base.name)?;
    let show = |p: &Path| p.display().to_string();
    let show_opt = |p: Option<&Path>| p.map_or("none".into(), show);
    match (&p.task, &cfg.task) {
        (
            Task::Classify {
                data,
                val,
                template,
            },
            Task::Classify {
                data: data2,
                val: val2,
                template: template2,
            },
        ) => {
            if !crate::util::same_path(data, data2) {
                return data_differs("--data", show(data), show(data2));
            }
            if !crate::util::same_optional_path(val.as_deref(), val2.as_deref()) {
                return data_differs("--val", show_opt(val.as_deref()), show_opt(val2.as_deref()));
            }
            if template != template2 {
                return differs(
                    "--template",
                    format!("{template:?}"),
                    format!("{template2:?}"),
                );
            }
        }
        (Task::Captions { file }, Task::Captions { file: file2 }) => {
            if !crate::util::same_path(file, file2) {
                return data_differs("--captions", show(file), show(file2));
            }
        }
        (Task::Classify { data, .. }, Task::Captions { .. }) => {
            return data_differs("--data", show(data), "--captions".into());
        }
        (Task::Captions { file }, Task::Classify { .. }) => {
            return data_differs("--captions", show(file), "--data".into());
        }
    }
    if p.trainable != cfg.trainable {
        return differs(
            "--trainable",
            p.trainable.to_string(),
            cfg.trainable.to_string(),
        );
    }
    let numbers = [
        ("--batch-size", p.batch_size as f64, cfg.batch_size as f64),
        ("--lr", p.lr, cfg.lr),
        ("--weight-decay", p.weight_decay, cfg.weight_decay),
        ("--warmup", p.warmup_fraction, cfg.warmup_fraction),
        ("--val-fraction", p.val_fraction, cfg.val_fraction),
    ];
    for (flag, run, asked) in numbers {
        if run != asked {
            return differs(flag, run.to_string(), asked.to_string());
        }
    }
    if p.seed != cfg.seed {
        return differs("--seed", p.seed.to_string(), cfg.seed.to_string());
    }
    if p.flip != cfg.flip {
        let (was, how) = if p.flip {
            ("with flips", "leave out --no-flip")
        } else {
            ("with --no-flip", "give --no-flip")
        };
        return Err(FinetuneError::Config(format!(
            "--resume: the run was trained {was}; {how}, or start a new run in another --output"
        )));
    }
    Ok(())
}

/// Fine-tune the model in `base` as `cfg` says, writing the result to `output`.
pub fn finetune(
    base: &ModelFiles,
    cfg: &FinetuneConfig,
    output: &Path,
    resume: bool,
    force: bool,
    stop: &AtomicBool,
    on: &mut dyn FnMut(FinetuneEvent),
) -> Result<FinetuneOutcome, FinetuneError> {
    crate::util::retain_freed_memory();
    let outcome = run(base, cfg, output, resume, force, stop, on);
    crate::util::trim_freed_memory();
    outcome
}

#[allow(clippy::too_many_arguments)]
fn run(
    base: &ModelFiles,
    cfg: &FinetuneConfig,
    output: &Path,
    resume: bool,
    force: bool,
    stop: &AtomicBool,
    on: &mut dyn FnMut(FinetuneEvent),
) -> Result<FinetuneOutcome, FinetuneError> {
    validate(cfg)?;
    let prior = check_output(output, resume, force)?;
    if let Some(p) = &prior {
        check_resumable(base, cfg, p)?;
    }
    let device = Device::Cpu;
    let config = base.config.clone();
    let tokenizer = base.tokenizer()?;
    let pp = base.preprocess.clone();
    let ctx = Ctx {
        tokenizer: &tokenizer,
        pp: &pp,
        device: &device,
        context: config.text.max_positions,
    };
    on(FinetuneEvent::Log("decoding images…".into()));
    let data = load_data(cfg, pp.image_size)?;
    if data.train.len() < 2 {
        return Err(FinetuneError::Config(
            "fewer than two readable training images".into(),
        ));
    }
    if prior.is_none() {
        // A new run in a folder that held one (--force): a classifier head left from
        // the last run would be taken for this run's by `compare` and `classify`.
        // Removed only now that the new run has its data, so a run that fails before
        // this leaves the old one whole.
        // A CNN run's record goes too, so that `eval` no longer scores the old CNN here.
        for name in [
            HEAD_SAFETENSORS,
            HEAD_JSON,
            crate::cnn::checkpoint::CHECKPOINT_JSON,
        ] {
            let _ = std::fs::remove_file(output.join(name));
        }
    }
    if let Some(p) = &prior {
        if p.classes != data.classes {
            return Err(FinetuneError::Config(format!(
                "--resume: the classes in {} differ from the run's",
                output.display()
            )));
        }
    }

    // The zero-shot weights stay untouched for WiSE-FT; a second copy learns.
    let zero_shot = base.params(&device)?;
    let ckpt = output.join(CHECKPOINT_DIR);
    let params = match &prior {
        Some(_) => Params::load(&ckpt.join("weights.safetensors"), &config, &device)?,
        None => base.params(&device)?,
    };
    let learns = |name: &str| learns(cfg, name, &config);
    let model = params.model(&learns)?;

    let (head, zero_shot_head, head_info) = match &cfg.task {
        Task::Classify { template, .. } => {
            let style = PromptStyle::template(template)?;
            let zs_model = zero_shot.model(&|_| false)?;
            let w0 = class_embeddings(&zs_model, &ctx, &data.names, &style)?;
            let scale = zero_shot
                .get("logit_scale")
                .map(|v| v.as_tensor().to_scalar::<f32>())
                .transpose()?
                .unwrap_or(0.0)
                .exp();
            let w = match &prior {
                Some(_) => {
                    let saved =
                        candle_core::safetensors::load(ckpt.join(HEAD_SAFETENSORS), &device)?;
                    saved.get(HEAD_WEIGHT).cloned().ok_or_else(|| {
                        FinetuneError::Config(format!(
                            "{}: no head in the checkpoint",
                            ckpt.display()
                        ))
                    })?
                }
                None => w0.clone(),
            };
            let info = HeadInfo {
                classes: data.classes.clone(),
                names: data.names.clone(),
                template: template.clone(),
                logit_scale: scale,
            };
            (
                Some(Head {
                    weight: Var::from_tensor(&w)?,
                    scale,
                }),
                Some(w0),
                Some(info),
            )
        }
        Task::Captions { .. } => (None, None, None),
    };

    let steps_per_epoch = data.train.len().div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let warmup = (total as f64 * cfg.warmup_fraction) as usize;
    let mut opt = ClipOptimizer::new(&params, &learns, cfg.lr, cfg.weight_decay);
    let mut head_opt = head.as_ref().map(|h| {
        Optimizer::new(
            OptimizerKind::Adamw,
            vec![Param {
                name: HEAD_WEIGHT.into(),
                var: h.weight.clone(),
            }],
            cfg.lr,
            0.0,
        )
    });
    let mut record = match prior {
        Some(p) => {
            let state =
                candle_core::safetensors::load(ckpt.join("optimizer.safetensors"), &device)?;
            opt.restore(state.clone(), p.steps)?;
            if let Some(o) = head_opt.as_mut() {
                o.restore(state, p.steps)?;
            }
            RunRecord {
                config: FinetuneConfig {
                    epochs: cfg.epochs,
                    wise_alpha: cfg.wise_alpha,
                    ..p.config.clone()
                },
                ..p
            }
        }
        None => RunRecord {
            base_model: base.name.clone(),
            config: FinetuneConfig {
                task: cfg.task.absolute(),
                ..cfg.clone()
            },
            classes: data.classes.clone(),
            train_examples: data.train.len(),
            val_examples: data.val.len(),
            skipped: data.skipped,
            epochs_done: 0,
            steps: 0,
            partial: None,
            metrics: Vec::new(),
        },
    };
    if record.metrics.is_empty() {
        let (val_loss, val_top1) =
            ctx.evaluate(&model, head.as_ref(), &data.val, cfg.batch_size)?;
        let m = EpochRecord {
            epoch: 0,
            train_loss: None,
            val_loss,
            val_top1,
            seconds: 0.0,
            images_per_sec: 0.0,
        };
        on(FinetuneEvent::Epoch(m.clone()));
        record.metrics.push(m);
    }
    let first_epoch = record.epochs_done + 1;
    if record
        .partial
        .as_ref()
        .is_some_and(|p| p.epoch != first_epoch)
    {
        record.partial = None;
    }
    on(FinetuneEvent::Ready {
        train: data.train.len(),
        val: data.val.len(),
        steps_per_epoch,
        first_epoch,
    });
    let saver = Saver {
        base,
        output,
        zero_shot: &zero_shot,
        zero_shot_head: zero_shot_head.as_ref(),
        head_info: head_info.as_ref(),
    };
    let mut stopped = false;
    for epoch in first_epoch..=cfg.epochs {
        let mut order: Vec<usize> = (0..data.train.len()).collect();
        Rng::new(cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9)).shuffle(&mut order);
        let mut flip_rng = Rng::new(cfg.seed.wrapping_add(epoch as u64 * 7919));
        let resumed = record.partial.take().filter(|p| p.epoch == epoch);
        let (mut loss_sum, mut seen, done_before, seconds_before) = resumed
            .map_or((0.0, 0, 0, 0.0), |p| {
                (p.loss_sum, p.seen, p.steps, p.seconds)
            });
        let started = Instant::now();
        // A batch of one gives the contrastive loss nothing to contrast: leave it out.
        let chunks: Vec<&[usize]> = order
            .chunks(cfg.batch_size)
            .filter(|c| c.len() >= 2)
            .collect();
        for (s, idx) in chunks.iter().enumerate() {
            let flips: Vec<bool> = idx
                .iter()
                .map(|_| cfg.flip && flip_rng.uniform() < 0.5)
                .collect();
            if s < done_before {
                continue;
            }
            let lr = cosine_lr(cfg.lr, (epoch - 1) * steps_per_epoch + s, total, warmup);
            opt.set_lr(lr);
            if let Some(o) = head_opt.as_mut() {
                o.set_lr(lr);
            }
            let loss = crate::util::on_worker(|| -> Result<_, FinetuneError> {
                let (loss, _) = ctx.batch_loss(&model, head.as_ref(), &data.train, idx, &flips)?;
                let grads = loss.backward()?;
                opt.step(&grads)?;
                if let Some(o) = head_opt.as_mut() {
                    o.step(&grads)?;
                }
                Ok(loss)
            })?;
            if head.is_none() {
                params.clamp_logit_scale()?;
            }
            let l = f64::from(loss.to_scalar::<f32>()?);
            loss_sum += l * idx.len() as f64;
            seen += idx.len();
            let seconds = seconds_before + started.elapsed().as_secs_f64();
            on(FinetuneEvent::Step {
                epoch,
                step: s + 1,
                loss: l,
                lr,
                images_per_sec: seen as f64 / seconds.max(1e-9),
            });
            if stop.load(Ordering::Relaxed) && s + 1 < chunks.len() {
                record.partial = Some(PartialEpoch {
                    epoch,
                    steps: s + 1,
                    loss_sum,
                    seen,
                    seconds,
                });
                stopped = true;
                break;
            }
        }
        record.steps = opt.steps();
        if stopped {
            saver.save(
                &params,
                head.as_ref(),
                &opt,
                head_opt.as_ref(),
                &mut record,
                cfg.wise_alpha,
            )?;
            on(FinetuneEvent::Log(format!(
                "stopped during epoch {epoch}; saved; --resume continues where it stopped"
            )));
            on(FinetuneEvent::Saved(output.to_path_buf()));
            break;
        }
        let seconds = seconds_before + started.elapsed().as_secs_f64();
        let (val_loss, val_top1) =
            ctx.evaluate(&model, head.as_ref(), &data.val, cfg.batch_size)?;
        let m = EpochRecord {
            epoch,
            train_loss: Some(loss_sum / seen.max(1) as f64),
            val_loss,
            val_top1,
            seconds,
            images_per_sec: seen as f64 / seconds.max(1e-9),
        };
        on(FinetuneEvent::Epoch(m.clone()));
        record.metrics.push(m);
        record.epochs_done = epoch;
        saver.save(
            &params,
            head.as_ref(),
            &opt,
            head_opt.as_ref(),
            &mut record,
            cfg.wise_alpha,
        )?;
        on(FinetuneEvent::Saved(output.to_path_buf()));
        if stop.load(Ordering::Relaxed) && epoch < cfg.epochs {
            stopped = true;
            on(FinetuneEvent::Log(format!(
                "stopped after epoch {epoch}; saved; --resume continues"
            )));
            break;
        }
    }
    if first_epoch > cfg.epochs {
        // Nothing left to train: write the model again (a new --wise-alpha, say).
        saver.save(
            &params,
            head.as_ref(),
            &opt,
            head_opt.as_ref(),
            &mut record,
            cfg.wise_alpha,
        )?;
        on(FinetuneEvent::Saved(output.to_path_buf()));
    }
    Ok(FinetuneOutcome { record, stopped })
}

/// Normalised text embeddings of each class's prompt, `(classes, projection_dim)`.
fn class_embeddings(
    model: &ClipModel,
    ctx: &Ctx,
    names: &[String],
    style: &PromptStyle,
) -> Result<Tensor, FinetuneError> {
    let prompts: Vec<String> = names.iter().flat_map(|n| style.prompts(n)).collect();
    let refs: Vec<&String> = prompts.iter().collect();
    let (ids, eot) = id_batch(&ctx.tokens(&refs)?, 0, ctx.context, ctx.device)?;
    Ok(l2_normalize(&model.text_features(&ids, &eot)?)?.detach())
}

/// Writes the model folder and the checkpoint.
struct Saver<'a> {
    base: &'a ModelFiles,
    output: &'a Path,
    zero_shot: &'a Params,
    zero_shot_head: Option<&'a Tensor>,
    head_info: Option<&'a HeadInfo>,
}

impl Saver<'_> {
    fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), FinetuneError> {
        crate::util::write_atomic(path, bytes).map_err(io_err(path))
    }

    fn tensors(&self, path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), FinetuneError> {
        let bytes = safetensors_bytes(tensors)?;
        self.write(path, &bytes)
    }

    /// Checkpoint (the fine-tuned weights as they are, optimiser moments) and the model
    /// folder (WiSE-FT's mix at `alpha`), then the run record last. The checkpoint is
    /// written beside the previous one and swapped in only when complete, with the run
    /// record ready: a failed save (a full disk) leaves the previous checkpoint usable.
    fn save(
        &self,
        params: &Params,
        head: Option<&Head>,
        opt: &ClipOptimizer,
        head_opt: Option<&Optimizer>,
        record: &mut RunRecord,
        alpha: f64,
    ) -> Result<(), FinetuneError> {
        let result = self
            .stage(params, head, opt, head_opt, record, alpha)
            .and_then(|()| self.swap_in());
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(self.staged_checkpoint());
            let _ = std::fs::remove_file(self.staged_record());
            let kept = if self.output.join(CHECKPOINT_DIR).is_dir() {
                "the previous checkpoint is intact: free some space and continue with --resume"
            } else {
                "the folder holds no checkpoint yet"
            };
            return Err(FinetuneError::Config(format!(
                "{}: the checkpoint was not saved ({}); {kept}",
                self.output.display(),
                crate::util::error_line(&e)
            )));
        }
        Ok(())
    }

    /// Where a save's checkpoint is written before it replaces the previous one.
    fn staged_checkpoint(&self) -> PathBuf {
        self.output.join(format!("{CHECKPOINT_DIR}.new"))
    }

    /// Where a save's run record is written before it replaces the previous one.
    fn staged_record(&self) -> PathBuf {
        self.output.join(format!("{RUN_JSON}.new"))
    }

    /// Every file of a save, with the checkpoint and the run record staged.
    fn stage(
        &self,
        params: &Params,
        head: Option<&Head>,
        opt: &ClipOptimizer,
        head_opt: Option<&Optimizer>,
        record: &mut RunRecord,
        alpha: f64,
    ) -> Result<(), FinetuneError> {
        let staged = &self.staged_checkpoint();
        let _ = std::fs::remove_dir_all(staged);
        std::fs::create_dir_all(staged).map_err(io_err(staged))?;
        self.tensors(
            &staged.join("weights.safetensors"),
            &params.tensors(DType::F32)?,
        )?;
        let mut state = opt.state();
        if let Some(o) = head_opt {
            state.extend(o.state());
        }
        self.tensors(&staged.join("optimizer.safetensors"), &state)?;
        let mixed = params.interpolated(self.zero_shot, alpha)?;
        self.tensors(&self.output.join("model.safetensors"), &mixed)?;
        if let (Some(h), Some(w0), Some(info)) = (head, self.zero_shot_head, self.head_info) {
            let w = h.weight.as_tensor();
            self.tensors(
                &staged.join(HEAD_SAFETENSORS),
                &HashMap::from([(HEAD_WEIGHT.to_string(), w.clone())]),
            )?;
            let mixed_head = interpolate(w0, w, alpha)?;
            self.tensors(
                &self.output.join(HEAD_SAFETENSORS),
                &HashMap::from([(HEAD_WEIGHT.to_string(), mixed_head)]),
            )?;
            let text = serde_json::to_string_pretty(info)
                .map_err(|e| FinetuneError::Config(e.to_string()))?;
            self.write(&self.output.join(HEAD_JSON), text.as_bytes())?;
        }
        self.base
            .write_support_files(self.output)
            .map_err(FinetuneError::Clip)?;
        record.config.wise_alpha = alpha;
        let text = serde_json::to_string_pretty(record)
            .map_err(|e| FinetuneError::Config(e.to_string()))?;
        self.write(&self.staged_record(), text.as_bytes())
    }

    /// Renames only (no space needed): the staged checkpoint replaces the previous one,
    /// then the run record that names its step.
    fn swap_in(&self) -> Result<(), FinetuneError> {
        let (staged, record_tmp) = (self.staged_checkpoint(), self.staged_record());
        let ckpt = self.output.join(CHECKPOINT_DIR);
        let old = self.output.join(format!("{CHECKPOINT_DIR}.old"));
        let _ = std::fs::remove_dir_all(&old);
        if ckpt.is_dir() {
            std::fs::rename(&ckpt, &old).map_err(io_err(&ckpt))?;
        }
        if let Err(e) = std::fs::rename(staged, &ckpt) {
            let _ = std::fs::rename(&old, &ckpt);
            return Err(io_err(&ckpt)(e));
        }
        let record = self.output.join(RUN_JSON);
        std::fs::rename(record_tmp, &record).map_err(io_err(&record))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }
}

/// A classification head saved beside a fine-tuned model, if the folder has one.
pub fn load_head(dir: &Path, device: &Device) -> Result<Option<(HeadInfo, Tensor)>, ClipError> {
    let (json, weights) = (dir.join(HEAD_JSON), dir.join(HEAD_SAFETENSORS));
    if !json.is_file() || !weights.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&json).map_err(|source| ClipError::Io {
        path: json.clone(),
        source,
    })?;
    let info: HeadInfo = serde_json::from_str(&text)
        .map_err(|e| ClipError::Config(format!("{}: {e}", json.display())))?;
    let tensors =
        candle_core::safetensors::load(&weights, device).map_err(|e| ClipError::Weights {
            path: weights.clone(),
            message: e.to_string(),
        })?;
    let w = tensors
        .get(HEAD_WEIGHT)
        .cloned()
        .ok_or_else(|| ClipError::Weights {
            path: weights.clone(),
            message: format!("missing tensor {HEAD_WEIGHT}"),
        })?;
    if w.dims2().map(|d| d.0).ok() != Some(info.classes.len()) {
        return Err(ClipError::Weights {
            path: weights,
            message: format!(
                "{HEAD_WEIGHT} does not have one row per class of {}",
                json.display()
            ),
        });
    }
    Ok(Some((info, w)))
}
