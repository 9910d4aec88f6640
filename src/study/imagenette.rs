//! `clipscope study imagenette`: the whole comparison in one call. Fetch Imagenette,
//! fine-tune the ImageNet-pretrained ResNet18 on its `train/` images, get a CLIP model,
//! and run [`compare`] on its `val/` images with the prompt study and the linear probe.
//!
//! Every step keeps what an earlier call left: a downloaded archive or unpacked folder
//! (see [`fetch_archive`](crate::data::fetch::fetch_archive)), cached model files, and the
//! training run (a finished run is reused, an interrupted one resumed). Everything to
//! download is fetched before training starts, so a network failure shows at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::compare::{compare, CompareConfig, Report, StudyError, StudyEvent};
use crate::cnn::checkpoint::{self, CheckpointMeta, CHECKPOINT_JSON};
use crate::cnn::network::Arch;
use crate::cnn::optim::OptimizerKind;
use crate::cnn::train::{self, Pretrained, TrainConfig, TrainError, TrainEvent};
use crate::data::fetch::{fetch_imagenette, is_unpacked, FetchError, ImagenetteSize};
use crate::hub::{self, HubError, ModelSource};

/// The CNN the study fine-tunes.
const CNN_ARCH: Arch = Arch::Resnet18;

/// Bootstrap resamples for the confidence intervals.
const BOOTSTRAP: usize = 1000;

/// Shots per class of the few-shot curve.
const SHOTS: [usize; 5] = [1, 2, 4, 8, 16];

/// Random draws per shot count.
const FEW_SHOT_SEEDS: usize = 5;

/// The study's settings.
#[derive(Clone, Debug)]
pub struct ImagenetteStudy {
    /// Which Imagenette archive.
    pub size: ImagenetteSize,
    /// Where the archive is (or goes): a folder holding the archive or its unpacked
    /// folder, or the unpacked folder itself (with `train/` and `val/`).
    pub data_dir: PathBuf,
    /// The study's folder: the training run and the report go here.
    pub output: PathBuf,
    /// The CLIP model.
    pub clip: ModelSource,
    /// ImageNet weights for the ResNet18 in torchvision naming; `None` downloads them.
    pub cnn_weights: Option<PathBuf>,
    /// Fine-tune every layer instead of only the classifier.
    pub full: bool,
    /// Training epochs.
    pub epochs: usize,
    /// Images per training step.
    pub batch_size: usize,
    /// The CNN's input side in pixels.
    pub image_size: usize,
    /// Peak learning rate (SGD with momentum).
    pub lr: f64,
    /// Seed for training, the bootstrap, the probe and the few-shot draws.
    pub seed: u64,
    /// Train the linear probe and the few-shot curve on the training images.
    pub probe: bool,
    /// Where the CNN trains and both models are tested.
    pub device: candle_core::Device,
}

impl ImagenetteStudy {
    /// The training run's folder: one per mode, so a frozen and a full fine-tune of the
    /// same study live side by side.
    pub fn run_dir(&self) -> PathBuf {
        let mode = if self.full { "full" } else { "frozen" };
        self.output.join(format!("{}-{mode}", CNN_ARCH.name()))
    }

    fn train_config(&self, data: &Path, pretrained: Pretrained, resume: bool) -> TrainConfig {
        TrainConfig {
            arch: CNN_ARCH,
            data: data.to_path_buf(),
            val: None,
            pretrained,
            freeze_backbone: !self.full,
            epochs: self.epochs,
            batch_size: self.batch_size,
            image_size: self.image_size,
            optimizer: OptimizerKind::Sgd,
            lr: self.lr,
            weight_decay: 1e-4,
            seed: self.seed,
            output: self.run_dir(),
            resume,
            val_fraction: 0.2,
            crop_scale: (0.25, 1.0),
            device: self.device.clone(),
        }
    }
}

/// Progress of the study.
#[derive(Clone, Debug)]
pub enum ImagenetteEvent {
    /// A step starts.
    Stage(String),
    /// Something worth a line: a step skipped, a folder used.
    Note(String),
    /// Bytes of a download.
    Download {
        /// The file.
        file: String,
        /// Bytes so far.
        done: u64,
        /// Its size, when the server says.
        total: Option<u64>,
    },
    /// Training progress.
    Train(TrainEvent),
    /// Comparison progress.
    Compare(StudyEvent),
}

/// How the study ended.
#[derive(Debug)]
pub enum ImagenetteOutcome {
    /// The report, written into the output folder.
    Done(Box<Report>),
    /// Training was stopped (and saved); calling again continues it.
    Stopped {
        /// The training run.
        run: PathBuf,
    },
}

/// What can go wrong in the study.
#[derive(Debug, thiserror::Error)]
pub enum ImagenetteError {
    /// Imagenette could not be fetched.
    #[error(transparent)]
    Data(#[from] FetchError),
    /// The ResNet18's ImageNet weights could not be fetched.
    #[error("ImageNet weights for resnet18: {0}")]
    CnnWeights(#[source] HubError),
    /// The CLIP model could not be fetched or read.
    #[error(transparent)]
    Clip(HubError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The comparison failed.
    #[error(transparent)]
    Study(#[from] StudyError),
    /// The settings or an earlier run do not fit.
    #[error("{0}")]
    Config(String),
}

/// Run the study: fetch, train, compare, write `report.json`. `stop` (Ctrl-C) ends
/// training early with a checkpoint that the next call continues.
pub fn run(
    cfg: &ImagenetteStudy,
    stop: &AtomicBool,
    on: &mut dyn FnMut(ImagenetteEvent),
) -> Result<ImagenetteOutcome, ImagenetteError> {
    train::validate_config(&cfg.train_config(&cfg.data_dir, Pretrained::None, false))?;
    if let Some(path) = cfg.cnn_weights.as_ref().filter(|p| !p.is_file()) {
        return Err(ImagenetteError::Config(format!(
            "{}: no such weights file",
            path.display()
        )));
    }
    let data = imagenette_root(cfg, on)?;
    let run = cfg.run_dir();
    let state = run_state(cfg, &data)?;
    let pretrained = match state {
        RunState::Fresh => Some(pretrained_weights(cfg, on)?),
        RunState::Partial(_) | RunState::Done(_) => None,
    };
    on(ImagenetteEvent::Stage(match &cfg.clip {
        ModelSource::Dir(dir) => format!("CLIP model from {}", dir.display()),
        ModelSource::Named(name) => {
            format!("CLIP model {}", name.as_deref().unwrap_or("(default)"))
        }
    }));
    let files = hub::resolve_files(&cfg.clip, &mut |file, done, total| {
        download(on, file, done, total)
    })
    .map_err(ImagenetteError::Clip)?;
    on(ImagenetteEvent::Note(format!("{} ready", files.name)));

    match &state {
        RunState::Done(meta) => on(ImagenetteEvent::Note(format!(
            "{}: already trained for {} epochs, reused",
            run.display(),
            meta.epochs_done
        ))),
        RunState::Fresh | RunState::Partial(_) => {
            let mode = if cfg.full {
                "all layers"
            } else {
                "classifier only"
            };
            let what = match &state {
                RunState::Partial(meta) => format!(
                    "resuming {} ({mode}) at epoch {}",
                    CNN_ARCH.name(),
                    meta.epochs_done + 1
                ),
                _ => format!("fine-tuning {} ({mode})", CNN_ARCH.name()),
            };
            on(ImagenetteEvent::Stage(format!(
                "{what} on {}",
                data.join("train").display()
            )));
            let resume = pretrained.is_none();
            let tc = cfg.train_config(&data, pretrained.unwrap_or(Pretrained::None), resume);
            let outcome = train::train(&tc, stop, &mut |e| on(ImagenetteEvent::Train(e)))?;
            if outcome.stopped {
                return Ok(ImagenetteOutcome::Stopped { run });
            }
        }
    }

    on(ImagenetteEvent::Stage(format!(
        "comparing on {}",
        data.join("val").display()
    )));
    let compare_cfg = CompareConfig {
        data: data.clone(),
        cnn_runs: vec![run],
        clip_models: vec![files],
        train: cfg.probe.then(|| data.clone()),
        classes_file: None,
        open_set: None,
        abstain: None,
        seed: cfg.seed,
        bootstrap: BOOTSTRAP,
        shots: SHOTS.to_vec(),
        few_shot_seeds: FEW_SHOT_SEEDS,
        device: cfg.device.clone(),
    };
    let report = compare(&compare_cfg, &mut |e| on(ImagenetteEvent::Compare(e)))?;
    super::report::write_outputs(&report, &cfg.output)?;
    Ok(ImagenetteOutcome::Done(Box::new(report)))
}

fn download(on: &mut dyn FnMut(ImagenetteEvent), file: &str, done: u64, total: Option<u64>) {
    on(ImagenetteEvent::Download {
        file: file.to_string(),
        done,
        total,
    });
}

/// The unpacked Imagenette folder: `data_dir` itself when it is one, else fetched into
/// `data_dir` (keeping an archive or unpacked folder already there).
fn imagenette_root(
    cfg: &ImagenetteStudy,
    on: &mut dyn FnMut(ImagenetteEvent),
) -> Result<PathBuf, ImagenetteError> {
    let dir = &cfg.data_dir;
    if dir.join("train").is_dir() && dir.join("val").is_dir() {
        on(ImagenetteEvent::Note(format!(
            "Imagenette: using {}",
            dir.display()
        )));
        return Ok(dir.clone());
    }
    let name = cfg.size.archive().0;
    let tree = crate::data::fetch::unpacked_dir(dir, name);
    if is_unpacked(&tree) {
        on(ImagenetteEvent::Note(format!(
            "Imagenette: using {}",
            tree.display()
        )));
    } else {
        on(ImagenetteEvent::Stage(format!(
            "Imagenette ({name}) into {}",
            dir.display()
        )));
    }
    let root = fetch_imagenette(cfg.size, dir, &mut |done, total| {
        download(on, name, done, total)
    })?;
    for part in ["train", "val"] {
        if !root.join(part).is_dir() {
            return Err(ImagenetteError::Config(format!(
                "{}: no {part}/ folder; not an unpacked Imagenette archive",
                root.display()
            )));
        }
    }
    Ok(root)
}

/// The ResNet18's starting weights: the given file, or ImageNet's from the hub.
fn pretrained_weights(
    cfg: &ImagenetteStudy,
    on: &mut dyn FnMut(ImagenetteEvent),
) -> Result<Pretrained, ImagenetteError> {
    if let Some(path) = &cfg.cnn_weights {
        return Ok(Pretrained::File {
            path: path.clone(),
            label: path.display().to_string(),
        });
    }
    on(ImagenetteEvent::Stage(format!(
        "ImageNet weights for {}",
        CNN_ARCH.name()
    )));
    let path = hub::ensure_builtin_cnn_weights(CNN_ARCH.name(), &mut |file, done, total| {
        download(on, file, done, total)
    })
    .map_err(ImagenetteError::CnnWeights)?;
    Ok(Pretrained::File {
        path,
        label: "imagenet".into(),
    })
}

/// How far an earlier call got with the training run.
enum RunState {
    /// No checkpoint.
    Fresh,
    /// Stopped, or fewer epochs than asked for: resume.
    Partial(Box<CheckpointMeta>),
    /// As many epochs as asked for: reuse.
    Done(Box<CheckpointMeta>),
}

fn run_state(cfg: &ImagenetteStudy, data: &Path) -> Result<RunState, ImagenetteError> {
    let run = cfg.run_dir();
    if !run.join(CHECKPOINT_JSON).is_file() {
        return Ok(RunState::Fresh);
    }
    let meta = checkpoint::load_meta(&run).map_err(TrainError::from)?;
    let other = |why: String| {
        Err(ImagenetteError::Config(format!(
            "{}: {why}; give the same settings, or another --output",
            run.display()
        )))
    };
    if !crate::util::same_path(&meta.data.root, data) {
        return other(format!("trained on {}", meta.data.root.display()));
    }
    if meta.image_size != cfg.image_size {
        return other(format!("trained at --image-size {}", meta.image_size));
    }
    if meta.epochs_done > cfg.epochs {
        return other(format!("trained for {} epochs", meta.epochs_done));
    }
    if meta.config.batch_size != cfg.batch_size {
        return other(format!(
            "trained with --batch-size {}",
            meta.config.batch_size
        ));
    }
    if meta.config.lr != cfg.lr {
        return other(format!("trained with --lr {}", meta.config.lr));
    }
    if meta.config.seed != cfg.seed {
        return other(format!("trained with --seed {}", meta.config.seed));
    }
    if meta.epochs_done == cfg.epochs && !meta.interrupted {
        Ok(RunState::Done(Box::new(meta)))
    } else {
        Ok(RunState::Partial(Box::new(meta)))
    }
}
