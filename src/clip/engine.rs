//! One loaded CLIP model with its tokeniser and preprocessing: the engine that the
//! command line and the terminal app both call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::DynamicImage;

use super::config::ClipConfig;
use super::model::{ClipModel, Precision};
use super::prepared::PreparedStore;
use super::preprocess::{batch_tensor, PreprocessConfig};
use super::tokenizer::{id_batch, ClipTokenizer, Tokens};
use super::train::Params;
use super::weights::{PYTORCH_BIN, SAFETENSORS};
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
    precision: Precision,
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

/// A model folder must exist and be a folder (said before any file in it is missed).
fn check_model_dir(dir: &Path) -> Result<(), ClipError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ClipError::NotAModelDir {
            dir: dir.to_path_buf(),
            why: "is a file, not a folder",
        }),
        Err(_) => Err(ClipError::NotAModelDir {
            dir: dir.to_path_buf(),
            why: "no such folder",
        }),
    }
}

fn require(dir: &Path, file: &'static str) -> Result<PathBuf, ClipError> {
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

fn read_text(path: &Path) -> Result<String, ClipError> {
    std::fs::read_to_string(path).map_err(|source| ClipError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Where a model's weights are.
#[derive(Clone, Debug)]
pub enum WeightsSource {
    /// A safetensors file (read tensor by tensor when loaded).
    File(PathBuf),
    /// A safetensors image compiled into the binary (the demo model).
    Static(&'static [u8]),
}

/// The files of one CLIP model (a Hugging Face style folder, or the built-in demo), read
/// and checked but not yet built into a network: what inference, fine-tuning and the
/// study all start from.
#[derive(Clone)]
pub struct ModelFiles {
    /// The model's name (registry name, `demo`, or the folder).
    pub name: String,
    /// The architecture.
    pub config: ClipConfig,
    /// Input size, mean and std.
    pub preprocess: PreprocessConfig,
    /// The weights.
    pub weights: WeightsSource,
    config_json: String,
    tokenizer_json: std::borrow::Cow<'static, [u8]>,
    /// Where `tokenizer_json` came from, for error messages.
    tokenizer_origin: PathBuf,
    /// Where prepared weights are kept, and the smallest weights file worth preparing.
    prepared: Option<(PathBuf, u64)>,
}

/// Names and sizes, not the megabytes of JSON and weights (`-vv` prints this).
impl std::fmt::Debug for ModelFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFiles")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("preprocess", &self.preprocess)
            .field("weights", &self.weights_path())
            .field("weights_bytes", &self.weights_bytes())
            .field("tokenizer", &self.tokenizer_origin)
            .finish()
    }
}

impl ModelFiles {
    /// A Hugging Face style folder: `config.json`, `model.safetensors` and
    /// `tokenizer.json` (and `preprocessor_config.json`, if any). A folder with
    /// `pytorch_model.bin` instead needs it converted first: see
    /// [`ModelFiles::from_dir_with_weights`] (what `--model-dir` does).
    pub fn from_dir(dir: &Path, name: &str) -> Result<Self, ClipError> {
        check_model_dir(dir)?;
        require(dir, "config.json")?;
        let weights = match dir.join(SAFETENSORS) {
            p if p.is_file() => p,
            _ if dir.join(PYTORCH_BIN).is_file() => {
                return Err(ClipError::Weights {
                    path: dir.join(PYTORCH_BIN),
                    message: "PyTorch weights need converting first: pass the folder to \
                              clipscope with --model-dir, which converts them"
                        .into(),
                })
            }
            _ => {
                return Err(ClipError::MissingFile {
                    dir: dir.to_path_buf(),
                    file: "model.safetensors or pytorch_model.bin",
                })
            }
        };
        Self::from_dir_with_weights(dir, name, &weights)
    }

    /// As [`ModelFiles::from_dir`], with the weights taken from `weights` (a safetensors
    /// file converted from the folder's `pytorch_model.bin`).
    pub fn from_dir_with_weights(
        dir: &Path,
        name: &str,
        weights: &Path,
    ) -> Result<Self, ClipError> {
        check_model_dir(dir)?;
        let config_path = require(dir, "config.json")?;
        let config_json = read_text(&config_path)?;
        let config = ClipConfig::from_json(&config_json).map_err(|e| match e {
            ClipError::Config(msg) => {
                ClipError::Config(format!("{}: {msg}", config_path.display()))
            }
            other => other,
        })?;
        let tokenizer_origin = require(dir, "tokenizer.json")?;
        super::weights::check_file(weights, &config)?;
        let weights = weights.to_path_buf();
        let tokenizer_json = std::fs::read(&tokenizer_origin).map_err(|source| ClipError::Io {
            path: tokenizer_origin.clone(),
            source,
        })?;
        let mut preprocess = PreprocessConfig::openai(config.vision.image_size);
        let pp_path = dir.join("preprocessor_config.json");
        if pp_path.is_file() {
            let pp: HfPreprocessor = serde_json::from_str(&read_text(&pp_path)?)
                .map_err(|e| ClipError::Config(format!("{}: {e}", pp_path.display())))?;
            preprocess.mean = pp.image_mean.unwrap_or(preprocess.mean);
            preprocess.std = pp.image_std.unwrap_or(preprocess.std);
        }
        Ok(Self {
            name: name.to_string(),
            config,
            preprocess,
            weights: WeightsSource::File(weights),
            config_json,
            tokenizer_json: tokenizer_json.into(),
            tokenizer_origin,
            prepared: None,
        })
    }

    /// A model compiled into the binary, with OpenAI's preprocessing at its input size.
    pub fn from_static(
        name: &str,
        config_json: &'static str,
        weights: &'static [u8],
        tokenizer_json: &'static [u8],
    ) -> Result<Self, ClipError> {
        let config = ClipConfig::from_json(config_json)?;
        let origin = PathBuf::from(format!("{name}/model.safetensors"));
        super::weights::check_bytes(weights, &origin, &config)?;
        Ok(Self {
            name: name.to_string(),
            preprocess: PreprocessConfig::openai(config.vision.image_size),
            config,
            weights: WeightsSource::Static(weights),
            config_json: config_json.to_string(),
            tokenizer_json: tokenizer_json.into(),
            tokenizer_origin: PathBuf::from(format!("{name}/tokenizer.json")),
            prepared: None,
        })
    }

    /// Keep prepared weights ([`super::prepared`]) under `dir` for weights files of at
    /// least `min_bytes`: an f32 load on the CPU maps them instead of reading and
    /// transposing the dense layers, and the first load writes them.
    pub fn with_prepared_dir(mut self, dir: PathBuf, min_bytes: u64) -> Self {
        self.prepared = Some((dir, min_bytes));
        self
    }

    /// The prepared-weights store for a load on `device` in `precision`, if this model
    /// keeps one.
    fn prepared_store(&self, device: &Device, precision: Precision) -> Option<PreparedStore> {
        let (Some((dir, min_bytes)), WeightsSource::File(weights)) =
            (&self.prepared, &self.weights)
        else {
            return None;
        };
        if !device.is_cpu() || precision != Precision::F32 || self.weights_bytes() < *min_bytes {
            return None;
        }
        // Without a store the model loads as it always did.
        PreparedStore::open(dir, weights)
            .inspect_err(|e| tracing::debug!("no prepared weights: {e}"))
            .ok()
    }

    /// The text of `config.json`.
    pub fn config_json(&self) -> &str {
        &self.config_json
    }

    /// The tokeniser.
    pub fn tokenizer(&self) -> Result<ClipTokenizer, ClipError> {
        let tokenizer = ClipTokenizer::from_bytes(
            &self.tokenizer_json,
            self.config.text.max_positions,
            &self.tokenizer_origin,
        )?;
        let (have, want) = (tokenizer.vocab_size(), self.config.text.vocab_size);
        if have != want {
            return Err(ClipError::Tokenizer {
                path: self.tokenizer_origin.clone(),
                message: format!(
                    "{have} tokens where config.json's text_config.vocab_size is {want}: \
                     the tokenizer does not belong to these weights"
                ),
            });
        }
        Ok(tokenizer)
    }

    /// Where the weights are, for messages.
    pub fn weights_path(&self) -> PathBuf {
        match &self.weights {
            WeightsSource::File(p) => p.clone(),
            WeightsSource::Static(_) => PathBuf::from(format!("{}/model.safetensors", self.name)),
        }
    }

    /// Size of the weights in bytes.
    pub fn weights_bytes(&self) -> u64 {
        match &self.weights {
            WeightsSource::File(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            WeightsSource::Static(b) => b.len() as u64,
        }
    }

    fn weights_error(&self) -> impl Fn(candle_core::Error) -> ClipError + '_ {
        move |e| ClipError::Weights {
            path: self.weights_path(),
            message: super::weights::candle_message(&e),
        }
    }

    /// The weights as trainable variables (f32).
    pub fn params(&self, device: &Device) -> Result<Params, ClipError> {
        match &self.weights {
            WeightsSource::File(p) => Params::load(p, &self.config, device),
            WeightsSource::Static(b) => Params::load_bytes(b, &self.config, device),
        }
        .map_err(self.weights_error())
    }

    /// Build the model for inference.
    pub fn load(&self, device: Device) -> Result<Clip, ClipError> {
        self.load_with(device, Precision::F32)
    }

    /// Build the model for inference with its dense layers in `precision`.
    pub fn load_with(&self, device: Device, precision: Precision) -> Result<Clip, ClipError> {
        if device.is_cpu() {
            warn_about_cpu_precision(precision);
        }
        let started = std::time::Instant::now();
        // Parsing the tokeniser's JSON (about 0.1 s for CLIP's) overlaps reading the
        // weights, which waits on memory more than on the CPU.
        let (tokenizer, model) = std::thread::scope(|s| {
            let tokenizer = s.spawn(|| {
                let t = self.tokenizer();
                tracing::debug!("tokenizer read in {:.0?}", started.elapsed());
                t
            });
            let model = self.build(&device, precision);
            let tokenizer = tokenizer
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            (tokenizer, model)
        });
        let (tokenizer, model) = (tokenizer?, model?);
        tracing::debug!("model built in {:.0?}", started.elapsed());
        // Every batch allocates and frees the same activation buffers; handing them back
        // to the system each time cost a tenth of an encoder's time in page faults.
        // After the load, so that the weights' one-off buffers are not kept.
        crate::util::retain_freed_memory();
        Ok(Clip {
            model,
            tokenizer,
            preprocess: self.preprocess.clone(),
            device,
            precision,
            name: self.name.clone(),
            text_cache: Mutex::new(HashMap::new()),
        })
    }

    /// The network for inference, its weights read from the file or the binary.
    fn build(&self, device: &Device, precision: Precision) -> Result<ClipModel, ClipError> {
        let vb = match &self.weights {
            WeightsSource::File(p) => {
                let file = super::weights::TensorFile::open(p)?;
                VarBuilder::from_backend(Box::new(file), DType::F32, device.clone())
            }
            WeightsSource::Static(b) => VarBuilder::from_slice_safetensors(b, DType::F32, device)
                .map_err(self.weights_error())?,
        };
        let Some(store) = self.prepared_store(device, precision) else {
            return ClipModel::load(vb, &self.config, precision).map_err(self.weights_error());
        };
        let model =
            ClipModel::load_prepared(vb, &self.config, &store).map_err(self.weights_error())?;
        if store.is_mapped() {
            tracing::debug!("dense layers mapped from {}", store.path().display());
            return Ok(model);
        }
        // A store that cannot be written costs the next load its speed, nothing else.
        match store.save() {
            Ok(Some(bytes)) => tracing::info!(
                "prepared weights written to {} ({} MB): later loads map them",
                store.path().display(),
                bytes / 1_000_000
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                "prepared weights not written ({e}): loads read the whole weights file, \
                 which is slower; set CLIPSCOPE_CACHE to a writable folder"
            ),
        }
        Ok(model)
    }

    /// Write `config.json`, `tokenizer.json` and `preprocessor_config.json` into `dir`
    /// (atomically), as a model folder built on these weights needs them.
    pub fn write_support_files(&self, dir: &Path) -> Result<(), ClipError> {
        let pp = serde_json::json!({
            "image_mean": self.preprocess.mean,
            "image_std": self.preprocess.std,
            "crop_size": self.preprocess.image_size,
            "size": self.preprocess.image_size,
        });
        for (file, bytes) in [
            ("config.json", self.config_json.as_bytes().to_vec()),
            ("tokenizer.json", self.tokenizer_json.to_vec()),
            ("preprocessor_config.json", pp.to_string().into_bytes()),
        ] {
            let path = dir.join(file);
            crate::util::write_atomic(&path, &bytes)
                .map_err(|source| ClipError::Io { path, source })?;
        }
        Ok(())
    }
}

impl Clip {
    /// Load a model from a Hugging Face style folder: `config.json`,
    /// `model.safetensors` and `tokenizer.json` (and `preprocessor_config.json`, if any).
    pub fn load(dir: &Path, name: &str, device: Device) -> Result<Self, ClipError> {
        ModelFiles::from_dir(dir, name)?.load(device)
    }

    /// The model's name (registry name or folder).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `cpu` or `cuda`, for messages and benchmark headers.
    pub fn device_name(&self) -> &'static str {
        if self.device.is_cpu() {
            "cpu"
        } else {
            "cuda"
        }
    }

    /// The dense layers' number format.
    pub fn precision(&self) -> Precision {
        self.precision
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

    /// The words of `text` the model has no embedding for (every token of the word is
    /// blank): the demo model knows only the words of its training captions, and scores
    /// a label made of unknown words like any other such label.
    pub fn unknown_words(&self, text: &str) -> Result<Vec<String>, ClipError> {
        let mut unknown = Vec::new();
        // Punctuation is not part of the word: "cat," in "cat, sitting" is "cat".
        let words = text
            .split_whitespace()
            .map(|w| w.trim_matches(|c: char| c.is_ascii_punctuation()))
            .filter(|w| !w.is_empty());
        for word in words {
            let tokens = self.tokenizer.encode(word)?;
            let body = &tokens.ids[1..tokens.ids.len().saturating_sub(1)];
            let blank = self.model.blank_tokens(body)?;
            if !blank.is_empty() && blank.iter().all(|&b| b) && !unknown.iter().any(|w| w == word) {
                unknown.push(word.to_string());
            }
        }
        Ok(unknown)
    }

    /// The words of `labels` the model has no embedding for, each once, in order of
    /// appearance (the demo model knows only shapes, colours and the like).
    pub fn unknown_words_in(&self, labels: &[String]) -> Result<Vec<String>, ClipError> {
        let mut unknown: Vec<String> = Vec::new();
        for label in labels {
            for w in self.unknown_words(label)? {
                if !unknown.contains(&w) {
                    unknown.push(w);
                }
            }
        }
        Ok(unknown)
    }

    /// Warn that `words` carry no meaning to this model (nothing if there are none).
    pub fn warn_unknown(&self, words: &[String]) {
        // A thousand labels of unseen words must not fill the screen.
        const SHOWN: usize = 20;
        if !words.is_empty() {
            // Quoted, so that the list's own commas stand apart.
            let mut list = words
                .iter()
                .take(SHOWN)
                .map(|w| format!("\"{w}\""))
                .collect::<Vec<_>>()
                .join(", ");
            if words.len() > SHOWN {
                list.push_str(&format!(" and {} more", words.len() - SHOWN));
            }
            tracing::warn!(
                "{} has never seen these words, so they carry no meaning to it: {list}",
                self.name(),
            );
        }
    }

    /// Tokenise a prompt; a prompt cut to fit the context is reported with a warning.
    pub fn tokenize(&self, text: &str) -> Result<Tokens, ClipError> {
        let tokens = self.tokenizer.encode(text)?;
        if tokens.truncated {
            // The start names the prompt; a 1 MB paste must not fill the screen.
            let start: String = text.chars().take(60).collect();
            let more = if text.chars().nth(60).is_some() {
                "…"
            } else {
                ""
            };
            tracing::warn!(
                "prompt longer than {} tokens, cut to fit (its end-of-text token kept): {start:?}{more}",
                self.config().text.max_positions
            );
        }
        Ok(tokens)
    }

    /// Run a forward pass: on a worker of rayon's pool on the CPU ([`crate::util::on_worker`]);
    /// a GPU's passes stay on the calling thread, where its context is current.
    fn on_cpu_worker<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if self.device.is_cpu() {
            crate::util::on_worker(f)
        } else {
            f()
        }
    }

    /// Normalised embeddings of preprocessed pixels `(B, 3, S, S)`.
    pub fn embed_pixels(&self, pixels: &Tensor) -> Result<Vec<Embedding>, ClipError> {
        let f = self.on_cpu_worker(|| self.model.image_features(pixels))?;
        Ok(f.to_vec2::<f32>()?.into_iter().map(normalized).collect())
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
        let f = self.on_cpu_worker(|| self.model.text_features(&ids, &eot))?;
        Ok(f.to_vec2::<f32>()?.into_iter().map(normalized).collect())
    }
}

/// Say on which kernel `--precision` runs on this CPU, and warn where it is slower than f32.
fn warn_about_cpu_precision(precision: Precision) {
    match precision {
        Precision::F32 => {}
        Precision::Bf16 => {
            let kernel = super::half::bf16_kernel();
            tracing::debug!("bf16 products run on the {kernel} kernel");
            if kernel == "portable" {
                tracing::warn!(
                    "this CPU has neither AMX nor AVX512-BF16: --precision bf16 halves the \
                     weights' memory but runs slower than f32"
                );
            } else if kernel == "avx512-bf16" && crate::util::cpu_is_intel() {
                // vdpbf16ps gave half f32 FMAs' products per second on the Xeon measured
                // (bench/fma_peak.c -DBF16): 1.6x slower than f32 at batch 16
                // (docs/benchmarks.md, 2026-12-05). Also where CLIPSCOPE_AMX=0 turned
                // AMX off.
                tracing::warn!(
                    "this Intel CPU has AVX512-BF16 but no usable AMX: --precision bf16 \
                     halves the weights' memory but runs slower than f32"
                );
            }
        }
        Precision::F16 => tracing::warn!(
            "--precision f16 halves the weights' memory but runs slower than f32 on the CPU"
        ),
    }
}

/// `v / |v|`, the norm summed in f64 row by row: candle's sum over the last axis takes
/// another path for a single row than for several, so a batch of one came out a unit in
/// the last place apart from the same image in a larger batch.
fn normalized(mut v: Embedding) -> Embedding {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt() as f32;
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// The CUDA libraries that candle loads at run time and that cannot be loaded here: a
/// CUDA build on a machine without NVIDIA's driver would otherwise panic on its first
/// call into it.
#[cfg(feature = "cuda")]
fn missing_cuda_libraries() -> Vec<&'static str> {
    use cudarc::{cublas, cublaslt, curand, driver, nvrtc};
    // SAFETY: each call only tries to load a library by its usual names.
    let found = unsafe {
        [
            (
                "libcuda (the NVIDIA driver)",
                driver::sys::is_culib_present(),
            ),
            ("libcublas", cublas::sys::is_culib_present()),
            ("libcublasLt", cublaslt::sys::is_culib_present()),
            ("libcurand", curand::sys::is_culib_present()),
            ("libnvrtc", nvrtc::sys::is_culib_present()),
        ]
    };
    found
        .into_iter()
        .filter(|(_, present)| !present)
        .map(|(name, _)| name)
        .collect()
}

/// Without the `cuda` feature no CUDA library is needed (nor asked for).
#[cfg(not(feature = "cuda"))]
fn missing_cuda_libraries() -> Vec<&'static str> {
    Vec::new()
}

/// A compute device from its name: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with
/// the `cuda` feature), or `auto`: the first GPU when the build has CUDA and one is
/// usable, else the CPU (with a warning when a CUDA build finds no GPU).
pub fn parse_device(spec: &str) -> Result<Device, ClipError> {
    let bad = |why: &str| ClipError::Device(format!("{spec}: {why}"));
    match spec.to_ascii_lowercase().as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" if !candle_core::utils::cuda_is_available() => Ok(Device::Cpu),
        "auto" => {
            let missing = missing_cuda_libraries();
            if !missing.is_empty() {
                tracing::warn!(
                    "no usable GPU (cannot load {}); running on the CPU",
                    missing.join(", ")
                );
                return Ok(Device::Cpu);
            }
            Device::new_cuda(0).or_else(|e| {
                tracing::warn!(
                    "no usable GPU ({}); running on the CPU",
                    super::weights::candle_message(&e)
                );
                Ok(Device::Cpu)
            })
        }
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| bad("expected cuda:N with N a GPU number, e.g. cuda:0"))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(bad(
                    "this clipscope was built without CUDA: use --device cpu (or auto), or \
                     build it with deploy/cuda-build.sh (see the README)",
                ));
            }
            let missing = missing_cuda_libraries();
            if !missing.is_empty() {
                return Err(bad(&format!(
                    "cannot load {}: install NVIDIA's driver and CUDA 13 libraries (or add \
                     their folder to LD_LIBRARY_PATH), or use --device cpu (or auto)",
                    missing.join(", ")
                )));
            }
            Device::new_cuda(ordinal).map_err(|e| {
                bad(&format!(
                    "no usable GPU ({}): use --device cpu (or auto)",
                    super::weights::candle_message(&e)
                ))
            })
        }
        _ => Err(bad("expected auto, cpu or cuda[:N]")),
    }
}
