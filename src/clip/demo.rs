//! The demo CLIP: a small CLIP that clipscope trains from scratch on captioned pictures
//! of coloured shapes it generates itself ([`crate::data::scenes`]), and ships.
//!
//! It is a toy: it knows about a dozen words (six shapes, ten colours, sizes, positions,
//! backgrounds) and nothing of the photographs OpenAI's CLIP was trained on. It exists so
//! that clipscope gives real, checkable zero-shot answers offline on the first run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;

use super::config::ClipConfig;
use super::model::ClipModel;
use super::preprocess::{center_crop_rgb, normalize_chw, PreprocessConfig};
use super::tokenizer::{id_batch, ClipTokenizer, Tokens};
use super::train::{clip_logits, contrastive_loss, ClipOptimizer, Params};
use super::ClipError;
use crate::cnn::optim::cosine_lr;
use crate::cnn::rng::Rng;
use crate::data::scenes::{self, Mentions, Sample, Scene, COLOURS, HELD_OUT, SHAPES};

/// The demo model's architecture, in Hugging Face `config.json` form (the committed
/// `models/demo/config.json`): a ViT on 64-pixel pictures in 8-pixel patches (4 blocks,
/// width 128) and a text transformer (4 blocks, width 64) over OpenAI's full BPE
/// vocabulary, meeting in a 64-dimensional space.
pub const DEMO_CONFIG_JSON: &str = include_str!("../../models/demo/config.json");
/// The demo model's weights (f16), compiled into the binary.
const DEMO_WEIGHTS: &[u8] = include_bytes!("../../models/demo/model.safetensors");
/// CLIP's BPE tokenizer (OpenAI's vocabulary as a Hugging Face `tokenizer.json`).
pub const DEMO_TOKENIZER: &[u8] = include_bytes!("../../models/demo/tokenizer.json");
/// A picture to open the app on when nothing else is given.
pub const DEMO_PICTURE: &[u8] = include_bytes!("../../models/demo/pictures/red-circle.png");

/// Every bundled demo picture, `(file name, PNG bytes)`, the first being
/// [`DEMO_PICTURE`]: the app's first start puts them in one folder to page through.
pub const DEMO_PICTURES: [(&str, &[u8]); 6] = [
    ("red-circle.png", DEMO_PICTURE),
    (
        "blue-square.png",
        include_bytes!("../../models/demo/pictures/blue-square.png"),
    ),
    (
        "blue-triangle.png",
        include_bytes!("../../models/demo/pictures/blue-triangle.png"),
    ),
    (
        "green-square.png",
        include_bytes!("../../models/demo/pictures/green-square.png"),
    ),
    (
        "red-triangle.png",
        include_bytes!("../../models/demo/pictures/red-triangle.png"),
    ),
    (
        "yellow-circle.png",
        include_bytes!("../../models/demo/pictures/yellow-circle.png"),
    ),
];
/// Labels that fit [`DEMO_PICTURE`] and the other demo pictures.
pub const DEMO_LABELS: &str = "a red circle,a green square,a blue triangle,a yellow circle";

/// The built-in demo model's files.
pub fn files() -> Result<super::ModelFiles, ClipError> {
    super::ModelFiles::from_static(
        crate::hub::DEMO_MODEL,
        DEMO_CONFIG_JSON,
        DEMO_WEIGHTS,
        DEMO_TOKENIZER,
    )
}

/// The demo model's tokenizer (OpenAI's BPE), for prompts of up to `context` tokens.
pub fn tokenizer(context: usize) -> Result<ClipTokenizer, ClipError> {
    ClipTokenizer::from_bytes(
        DEMO_TOKENIZER,
        context,
        Path::new("models/demo/tokenizer.json"),
    )
}

/// The twelve colour-shape labels the demo model is judged on (template `{}`).
pub fn benchmark_labels() -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    for shape in ["circle", "square", "triangle"] {
        for colour in ["red", "green", "blue", "yellow"] {
            let s = SHAPES.iter().position(|&x| x == shape).unwrap_or(0);
            let c = COLOURS.iter().position(|&x| x == colour).unwrap_or(0);
            out.push((s, c, format!("a {colour} {shape}")));
        }
    }
    out
}

/// Settings of a demo training run.
#[derive(Clone, Debug, Serialize)]
pub struct DemoTrainOptions {
    /// Optimiser steps.
    pub steps: usize,
    /// Image-caption pairs per step.
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Weight decay on matrices.
    pub weight_decay: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Seed for the weights and the data stream.
    pub seed: u64,
    /// Evaluate the twelve-label benchmark every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Steps drawn at variety 0 (large, centred, upright shapes on clean backgrounds)
    /// before the full mix: a ViT from scratch finds shapes much sooner on easy pictures.
    pub easy_steps: usize,
    /// Start the vision position embeddings as a 2-D sine-cosine grid
    /// ([`sincos_positions`]) instead of random values.
    pub sincos_positions: bool,
    /// Add each caption again with its shape swapped for this many other shapes, as
    /// negatives ([`scenes::with_shape`]): colour alone then cannot match a picture to
    /// its caption. 0: none.
    pub shape_negatives: usize,
}

impl Default for DemoTrainOptions {
    fn default() -> Self {
        Self {
            steps: 2400,
            batch_size: 64,
            lr: 1e-3,
            weight_decay: 0.1,
            warmup: 100,
            seed: 0,
            eval_every: 300,
            easy_steps: 600,
            sincos_positions: false,
            shape_negatives: 5,
        }
    }
}

/// Progress of a demo training run.
#[derive(Clone, Debug)]
pub enum DemoEvent {
    /// One step.
    Step {
        /// 1-based step.
        step: usize,
        /// Steps in all.
        steps: usize,
        /// The batch's loss.
        loss: f64,
        /// Learning rate used.
        lr: f64,
        /// Pairs per second since the start.
        pairs_per_sec: f64,
    },
    /// Twelve-label accuracy on fresh pictures.
    Eval {
        /// After this many steps.
        step: usize,
        /// Top-1 accuracy.
        top1: f64,
    },
}

/// A batch of generated pairs, ready for the model.
struct PairBatch {
    pixels: Tensor,
    tokens: Vec<Tokens>,
    /// `(images, captions)`: 1 where the caption describes the picture.
    positives: Tensor,
}

/// Everything that turns samples into model inputs.
struct Inputs<'a> {
    tokenizer: &'a ClipTokenizer,
    pp: &'a PreprocessConfig,
    device: &'a Device,
}

impl Inputs<'_> {
    fn pixels(&self, images: &[&image::RgbImage]) -> candle_core::Result<Tensor> {
        let s = self.pp.image_size;
        let data: Vec<f32> = images
            .par_iter()
            .flat_map_iter(|img| {
                let crop = center_crop_rgb(&image::DynamicImage::ImageRgb8((*img).clone()), s);
                normalize_chw(&crop, self.pp)
            })
            .collect();
        Tensor::from_vec(data, (images.len(), 3, s, s), self.device)
    }

    /// The pictures of `samples` and their captions, followed by `negatives`: more
    /// captions with what they state, which need not describe any picture.
    fn batch(
        &self,
        samples: &[Sample],
        negatives: Vec<(String, Mentions)>,
    ) -> Result<PairBatch, ClipError> {
        let images: Vec<&image::RgbImage> = samples.iter().map(|s| &s.image).collect();
        let captions: Vec<(&str, &Mentions)> = samples
            .iter()
            .map(|s| (s.caption.as_str(), &s.mentions))
            .chain(negatives.iter().map(|(c, m)| (c.as_str(), m)))
            .collect();
        let tokens = captions
            .iter()
            .map(|(c, _)| self.tokenizer.encode(c))
            .collect::<Result<Vec<_>, _>>()?;
        let (n, m) = (samples.len(), captions.len());
        let mut pos = vec![0f32; n * m];
        for (i, img) in samples.iter().enumerate() {
            for (j, (_, stated)) in captions.iter().enumerate() {
                pos[i * m + j] = f32::from(u8::from(stated.fits(&img.scene)));
            }
        }
        Ok(PairBatch {
            pixels: self.pixels(&images)?,
            tokens,
            positives: Tensor::from_vec(pos, (n, m), self.device)?,
        })
    }
}

/// Samples for step `step` of the stream for `seed`: the same on every machine, and
/// independent of how many threads draw them.
fn draw_samples(
    seed: u64,
    step: usize,
    n: usize,
    variety: f64,
    held_out: &[(usize, usize)],
) -> Vec<Sample> {
    (0..n)
        .into_par_iter()
        .map(|i| {
            let mut rng = Rng::new(
                seed ^ ((step as u64) << 20 | i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D),
            );
            let scene = scenes::random_scene_with(&mut rng, held_out, variety);
            scenes::sample_with(scene, &mut rng, variety)
        })
        .collect()
}

/// Each caption of `samples` that names a shape, again with up to `count` other shapes
/// (drawn at random, all different) in its place: the same for `seed` and `step` on every
/// machine.
///
/// A swap never yields a held-out combination ("a blue heart" when blue hearts are held
/// out): no training picture shows one, so such a caption would only ever be a negative
/// and the model would learn to score it low, which is what the held-out measurement
/// must not be biased by.
fn shape_negatives(
    samples: &[Sample],
    count: usize,
    seed: u64,
    step: usize,
) -> Vec<(String, Mentions)> {
    let mut rng = Rng::new(seed ^ 0x5EED_0F5A_FE5E ^ (step as u64).wrapping_mul(0x9E37_79B9));
    let mut out = Vec::new();
    for s in samples {
        let Some(current) = s.mentions.shape else {
            continue;
        };
        let held_out = |k: usize| {
            s.mentions
                .colour
                .is_some_and(|c| HELD_OUT.contains(&(k, c)))
        };
        let mut others: Vec<usize> = (0..SHAPES.len())
            .filter(|&k| k != current && !held_out(k))
            .collect();
        for i in 0..count.min(others.len()) {
            let pick = i + rng.below(others.len() - i);
            others.swap(i, pick);
            out.extend(scenes::with_shape(&s.caption, &s.mentions, others[i]));
        }
    }
    out
}

/// Pictures of given scenes, drawn from the stream for `seed`.
pub fn draw_scenes(scenes_: &[Scene], seed: u64) -> Vec<image::RgbImage> {
    scenes_
        .par_iter()
        .enumerate()
        .map(|(i, scene)| {
            let mut rng = Rng::new(
                seed.wrapping_mul(0x9E37_79B9) ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
            );
            scenes::render(scene, &mut rng)
        })
        .collect()
}

/// Fresh scenes of the twelve benchmark combinations, `per_label` of each, with random
/// sizes, positions and backgrounds.
pub fn benchmark_scenes(per_label: usize, seed: u64) -> Vec<(Scene, usize)> {
    let mut rng = Rng::new(seed ^ 0xBE4C_4A11);
    let labels = benchmark_labels();
    let mut out = Vec::new();
    for (k, (shape, colour, _)) in labels.iter().enumerate() {
        for _ in 0..per_label {
            let mut s = scenes::random_scene(&mut rng, &[]);
            s.shape = *shape;
            s.colour = *colour;
            if (COLOURS[*colour], scenes::BACKGROUNDS[s.background]) == ("white", "white") {
                s.background = 2;
            }
            out.push((s, k));
        }
    }
    out
}

/// Text embeddings (normalised) of prompts with a training-mode or inference model.
fn text_embeddings(
    model: &ClipModel,
    inputs: &Inputs,
    prompts: &[String],
) -> Result<Tensor, ClipError> {
    let tokens = prompts
        .iter()
        .map(|p| inputs.tokenizer.encode(p))
        .collect::<Result<Vec<_>, _>>()?;
    let (ids, eot) = id_batch(&tokens, 0, 77, inputs.device)?;
    Ok(super::model::l2_normalize(
        &model.text_features(&ids, &eot)?,
    )?)
}

/// Top-1 accuracy of `model` on pictures labelled with indices into `prompts`.
fn accuracy(
    model: &ClipModel,
    inputs: &Inputs,
    images: &[image::RgbImage],
    truth: &[usize],
    prompts: &[String],
) -> Result<f64, ClipError> {
    let text = text_embeddings(model, inputs, prompts)?.detach();
    let mut correct = 0usize;
    for (chunk, labels) in images.chunks(64).zip(truth.chunks(64)) {
        let img = super::model::l2_normalize(
            &model.image_features(&inputs.pixels(&chunk.iter().collect::<Vec<_>>())?)?,
        )?;
        let pred = img.matmul(&text.t()?)?.argmax(1)?.to_vec1::<u32>()?;
        correct += pred
            .iter()
            .zip(labels)
            .filter(|(p, t)| **p as usize == **t)
            .count();
    }
    Ok(correct as f64 / images.len().max(1) as f64)
}

/// The twelve-label benchmark on `per_label` fresh pictures of each combination.
fn benchmark(
    model: &ClipModel,
    inputs: &Inputs,
    per_label: usize,
    seed: u64,
) -> Result<f64, ClipError> {
    let cases = benchmark_scenes(per_label, seed);
    let scenes_: Vec<Scene> = cases.iter().map(|c| c.0).collect();
    let truth: Vec<usize> = cases.iter().map(|c| c.1).collect();
    let images = draw_scenes(&scenes_, seed);
    let prompts: Vec<String> = benchmark_labels().into_iter().map(|l| l.2).collect();
    accuracy(model, inputs, &images, &truth, &prompts)
}

/// How a demo training run ended.
#[derive(Clone, Debug, Serialize)]
pub struct DemoOutcome {
    /// Steps done.
    pub steps: usize,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Pairs per second over the run.
    pub pairs_per_sec: f64,
    /// Final twelve-label top-1 on fresh pictures (seed `seed + 1`, 50 per label).
    pub benchmark_top1: f64,
    /// Whether it was stopped early.
    pub stopped: bool,
}

/// Train the demo model from scratch and write it to `output` as a Hugging Face style
/// folder (f16 weights; token embeddings of words never seen in training are zeroed,
/// so unknown words carry no noise and the file compresses).
pub fn train_demo(
    opts: &DemoTrainOptions,
    output: &Path,
    stop: &AtomicBool,
    on: &mut dyn FnMut(DemoEvent),
) -> Result<DemoOutcome, ClipError> {
    crate::util::retain_freed_memory();
    let outcome = run_demo_training(opts, output, stop, on);
    crate::util::trim_freed_memory();
    outcome
}

fn run_demo_training(
    opts: &DemoTrainOptions,
    output: &Path,
    stop: &AtomicBool,
    on: &mut dyn FnMut(DemoEvent),
) -> Result<DemoOutcome, ClipError> {
    let device = Device::Cpu;
    let config = ClipConfig::from_json(DEMO_CONFIG_JSON)?;
    let tokenizer = tokenizer(config.text.max_positions)?;
    let pp = PreprocessConfig::openai(config.vision.image_size);
    let inputs = Inputs {
        tokenizer: &tokenizer,
        pp: &pp,
        device: &device,
    };
    let params = Params::init(&config, opts.seed, &device)?;
    if opts.sincos_positions {
        let v = &config.vision;
        let grid = v.image_size / v.patch_size;
        let table = sincos_positions(grid, v.encoder.hidden_size, SINCOS_AMPLITUDE);
        let name = "vision_model.embeddings.position_embedding.weight";
        if let Some(var) = params.get(name) {
            var.set(&Tensor::from_vec(
                table,
                (grid * grid + 1, v.encoder.hidden_size),
                &device,
            )?)?;
        }
    }
    let model = params.model(&|_| true)?;
    let mut opt = ClipOptimizer::new(&params, &|_| true, opts.lr, opts.weight_decay);
    let mut seen_tokens = std::collections::BTreeSet::new();
    let started = Instant::now();
    let mut steps_done = 0;
    std::thread::scope(|scope| -> Result<(), ClipError> {
        // Pictures for the next step are drawn while this one computes: the renderer is
        // single-threaded work that would otherwise leave a core idle between steps.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let inputs = &inputs;
        scope.spawn(move || {
            for step in 0..opts.steps {
                let variety = if step < opts.easy_steps { 0.0 } else { 1.0 };
                let samples = draw_samples(opts.seed, step, opts.batch_size, variety, &HELD_OUT);
                let negatives = shape_negatives(&samples, opts.shape_negatives, opts.seed, step);
                if tx.send(inputs.batch(&samples, negatives)).is_err() {
                    break;
                }
            }
        });
        for step in 0..opts.steps {
            let lr = cosine_lr(opts.lr, step, opts.steps, opts.warmup);
            opt.set_lr(lr);
            let batch = rx
                .recv()
                .map_err(|_| ClipError::Config("the picture generator stopped".into()))??;
            for t in &batch.tokens {
                seen_tokens.extend(t.ids.iter().copied());
            }
            let (ids, eot) = id_batch(&batch.tokens, 0, config.text.max_positions, &device)?;
            let logits = clip_logits(
                &model.image_features(&batch.pixels)?,
                &model.text_features(&ids, &eot)?,
                model.logit_scale_tensor(),
            )?;
            let loss = contrastive_loss(&logits, Some(&batch.positives))?;
            opt.step(&loss.backward()?)?;
            params.clamp_logit_scale()?;
            steps_done = step + 1;
            on(DemoEvent::Step {
                step: steps_done,
                steps: opts.steps,
                loss: f64::from(loss.to_scalar::<f32>()?),
                lr,
                pairs_per_sec: (steps_done * opts.batch_size) as f64
                    / started.elapsed().as_secs_f64().max(1e-9),
            });
            if opts.eval_every > 0 && steps_done % opts.eval_every == 0 && steps_done < opts.steps {
                let top1 = benchmark(&model, inputs, 10, opts.seed.wrapping_add(1))?;
                on(DemoEvent::Eval {
                    step: steps_done,
                    top1,
                });
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        Ok(())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let top1 = benchmark(&model, &inputs, 50, opts.seed.wrapping_add(1))?;
    on(DemoEvent::Eval {
        step: steps_done,
        top1,
    });
    save_model_folder(&params, &seen_tokens, output)?;
    Ok(DemoOutcome {
        steps: steps_done,
        seconds,
        pairs_per_sec: (steps_done * opts.batch_size) as f64 / seconds.max(1e-9),
        benchmark_top1: top1,
        stopped: steps_done < opts.steps,
    })
}

/// Amplitude of the initial sine-cosine positions: their spread then matches that of the
/// patch embeddings at initialisation (weights of std 0.02 over 3 x 8 x 8 normalised
/// pixels: about 0.28, against 0.71 for a unit sine).
const SINCOS_AMPLITUDE: f32 = 0.4;

/// Position embeddings for a class token (zeros) and a `grid` x `grid` patch grid, row by
/// row: a quarter of the `dim` channels are sines of the column at geometric
/// frequencies, a quarter their cosines, and the other half the same of the row (the
/// fixed 2-D embedding of MAE, He et al. 2022, and of Beyer et al. 2022's plain ViT).
pub fn sincos_positions(grid: usize, dim: usize, amplitude: f32) -> Vec<f32> {
    let quarter = dim / 4;
    let mut out = vec![0f32; dim];
    for row in 0..grid {
        for col in 0..grid {
            let mut v = vec![0f32; dim];
            for k in 0..quarter {
                let omega = 1.0 / 10000f32.powf(k as f32 / quarter.max(1) as f32);
                let (x, y) = (col as f32 * omega, row as f32 * omega);
                v[k] = amplitude * x.sin();
                v[quarter + k] = amplitude * x.cos();
                v[2 * quarter + k] = amplitude * y.sin();
                v[3 * quarter + k] = amplitude * y.cos();
            }
            out.extend(v);
        }
    }
    out
}

/// Write `params` as a model folder: `config.json`, `model.safetensors` (f16), and the
/// tokenizer.
fn save_model_folder(
    params: &Params,
    seen_tokens: &std::collections::BTreeSet<u32>,
    output: &Path,
) -> Result<(), ClipError> {
    let io = |path: PathBuf| move |source| ClipError::Io { path, source };
    std::fs::create_dir_all(output).map_err(io(output.to_path_buf()))?;
    let mut tensors = params.tensors(DType::F16)?;
    let name = "text_model.embeddings.token_embedding.weight";
    if let Some(table) = tensors.get(name) {
        let (vocab, _) = table.dims2()?;
        let keep: Vec<f32> = (0..vocab as u32)
            .map(|i| f32::from(u8::from(seen_tokens.contains(&i))))
            .collect();
        let mask = Tensor::from_vec(keep, (vocab, 1), table.device())?.to_dtype(DType::F16)?;
        let zeroed = table.broadcast_mul(&mask)?;
        tensors.insert(name.to_string(), zeroed);
    }
    let weights = output.join("model.safetensors");
    let bytes = super::train::safetensors_bytes(&tensors)?;
    crate::util::write_atomic(&weights, &bytes).map_err(io(weights.clone()))?;
    for (file, bytes) in [
        ("config.json", DEMO_CONFIG_JSON.as_bytes()),
        ("tokenizer.json", DEMO_TOKENIZER),
    ] {
        crate::util::write_atomic(&output.join(file), bytes).map_err(io(output.join(file)))?;
    }
    Ok(())
}

/// Accuracy on one set of pictures.
#[derive(Clone, Debug, Serialize)]
pub struct SetScore {
    /// Pictures scored.
    pub n: usize,
    /// Top-1 accuracy.
    pub top1: f64,
    /// Per label, in label order.
    pub per_label: Vec<LabelScore>,
}

/// One label's share of a [`SetScore`].
#[derive(Clone, Debug, Serialize)]
pub struct LabelScore {
    /// The label.
    pub label: String,
    /// Its pictures.
    pub n: usize,
    /// Top-1 on them; none without pictures.
    pub top1: Option<f64>,
}

/// How the held-out colour-shape combinations fare against those seen in training.
#[derive(Clone, Debug, Serialize)]
pub struct BindingScore {
    /// The combinations kept out of training.
    pub held_out: Vec<String>,
    /// Top-1 among all 60 colour-shape labels, on pictures of held-out combinations.
    pub held_out_top1: f64,
    /// The same on pictures of trained combinations.
    pub trained_top1: f64,
    /// On held-out pictures: how often the predicted label has the right shape.
    pub held_out_shape_right: f64,
    /// On held-out pictures: how often the predicted label has the right colour.
    pub held_out_colour_right: f64,
}

/// The demo benchmark's results.
#[derive(Clone, Debug, Serialize)]
pub struct DemoEval {
    /// The model measured.
    pub model: String,
    /// Seed of the generated pictures.
    pub seed: u64,
    /// The twelve labels on generated pictures.
    pub benchmark: SetScore,
    /// Attribute binding on held-out combinations.
    pub binding: BindingScore,
    /// Class folders, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folders: Option<SetScore>,
}

fn label_of(shape: usize, colour: usize) -> String {
    format!("a {} {}", COLOURS[colour], SHAPES[shape])
}

/// Zero-shot top-1 predictions (label indices) of `clip` on `images` among `labels`
/// with the template `{}`.
fn predict(
    clip: &super::Clip,
    images: &[image::DynamicImage],
    labels: &[String],
) -> Result<Vec<usize>, ClipError> {
    let set = super::LabelSet::build(clip, labels, &super::PromptStyle::template("{}")?)?;
    let refs: Vec<&image::DynamicImage> = images.iter().collect();
    let scale = clip.logit_scale();
    Ok(clip
        .embed_images(&refs)?
        .iter()
        .map(|e| {
            let p = super::zeroshot::probabilities(e, &set, scale);
            (0..p.len())
                .max_by(|&a, &b| p[a].total_cmp(&p[b]))
                .unwrap_or(0)
        })
        .collect())
}

fn score(pred: &[usize], truth: &[usize], labels: &[String]) -> SetScore {
    let per_label = labels
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let (hit, n) = pred
                .iter()
                .zip(truth)
                .filter(|(_, t)| **t == k)
                .fold((0u32, 0usize), |(h, n), (p, t)| {
                    (h + u32::from(p == t), n + 1)
                });
            LabelScore {
                label: l.clone(),
                n,
                top1: (n > 0).then(|| f64::from(hit) / n as f64),
            }
        })
        .collect();
    let hits = pred.iter().zip(truth).filter(|(p, t)| p == t).count();
    SetScore {
        n: truth.len(),
        top1: hits as f64 / truth.len().max(1) as f64,
        per_label,
    }
}

/// The `(shape, colour)` indices of a class folder named `<colour>-<shape>` (or with
/// `_` or a space), from the demo's colours and shapes.
fn combination_of(class: &str) -> Option<(usize, usize)> {
    let (colour, shape) = class.split_once(['-', '_', ' '])?;
    let s = SHAPES.iter().position(|x| x.eq_ignore_ascii_case(shape))?;
    let c = COLOURS
        .iter()
        .position(|x| x.eq_ignore_ascii_case(colour))?;
    Some((s, c))
}

/// Pictures of class folders named `<colour>-<shape>` under `dir`, scored among the
/// twelve benchmark labels when every folder is one of them (as `data scenes` sets
/// of those are), else among every combination of the demo's colours and shapes;
/// folders with other names are an error.
fn folder_cases(dir: &Path) -> Result<FolderCases, ClipError> {
    let set = crate::data::scan_folder(dir).map_err(|e| ClipError::Data(e.to_string()))?;
    let mut combos = Vec::new();
    for class in &set.classes {
        combos.push(combination_of(class).ok_or_else(|| {
            ClipError::Data(format!(
                "{}: folder {class:?} is not named <colour>-<shape>, with a colour of {} and a shape of {}",
                dir.display(),
                COLOURS.join(", "),
                SHAPES.join(", ")
            ))
        })?);
    }
    let twelve: Vec<(usize, usize)> = benchmark_labels().iter().map(|l| (l.0, l.1)).collect();
    let among_twelve = combos.iter().all(|c| twelve.contains(c));
    let vocabulary = if among_twelve {
        twelve
    } else {
        every_combination()
    };
    let labels = vocabulary.iter().map(|&(s, c)| label_of(s, c)).collect();
    let index: Vec<usize> = combos
        .iter()
        .map(|c| vocabulary.iter().position(|v| v == c).unwrap_or(0))
        .collect();
    let mut images = Vec::new();
    let mut truth = Vec::new();
    for s in &set.samples {
        let img = crate::data::load_image(&s.path).map_err(|e| ClipError::Data(e.to_string()))?;
        images.push(img);
        truth.push(index[s.label]);
    }
    Ok(FolderCases {
        images,
        truth,
        labels,
        among_twelve,
    })
}

/// Pictures of class folders and what they are scored among.
struct FolderCases {
    images: Vec<image::DynamicImage>,
    /// Each picture's index into `labels`.
    truth: Vec<usize>,
    labels: Vec<String>,
    /// Whether `labels` are the twelve benchmark labels (else every combination).
    among_twelve: bool,
}

/// Every `(shape, colour)` combination of the demo's vocabulary, shapes outermost.
fn every_combination() -> Vec<(usize, usize)> {
    (0..SHAPES.len())
        .flat_map(|s| (0..COLOURS.len()).map(move |c| (s, c)))
        .collect()
}

/// Measure `clip` on the demo benchmark: the twelve labels on `per_label` fresh pictures
/// each (seed `seed`), the held-out combinations, and class folders if given.
pub fn evaluate(
    clip: &super::Clip,
    per_label: usize,
    seed: u64,
    folders: Option<&Path>,
) -> Result<DemoEval, ClipError> {
    let labels: Vec<String> = benchmark_labels().into_iter().map(|l| l.2).collect();
    let cases = benchmark_scenes(per_label, seed);
    let scenes_: Vec<Scene> = cases.iter().map(|c| c.0).collect();
    let truth: Vec<usize> = cases.iter().map(|c| c.1).collect();
    let images: Vec<image::DynamicImage> = draw_scenes(&scenes_, seed)
        .into_iter()
        .map(image::DynamicImage::ImageRgb8)
        .collect();
    let benchmark = score(&predict(clip, &images, &labels)?, &truth, &labels);

    // Every colour-shape combination as a label; a few pictures of each.
    let all = every_combination();
    let all_labels: Vec<String> = all.iter().map(|&(s, c)| label_of(s, c)).collect();
    let per = per_label.clamp(1, 20);
    let mut rng = Rng::new(seed ^ 0x5EED);
    let mut bind_scenes = Vec::new();
    let mut bind_truth = Vec::new();
    for (k, &(s, c)) in all.iter().enumerate() {
        for _ in 0..per {
            let mut scene = scenes::random_scene(&mut rng, &[]);
            scene.shape = s;
            scene.colour = c;
            bind_scenes.push(scene);
            bind_truth.push(k);
        }
    }
    let bind_images: Vec<image::DynamicImage> = draw_scenes(&bind_scenes, seed ^ 0xB1D)
        .into_iter()
        .map(image::DynamicImage::ImageRgb8)
        .collect();
    let pred = predict(clip, &bind_images, &all_labels)?;
    let (mut ho, mut ho_hit, mut ho_shape, mut ho_colour, mut tr, mut tr_hit) = (0, 0, 0, 0, 0, 0);
    for (p, t) in pred.iter().zip(&bind_truth) {
        let (ps, pc) = all[*p];
        let (ts, tc) = all[*t];
        if HELD_OUT.contains(&(ts, tc)) {
            ho += 1;
            ho_hit += usize::from(p == t);
            ho_shape += usize::from(ps == ts);
            ho_colour += usize::from(pc == tc);
        } else {
            tr += 1;
            tr_hit += usize::from(p == t);
        }
    }
    let frac = |a: usize, b: usize| a as f64 / b.max(1) as f64;
    let binding = BindingScore {
        held_out: HELD_OUT.iter().map(|&(s, c)| label_of(s, c)).collect(),
        held_out_top1: frac(ho_hit, ho),
        trained_top1: frac(tr_hit, tr),
        held_out_shape_right: frac(ho_shape, ho),
        held_out_colour_right: frac(ho_colour, ho),
    };
    let folders = match folders {
        Some(dir) => {
            let cases = folder_cases(dir)?;
            let predicted = predict(clip, &cases.images, &cases.labels)?;
            let mut set = score(&predicted, &cases.truth, &cases.labels);
            // Every one of the twelve has a row (n/a without pictures), as in the
            // benchmark; of the sixty combinations, only the folders' own.
            set.per_label.retain(|l| l.n > 0 || cases.among_twelve);
            Some(set)
        }
        None => None,
    };
    Ok(DemoEval {
        model: clip.name().to_string(),
        seed,
        benchmark,
        binding,
        folders,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_swaps_name_no_held_out_combination_and_keep_the_rest() {
        let samples = draw_samples(3, 0, 256, 1.0, &HELD_OUT);
        let negatives = shape_negatives(&samples, 5, 3, 0);
        let named = |m: &Mentions| m.shape.zip(m.colour);
        assert!(negatives
            .iter()
            .all(|(_, m)| named(m).is_none_or(|sc| !HELD_OUT.contains(&sc))));
        // Every caption that names a shape gets all other shapes but held-out ones.
        let expected: usize = samples
            .iter()
            .filter_map(|s| s.mentions.shape.map(|shape| (shape, s.mentions.colour)))
            .map(|(shape, colour)| {
                (0..SHAPES.len())
                    .filter(|&k| k != shape)
                    .filter(|&k| colour.is_none_or(|c| !HELD_OUT.contains(&(k, c))))
                    .count()
            })
            .sum();
        assert_eq!(negatives.len(), expected);
        // The colours of held-out pairs do appear in swaps, with other shapes.
        assert!(negatives
            .iter()
            .any(|(_, m)| m.colour == Some(HELD_OUT[0].1)));
    }

    #[test]
    fn sincos_positions_tell_every_patch_apart_and_leave_the_class_token_at_zero() {
        let (grid, dim) = (8, 128);
        let t = sincos_positions(grid, dim, 0.4);
        assert_eq!(t.len(), (grid * grid + 1) * dim);
        assert!(t[..dim].iter().all(|&x| x == 0.0));
        let row = |i: usize| &t[(i + 1) * dim..(i + 2) * dim];
        // Neighbours are closer than far patches, and no two patches coincide.
        let dist = |a: &[f32], b: &[f32]| -> f32 {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f32>()
                .sqrt()
        };
        assert!(dist(row(0), row(1)) < dist(row(0), row(7)));
        assert!(dist(row(0), row(grid)) < dist(row(0), row(grid * 7)));
        for i in 0..grid * grid {
            for j in 0..i {
                assert!(dist(row(i), row(j)) > 1e-3, "{i} and {j}");
            }
        }
        // Every patch's embedding has the same length: amplitude x sqrt(dim / 2).
        let norm = dist(row(5), &vec![0.0; dim]);
        assert!(
            (norm - 0.4 * (dim as f32 / 2.0).sqrt()).abs() < 1e-3,
            "{norm}"
        );
    }
}
