//! The model worker: a dedicated thread that owns the CLIP engine, so that loading,
//! tokenising and inference never run on the UI task.
//!
//! Requests that a newer one of the same kind has superseded while the worker was busy
//! are skipped; every score carries the generation it was asked for, and the app drops
//! any result that is not for its latest request.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use image::DynamicImage;
use tokio::sync::mpsc::UnboundedSender;

use crate::clip::zeroshot::{self, Prediction};
use crate::clip::{parse_device, Clip, Embedding, LabelSet, PromptStyle};
use crate::hub::{self, ModelSource};

/// What the app asks of the worker.
#[derive(Debug)]
pub enum Request {
    /// Embed this image; later scores are for it.
    SetImage {
        /// Its path, echoed in results.
        path: PathBuf,
        /// The decoded image.
        image: Arc<DynamicImage>,
    },
    /// Score the current image against these labels.
    Score {
        /// Generation number of this request.
        generation: u64,
        /// Labels as typed.
        labels: Vec<String>,
    },
    /// Stop the worker.
    Shutdown,
}

/// What the worker tells the app.
#[derive(Debug)]
pub enum Response {
    /// Model download or load progress, as a line for the status bar.
    Progress(String),
    /// The model is ready.
    ModelReady {
        /// Its name.
        name: String,
        /// Its device.
        device: String,
        /// How long loading took.
        load_ms: f64,
    },
    /// The model could not be loaded; the app stays usable but cannot score.
    ModelFailed(String),
    /// Probabilities for a score request.
    Scores {
        /// The request's generation.
        generation: u64,
        /// The image scored.
        path: PathBuf,
        /// Predictions, most probable first.
        predictions: Vec<Prediction>,
        /// Time spent in the worker.
        compute_ms: f64,
    },
    /// A request failed.
    Failed {
        /// The request's generation (0 for image embedding).
        generation: u64,
        /// Why.
        message: String,
    },
}

/// Settings for the worker's model.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Where the model comes from.
    pub source: ModelSource,
    /// `cpu` or `cuda[:N]`.
    pub device: String,
    /// How labels become prompts.
    pub style: PromptStyle,
}

/// Start the worker thread; it loads the model first and reports progress.
pub fn spawn(config: WorkerConfig, out: UnboundedSender<Response>) -> Sender<Request> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("clipscope-model".into())
        .spawn(move || {
            // The model's pools start from this thread and inherit its priority.
            super::lower_thread_priority();
            run(config, rx, out)
        })
        .map_err(|e| tracing::error!("cannot start the model worker: {e}"))
        .ok();
    tx
}

fn load(config: &WorkerConfig, out: &UnboundedSender<Response>) -> Result<Clip, String> {
    let start = Instant::now();
    let _ = out.send(Response::Progress("loading model…".into()));
    let mut last_percent = u64::MAX;
    let files = hub::resolve_files(&config.source, &mut |file, done, total| {
        let line = match total {
            Some(t) if t > 0 => {
                let p = done * 100 / t;
                if p == last_percent {
                    return;
                }
                last_percent = p;
                format!("downloading {file}: {p}% of {} MB", t / 1_000_000)
            }
            _ => format!("downloading {file}: {} MB", done / 1_000_000),
        };
        let _ = out.send(Response::Progress(line));
    })
    .map_err(|e| e.to_string())?;
    let _ = out.send(Response::Progress(format!("loading {}…", files.name)));
    let device = parse_device(&config.device).map_err(|e| e.to_string())?;
    let clip = files.load(device).map_err(|e| e.to_string())?;
    let _ = out.send(Response::ModelReady {
        name: files.name.clone(),
        device: format!("{:?}", clip.device()).to_lowercase(),
        load_ms: start.elapsed().as_secs_f64() * 1e3,
    });
    Ok(clip)
}

fn run(config: WorkerConfig, rx: Receiver<Request>, out: UnboundedSender<Response>) {
    let clip = match load(&config, &out) {
        Ok(c) => Some(c),
        Err(e) => {
            let _ = out.send(Response::ModelFailed(e));
            None
        }
    };
    let mut image: Option<(PathBuf, Embedding)> = None;
    while let Ok(first) = rx.recv() {
        // Take everything queued: only the newest image and the newest score matter.
        let mut set_image = None;
        let mut score = None;
        for req in std::iter::once(first).chain(rx.try_iter()) {
            match req {
                Request::SetImage { path, image } => set_image = Some((path, image)),
                Request::Score { generation, labels } => score = Some((generation, labels)),
                Request::Shutdown => return,
            }
        }
        let Some(clip) = clip.as_ref() else { continue };
        if let Some((path, img)) = set_image {
            match clip.embed_images(&[img.as_ref()]) {
                Ok(mut e) => image = e.pop().map(|e| (path, e)),
                Err(e) => {
                    image = None;
                    let _ = out.send(Response::Failed {
                        generation: 0,
                        message: format!("{}: {e}", path.display()),
                    });
                }
            }
        }
        if let (Some((generation, labels)), Some((path, emb))) = (score, image.as_ref()) {
            let start = Instant::now();
            let response = match LabelSet::build(clip, &labels, &config.style) {
                Ok(set) => Response::Scores {
                    generation,
                    path: path.clone(),
                    predictions: zeroshot::classify(emb, &set, clip.logit_scale()),
                    compute_ms: start.elapsed().as_secs_f64() * 1e3,
                },
                Err(e) => Response::Failed {
                    generation,
                    message: e.to_string(),
                },
            };
            let _ = out.send(response);
        }
    }
}
