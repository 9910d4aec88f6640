//! The CLIP network (ViT image tower, causal text transformer, projections) in candle.
//!
//! Weight names follow Hugging Face's `CLIPModel`. Every tensor is required with its
//! exact shape: a missing or misshapen tensor is an error that names it, never a random
//! stand-in (candle-transformers' CLIP invents a `class_embedding` and a `logit_scale`
//! when they are absent). Query, key and value projections are fused into one matrix
//! product at load time.

use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};

use super::config::{Activation, ClipConfig, EncoderConfig, TextConfig, VisionConfig};

type Result<T> = candle_core::Result<T>;

/// A dense layer whose weight is kept transposed, `(in, out)` and contiguous: gemm is
/// up to four times faster on a row-major right-hand side than on the transposed view
/// that `candle_nn::Linear` multiplies by (with few rows, as for one image or prompt).
struct Linear {
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    /// From a PyTorch-layout weight `(out, in)` and bias `(out)`.
    fn new(weight: &Tensor, bias: Tensor) -> Result<Self> {
        Ok(Self {
            weight_t: transposed(weight)?,
            bias,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (inp, out) = self.weight_t.dims2()?;
        let mut dims = x.dims().to_vec();
        let rows = x.elem_count() / inp.max(1);
        let y = x
            .reshape((rows, inp))?
            .matmul(&self.weight_t)?
            .broadcast_add(&self.bias)?;
        if let Some(last) = dims.last_mut() {
            *last = out;
        }
        y.reshape(dims)
    }
}

/// The transpose of a 2-D tensor, contiguous. On the CPU a tiled parallel copy: candle's
/// strided copy took a third of a one-shot `classify` at load time.
fn transposed(t: &Tensor) -> Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    if !t.device().is_cpu() || t.dtype() != DType::F32 || !t.is_contiguous() {
        return t.t()?.contiguous();
    }
    let data = t.flatten_all()?;
    let (storage, layout) = data.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return t.t()?.contiguous();
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("weight not contiguous".into()))?;
    let values = crate::util::transpose(&cpu.as_slice::<f32>()?[start..end], rows, cols);
    Tensor::from_vec(values, (cols, rows), t.device())
}

fn linear(vb: &VarBuilder, inp: usize, out: usize) -> Result<Linear> {
    Linear::new(&vb.get((out, inp), "weight")?, vb.get(out, "bias")?)
}

fn layer_norm(vb: &VarBuilder, size: usize, eps: f64) -> Result<LayerNorm> {
    let w = vb.get(size, "weight")?;
    let b = vb.get(size, "bias")?;
    Ok(LayerNorm::new(w, b, eps))
}

struct Attention {
    qkv: Linear,
    out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn load(vb: VarBuilder, c: &EncoderConfig) -> Result<Self> {
        let d = c.hidden_size;
        let (mut weights, mut biases) = (Vec::new(), Vec::new());
        for name in ["q_proj", "k_proj", "v_proj"] {
            let vb = vb.pp(name);
            weights.push(vb.get((d, d), "weight")?);
            biases.push(vb.get(d, "bias")?);
        }
        Ok(Self {
            qkv: Linear::new(&Tensor::cat(&weights, 0)?, Tensor::cat(&biases, 0)?)?,
            out: linear(&vb.pp("out_proj"), d, d)?,
            heads: c.num_heads,
            scale: ((d / c.num_heads) as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, l, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = (qkv.i(0)?.contiguous()? * self.scale)?;
        let k = qkv.i(1)?.contiguous()?;
        let v = qkv.i(2)?.contiguous()?;
        let mut att = q.matmul(&k.t()?)?;
        if let Some(m) = mask {
            att = att.broadcast_add(m)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        self.out.forward(&y)
    }
}

struct Block {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Block {
    fn load(vb: VarBuilder, c: &EncoderConfig) -> Result<Self> {
        let (d, i) = (c.hidden_size, c.intermediate_size);
        Ok(Self {
            ln1: layer_norm(&vb.pp("layer_norm1"), d, c.layer_norm_eps)?,
            attn: Attention::load(vb.pp("self_attn"), c)?,
            ln2: layer_norm(&vb.pp("layer_norm2"), d, c.layer_norm_eps)?,
            fc1: linear(&vb.pp("mlp.fc1"), d, i)?,
            fc2: linear(&vb.pp("mlp.fc2"), i, d)?,
            act: c.activation,
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln1.forward(x)?, mask)?)?;
        let h = self.fc1.forward(&self.ln2.forward(&x)?)?;
        let h = match self.act {
            Activation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
            Activation::Gelu => h.gelu_erf()?,
        };
        x + self.fc2.forward(&h)?
    }
}

struct Encoder {
    blocks: Vec<Block>,
}

impl Encoder {
    fn load(vb: VarBuilder, c: &EncoderConfig) -> Result<Self> {
        let vb = vb.pp("layers");
        let blocks = (0..c.num_layers)
            .map(|i| Block::load(vb.pp(i.to_string()), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { blocks })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.blocks {
            x = block.forward(&x, mask)?;
        }
        Ok(x)
    }
}

/// The image tower: patch embedding, class token, ViT, pooled at the class token.
struct VisionTower {
    patch_embedding: candle_nn::Conv2d,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_ln: LayerNorm,
    encoder: Encoder,
    post_ln: LayerNorm,
}

impl VisionTower {
    fn load(vb: VarBuilder, c: &VisionConfig) -> Result<Self> {
        let d = c.encoder.hidden_size;
        let emb = vb.pp("embeddings");
        let p = c.patch_size;
        let conv_w = emb.get((d, c.num_channels, p, p), "patch_embedding.weight")?;
        let conv_cfg = candle_nn::Conv2dConfig {
            stride: p,
            ..Default::default()
        };
        Ok(Self {
            patch_embedding: candle_nn::Conv2d::new(conv_w, None, conv_cfg),
            class_embedding: emb.get(d, "class_embedding")?,
            position_embedding: emb.get((c.num_positions(), d), "position_embedding.weight")?,
            pre_ln: layer_norm(&vb.pp("pre_layrnorm"), d, c.encoder.layer_norm_eps)?,
            encoder: Encoder::load(vb.pp("encoder"), &c.encoder)?,
            post_ln: layer_norm(&vb.pp("post_layernorm"), d, c.encoder.layer_norm_eps)?,
        })
    }

    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let b = pixels.dim(0)?;
        let d = self.class_embedding.dim(0)?;
        let patches = self
            .patch_embedding
            .forward(pixels)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let cls = self.class_embedding.reshape((1, 1, d))?.expand((b, 1, d))?;
        let x = Tensor::cat(&[cls, patches], 1)?.broadcast_add(&self.position_embedding)?;
        let x = self.encoder.forward(&self.pre_ln.forward(&x)?, None)?;
        self.post_ln.forward(&x.i((.., 0, ..))?)
    }
}

/// The text tower: token and position embeddings, causal transformer, pooled at EOT.
struct TextTower {
    token_embedding: candle_nn::Embedding,
    position_embedding: Tensor,
    encoder: Encoder,
    final_ln: LayerNorm,
}

impl TextTower {
    fn load(vb: VarBuilder, c: &TextConfig) -> Result<Self> {
        let d = c.encoder.hidden_size;
        let emb = vb.pp("embeddings");
        Ok(Self {
            token_embedding: candle_nn::Embedding::new(
                emb.get((c.vocab_size, d), "token_embedding.weight")?,
                d,
            ),
            position_embedding: emb.get((c.max_positions, d), "position_embedding.weight")?,
            encoder: Encoder::load(vb.pp("encoder"), &c.encoder)?,
            final_ln: layer_norm(&vb.pp("final_layer_norm"), d, c.encoder.layer_norm_eps)?,
        })
    }

    /// `ids` is `(B, L)` (padding after EOT is irrelevant: the mask is causal and the
    /// output is read at `eot[b]`), so `L` need only be the longest sequence.
    fn forward(&self, ids: &Tensor, eot: &[usize]) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let x = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.narrow(0, 0, l)?)?;
        let mask = causal_mask(l, ids.device())?;
        let x = self
            .final_ln
            .forward(&self.encoder.forward(&x, Some(&mask))?)?;
        let d = x.dim(2)?;
        let rows: Vec<u32> = eot
            .iter()
            .enumerate()
            .map(|(i, &p)| (i * l + p) as u32)
            .collect();
        let rows = Tensor::from_vec(rows, b, ids.device())?;
        x.reshape((b * l, d))?.index_select(&rows, 0)
    }
}

fn causal_mask(l: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (1, 1, l, l), device)
}

/// A loaded CLIP model.
pub struct ClipModel {
    vision: VisionTower,
    text: TextTower,
    visual_projection: Tensor,
    text_projection: Tensor,
    logit_scale: f32,
    config: ClipConfig,
}

impl ClipModel {
    /// Build the model from weights in Hugging Face `CLIPModel` layout.
    pub fn load(vb: VarBuilder, config: &ClipConfig) -> Result<Self> {
        let p = config.projection_dim;
        let logit_scale = vb
            .get((), "logit_scale")?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        Ok(Self {
            vision: VisionTower::load(vb.pp("vision_model"), &config.vision)?,
            text: TextTower::load(vb.pp("text_model"), &config.text)?,
            visual_projection: vb
                .get(
                    (p, config.vision.encoder.hidden_size),
                    "visual_projection.weight",
                )
                .and_then(|w| transposed(&w))?,
            text_projection: vb
                .get(
                    (p, config.text.encoder.hidden_size),
                    "text_projection.weight",
                )
                .and_then(|w| transposed(&w))?,
            logit_scale,
            config: config.clone(),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The learned temperature, as stored (the logits are scaled by its exponential).
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// Image embeddings (not normalised), `(B, projection_dim)`, from normalised pixels
    /// `(B, 3, S, S)`.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vision.forward(pixels)?.matmul(&self.visual_projection)
    }

    /// Text embeddings (not normalised), `(B, projection_dim)`, from token ids `(B, L)`
    /// with the position of each row's EOT token.
    pub fn text_features(&self, ids: &Tensor, eot: &[usize]) -> Result<Tensor> {
        self.text.forward(ids, eot)?.matmul(&self.text_projection)
    }
}

/// Divide each row by its L2 norm.
pub fn l2_normalize(v: &Tensor) -> Result<Tensor> {
    v.broadcast_div(&v.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}
