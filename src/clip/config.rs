//! CLIP architecture read from a Hugging Face `config.json`.
//!
//! Missing fields take the defaults of transformers' `CLIPTextConfig` and
//! `CLIPVisionConfig` (which are ViT-B/32's), as transformers itself does.

use std::path::Path;

use serde::Deserialize;

use super::ClipError;

/// The non-linearity inside each transformer MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI's CLIP models.
    QuickGelu,
    /// The exact (erf) GELU, used by some re-trained CLIPs.
    Gelu,
}

impl Activation {
    fn parse(name: &str) -> Result<Self, ClipError> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            other => Err(ClipError::Config(format!(
                "unsupported hidden_act {other:?} (clipscope supports quick_gelu and gelu)"
            ))),
        }
    }
}

/// One transformer tower (text or vision).
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of residual blocks.
    pub num_layers: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// MLP non-linearity.
    pub activation: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

/// The text tower.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    /// The transformer.
    pub encoder: EncoderConfig,
    /// Vocabulary size (49,408 for OpenAI's BPE).
    pub vocab_size: usize,
    /// Context length (77).
    pub max_positions: usize,
}

/// The vision tower (a ViT).
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    /// The transformer.
    pub encoder: EncoderConfig,
    /// Input side in pixels; position embeddings are fixed to it.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels (3).
    pub num_channels: usize,
}

impl VisionConfig {
    /// Number of patches plus the class token.
    pub fn num_positions(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

/// A whole CLIP model.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    /// The text tower.
    pub text: TextConfig,
    /// The vision tower.
    pub vision: VisionConfig,
    /// Size of the shared embedding space.
    pub projection_dim: usize,
}

#[derive(Deserialize)]
struct HfClip {
    text_config: Option<HfText>,
    vision_config: Option<HfVision>,
    #[serde(default = "d512")]
    projection_dim: usize,
}

#[derive(Deserialize)]
struct HfText {
    #[serde(default = "d49408")]
    vocab_size: usize,
    #[serde(default = "d512")]
    hidden_size: usize,
    #[serde(default = "d2048")]
    intermediate_size: usize,
    #[serde(default = "d12")]
    num_hidden_layers: usize,
    #[serde(default = "d8")]
    num_attention_heads: usize,
    #[serde(default = "d77")]
    max_position_embeddings: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
}

#[derive(Deserialize)]
struct HfVision {
    #[serde(default = "d768")]
    hidden_size: usize,
    #[serde(default = "d3072")]
    intermediate_size: usize,
    #[serde(default = "d12")]
    num_hidden_layers: usize,
    #[serde(default = "d12")]
    num_attention_heads: usize,
    #[serde(default = "d224")]
    image_size: usize,
    #[serde(default = "d32")]
    patch_size: usize,
    #[serde(default = "d3")]
    num_channels: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
}

fn d3() -> usize {
    3
}
fn d8() -> usize {
    8
}
fn d12() -> usize {
    12
}
fn d32() -> usize {
    32
}
fn d77() -> usize {
    77
}
fn d224() -> usize {
    224
}
fn d512() -> usize {
    512
}
fn d768() -> usize {
    768
}
fn d2048() -> usize {
    2048
}
fn d3072() -> usize {
    3072
}
fn d49408() -> usize {
    49408
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps() -> f64 {
    1e-5
}

impl Default for HfText {
    fn default() -> Self {
        serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

impl Default for HfVision {
    fn default() -> Self {
        serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

fn encoder(
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    act: &str,
    eps: f64,
    tower: &str,
) -> Result<EncoderConfig, ClipError> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(ClipError::Config(format!(
            "{tower}: hidden_size {hidden} is not divisible by num_attention_heads {heads}"
        )));
    }
    Ok(EncoderConfig {
        hidden_size: hidden,
        intermediate_size: inter,
        num_layers: layers,
        num_heads: heads,
        activation: Activation::parse(act)?,
        layer_norm_eps: eps,
    })
}

impl ClipConfig {
    /// Parse the text of a Hugging Face `CLIPModel` `config.json`.
    pub fn from_json(text: &str) -> Result<Self, ClipError> {
        let hf: HfClip =
            serde_json::from_str(text).map_err(|e| ClipError::Config(e.to_string()))?;
        let t = hf.text_config.unwrap_or_default();
        let v = hf.vision_config.unwrap_or_default();
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(ClipError::Config(format!(
                "vision image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            )));
        }
        Ok(Self {
            text: TextConfig {
                encoder: encoder(
                    t.hidden_size,
                    t.intermediate_size,
                    t.num_hidden_layers,
                    t.num_attention_heads,
                    &t.hidden_act,
                    t.layer_norm_eps,
                    "text",
                )?,
                vocab_size: t.vocab_size,
                max_positions: t.max_position_embeddings,
            },
            vision: VisionConfig {
                encoder: encoder(
                    v.hidden_size,
                    v.intermediate_size,
                    v.num_hidden_layers,
                    v.num_attention_heads,
                    &v.hidden_act,
                    v.layer_norm_eps,
                    "vision",
                )?,
                image_size: v.image_size,
                patch_size: v.patch_size,
                num_channels: v.num_channels,
            },
            projection_dim: hf.projection_dim,
        })
    }

    /// Read and parse a `config.json` file.
    pub fn from_file(path: &Path) -> Result<Self, ClipError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClipError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            ClipError::Config(msg) => ClipError::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_vit_b32() {
        let c = ClipConfig::from_json("{}").unwrap();
        assert_eq!(c.vision.encoder.hidden_size, 768);
        assert_eq!(c.vision.patch_size, 32);
        assert_eq!(c.vision.num_positions(), 50);
        assert_eq!(c.text.encoder.hidden_size, 512);
        assert_eq!(c.projection_dim, 512);
    }

    #[test]
    fn vit_l14_shape_is_read() {
        let c = ClipConfig::from_json(
            r#"{"projection_dim": 768,
                "text_config": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
                "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                                  "intermediate_size": 4096, "patch_size": 14, "image_size": 336}}"#,
        )
        .unwrap();
        assert_eq!(c.vision.num_positions(), 577);
        assert_eq!(c.projection_dim, 768);
    }

    #[test]
    fn unknown_activation_is_named() {
        let err = ClipConfig::from_json(r#"{"vision_config": {"hidden_act": "swish"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("swish"), "{err}");
    }
}
