//! Training ResNet18 on an image folder: the loop that `clipscope train` and the app's
//! Train pane both run. Progress is reported through a callback; a stop flag (Ctrl-C,
//! or the app's Stop) makes it save a checkpoint and return.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarMap;
use image::RgbImage;
use rayon::prelude::*;

use super::augment::{self, IMAGENET_MEAN, IMAGENET_STD};
use super::checkpoint::{self, CheckpointMeta, DataRecord, EpochMetrics, RunConfig};
use super::network::{Arch, Network};
use super::optim::{cosine_lr, Optimizer, OptimizerKind, Param};
use super::rng::Rng;
use crate::data::{load_image, load_split, Dataset};

/// Where the starting weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Pretrained {
    /// Random initialisation (torchvision's scheme, seeded).
    None,
    /// A safetensors file in torchvision/timm naming (ImageNet weights, say); the
    /// classifier is replaced.
    File {
        /// The file.
        path: PathBuf,
        /// How to record it (`imagenet`, or the path).
        label: String,
    },
}

/// Everything a training run needs.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Architecture.
    pub arch: Arch,
    /// Data folder (`root/<class>/...`, or with `train/` and `val/`).
    pub data: PathBuf,
    /// A separate validation folder.
    pub val: Option<PathBuf>,
    /// Starting weights.
    pub pretrained: Pretrained,
    /// Train only the classifier, on features computed once.
    pub freeze_backbone: bool,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Input side in pixels.
    pub image_size: usize,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Seed for initialisation, split, order and augmentation.
    pub seed: u64,
    /// Run folder for checkpoints and logs.
    pub output: PathBuf,
    /// Continue from the checkpoint in `output`.
    pub resume: bool,
    /// Fraction held out when the data has no validation split.
    pub val_fraction: f64,
    /// Random-resized-crop scale range.
    pub crop_scale: (f64, f64),
    /// Where the network trains: the CPU (its own kernels) or a GPU (candle's operations).
    pub device: Device,
}

/// Progress reports.
#[derive(Clone, Debug)]
pub enum TrainEvent {
    /// Images decoded and the run set up.
    Ready {
        /// Class names.
        classes: Vec<String>,
        /// Training images.
        train: usize,
        /// Held-out images.
        val: usize,
        /// Unreadable files skipped.
        skipped: usize,
        /// First epoch to run (1-based).
        first_epoch: usize,
        /// Steps per epoch.
        steps_per_epoch: usize,
    },
    /// A free-form line for the log.
    Log(String),
    /// One optimiser step.
    Step {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// Steps per epoch.
        steps: usize,
        /// The batch's loss.
        loss: f64,
        /// The batch's accuracy.
        acc: f64,
        /// Learning rate used.
        lr: f64,
        /// Throughput over the epoch so far.
        images_per_sec: f64,
    },
    /// An epoch finished.
    Epoch(EpochMetrics),
    /// A checkpoint was written.
    Saved(PathBuf),
}

/// What can go wrong training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The data could not be used.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// Weights could not be loaded.
    #[error("pretrained weights: {0}")]
    Weights(String),
    /// A tensor computation failed.
    #[error("training computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// Metrics of every completed epoch (earlier runs included when resumed).
    pub metrics: Vec<EpochMetrics>,
    /// Whether it was stopped before the last epoch.
    pub stopped: bool,
    /// The checkpoint record.
    pub checkpoint: PathBuf,
}

/// Decoded images, short side resized for crops of the run's size.
struct Cached {
    images: Vec<RgbImage>,
    labels: Vec<u32>,
}

fn decode(set: &Dataset, side: u32) -> (Cached, usize) {
    let decoded: Vec<Option<(RgbImage, u32)>> = set
        .samples
        .par_iter()
        .map(|s| {
            load_image(&s.path)
                .map_err(|e| tracing::warn!("skipped: {e}"))
                .ok()
                .map(|img| {
                    (
                        augment::resize_short_side(&img.to_rgb8(), side),
                        s.label as u32,
                    )
                })
        })
        .collect();
    let skipped = decoded.iter().filter(|d| d.is_none()).count();
    let (images, labels) = decoded.into_iter().flatten().unzip();
    (Cached { images, labels }, skipped)
}

fn accuracy_count(logits: &Tensor, labels: &Tensor) -> candle_core::Result<f64> {
    let pred = logits.argmax(D::Minus1)?;
    pred.eq(labels)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()
}

fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// Loss and accuracy of `model` on centre crops (or cached features when frozen).
fn validate(
    model: &Network,
    inputs: &Inputs,
    batch: usize,
    device: &Device,
) -> candle_core::Result<(f64, f64)> {
    let n = inputs.len();
    if n == 0 {
        return Ok((f64::NAN, f64::NAN));
    }
    let (mut loss_sum, mut correct) = (0.0, 0.0);
    for start in (0..n).step_by(batch) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let (x, y) = inputs.batch(&idx, None, device)?;
        let logits = match inputs {
            Inputs::Features { .. } => model.head(&x)?,
            Inputs::Images { .. } => model.forward_t(&x, false)?,
        };
        loss_sum += scalar(&candle_nn::loss::cross_entropy(&logits, &y)?)? * idx.len() as f64;
        correct += accuracy_count(&logits, &y)?;
    }
    Ok((loss_sum / n as f64, correct / n as f64))
}

/// Training or validation inputs: images (cropped per batch) or cached features.
enum Inputs {
    Images {
        cached: Cached,
        size: u32,
        crop_scale: (f64, f64),
    },
    Features {
        features: Tensor,
        labels: Vec<u32>,
    },
}

impl Inputs {
    fn len(&self) -> usize {
        match self {
            Inputs::Images { cached, .. } => cached.labels.len(),
            Inputs::Features { labels, .. } => labels.len(),
        }
    }

    /// A batch; `augment` carries the RNG for random crops (None: centre crops).
    fn batch(
        &self,
        idx: &[usize],
        augment: Option<&mut Rng>,
        device: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        match self {
            Inputs::Images {
                cached,
                size,
                crop_scale,
            } => {
                let crops: Vec<RgbImage> = match augment {
                    Some(rng) => idx
                        .iter()
                        .map(|&i| {
                            augment::random_resized_crop_flip(
                                &cached.images[i],
                                *size,
                                *crop_scale,
                                rng,
                            )
                        })
                        .collect(),
                    None => idx
                        .iter()
                        .map(|&i| augment::center_crop(&cached.images[i], *size))
                        .collect(),
                };
                let labels: Vec<u32> = idx.iter().map(|&i| cached.labels[i]).collect();
                Ok((
                    augment::to_tensor(&crops, device)?,
                    Tensor::new(labels, device)?,
                ))
            }
            Inputs::Features { features, labels } => {
                let ids = Tensor::new(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), device)?;
                let y: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
                Ok((features.index_select(&ids, 0)?, Tensor::new(y, device)?))
            }
        }
    }
}

/// Pooled features of every cached image (centre crops, backbone in evaluation mode).
fn extract_features(
    model: &Network,
    cached: Cached,
    size: u32,
    device: &Device,
) -> candle_core::Result<Inputs> {
    let mut feats = Vec::new();
    for chunk in cached.images.chunks(64) {
        let crops: Vec<RgbImage> = chunk
            .iter()
            .map(|i| augment::center_crop(i, size))
            .collect();
        feats.push(
            model
                .features(&augment::to_tensor(&crops, device)?, false)?
                .detach(),
        );
    }
    let features = if feats.is_empty() {
        Tensor::zeros((0, model.arch().feature_dim()), DType::F32, device)?
    } else {
        Tensor::cat(&feats, 0)?
    };
    Ok(Inputs::Features {
        features,
        labels: cached.labels,
    })
}

fn trainable(map: &VarMap, arch: Arch, head_only: bool) -> Vec<Param> {
    let data = match map.data().lock() {
        Ok(d) => d,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut params: Vec<Param> = data
        .iter()
        .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
        .filter(|(name, _)| !head_only || arch.is_head(name))
        .map(|(name, var)| Param {
            name: name.clone(),
            var: var.clone(),
        })
        .collect();
    params.sort_by(|a, b| a.name.cmp(&b.name));
    params
}

/// Refuse settings training cannot use (before any data is read or downloaded).
pub fn validate_config(cfg: &TrainConfig) -> Result<(), TrainError> {
    let bad = |m: &str| Err(TrainError::Config(m.to_string()));
    if cfg.epochs == 0 {
        return bad("--epochs must be at least 1");
    }
    if cfg.batch_size == 0 {
        return bad("--batch-size must be at least 1");
    }
    if !(16..=1024).contains(&cfg.image_size) {
        return bad("--image-size must be between 16 and 1024");
    }
    if let Err(why) = cfg.arch.check_image_size(cfg.image_size as u32) {
        return bad(&why);
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return bad("--lr must be a positive number");
    }
    if !(cfg.weight_decay >= 0.0 && cfg.weight_decay.is_finite()) {
        return bad("--weight-decay must be zero or positive");
    }
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        return bad("--val-fraction must be at least 0 and below 1");
    }
    Ok(())
}

/// Warns about settings that train but cannot give a useful model: one class (nothing
/// to tell apart), or ResNet18 with one image per step (batch normalisation then
/// normalises each channel by a single image's statistics).
fn warn_degenerate(cfg: &TrainConfig, classes: usize) {
    if classes < 2 {
        tracing::warn!(
            "{}: only one class folder; the model learns nothing it can tell apart (add a folder per class)",
            cfg.data.display()
        );
    }
    if cfg.batch_size == 1 && cfg.arch == Arch::Resnet18 && !cfg.freeze_backbone {
        tracing::warn!(
            "--batch-size 1: ResNet18's batch normalisation needs several images per step; expect a poor model (use 8 or more)"
        );
    }
}

/// A resumed run must keep its settings but for the number of epochs: the saved state
/// (moments, step count, learning-rate schedule) belongs to that optimiser, those
/// parameters, that batch size and that learning rate, and the checkpoint's record (image
/// size, data) is what `eval`, `predict` and `compare` use afterwards.
pub fn check_resumable(cfg: &TrainConfig, prior: &CheckpointMeta) -> Result<(), TrainError> {
    let saved = &prior.config;
    let differs = |flag: &str, run: String, asked: String| {
        Err(TrainError::Config(format!(
            "{}: the run was trained with {flag} {run}, not {asked}; resume with the same (or leave {flag} out), or start a new run in another folder",
            cfg.output.display()
        )))
    };
    if saved.model != cfg.arch.name() {
        return differs("--model", saved.model.clone(), cfg.arch.name().into());
    }
    if saved.optimizer != cfg.optimizer {
        let name = |o: OptimizerKind| format!("{o:?}").to_lowercase();
        return differs("--optimizer", name(saved.optimizer), name(cfg.optimizer));
    }
    if saved.freeze_backbone != cfg.freeze_backbone {
        let was = if saved.freeze_backbone {
            "with"
        } else {
            "without"
        };
        return Err(TrainError::Config(format!(
            "{}: the run was trained {was} --freeze-backbone; resume {was} it, or start a new run in another folder",
            cfg.output.display()
        )));
    }
    if saved.seed != cfg.seed {
        return differs("--seed", saved.seed.to_string(), cfg.seed.to_string());
    }
    let numbers = [
        (
            "--image-size",
            prior.image_size as f64,
            cfg.image_size as f64,
        ),
        (
            "--batch-size",
            saved.batch_size as f64,
            cfg.batch_size as f64,
        ),
        ("--lr", saved.lr, cfg.lr),
        ("--weight-decay", saved.weight_decay, cfg.weight_decay),
    ];
    for (flag, run, asked) in numbers {
        if run != asked {
            return differs(flag, run.to_string(), asked.to_string());
        }
    }
    let folders = [
        ("--data", Some(&prior.data.root), Some(&cfg.data)),
        ("--val", prior.data.val.as_ref(), cfg.val.as_ref()),
    ];
    for (flag, run, asked) in folders {
        if !crate::util::same_optional_path(run.map(PathBuf::as_path), asked.map(PathBuf::as_path))
        {
            let show = |p: Option<&PathBuf>| p.map_or("none".into(), |p| p.display().to_string());
            return Err(TrainError::Config(format!(
                "{}: the run was trained with {flag} {}, not {}; resume with the same, or start a new run in another folder",
                cfg.output.display(),
                show(run),
                show(asked)
            )));
        }
    }
    Ok(())
}

/// Train as configured; returns when done, or when `stop` is set (after saving).
pub fn train(
    cfg: &TrainConfig,
    stop: &AtomicBool,
    on: &mut dyn FnMut(TrainEvent),
) -> Result<TrainOutcome, TrainError> {
    crate::util::retain_freed_memory();
    let outcome = run_training(cfg, stop, on);
    super::conv::release_scratch();
    crate::util::trim_freed_memory();
    outcome
}

fn run_training(
    cfg: &TrainConfig,
    stop: &AtomicBool,
    on: &mut dyn FnMut(TrainEvent),
) -> Result<TrainOutcome, TrainError> {
    validate_config(cfg)?;
    let device = cfg.device.clone();
    let split = load_split(&cfg.data, cfg.val.as_deref(), cfg.seed, cfg.val_fraction)?;
    let prior = if cfg.resume {
        Some(checkpoint::load_meta(&cfg.output)?)
    } else {
        None
    };
    if let Some(p) = &prior {
        if p.classes != split.train.classes {
            return Err(TrainError::Config(format!(
                "{}: the checkpoint's classes differ from those in {}",
                cfg.output.display(),
                cfg.data.display()
            )));
        }
        check_resumable(cfg, p)?;
    }
    on(TrainEvent::Log(format!(
        "decoding {} training and {} held-out images…",
        split.train.samples.len(),
        split.val.samples.len()
    )));
    let side = augment::cache_side(cfg.image_size);
    let (train_cache, skipped_t) = decode(&split.train, side);
    let (val_cache, skipped_v) = decode(&split.val, side);
    if train_cache.labels.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: no readable training images",
            cfg.data.display()
        )));
    }
    warn_degenerate(cfg, split.train.classes.len());
    if val_cache.labels.is_empty() {
        // Every epoch's record and the checkpoint's choice rest on held-out images.
        return Err(TrainError::Config(match &cfg.val {
            Some(val) => format!(
                "--val {}: no readable held-out images; give a folder of class folders with pictures",
                val.display()
            ),
            None => format!(
                "{}: no images held out for validation (a class needs at least 2 images \
                 for one to be held out); add images, or give --val DIR",
                cfg.data.display()
            ),
        }));
    }

    if prior.is_none() {
        // A new run in a folder that held one (--force) starts its own log; appending
        // would mix the two runs' epochs. A fine-tuning run's record goes too, so that
        // the folder is not taken for that run any more.
        let _ = std::fs::remove_file(cfg.output.join(METRICS_JSONL));
        let _ = std::fs::remove_file(cfg.output.join(crate::clip::finetune::RUN_JSON));
    }

    let map = VarMap::new();
    let num_classes = split.train.classes.len();
    let model = Network::new(cfg.arch, &map, &device, num_classes, cfg.seed)?;
    match (&prior, &cfg.pretrained) {
        (Some(meta), _) => {
            let w = cfg.output.join(&meta.weights);
            cfg.arch
                .load_weights(&map, &w, false)
                .map_err(TrainError::Weights)?;
        }
        (None, Pretrained::File { path, .. }) => {
            let n = cfg
                .arch
                .load_weights(&map, path, true)
                .map_err(TrainError::Weights)?;
            on(TrainEvent::Log(format!(
                "loaded {n} pretrained tensors from {}",
                path.display()
            )));
        }
        (None, Pretrained::None) => {}
    }

    let size = cfg.image_size as u32;
    let (train_in, val_in) = if cfg.freeze_backbone {
        on(TrainEvent::Log("computing backbone features once…".into()));
        (
            extract_features(&model, train_cache, size, &device)?,
            extract_features(&model, val_cache, size, &device)?,
        )
    } else {
        (
            Inputs::Images {
                cached: train_cache,
                size,
                crop_scale: cfg.crop_scale,
            },
            Inputs::Images {
                cached: val_cache,
                size,
                crop_scale: cfg.crop_scale,
            },
        )
    };

    let n = train_in.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let total_steps = steps_per_epoch * cfg.epochs;
    let warmup = if cfg.epochs >= 5 { steps_per_epoch } else { 0 };
    let mut opt = Optimizer::new(
        cfg.optimizer,
        trainable(&map, cfg.arch, cfg.freeze_backbone),
        cfg.lr,
        cfg.weight_decay,
    );
    let mut meta = match prior {
        Some(mut p) => {
            opt.restore(
                checkpoint::load_optimizer_state(&cfg.output, &p)?,
                p.optimizer_steps,
            )?;
            // The record says how many epochs the run now aims at.
            p.config.epochs = cfg.epochs;
            p
        }
        None => CheckpointMeta {
            format: 1,
            classes: split.train.classes.clone(),
            class_names: split.train.display_names(),
            image_size: cfg.image_size,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            epochs_done: 0,
            interrupted: false,
            optimizer_steps: 0,
            metrics: Vec::new(),
            config: RunConfig {
                model: cfg.arch.name().into(),
                pretrained: match &cfg.pretrained {
                    Pretrained::None => "none".into(),
                    Pretrained::File { label, .. } => label.clone(),
                },
                freeze_backbone: cfg.freeze_backbone,
                epochs: cfg.epochs,
                batch_size: cfg.batch_size,
                optimizer: cfg.optimizer,
                lr: cfg.lr,
                weight_decay: cfg.weight_decay,
                seed: cfg.seed,
            },
            data: DataRecord {
                root: crate::util::absolute(&cfg.data),
                val: cfg.val.as_deref().map(crate::util::absolute),
                split: split.source.clone(),
                train_images: n,
                val_images: val_in.len(),
                skipped: skipped_t + skipped_v,
            },
            weights: String::new(),
            optimizer_state: String::new(),
        },
    };
    let first_epoch = meta.epochs_done + 1;
    on(TrainEvent::Ready {
        classes: meta.class_names.clone(),
        train: n,
        val: val_in.len(),
        skipped: skipped_t + skipped_v,
        first_epoch,
        steps_per_epoch,
    });

    let mut stopped = false;
    let mut saved = cfg.output.join(checkpoint::CHECKPOINT_JSON);
    for epoch in first_epoch..=cfg.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        Rng::new(cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37)).shuffle(&mut order);
        let mut aug = Rng::new(cfg.seed.wrapping_add(epoch as u64 * 7919));
        let started = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0.0, 0usize);
        for (s, idx) in order.chunks(cfg.batch_size).enumerate() {
            let global = (epoch - 1) * steps_per_epoch + s;
            let lr = cosine_lr(cfg.lr, global, total_steps, warmup);
            opt.set_lr(lr);
            let (x, y) = train_in.batch(idx, Some(&mut aug), &device)?;
            model.begin_step(global as u64);
            let (logits, loss) = crate::util::on_worker(|| -> candle_core::Result<_> {
                let logits = match &train_in {
                    Inputs::Features { .. } => model.head(&x)?,
                    Inputs::Images { .. } => model.forward_t(&x, true)?,
                };
                let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
                opt.step(&loss.backward()?)?;
                Ok((logits, loss))
            })?;
            let batch_loss = scalar(&loss)?;
            let batch_correct = accuracy_count(&logits, &y)?;
            loss_sum += batch_loss * idx.len() as f64;
            correct += batch_correct;
            seen += idx.len();
            on(TrainEvent::Step {
                epoch,
                step: s + 1,
                steps: steps_per_epoch,
                loss: batch_loss,
                acc: batch_correct / idx.len() as f64,
                lr,
                images_per_sec: seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
            });
            if stop.load(Ordering::Relaxed) {
                stopped = true;
                break;
            }
        }
        meta.optimizer_steps = opt.steps();
        if stopped {
            meta.interrupted = true;
            saved = checkpoint::save(&cfg.output, &mut meta, &map, &opt.state())?;
            on(TrainEvent::Log(format!(
                "stopped during epoch {epoch}; saved; --resume continues from epoch {epoch}"
            )));
            on(TrainEvent::Saved(saved.clone()));
            break;
        }
        let seconds = started.elapsed().as_secs_f64();
        let (val_loss, val_acc) = validate(&model, &val_in, cfg.batch_size.max(32), &device)?;
        let m = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct / seen.max(1) as f64,
            val_loss,
            val_acc,
            seconds,
            images_per_sec: seen as f64 / seconds.max(1e-9),
        };
        meta.metrics.push(m.clone());
        meta.epochs_done = epoch;
        meta.interrupted = false;
        on(TrainEvent::Epoch(m));
        saved = checkpoint::save(&cfg.output, &mut meta, &map, &opt.state())?;
        on(TrainEvent::Saved(saved.clone()));
        append_log(&cfg.output, &meta);
    }
    Ok(TrainOutcome {
        metrics: meta.metrics,
        stopped,
        checkpoint: saved,
    })
}

/// The per-epoch log beside the checkpoint, one JSON line per epoch.
pub const METRICS_JSONL: &str = "metrics.jsonl";

/// Keep a plain-text metrics log beside the checkpoint (best effort).
fn append_log(dir: &Path, meta: &CheckpointMeta) {
    if let Some(m) = meta.metrics.last() {
        let line = serde_json::to_string(m).unwrap_or_default();
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(METRICS_JSONL))
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
    }
}
