//! The comparison study: CLIP zero-shot against trained CNNs on exactly the same test
//! images, with a prompt study, a linear probe and few-shot curve, an open-set part, and
//! the report files (`report.json`, `report.md`, `predictions.csv`, plots).

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::DynamicImage;
use serde::{Deserialize, Serialize};

use super::metrics::{abstain, metrics, AbstainOutcome, ClassMetrics};
use super::probe::{few_shot, linear_probe, FewShotPoint};
use crate::clip::finetune::load_head;
use crate::clip::zeroshot::{probabilities, LabelSet, PromptStyle};
use crate::clip::{Clip, ClipError, Embedding, ModelFiles};
use crate::cnn::checkpoint::EpochMetrics;
use crate::cnn::eval::{CnnClassifier, EvalError};
use crate::data::{display_name, held_out, load_image, scan_folder, DataError, Dataset};

/// Version of the report format.
pub const REPORT_VERSION: u32 = 1;

/// The prompt variants of the prompt study: (name, templates). The ensemble is added
/// from OpenAI's 80 ImageNet templates.
pub const PROMPT_VARIANTS: [(&str, &str); 6] = [
    ("class name", "{}"),
    ("a photo of a {}.", "a photo of a {}."),
    ("paraphrase: picture", "a picture of a {}."),
    ("paraphrase: image", "an image showing a {}."),
    ("paraphrase: close-up", "a close-up photo of the {}."),
    (
        "poor: text page",
        "a page of text that mentions the word {}.",
    ),
];

/// The variant whose results stand for a CLIP model in the main table.
pub const MAIN_TEMPLATE: &str = "a photo of a {}.";

/// Everything the study needs.
pub struct CompareConfig {
    /// The test folder (class folders, or a data set with `val/` or a split manifest).
    pub data: PathBuf,
    /// CNN run folders.
    pub cnn_runs: Vec<PathBuf>,
    /// CLIP models.
    pub clip_models: Vec<ModelFiles>,
    /// A training folder for the linear probe and few-shot curve.
    pub train: Option<PathBuf>,
    /// A file of `folder,name` lines naming the classes in prompts.
    pub classes_file: Option<PathBuf>,
    /// A folder of classes the CNN never saw.
    pub open_set: Option<PathBuf>,
    /// Abstain below this top probability.
    pub abstain: Option<f64>,
    /// Seed for the bootstrap, the probe's split and the few-shot draws.
    pub seed: u64,
    /// Bootstrap resamples for confidence intervals.
    pub bootstrap: usize,
    /// Shots per class for the few-shot curve.
    pub shots: Vec<usize>,
    /// Random draws per shot count.
    pub few_shot_seeds: usize,
    /// Where CLIP and the CNNs run.
    pub device: candle_core::Device,
}

/// What can go wrong in the study.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    /// The test or training data is unusable.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A CLIP model failed.
    #[error(transparent)]
    Clip(#[from] ClipError),
    /// A CNN run failed.
    #[error(transparent)]
    Cnn(#[from] EvalError),
    /// The metrics could not be computed (no test images, mismatched scores).
    #[error(transparent)]
    Metrics(#[from] super::metrics::MetricsError),
    /// The probe failed.
    #[error("linear probe: {0}")]
    Probe(String),
    /// The settings do not fit the data.
    #[error("{0}")]
    Config(String),
    /// A report file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A plot could not be drawn.
    #[error("plot {path}: {message}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// A class of the test set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClassInfo {
    /// Its folder name.
    pub folder: String,
    /// The name CLIP's prompts use.
    pub name: String,
}

/// The CNN's record of its own training, as a sign of over-fitting.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainingGap {
    /// Last epoch.
    pub epoch: usize,
    /// Training accuracy (augmented crops) in that epoch.
    pub train_acc: f64,
    /// Validation accuracy after it.
    pub val_acc: f64,
    /// `train_acc - val_acc`.
    pub gap: f64,
}

/// One model's results on the test set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelReport {
    /// A name for tables.
    pub name: String,
    /// `clip-zero-shot`, `clip-head` (a fine-tuned classification head) or `cnn`.
    pub kind: String,
    /// The model folder or run folder.
    pub source: String,
    /// How CLIP's labels became prompts (CLIP models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Images scored.
    pub n: usize,
    /// Top-1 accuracy.
    pub top1: f64,
    /// 95% bootstrap confidence interval of top-1.
    pub top1_ci: [f64; 2],
    /// Top-k accuracy with k = `top5_k` (5, or the number of classes when fewer).
    pub top5: f64,
    /// The k of `top5`.
    pub top5_k: usize,
    /// Unweighted mean of the per-class F1 scores.
    pub macro_f1: f64,
    /// Per-class recall (accuracy), precision and F1.
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`, classes in the report's order.
    pub confusion: Vec<Vec<usize>>,
    /// Wall time per image on this machine: preprocessing and the model, in batches
    /// (decoding, done once for all models, and text embeddings, computed once, excluded).
    pub latency_ms_per_image: f64,
    /// Images per second, the same measurement.
    pub images_per_sec: f64,
    /// Bytes of weights on disk.
    pub size_bytes: u64,
    /// For a CNN: training accuracy against validation accuracy in its last epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training_gap: Option<TrainingGap>,
    /// For a CNN: its metrics per epoch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learning_curve: Vec<EpochMetrics>,
    /// With the study's abstain threshold, on the test set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abstain: Option<AbstainOutcome>,
}

/// One prompt variant of one CLIP model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PromptVariant {
    /// The CLIP model.
    pub model: String,
    /// The variant's name.
    pub name: String,
    /// Its templates (80 for the ensemble).
    pub templates: Vec<String>,
    /// Top-1 on the test set.
    pub top1: f64,
}

/// The linear probe of one CLIP model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The CLIP model.
    pub model: String,
    /// Training images used.
    pub train_images: usize,
    /// The chosen L2 strength.
    pub lambda: f64,
    /// The sweep: (lambda, validation top-1).
    pub lambdas: Vec<(f64, f64)>,
    /// Validation top-1 at the chosen strength.
    pub val_top1: f64,
    /// Top-1 on the test set.
    pub top1: f64,
    /// Its 95% bootstrap interval.
    pub top1_ci: [f64; 2],
}

/// The few-shot curve of one CLIP model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FewShotReport {
    /// The CLIP model.
    pub model: String,
    /// The L2 strength used (the full probe's).
    pub lambda: f64,
    /// Top-1 by shots per class.
    pub points: Vec<FewShotPoint>,
    /// The smallest shot count whose mean reaches each CNN's top-1 (None: not reached).
    pub shots_to_match: Vec<(String, Option<usize>)>,
}

/// How the CNN answers on classes it never saw.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpenSetCnn {
    /// The run.
    pub name: String,
    /// Mean top probability on the unseen-class images (it must pick a known class).
    pub mean_confidence: f64,
    /// Share of them answered with probability at least 0.5.
    pub confident_share: f64,
    /// How often each known class was answered.
    pub answers: Vec<(String, usize)>,
    /// With the abstain threshold, over test and unseen images together.
    pub abstain: AbstainOutcome,
}

/// How CLIP answers on the unseen classes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpenSetClip {
    /// The CLIP model.
    pub model: String,
    /// Given the new class names as well: top-1 on the unseen-class images.
    pub named_top1: f64,
    /// Given the new names: top-1 on the test images (more labels to confuse).
    pub named_test_top1: f64,
    /// Given only the known names and the abstain threshold, over test and unseen
    /// images together: right when a known image is answered right or an unseen one
    /// abstained on.
    pub abstain: AbstainOutcome,
    /// Given only the known names, no abstaining: every unseen image is wrong.
    pub forced_accuracy: f64,
}

/// The open-set part.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpenSetReport {
    /// The folder of unseen classes.
    pub data: String,
    /// Their names.
    pub classes: Vec<ClassInfo>,
    /// Images in it.
    pub images: usize,
    /// The abstain threshold used.
    pub threshold: f64,
    /// CNN runs.
    pub cnn: Vec<OpenSetCnn>,
    /// CLIP models.
    pub clip: Vec<OpenSetClip>,
}

/// One test image's answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Prediction {
    /// Path relative to the test folder.
    pub image: String,
    /// Its class index.
    pub truth: usize,
    /// Per model (in `models` order): predicted class index and its probability.
    pub answers: Vec<(usize, f64)>,
}

/// `report.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Format version.
    pub version: u32,
    /// The test folder.
    pub data: String,
    /// The machine the timings come from.
    pub machine: String,
    /// Classes, in index order.
    pub classes: Vec<ClassInfo>,
    /// Test images, relative to `data`, in order.
    pub images: Vec<String>,
    /// Unreadable test files skipped (for every model alike).
    pub skipped: usize,
    /// The models.
    pub models: Vec<ModelReport>,
    /// The prompt study.
    pub prompt_variants: Vec<PromptVariant>,
    /// Linear probes, when `--train` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear_probe: Option<Vec<ProbeReport>>,
    /// Few-shot curves, when `--train` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub few_shot: Option<Vec<FewShotReport>>,
    /// The open-set part, when `--open-set` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_set: Option<OpenSetReport>,
    /// Every test image's answers.
    pub predictions: Vec<Prediction>,
}

/// Progress of the study, for a bar on stderr.
#[derive(Clone, Debug)]
pub enum StudyEvent {
    /// A phase starts, with the number of items it works through.
    Phase(String, usize),
    /// Items done in the current phase.
    Done(usize),
}

/// Decoded pictures with their classes (unreadable files dropped and counted).
struct Pictures {
    paths: Vec<PathBuf>,
    images: Vec<DynamicImage>,
    labels: Vec<usize>,
    skipped: usize,
}

fn decode(set: &Dataset) -> Pictures {
    use rayon::prelude::*;
    let decoded: Vec<Option<DynamicImage>> = set
        .samples
        .par_iter()
        .map(|s| {
            load_image(&s.path)
                .map_err(|e| tracing::warn!("skipped: {e}"))
                .ok()
        })
        .collect();
    let mut out = Pictures {
        paths: Vec::new(),
        images: Vec::new(),
        labels: Vec::new(),
        skipped: 0,
    };
    for (s, img) in set.samples.iter().zip(decoded) {
        match img {
            Some(img) => {
                out.paths.push(s.path.clone());
                out.images.push(img);
                out.labels.push(s.label);
            }
            None => out.skipped += 1,
        }
    }
    out
}

/// Class names for prompts: WordNet ids by their names, underscores and hyphens as
/// spaces, and `folder,name` lines of `classes_file` over both.
pub fn class_names(
    folders: &[String],
    classes_file: Option<&Path>,
) -> Result<Vec<ClassInfo>, StudyError> {
    let mut names: Vec<ClassInfo> = folders
        .iter()
        .map(|f| ClassInfo {
            folder: f.clone(),
            name: display_name(f).replace(['_', '-'], " "),
        })
        .collect();
    if let Some(path) = classes_file {
        let text = std::fs::read_to_string(path).map_err(|source| StudyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((folder, name)) = line.split_once([',', '\t']) else {
                return Err(StudyError::Config(format!(
                    "{}: line {}: expected `folder,name`",
                    path.display(),
                    i + 1
                )));
            };
            let (folder, name) = (folder.trim(), name.trim());
            match names.iter_mut().find(|c| c.folder == folder) {
                Some(c) if !name.is_empty() => c.name = name.to_string(),
                _ => {
                    return Err(StudyError::Config(format!(
                        "{}: line {}: {folder:?} is not a class folder of the test set",
                        path.display(),
                        i + 1
                    )))
                }
            }
        }
    }
    Ok(names)
}

/// Warns when two class folders go by one name (a --classes file, or folders that only
/// differ in `_` and `-`): CLIP is then asked the same question for both, and neither
/// can be told from the other.
fn warn_shared_names(classes: &[ClassInfo]) {
    for (i, c) in classes.iter().enumerate() {
        if let Some(first) = classes[..i].iter().find(|o| o.name == c.name) {
            tracing::warn!(
                "class folders {:?} and {:?} are both named {:?}: CLIP's prompts cannot tell them apart; give each its own name (--classes)",
                first.folder,
                c.folder,
                c.name
            );
        }
    }
}

/// The open-set folder's pictures, scanned before any work, refused when it shares a
/// class folder with the test set: the open-set part measures answers to classes the
/// models never saw.
fn open_set(dir: &Path, test_classes: &[String]) -> Result<Dataset, StudyError> {
    let set = scan_folder(dir)?;
    if let Some(shared) = set.classes.iter().find(|c| test_classes.contains(c)) {
        return Err(StudyError::Config(format!(
            "--open-set {}: its class folder {shared:?} is also a class of the test set; give classes the models were not trained on",
            dir.display()
        )));
    }
    Ok(set)
}

/// The CPU's model name, for the report.
fn machine() -> String {
    format!(
        "{}, {} threads",
        crate::util::cpu_model(),
        rayon::current_num_threads()
    )
}

/// Image embeddings of all pictures, and the wall time per image.
fn embed(
    clip: &Clip,
    pictures: &Pictures,
    on: &mut dyn FnMut(StudyEvent),
) -> Result<(Vec<Embedding>, f64), StudyError> {
    let started = Instant::now();
    let mut out = Vec::with_capacity(pictures.images.len());
    for chunk in pictures.images.chunks(32) {
        let refs: Vec<&DynamicImage> = chunk.iter().collect();
        out.extend(clip.embed_images(&refs)?);
        on(StudyEvent::Done(out.len()));
    }
    let per_image = started.elapsed().as_secs_f64() / pictures.images.len().max(1) as f64;
    Ok((out, per_image))
}

/// Per-image probabilities over a label set.
fn zero_shot_scores(embeddings: &[Embedding], labels: &LabelSet, scale: f32) -> Vec<Vec<f32>> {
    embeddings
        .iter()
        .map(|e| {
            probabilities(e, labels, scale)
                .into_iter()
                .map(|p| p as f32)
                .collect()
        })
        .collect()
}

fn top1_of(scores: &[Vec<f32>], truth: &[usize]) -> f64 {
    let hits = scores
        .iter()
        .zip(truth)
        .filter(|(s, &t)| argmax(s) == t)
        .count();
    hits as f64 / truth.len().max(1) as f64
}

/// The predicted class of a score row, with the study's tie and NaN rules (0 for an
/// empty row, which the metrics reject before it matters).
fn argmax(s: &[f32]) -> usize {
    super::metrics::argmax(s).unwrap_or(0)
}

fn top_k(scores: &[Vec<f32>], truth: &[usize], k: usize) -> f64 {
    let hits = scores
        .iter()
        .zip(truth)
        .filter(|(s, &t)| s.iter().filter(|&&v| v > s[t]).count() < k)
        .count();
    hits as f64 / truth.len().max(1) as f64
}

/// The model report of one set of scores.
#[allow(clippy::too_many_arguments)]
fn model_report(
    cfg: &CompareConfig,
    name: &str,
    kind: &str,
    source: &str,
    classes: &[String],
    truth: &[usize],
    scores: &[Vec<f32>],
    seconds_per_image: f64,
    size_bytes: u64,
) -> Result<ModelReport, StudyError> {
    let m = metrics(classes, truth, scores, cfg.bootstrap, cfg.seed)?;
    let k = classes.len().min(5);
    Ok(ModelReport {
        name: name.to_string(),
        kind: kind.to_string(),
        source: source.to_string(),
        prompt: None,
        n: m.n,
        top1: m.top1,
        top1_ci: m.top1_ci,
        top5: top_k(scores, truth, k),
        top5_k: k,
        macro_f1: m.macro_f1,
        per_class: m.per_class,
        confusion: m.confusion,
        latency_ms_per_image: seconds_per_image * 1000.0,
        images_per_sec: 1.0 / seconds_per_image.max(1e-12),
        size_bytes,
        training_gap: None,
        learning_curve: Vec::new(),
        abstain: cfg
            .abstain
            .map(|p| {
                let t: Vec<Option<usize>> = truth.iter().map(|&t| Some(t)).collect();
                abstain(&t, scores, p)
            })
            .transpose()?,
    })
}

/// Per-image class probabilities, in the report's class order.
type Scores = Vec<Vec<f32>>;

/// A CNN in the study: its table name, the classifier, its class index for each test
/// class, and its test scores.
type CnnRun = (String, CnnClassifier, Vec<usize>, Scores);

/// A CLIP model's results: embeddings once, every prompt variant from them.
struct ClipRun {
    name: String,
    clip: Clip,
    test: Vec<Embedding>,
}

/// Run the study; returns the report (the caller writes it with [`write_outputs`]).
pub fn compare(cfg: &CompareConfig, on: &mut dyn FnMut(StudyEvent)) -> Result<Report, StudyError> {
    if cfg.clip_models.is_empty() && cfg.cnn_runs.is_empty() {
        return Err(StudyError::Config(
            "give at least one CLIP model or --cnn run".into(),
        ));
    }
    let test_set = held_out(&cfg.data)?;
    let classes = class_names(&test_set.classes, cfg.classes_file.as_deref())?;
    let folders: Vec<String> = classes.iter().map(|c| c.folder.clone()).collect();
    let names: Vec<String> = classes.iter().map(|c| c.name.clone()).collect();
    warn_shared_names(&classes);
    let unseen = match &cfg.open_set {
        Some(dir) => Some(open_set(dir, &folders)?),
        None => None,
    };
    on(StudyEvent::Phase(
        "decoding test images".into(),
        test_set.samples.len(),
    ));
    let pictures = decode(&test_set);
    if pictures.images.is_empty() {
        return Err(StudyError::Config(format!(
            "{}: no readable test images",
            cfg.data.display()
        )));
    }
    let truth = pictures.labels.clone();
    let mut models = Vec::new();
    // Each model's scores, in `models` order, for predictions.csv.
    let mut model_scores: Vec<Vec<Vec<f32>>> = Vec::new();
    let mut prompt_variants = Vec::new();
    let mut clip_runs = Vec::new();

    for files in &cfg.clip_models {
        on(StudyEvent::Phase(
            format!("{}: embedding test images", files.name),
            pictures.images.len(),
        ));
        let clip = files.load(cfg.device.clone())?;
        let (test, per_image) = embed(&clip, &pictures, on)?;
        let scale = clip.logit_scale();
        let mut main_scores = Vec::new();
        for (variant, template) in PROMPT_VARIANTS {
            let style = PromptStyle::template(template)?;
            let scores = zero_shot_scores(&test, &LabelSet::build(&clip, &names, &style)?, scale);
            prompt_variants.push(PromptVariant {
                model: files.name.clone(),
                name: variant.to_string(),
                templates: vec![template.to_string()],
                top1: top1_of(&scores, &truth),
            });
            if template == MAIN_TEMPLATE {
                main_scores = scores;
            }
        }
        let ensemble = PromptStyle::ensemble("imagenet80")?;
        let scores = zero_shot_scores(&test, &LabelSet::build(&clip, &names, &ensemble)?, scale);
        prompt_variants.push(PromptVariant {
            model: files.name.clone(),
            name: "ensemble: OpenAI's 80 ImageNet templates".into(),
            templates: ensemble.prompts("{}"),
            top1: top1_of(&scores, &truth),
        });
        let mut report = model_report(
            cfg,
            &files.name,
            "clip-zero-shot",
            &files.weights_path().display().to_string(),
            &folders,
            &truth,
            &main_scores,
            per_image,
            files.weights_bytes(),
        )?;
        report.prompt = Some(MAIN_TEMPLATE.to_string());
        models.push(report);
        model_scores.push(main_scores.clone());
        if let Some((head, scores)) =
            head_report(cfg, files, &clip, &test, &folders, &truth, per_image)?
        {
            models.push(head);
            model_scores.push(scores);
        }
        clip_runs.push(ClipRun {
            name: files.name.clone(),
            clip,
            test,
        });
    }

    let mut cnns = Vec::new();
    for run in &cfg.cnn_runs {
        on(StudyEvent::Phase(
            format!("{}: classifying test images", run.display()),
            pictures.images.len(),
        ));
        let cnn = CnnClassifier::load_on(run, cfg.device.clone())?;
        let remap = class_map(&cnn, &folders, run)?;
        let started = Instant::now();
        let scores = cnn_scores(&cnn, &pictures.images, &remap, on)?;
        let per_image = started.elapsed().as_secs_f64() / pictures.images.len() as f64;
        let meta = cnn.meta();
        let name = format!("{} ({})", meta.config.model, run_name(run));
        let size = std::fs::metadata(run.join(&meta.weights))
            .map(|m| m.len())
            .unwrap_or(0);
        let mut report = model_report(
            cfg,
            &name,
            "cnn",
            &run.display().to_string(),
            &folders,
            &truth,
            &scores,
            per_image,
            size,
        )?;
        report.training_gap = meta.metrics.last().map(|m| TrainingGap {
            epoch: m.epoch,
            train_acc: m.train_acc,
            val_acc: m.val_acc,
            gap: m.train_acc - m.val_acc,
        });
        report.learning_curve = meta.metrics.clone();
        models.push(report);
        model_scores.push(scores.clone());
        cnns.push((name, cnn, remap, scores));
    }

    let (linear_probe, few_shot) = match &cfg.train {
        Some(train) if !clip_runs.is_empty() => {
            let (p, f) = probe_all(cfg, train, &folders, &clip_runs, &truth, &models, on)?;
            (Some(p), Some(f))
        }
        _ => (None, None),
    };
    let open_set = match (&cfg.open_set, &unseen) {
        (Some(dir), Some(set)) => Some(open_set_part(
            cfg, dir, set, &names, &truth, &clip_runs, &cnns, on,
        )?),
        _ => None,
    };

    let images: Vec<String> = pictures
        .paths
        .iter()
        .map(|p| p.strip_prefix(&cfg.data).unwrap_or(p).display().to_string())
        .collect();
    let predictions = images
        .iter()
        .enumerate()
        .map(|(i, image)| Prediction {
            image: image.clone(),
            truth: truth[i],
            answers: model_scores
                .iter()
                .map(|s| {
                    let k = argmax(&s[i]);
                    (k, f64::from(s[i][k]))
                })
                .collect(),
        })
        .collect();
    Ok(Report {
        version: REPORT_VERSION,
        data: cfg.data.display().to_string(),
        machine: machine(),
        classes,
        images,
        skipped: pictures.skipped,
        models,
        prompt_variants,
        linear_probe,
        few_shot,
        open_set,
        predictions,
    })
}

fn run_name(run: &Path) -> String {
    run.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| run.display().to_string())
}

/// For each test class, the CNN's class index.
fn class_map(
    cnn: &CnnClassifier,
    folders: &[String],
    run: &Path,
) -> Result<Vec<usize>, StudyError> {
    folders
        .iter()
        .map(|f| {
            cnn.meta()
                .classes
                .iter()
                .position(|c| c == f)
                .ok_or_else(|| {
                    StudyError::Config(format!(
                        "{}: the CNN was not trained on class {f:?} of the test set (it knows {})",
                        run.display(),
                        cnn.meta().classes.join(", ")
                    ))
                })
        })
        .collect()
}

/// CNN probabilities over the test classes (its other classes count as wrong answers:
/// their probability stays out, so the argmax is among the test classes only when the
/// CNN's own top answer is one of them).
fn cnn_scores(
    cnn: &CnnClassifier,
    images: &[DynamicImage],
    remap: &[usize],
    on: &mut dyn FnMut(StudyEvent),
) -> Result<Vec<Vec<f32>>, StudyError> {
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(32) {
        let crops: Vec<_> = chunk.iter().map(|i| cnn.crop(i)).collect();
        for row in cnn.probabilities(&crops)? {
            out.push(remap.iter().map(|&k| row[k]).collect());
        }
        on(StudyEvent::Done(out.len()));
    }
    Ok(out)
}

/// A fine-tuned classification head on the same classes, scored as its own model.
fn head_report(
    cfg: &CompareConfig,
    files: &ModelFiles,
    clip: &Clip,
    test: &[Embedding],
    folders: &[String],
    truth: &[usize],
    per_image: f64,
) -> Result<Option<(ModelReport, Scores)>, StudyError> {
    let crate::clip::WeightsSource::File(path) = &files.weights else {
        return Ok(None);
    };
    let Some(dir) = path.parent() else {
        return Ok(None);
    };
    let Some((info, weight)) = load_head(dir, clip.device())? else {
        return Ok(None);
    };
    let rows: Vec<Vec<f32>> = weight.to_vec2::<f32>().map_err(ClipError::from)?;
    let order: Option<Vec<usize>> = folders
        .iter()
        .map(|f| info.classes.iter().position(|c| c == f))
        .collect();
    let Some(order) = order else {
        return Ok(None);
    };
    let set = LabelSet {
        labels: order.iter().map(|&k| info.names[k].clone()).collect(),
        embeddings: order.iter().map(|&k| rows[k].clone()).collect(),
    };
    let scores = zero_shot_scores(test, &set, info.logit_scale);
    let mut r = model_report(
        cfg,
        &format!("{} (fine-tuned head)", files.name),
        "clip-head",
        &dir.display().to_string(),
        folders,
        truth,
        &scores,
        per_image,
        files.weights_bytes(),
    )?;
    r.prompt = Some(format!("head initialised from {:?}", info.template));
    Ok(Some((r, scores)))
}

#[allow(clippy::too_many_arguments)]
fn probe_all(
    cfg: &CompareConfig,
    train: &Path,
    folders: &[String],
    runs: &[ClipRun],
    truth: &[usize],
    models: &[ModelReport],
    on: &mut dyn FnMut(StudyEvent),
) -> Result<(Vec<ProbeReport>, Vec<FewShotReport>), StudyError> {
    let train_set = train_set(train)?;
    let remap: Vec<Option<usize>> = train_set
        .classes
        .iter()
        .map(|c| folders.iter().position(|f| f == c))
        .collect();
    let pictures = decode(&train_set);
    let keep: Vec<usize> = (0..pictures.labels.len())
        .filter(|&i| remap[pictures.labels[i]].is_some())
        .collect();
    if keep.is_empty() {
        return Err(StudyError::Config(format!(
            "{}: no training images of the test set's classes",
            train.display()
        )));
    }
    let train_y: Vec<usize> = keep
        .iter()
        .filter_map(|&i| remap[pictures.labels[i]])
        .collect();
    let cnn_lines: Vec<(String, f64)> = models
        .iter()
        .filter(|m| m.kind == "cnn")
        .map(|m| (m.name.clone(), m.top1))
        .collect();
    let (mut probes, mut curves) = (Vec::new(), Vec::new());
    for run in runs {
        on(StudyEvent::Phase(
            format!("{}: embedding training images", run.name),
            pictures.images.len(),
        ));
        let (all, _) = embed(&run.clip, &pictures, on)?;
        let train_x: Vec<Vec<f32>> = keep.iter().map(|&i| all[i].clone()).collect();
        on(StudyEvent::Phase(
            format!("{}: linear probe and few-shot", run.name),
            1,
        ));
        let probe = linear_probe(&train_x, &train_y, folders.len(), 0.2, cfg.seed)
            .map_err(|e| StudyError::Probe(e.to_string()))?;
        let scores = probe
            .scores(&run.test)
            .map_err(|e| StudyError::Probe(e.to_string()))?;
        let m = metrics(folders, truth, &scores, cfg.bootstrap, cfg.seed)?;
        probes.push(ProbeReport {
            model: run.name.clone(),
            train_images: train_x.len(),
            lambda: probe.lambda,
            lambdas: probe.lambdas.clone(),
            val_top1: probe.val_top1,
            top1: m.top1,
            top1_ci: m.top1_ci,
        });
        let points = few_shot(
            &train_x,
            &train_y,
            &run.test,
            truth,
            folders.len(),
            &cfg.shots,
            cfg.few_shot_seeds,
            probe.lambda,
            cfg.seed,
        )
        .map_err(|e| StudyError::Probe(e.to_string()))?;
        let shots_to_match = cnn_lines
            .iter()
            .map(|(name, top1)| {
                let k = points.iter().find(|p| p.mean >= *top1).map(|p| p.shots);
                (name.clone(), k)
            })
            .collect();
        curves.push(FewShotReport {
            model: run.name.clone(),
            lambda: probe.lambda,
            points,
            shots_to_match,
        });
        on(StudyEvent::Done(1));
    }
    Ok((probes, curves))
}

/// A training folder's images: its `train/` when it has one, the split manifest's
/// training list when it has one, else all of it.
fn train_set(root: &Path) -> Result<Dataset, StudyError> {
    if root.join("train").is_dir() {
        return Ok(scan_folder(&root.join("train"))?);
    }
    if let Some((seed, fraction)) = crate::data::folder::split_settings(root)? {
        return Ok(crate::data::load_split(root, None, seed, fraction)?.train);
    }
    Ok(scan_folder(root)?)
}

#[allow(clippy::too_many_arguments)]
fn open_set_part(
    cfg: &CompareConfig,
    dir: &Path,
    set: &Dataset,
    known: &[String],
    truth: &[usize],
    runs: &[ClipRun],
    cnns: &[CnnRun],
    on: &mut dyn FnMut(StudyEvent),
) -> Result<OpenSetReport, StudyError> {
    let new_classes = class_names(&set.classes, None)?;
    let pictures = decode(set);
    let threshold = cfg.abstain.unwrap_or(0.5);
    // Over test and unseen images together: known images keep their class, unseen ones
    // have none.
    let joint_truth: Vec<Option<usize>> = truth
        .iter()
        .map(|&t| Some(t))
        .chain(pictures.labels.iter().map(|_| None))
        .collect();
    let mut cnn_out = Vec::new();
    for (name, cnn, remap, test_scores) in cnns {
        on(StudyEvent::Phase(
            format!("{name}: unseen classes"),
            pictures.images.len(),
        ));
        let mut scores = Vec::new();
        for chunk in pictures.images.chunks(32) {
            let crops: Vec<_> = chunk.iter().map(|i| cnn.crop(i)).collect();
            scores.extend(cnn.probabilities(&crops)?);
        }
        let top: Vec<(usize, f32)> = scores
            .iter()
            .map(|s| {
                let k = argmax(s);
                (k, s[k])
            })
            .collect();
        let n = top.len().max(1) as f64;
        let mut answers: Vec<(String, usize)> = cnn
            .meta()
            .class_names
            .iter()
            .map(|c| (c.clone(), 0))
            .collect();
        for (k, _) in &top {
            answers[*k].1 += 1;
        }
        let unseen: Vec<Vec<f32>> = scores
            .iter()
            .map(|row| remap.iter().map(|&k| row[k]).collect())
            .collect();
        let joint: Vec<Vec<f32>> = test_scores.iter().cloned().chain(unseen).collect();
        cnn_out.push(OpenSetCnn {
            name: name.clone(),
            mean_confidence: top.iter().map(|t| f64::from(t.1)).sum::<f64>() / n,
            confident_share: top.iter().filter(|t| t.1 >= 0.5).count() as f64 / n,
            answers,
            abstain: abstain(&joint_truth, &joint, threshold)?,
        });
    }
    let mut clip_out = Vec::new();
    let new_names: Vec<String> = new_classes.iter().map(|c| c.name.clone()).collect();
    let all_names: Vec<String> = known
        .iter()
        .cloned()
        .chain(new_names.iter().cloned())
        .collect();
    for run in runs {
        on(StudyEvent::Phase(
            format!("{}: unseen classes", run.name),
            pictures.images.len(),
        ));
        let (unseen, _) = embed(&run.clip, &pictures, on)?;
        let scale = run.clip.logit_scale();
        let style = PromptStyle::template(MAIN_TEMPLATE)?;
        let named = LabelSet::build(&run.clip, &all_names, &style)?;
        let unseen_truth: Vec<usize> = pictures.labels.iter().map(|&l| known.len() + l).collect();
        let named_top1 = top1_of(&zero_shot_scores(&unseen, &named, scale), &unseen_truth);
        let named_test_top1 = top1_of(&zero_shot_scores(&run.test, &named, scale), truth);
        let known_set = LabelSet::build(&run.clip, known, &style)?;
        let joint: Vec<Vec<f32>> = zero_shot_scores(&run.test, &known_set, scale)
            .into_iter()
            .chain(zero_shot_scores(&unseen, &known_set, scale))
            .collect();
        let forced_hits = truth
            .iter()
            .zip(&joint)
            .filter(|(t, s)| argmax(s) == **t)
            .count();
        clip_out.push(OpenSetClip {
            model: run.name.clone(),
            named_top1,
            named_test_top1,
            abstain: abstain(&joint_truth, &joint, threshold)?,
            forced_accuracy: forced_hits as f64 / joint.len().max(1) as f64,
        });
    }
    Ok(OpenSetReport {
        data: dir.display().to_string(),
        classes: new_classes,
        images: pictures.images.len(),
        threshold,
        cnn: cnn_out,
        clip: clip_out,
    })
}
