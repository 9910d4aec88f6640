//! One loaded CLIP model with its tokeniser and preprocessing: the engine that the
//! command line and the terminal app both call.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::DynamicImage;

use super::config::ClipConfig;
use super::model::{l2_normalize, ClipModel};
use super::preprocess::{batch_tensor, PreprocessConfig};
use super::tokenizer::{id_batch, ClipTokenizer, Tokens};
use super::ClipError;

/// Images per forward pass of the image tower (also the folder pipeline's batch).
pub const IMAGE_BATCH: usize = 16;
/// Prompts per forward pass of the text tower.
const TEXT_BATCH: usize = 64;

/// An L2-normalised embedding.
pub type Embedding = Vec<f32>;

/// A CLIP model ready to embed images and texts.
pub struct Clip {
    model: ClipModel,
    tokenizer: ClipTokenizer,
    preprocess: PreprocessConfig,
    device: Device,
    name: String,
    /// Normalised text embeddings by prompt: one edited label costs one encoding.
    text_cache: Mutex<HashMap<String, Embedding>>,
}

/// Image mean and std from a Hugging Face `preprocessor_config.json`, when present.
#[derive(serde::Deserialize)]
struct HfPreprocessor {
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
}

fn require(dir: &Path, file: &'static str) -> Result<std::path::PathBuf, ClipError> {
    let p = dir.join(file);
    if p.is_file() {
        Ok(p)
    } else {
        Err(ClipError::MissingFile {
            dir: dir.to_path_buf(),
            file,
        })
    }
}

impl Clip {
    /// Load a model from a Hugging Face style folder: `config.json`,
    /// `model.safetensors` and `tokenizer.json` (and `preprocessor_config.json`, if any).
    pub fn load(dir: &Path, name: &str, device: Device) -> Result<Self, ClipError> {
        let config = ClipConfig::from_file(&require(dir, "config.json")?)?;
        let weights = require(dir, "model.safetensors")?;
        let tokenizer =
            ClipTokenizer::from_file(&require(dir, "tokenizer.json")?, config.text.max_positions)?;
        let mut preprocess = PreprocessConfig::openai(config.vision.image_size);
        let pp_path = dir.join("preprocessor_config.json");
        if pp_path.is_file() {
            let text = std::fs::read_to_string(&pp_path).map_err(|source| ClipError::Io {
                path: pp_path.clone(),
                source,
            })?;
            let pp: HfPreprocessor = serde_json::from_str(&text)
                .map_err(|e| ClipError::Config(format!("{}: {e}", pp_path.display())))?;
            preprocess.mean = pp.image_mean.unwrap_or(preprocess.mean);
            preprocess.std = pp.image_std.unwrap_or(preprocess.std);
        }
        let weights_error = |e: candle_core::Error| ClipError::Weights {
            path: weights.clone(),
            message: e.to_string(),
        };
        // SAFETY: the file is memory-mapped read-only; clipscope never writes to model
        // files while a model is loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .map_err(weights_error)?;
        let model = ClipModel::load(vb, &config).map_err(weights_error)?;
        Ok(Self {
            model,
            tokenizer,
            preprocess,
            device,
            name: name.to_string(),
            text_cache: Mutex::new(HashMap::new()),
        })
    }

    /// The model's name (registry name or folder).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The architecture.
    pub fn config(&self) -> &ClipConfig {
        self.model.config()
    }

    /// Input size, mean and std.
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// The factor that multiplies cosine similarities: `exp(logit_scale)`.
    pub fn logit_scale(&self) -> f32 {
        self.model.logit_scale().exp()
    }

    /// Tokenise a prompt; a prompt cut to fit the context is reported with a warning.
    pub fn tokenize(&self, text: &str) -> Result<Tokens, ClipError> {
        let tokens = self.tokenizer.encode(text)?;
        if tokens.truncated {
            tracing::warn!(
                "prompt longer than {} tokens, truncated: {text:?}",
                self.config().text.max_positions
            );
        }
        Ok(tokens)
    }

    /// Normalised embeddings of preprocessed pixels `(B, 3, S, S)`.
    pub fn embed_pixels(&self, pixels: &Tensor) -> Result<Vec<Embedding>, ClipError> {
        let f = l2_normalize(&self.model.image_features(pixels)?)?;
        Ok(f.to_vec2::<f32>()?)
    }

    /// Normalised embeddings of decoded images, preprocessed as OpenAI's CLIP does.
    pub fn embed_images(&self, images: &[&DynamicImage]) -> Result<Vec<Embedding>, ClipError> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(IMAGE_BATCH) {
            let pixels = batch_tensor(chunk, &self.preprocess, &self.device)?;
            out.extend(self.embed_pixels(&pixels)?);
        }
        Ok(out)
    }

    /// Normalised embeddings of prompts, taken from the cache where already computed.
    pub fn embed_texts(&self, prompts: &[String]) -> Result<Vec<Embedding>, ClipError> {
        let missing: Vec<&String> = {
            let cache = self.cache();
            let mut seen = std::collections::HashSet::new();
            prompts
                .iter()
                .filter(|p| !cache.contains_key(*p) && seen.insert(*p))
                .collect()
        };
        for chunk in missing.chunks(TEXT_BATCH) {
            let tokens = chunk
                .iter()
                .map(|p| self.tokenize(p))
                .collect::<Result<Vec<_>, _>>()?;
            let embeddings = self.encode_tokens(&tokens)?;
            let mut cache = self.cache();
            for (p, e) in chunk.iter().zip(embeddings) {
                cache.insert((*p).clone(), e);
            }
        }
        let cache = self.cache();
        Ok(prompts
            .iter()
            .map(|p| cache.get(p).cloned().unwrap_or_default())
            .collect())
    }

    /// Number of prompts whose embeddings are cached.
    pub fn cached_prompts(&self) -> usize {
        self.cache().len()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Embedding>> {
        // A panic while holding the lock cannot leave the map half-written (inserts are
        // atomic), so a poisoned lock is still safe to use.
        self.text_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Run the text tower on tokenised prompts. Rows are padded with 0 only to the
    /// longest prompt in the batch, not to the full context: the causal mask keeps
    /// padding out of every position up to EOT, where the output is read.
    pub fn encode_tokens(&self, tokens: &[Tokens]) -> Result<Vec<Embedding>, ClipError> {
        self.encode_tokens_padded(tokens, 0)
    }

    /// As [`Clip::encode_tokens`], with rows padded to at least `min_width` (77 gives
    /// OpenAI's fixed-length input; kept to show that padding changes nothing).
    pub fn encode_tokens_padded(
        &self,
        tokens: &[Tokens],
        min_width: usize,
    ) -> Result<Vec<Embedding>, ClipError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, eot) = id_batch(
            tokens,
            min_width,
            self.config().text.max_positions,
            &self.device,
        )?;
        let f = l2_normalize(&self.model.text_features(&ids, &eot)?)?;
        Ok(f.to_vec2::<f32>()?)
    }
}

/// A compute device from its name: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with
/// the `cuda` feature).
pub fn parse_device(spec: &str) -> Result<Device, ClipError> {
    let bad = |why: &str| ClipError::Device(format!("{spec}: {why}"));
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| bad("bad GPU number"))?,
                None => 0,
            };
            Device::new_cuda(ordinal).map_err(|e| {
                bad(&format!(
                    "CUDA unavailable ({e}); build with --features cuda"
                ))
            })
        }
        _ => Err(bad("expected cpu or cuda[:N]")),
    }
}
