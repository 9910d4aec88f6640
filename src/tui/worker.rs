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
use crate::clip::{parse_device, Clip, Embedding, LabelSet, Precision, PromptStyle};
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
    /// Load another model and/or score with another template or ensemble from now on;
    /// the current image is embedded again with the new model.
    Configure(Configure),
    /// Stop the worker.
    Shutdown,
}

/// A change of model or prompt style (the model picker's choice).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Configure {
    /// The model to load instead, if any.
    pub source: Option<ModelSource>,
    /// The prompt style to use instead, if any.
    pub style: Option<PromptStyle>,
}

/// What the worker does for one wake-up: every request queued while it was busy is
/// folded into this, so that only the newest image, label set and configuration are
/// worked on and a burst of edits leaves no backlog of stale jobs.
#[derive(Debug, Default)]
pub struct Batch {
    /// The newest model or style change (changes merge, newest wins).
    pub configure: Option<Configure>,
    /// The newest image.
    pub image: Option<(PathBuf, Arc<DynamicImage>)>,
    /// The newest score request: (generation, labels).
    pub score: Option<(u64, Vec<String>)>,
    /// Whether the worker should stop.
    pub shutdown: bool,
    /// How many queued requests were superseded and dropped.
    pub superseded: usize,
}

/// Fold the queued requests into one [`Batch`], newest winning.
pub fn coalesce(requests: impl IntoIterator<Item = Request>) -> Batch {
    let mut batch = Batch::default();
    for req in requests {
        match req {
            Request::SetImage { path, image } => {
                batch.superseded += usize::from(batch.image.is_some());
                batch.image = Some((path, image));
            }
            Request::Score { generation, labels } => {
                batch.superseded += usize::from(batch.score.is_some());
                batch.score = Some((generation, labels));
            }
            Request::Configure(change) => {
                let merged = batch.configure.get_or_insert_with(Configure::default);
                merged.source = change.source.or(merged.source.take());
                merged.style = change.style.or(merged.style.take());
            }
            Request::Shutdown => batch.shutdown = true,
        }
    }
    batch
}

/// What the worker tells the app.
#[derive(Debug)]
pub enum Response {
    /// Model download or load progress, as a line for the status bar.
    Progress(String),
    /// The model is ready.
    ModelReady {
        /// Where it came from.
        source: ModelSource,
        /// Its name.
        name: String,
        /// Its device.
        device: String,
        /// How long loading took.
        load_ms: f64,
    },
    /// The model could not be loaded; the app stays usable but cannot score.
    ModelFailed(String),
    /// Another model could not be loaded (a `ModelFailed` came first): the one in use
    /// before is kept and goes on scoring.
    ModelKept {
        /// Where the kept one came from.
        source: ModelSource,
        /// The one that could not be loaded.
        tried: ModelSource,
        /// Its name.
        name: String,
        /// Its device.
        device: String,
    },
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
    /// `auto`, `cpu` or `cuda[:N]`.
    pub device: String,
    /// The dense layers' number format.
    pub precision: crate::clip::Precision,
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

/// Load the configured model, reporting progress; returns it with its name and device.
fn load(
    config: &WorkerConfig,
    out: &UnboundedSender<Response>,
) -> Result<(Clip, (String, String)), String> {
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
    let clip = files
        .load_with(device, config.precision)
        .map_err(|e| e.to_string())?;
    // The status bar names a reduced precision with the device ("cpu, bf16").
    let device = match clip.precision() {
        Precision::F32 => clip.device_name().to_string(),
        reduced => format!("{}, {reduced}", clip.device_name()),
    };
    let _ = out.send(Response::ModelReady {
        source: config.source.clone(),
        name: files.name.clone(),
        device: device.clone(),
        load_ms: start.elapsed().as_secs_f64() * 1e3,
    });
    Ok((clip, (files.name, device)))
}

fn run(mut config: WorkerConfig, rx: Receiver<Request>, out: UnboundedSender<Response>) {
    let (mut clip, mut loaded) = load_or_report(&config, &out).unzip();
    // The image as decoded is kept, so that another model can embed it again.
    let mut current: Option<(PathBuf, Arc<DynamicImage>)> = None;
    let mut image: Option<(PathBuf, Embedding)> = None;
    let mut warned_unknown: Vec<String> = Vec::new();
    while let Ok(first) = rx.recv() {
        // Take everything queued: only the newest of each kind matters.
        let batch = coalesce(std::iter::once(first).chain(rx.try_iter()));
        if batch.shutdown {
            return;
        }
        if batch.superseded > 0 {
            tracing::debug!("skipped {} superseded requests", batch.superseded);
        }
        let mut embed_again = false;
        if let Some(change) = batch.configure {
            if let Some(style) = change.style {
                config.style = style;
            }
            if let Some(source) = change.source {
                let previous = std::mem::replace(&mut config.source, source);
                match (load(&config, &out), clip.is_some()) {
                    (Ok((new, ready)), _) => {
                        clip = Some(new);
                        loaded = Some(ready);
                        embed_again = true;
                    }
                    (Err(e), false) => {
                        let _ = out.send(Response::ModelFailed(e));
                    }
                    // A model that does not load leaves the one in use working.
                    (Err(e), true) => {
                        let tried = std::mem::replace(&mut config.source, previous);
                        let _ = out.send(Response::ModelFailed(e));
                        if let Some((name, device)) = &loaded {
                            let _ = out.send(Response::ModelKept {
                                source: config.source.clone(),
                                tried,
                                name: name.clone(),
                                device: device.clone(),
                            });
                        }
                    }
                }
            }
        }
        if let Some(new) = batch.image {
            current = Some(new);
            embed_again = true;
        }
        let Some(clip) = clip.as_ref() else { continue };
        if embed_again {
            image = current
                .as_ref()
                .and_then(|(path, img)| embed(clip, path, img, &out));
        }
        if let (Some((generation, labels)), Some((path, emb))) = (batch.score, image.as_ref()) {
            let _ = out.send(score(clip, &config.style, generation, path, emb, &labels));
            // Said once per change (the warning reaches the status bar), not per key.
            let unknown = clip.unknown_words_in(&labels).unwrap_or_default();
            if unknown != warned_unknown {
                clip.warn_unknown(&unknown);
                warned_unknown = unknown;
            }
        }
    }
}

/// Load the configured model; a failure is reported and leaves no model.
fn load_or_report(
    config: &WorkerConfig,
    out: &UnboundedSender<Response>,
) -> Option<(Clip, (String, String))> {
    load(config, out)
        .map_err(|e| {
            let _ = out.send(Response::ModelFailed(e));
        })
        .ok()
}

/// Embed the image; a failure is reported and leaves no embedding.
fn embed(
    clip: &Clip,
    path: &std::path::Path,
    img: &DynamicImage,
    out: &UnboundedSender<Response>,
) -> Option<(PathBuf, Embedding)> {
    match clip.embed_images(&[img]) {
        Ok(mut e) => e.pop().map(|e| (path.to_path_buf(), e)),
        Err(e) => {
            let _ = out.send(Response::Failed {
                generation: 0,
                message: format!("{}: {e}", path.display()),
            });
            None
        }
    }
}

/// Score `labels` against the image's embedding.
fn score(
    clip: &Clip,
    style: &PromptStyle,
    generation: u64,
    path: &std::path::Path,
    emb: &Embedding,
    labels: &[String],
) -> Response {
    let start = Instant::now();
    match LabelSet::build(clip, labels, style) {
        Ok(set) => Response::Scores {
            generation,
            path: path.to_path_buf(),
            predictions: zeroshot::classify(emb, &set, clip.logit_scale()),
            compute_ms: start.elapsed().as_secs_f64() * 1e3,
        },
        Err(e) => Response::Failed {
            generation,
            message: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score_req(generation: u64) -> Request {
        Request::Score {
            generation,
            labels: vec![format!("label {generation}")],
        }
    }

    #[test]
    fn a_burst_of_requests_leaves_only_the_newest_of_each_kind() {
        let image = Arc::new(DynamicImage::new_rgb8(2, 2));
        let burst = (1..=1000).map(score_req).chain([
            Request::SetImage {
                path: "a.png".into(),
                image: image.clone(),
            },
            Request::SetImage {
                path: "b.png".into(),
                image,
            },
            score_req(1001),
        ]);
        let batch = coalesce(burst);
        assert_eq!(
            batch.score,
            Some((1001, vec!["label 1001".to_string()])),
            "only the newest label set is scored"
        );
        assert_eq!(batch.image.unwrap().0, PathBuf::from("b.png"));
        assert_eq!(batch.superseded, 1000 + 1);
        assert!(!batch.shutdown);
    }

    #[test]
    fn configuration_changes_merge_newest_first() {
        let batch = coalesce([
            Request::Configure(Configure {
                source: Some(ModelSource::Named(Some("demo".into()))),
                style: Some(PromptStyle::Template("{}".into())),
            }),
            Request::Configure(Configure {
                source: None,
                style: Some(PromptStyle::Template("a {}".into())),
            }),
            Request::Shutdown,
        ]);
        let change = batch.configure.unwrap();
        assert_eq!(change.source, Some(ModelSource::Named(Some("demo".into()))));
        assert_eq!(change.style, Some(PromptStyle::Template("a {}".into())));
        assert!(batch.shutdown);
    }
}
