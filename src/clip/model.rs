//! The CLIP network (ViT image tower, causal text transformer, projections) in candle.
//!
//! Weight names follow Hugging Face's `CLIPModel` (transformers'
//! `models/clip/modeling_clip.py`). Every tensor is required with its exact shape: a
//! missing or misshapen tensor is an error that names it, never a random stand-in
//! (candle-transformers' CLIP invents a `class_embedding` and a `logit_scale` when they
//! are absent).
//!
//! One model code serves inference and training ([`Mode`]): for inference the weights
//! are packed at load time (query, key and value fused into one product, dense weights
//! transposed) and fused kernels without gradients are used; for training every weight
//! is used as stored, so gradients reach the variables, and every op has a backward pass.

use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};

use super::config::{Activation, ClipConfig, EncoderConfig, TextConfig, VisionConfig};
use super::dense::CpuDense;
use super::half::HalfFormat;
use super::ops;
use super::prepared::{MappedMatrix, PreparedStore};

type Result<T> = candle_core::Result<T>;

/// The number format of the dense layers at inference (`--precision`): their weights
/// are rounded to it once, and each product rounds the activations to it and sums in
/// f32. Everything else (LayerNorm, softmax, attention, activations) stays f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// The reference's arithmetic (the default).
    #[default]
    F32,
    /// bfloat16: faster than f32 on AMD CPUs with AVX512-BF16 and on GPUs (AMX not yet
    /// timed); half the weights' memory.
    Bf16,
    /// IEEE half precision: half the weights' memory; no faster on the CPU.
    F16,
}

impl Precision {
    /// Every precision by name, as `--precision` takes them.
    pub const NAMES: [&'static str; 3] = ["f32", "bf16", "f16"];

    /// The name `--precision` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }

    fn half(self) -> Option<HalfFormat> {
        match self {
            Self::F32 => None,
            Self::Bf16 => Some(HalfFormat::Bf16),
            Self::F16 => Some(HalfFormat::F16),
        }
    }

    /// The tensor type a GPU's dense weights are stored and multiplied in.
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [Self::F32, Self::Bf16, Self::F16]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| "expected f32, bf16 or f16".into())
    }
}

/// What a loaded model is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Embedding only: weights packed for speed, fused kernels, no gradients.
    Inference(Precision),
    /// Training: weights used as stored (so gradients reach them), ops with backward.
    Training,
}

/// What building a model takes besides its tensors: the mode, and for inference on the
/// CPU the prepared-weights store the dense layers come from (or are recorded in).
#[derive(Clone, Copy)]
struct Build<'a> {
    mode: Mode,
    prepared: Option<&'a PreparedStore>,
}

/// `prefix.name`, as VarBuilder names a tensor.
fn tensor_name(vb: &VarBuilder, name: &str) -> String {
    match vb.prefix() {
        p if p.is_empty() => name.to_string(),
        p => format!("{p}.{name}"),
    }
}

/// A dense weight: prepared once for inference on the CPU ([`CpuDense`], which also
/// holds the bias), transposed to `(in, out)` for inference elsewhere (gemm-style
/// kernels read a row-major right-hand side fastest; in the `--precision`'s type), or
/// the stored `(out, in)` variable for training.
enum Dense {
    Cpu(CpuDense),
    Packed(Tensor),
    Live(Tensor),
}

/// A weight `(out, in)` as [`Dense::Packed`] keeps it: `(in, out)`, in `precision`'s type.
fn packed_weight(weight: &Tensor, precision: Precision) -> Result<Tensor> {
    weight.t()?.contiguous()?.to_dtype(precision.dtype())
}

/// `x · w_t` in `w_t`'s type: a 16-bit weight multiplies activations rounded to its type
/// and the product comes back as `x`'s type, as `torch.autocast` runs a linear layer
/// (cuBLAS sums in f32 and rounds the result to the 16-bit type).
fn packed_product(x: &Tensor, w_t: &Tensor) -> Result<Tensor> {
    if x.dtype() == w_t.dtype() {
        return x.matmul(w_t);
    }
    x.to_dtype(w_t.dtype())?.matmul(w_t)?.to_dtype(x.dtype())
}

impl Dense {
    /// `bias` is folded into a CPU inference layer; the other kinds leave it to
    /// [`Linear`].
    fn new(weight: &Tensor, bias: Option<&Tensor>, mode: Mode) -> Result<Self> {
        let precision = match mode {
            Mode::Inference(p) => p,
            Mode::Training => return Ok(Self::Live(weight.clone())),
        };
        let (out, inp) = weight.dims2()?;
        let bias = match bias {
            Some(b) => with_cpu_values(b, <[f32]>::to_vec)?,
            None => None,
        };
        let cpu = with_cpu_values(weight, |w| {
            CpuDense::new(w, out, inp, bias, precision.half())
        })?;
        Ok(match cpu {
            Some(dense) => Self::Cpu(dense),
            None => Self::Packed(packed_weight(weight, precision)?),
        })
    }

    /// Layer `key`'s `(out, in)` weight, fetched by `weight` unless the store has it
    /// prepared; a weight made here goes to the store to save.
    fn load(
        key: String,
        (out, inp): (usize, usize),
        weight: impl FnOnce() -> Result<Tensor>,
        bias: Option<&Tensor>,
        b: Build,
    ) -> Result<Self> {
        let store = match b.mode {
            Mode::Inference(Precision::F32) => b.prepared,
            _ => None,
        };
        if let Some(m) = store.and_then(|s| s.panels(&key, inp, out)) {
            let bias = match bias {
                Some(t) => with_cpu_values(t, <[f32]>::to_vec)?,
                None => None,
            };
            return Ok(Self::Cpu(CpuDense::mapped(m, bias)?));
        }
        let dense = Self::new(&weight()?, bias, b.mode)?;
        if let (Some(store), Self::Cpu(d)) = (store, &dense) {
            if let Some(w) = d.made_f32() {
                store.record_panels(key, w, inp, out);
            }
        }
        Ok(dense)
    }

    /// `x · Wᵀ` for a 2-D `x` of shape `(rows, in)` (for a layer built without a bias).
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Cpu(d) => d.forward(x, None),
            Self::Packed(w_t) => packed_product(x, w_t),
            Self::Live(w) => x.matmul(&w.t()?),
        }
    }

    fn dims(&self) -> Result<(usize, usize)> {
        match self {
            Self::Cpu(d) => Ok(d.dims()),
            Self::Packed(w_t) => w_t.dims2(),
            Self::Live(w) => w.dims2().map(|(out, inp)| (inp, out)),
        }
    }
}

/// A dense layer with bias.
struct Linear {
    weight: Dense,
    bias: Tensor,
}

impl Linear {
    /// From a PyTorch-layout weight `(out, in)` and bias `(out)`.
    fn new(weight: &Tensor, bias: Tensor, mode: Mode) -> Result<Self> {
        Ok(Self {
            weight: Dense::new(weight, Some(&bias), mode)?,
            bias,
        })
    }

    /// Layer `key` with a weight fetched by `weight` (unless prepared) and `bias`.
    fn load(
        key: String,
        dims: (usize, usize),
        weight: impl FnOnce() -> Result<Tensor>,
        bias: Tensor,
        b: Build,
    ) -> Result<Self> {
        Ok(Self {
            weight: Dense::load(key, dims, weight, Some(&bias), b)?,
            bias,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_onto(x, None)
    }

    /// `residual + x · Wᵀ + b`: on the CPU at inference one product onto the bias and
    /// the residual.
    fn forward_onto(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let (inp, out) = self.weight.dims()?;
        let mut dims = x.dims().to_vec();
        let rows = x.elem_count() / inp.max(1);
        let x = x.reshape((rows, inp))?;
        if let Some(last) = dims.last_mut() {
            *last = out;
        }
        if let Dense::Cpu(d) = &self.weight {
            return d.forward(&x, residual)?.reshape(dims);
        }
        let y = match &self.weight {
            Dense::Live(w) if ops::fusable(&x) => ops::dense(&x, w, &self.bias)?,
            weight => weight.apply(&x)?.broadcast_add(&self.bias)?,
        };
        let y = y.reshape(dims)?;
        match residual {
            Some(r) => r + y,
            None => Ok(y),
        }
    }
}

/// `f` on the values of a contiguous f32 CPU tensor, borrowed; `None` for any other
/// tensor (off the CPU, another dtype, a strided view).
fn with_cpu_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<Option<R>> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 || !t.is_contiguous() {
        return Ok(None);
    }
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    Ok(Some(f(crate::cnn::conv::contiguous_f32(cpu, layout)?)))
}

fn linear(vb: &VarBuilder, inp: usize, out: usize, b: Build) -> Result<Linear> {
    Linear::load(
        tensor_name(vb, "weight"),
        (out, inp),
        || vb.get((out, inp), "weight"),
        vb.get(out, "bias")?,
        b,
    )
}

/// LayerNorm: candle's fused kernel for inference (it has no backward pass), clipscope's
/// fused op with one for training (composed ops off the CPU).
struct Norm {
    inner: LayerNorm,
    mode: Mode,
}

impl Norm {
    fn load(vb: &VarBuilder, size: usize, eps: f64, mode: Mode) -> Result<Self> {
        let w = vb.get(size, "weight")?;
        let b = vb.get(size, "bias")?;
        Ok(Self {
            inner: LayerNorm::new(w, b, eps),
            mode,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (self.mode, self.inner.bias()) {
            (Mode::Training, Some(bias)) if ops::fusable(x) => {
                ops::layer_norm(x, self.inner.weight(), bias, self.inner.eps())
            }
            (Mode::Training, Some(bias)) => candle_nn::ops::layer_norm_slow(
                x,
                self.inner.weight(),
                bias,
                self.inner.eps() as f32,
            ),
            // candle's fused LayerNorm takes only contiguous input and quietly falls
            // back to separate ops otherwise, with other rounding (a strided view of
            // some rows would round differently from the same rows copied).
            _ => self.inner.forward(&x.contiguous()?),
        }
    }
}

/// Softmax over the last axis: candle's fused kernel for inference, clipscope's fused op
/// with a backward pass for training (composed ops off the CPU).
fn softmax_last(x: &Tensor, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Inference(_) => candle_nn::ops::softmax_last_dim(x),
        Mode::Training if ops::fusable(x) => ops::softmax_last_dim(x),
        Mode::Training => candle_nn::ops::softmax(x, D::Minus1),
    }
}

/// Query, key and value projections: one fused product for inference; three for
/// training, where each weight must stay its own variable.
enum Qkv {
    Fused(Linear),
    Split(Box<[Linear; 3]>),
}

struct Attention {
    qkv: Qkv,
    out: Linear,
    heads: usize,
    scale: f64,
    mode: Mode,
}

impl Attention {
    fn load(vb: VarBuilder, c: &EncoderConfig, b: Build) -> Result<Self> {
        let d = c.hidden_size;
        let names = ["q_proj", "k_proj", "v_proj"];
        let biases = names
            .iter()
            .map(|name| vb.pp(name).get(d, "bias"))
            .collect::<Result<Vec<_>>>()?;
        let weights = || -> Result<Vec<Tensor>> {
            names
                .iter()
                .map(|name| vb.pp(name).get((d, d), "weight"))
                .collect()
        };
        let qkv = match b.mode {
            // Query, key and value as one product (prepared under a name of their own).
            Mode::Inference(_) => Qkv::Fused(Linear::load(
                tensor_name(&vb, "qkv_proj.weight"),
                (3 * d, d),
                || Tensor::cat(&weights()?, 0),
                Tensor::cat(&biases, 0)?,
                b,
            )?),
            Mode::Training => {
                let [wq, wk, wv] = <[Tensor; 3]>::try_from(weights()?)
                    .map_err(|_| candle_core::Error::Msg("three projections".into()))?;
                let [bq, bk, bv] = <[Tensor; 3]>::try_from(biases)
                    .map_err(|_| candle_core::Error::Msg("three projections".into()))?;
                Qkv::Split(Box::new([
                    Linear::new(&wq, bq, b.mode)?,
                    Linear::new(&wk, bk, b.mode)?,
                    Linear::new(&wv, bv, b.mode)?,
                ]))
            }
        };
        Ok(Self {
            qkv,
            out: linear(&vb.pp("out_proj"), d, d, b)?,
            heads: c.num_heads,
            scale: ((d / c.num_heads) as f64).powf(-0.5),
            mode: b.mode,
        })
    }

    /// Queries, keys and values, each `(B, heads, L, head_dim)` and contiguous.
    fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, l, d) = x.dims3()?;
        let hd = d / self.heads;
        match &self.qkv {
            Qkv::Fused(qkv) => {
                let qkv = qkv
                    .forward(x)?
                    .reshape((b, l, 3, self.heads, hd))?
                    .permute((2, 0, 3, 1, 4))?;
                Ok((
                    qkv.i(0)?.contiguous()?,
                    qkv.i(1)?.contiguous()?,
                    qkv.i(2)?.contiguous()?,
                ))
            }
            Qkv::Split(parts) => {
                let heads = |p: &Linear| {
                    p.forward(x)?
                        .reshape((b, l, self.heads, hd))?
                        .transpose(1, 2)?
                        .contiguous()
                };
                Ok((heads(&parts[0])?, heads(&parts[1])?, heads(&parts[2])?))
            }
        }
    }

    /// `residual + attention(x)`. `mask` is the causal mask, the only one CLIP uses (the
    /// text tower's).
    fn forward_onto(&self, x: &Tensor, mask: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
        self.out
            .forward_onto(&self.attend(x, mask)?, Some(residual))
    }

    /// The heads' outputs side by side, `(B, L, D)`: attention before the output
    /// projection.
    fn attend(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        if ops::fusable(x) {
            let causal = mask.is_some();
            let y = match (self.mode, &self.qkv) {
                (Mode::Training, Qkv::Split(parts)) => {
                    let [q, k, v] = &**parts;
                    let (q, k, v) = (q.forward(x)?, k.forward(x)?, v.forward(x)?);
                    Some(ops::attention(&q, &k, &v, self.heads, self.scale, causal)?)
                }
                // The same attention for inference, reading the fused projection's
                // output in place: one pass per head instead of head split copies, a
                // scaled copy, two batched products, softmax and a merge.
                (Mode::Inference(_), Qkv::Fused(qkv)) => {
                    let qkv = qkv.forward(x)?;
                    Some(ops::attention_fused(&qkv, self.heads, self.scale, causal)?)
                }
                _ => None,
            };
            if let Some(y) = y {
                return Ok(y);
            }
        }
        let (b, l, d) = x.dims3()?;
        let (q, k, v) = self.project(x)?;
        let q = (q * self.scale)?;
        let mut att = q.matmul(&k.t()?)?;
        if let Some(m) = mask {
            att = att.broadcast_add(m)?;
        }
        let att = softmax_last(&att, self.mode)?;
        att.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))
    }
}

struct Block {
    ln1: Norm,
    attn: Attention,
    ln2: Norm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
    mode: Mode,
}

impl Block {
    fn load(vb: VarBuilder, c: &EncoderConfig, b: Build) -> Result<Self> {
        let (d, i) = (c.hidden_size, c.intermediate_size);
        let eps = c.layer_norm_eps;
        Ok(Self {
            ln1: Norm::load(&vb.pp("layer_norm1"), d, eps, b.mode)?,
            attn: Attention::load(vb.pp("self_attn"), c, b)?,
            ln2: Norm::load(&vb.pp("layer_norm2"), d, eps, b.mode)?,
            fc1: linear(&vb.pp("mlp.fc1"), d, i, b)?,
            fc2: linear(&vb.pp("mlp.fc2"), i, d, b)?,
            act: c.activation,
            mode: b.mode,
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = self.attn.forward_onto(&self.ln1.forward(x)?, mask, x)?;
        self.mlp_onto(&x)
    }

    /// The block's output at `rows` of the `(B·L, D)` tokens only, `(rows, D)`. Each
    /// token's attention reads every token's keys and values, but the rest of the block
    /// works token by token. On CPUs with clipscope's own product kernels (AVX2 or
    /// AVX-512, [`super::panels::Kernel`]) each token gets the bits it gets in
    /// [`Block::forward`]: they and the norms add a row's values in the same order
    /// whatever the rows beside it; elsewhere gemm's blocking may round differently.
    fn forward_rows(&self, x: &Tensor, mask: Option<&Tensor>, rows: &Tensor) -> Result<Tensor> {
        let heads = self.attn.attend(&self.ln1.forward(x)?, mask)?;
        let x = self.attn.out.forward_onto(
            &token_rows_of(&heads, rows)?,
            Some(&token_rows_of(x, rows)?),
        )?;
        self.mlp_onto(&x)
    }

    /// `x + mlp(ln2(x))`.
    fn mlp_onto(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(&self.ln2.forward(x)?)?;
        let inference = matches!(self.mode, Mode::Inference(_));
        let h = match self.act {
            // fc1's output is a fresh tensor only this block holds, and at inference
            // nothing goes backward through it: the activation overwrites it.
            Activation::QuickGelu if inference && ops::fusable(&h) && h.is_contiguous() => {
                ops::quick_gelu_in_place(&h)?;
                h
            }
            // One fused pass (with a backward pass) instead of three ops on the widest
            // activation of the block.
            Activation::QuickGelu if ops::fusable(&h) => ops::quick_gelu(&h)?,
            Activation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
            Activation::Gelu => h.gelu_erf()?,
        };
        self.fc2.forward_onto(&h, Some(x))
    }
}

struct Encoder {
    blocks: Vec<Block>,
}

impl Encoder {
    fn load(vb: VarBuilder, c: &EncoderConfig, b: Build) -> Result<Self> {
        let vb = vb.pp("layers");
        let blocks = (0..c.num_layers)
            .map(|i| Block::load(vb.pp(i.to_string()), c, b))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { blocks })
    }

    /// The output at `rows` of the `(B·L, D)` tokens, `(rows, D)`: a tower reads one
    /// token per sequence, so the last block runs its output projection, second
    /// LayerNorm and MLP on those rows alone (for ViT-B/32, 1 of 50 tokens: a sixteenth
    /// of the image tower's products saved).
    fn forward_rows(&self, x: &Tensor, mask: Option<&Tensor>, rows: &Tensor) -> Result<Tensor> {
        let Some((last, before)) = self.blocks.split_last() else {
            return token_rows_of(x, rows);
        };
        let mut x = x.clone();
        for block in before {
            x = block.forward(&x, mask)?;
        }
        last.forward_rows(&x, mask, rows)
    }
}

/// The row of each sequence's token `at[i]` among `(B·L)` flattened tokens of sequences
/// `l` long, as an index tensor.
fn token_rows(
    at: impl ExactSizeIterator<Item = usize>,
    l: usize,
    device: &Device,
) -> Result<Tensor> {
    let b = at.len();
    let rows: Vec<u32> = at.enumerate().map(|(i, p)| (i * l + p) as u32).collect();
    Tensor::from_vec(rows, b, device)
}

/// The tokens `rows` ([`token_rows`]) of `(B, L, D)` tokens, `(rows, D)`.
fn token_rows_of(x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    x.reshape(((), x.dim(D::Minus1)?))?.index_select(rows, 0)
}

/// The image tower: patch embedding, class token, ViT, pooled at the class token.
struct VisionTower {
    /// The patch convolution as a dense layer on flattened patches (its stride equals
    /// its kernel, so the convolution is exactly one product per patch, in either mode).
    patch_embedding: Dense,
    patch_size: usize,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_ln: Norm,
    encoder: Encoder,
    post_ln: Norm,
}

impl VisionTower {
    fn load(vb: VarBuilder, c: &VisionConfig, b: Build) -> Result<Self> {
        let d = c.encoder.hidden_size;
        let eps = c.encoder.layer_norm_eps;
        let emb = vb.pp("embeddings");
        let p = c.patch_size;
        let patch = c.num_channels * p * p;
        let conv_w = || {
            emb.get((d, c.num_channels, p, p), "patch_embedding.weight")?
                .reshape((d, patch))
        };
        Ok(Self {
            patch_embedding: Dense::load(
                tensor_name(&emb, "patch_embedding.weight"),
                (d, patch),
                conv_w,
                None,
                b,
            )?,
            patch_size: p,
            class_embedding: emb.get(d, "class_embedding")?,
            position_embedding: emb.get((c.num_positions(), d), "position_embedding.weight")?,
            pre_ln: Norm::load(&vb.pp("pre_layrnorm"), d, eps, b.mode)?,
            encoder: Encoder::load(vb.pp("encoder"), &c.encoder, b)?,
            post_ln: Norm::load(&vb.pp("post_layernorm"), d, eps, b.mode)?,
        })
    }

    /// `(B, C, S, S)` pixels to `(B * g * g, C * p * p)` patches in row-major patch order,
    /// each flattened as the convolution's weight is: channel, then row, then column.
    fn patches(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        pixels
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, c * p * p))
    }

    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let b = pixels.dim(0)?;
        let d = self.class_embedding.dim(0)?;
        let patches = self
            .patch_embedding
            .apply(&self.patches(pixels)?)?
            .reshape((b, (), d))?;
        let cls = self.class_embedding.reshape((1, 1, d))?.expand((b, 1, d))?;
        let x = Tensor::cat(&[cls, patches], 1)?.broadcast_add(&self.position_embedding)?;
        // Pooled at the class token, the first of each image's.
        let rows = token_rows(std::iter::repeat_n(0, b), x.dim(1)?, pixels.device())?;
        let x = self
            .encoder
            .forward_rows(&self.pre_ln.forward(&x)?, None, &rows)?;
        self.post_ln.forward(&x)
    }
}

/// The text tower: token and position embeddings, causal transformer, pooled at EOT.
struct TextTower {
    token_embedding: TokenEmbedding,
    position_embedding: Tensor,
    encoder: Encoder,
    final_ln: Norm,
}

impl TextTower {
    fn load(vb: VarBuilder, c: &TextConfig, b: Build) -> Result<Self> {
        let d = c.encoder.hidden_size;
        let emb = vb.pp("embeddings");
        Ok(Self {
            token_embedding: TokenEmbedding::load(&emb, (c.vocab_size, d), b)?,
            position_embedding: emb.get((c.max_positions, d), "position_embedding.weight")?,
            encoder: Encoder::load(vb.pp("encoder"), &c.encoder, b)?,
            final_ln: Norm::load(
                &vb.pp("final_layer_norm"),
                d,
                c.encoder.layer_norm_eps,
                b.mode,
            )?,
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
        if eot.len() != b || eot.iter().any(|&p| p >= l) {
            candle_core::bail!("EOT positions {eot:?} for {b} sequences of {l} tokens");
        }
        let rows = token_rows(eot.iter().copied(), l, ids.device())?;
        self.final_ln
            .forward(&self.encoder.forward_rows(&x, Some(&mask), &rows)?)
    }
}

/// The token embedding: candle's, or its rows mapped from prepared weights (100 MB for
/// CLIP's vocabulary, read into fresh memory otherwise).
enum TokenEmbedding {
    Tensor(candle_nn::Embedding),
    Mapped(MappedMatrix),
}

impl TokenEmbedding {
    fn load(emb: &VarBuilder, (vocab, d): (usize, usize), b: Build) -> Result<Self> {
        let name = tensor_name(emb, "token_embedding.weight");
        let store = match b.mode {
            Mode::Inference(Precision::F32) => b.prepared,
            _ => None,
        };
        if let Some(m) = store.and_then(|s| s.matrix(&name, vocab, d)) {
            return Ok(Self::Mapped(m));
        }
        let table = emb.get((vocab, d), "token_embedding.weight")?;
        if let Some(store) = store {
            if let Some(values) = with_cpu_values(&table, <[f32]>::to_vec)? {
                store.record(name, std::sync::Arc::new(values), vocab, d);
            }
        }
        Ok(Self::Tensor(candle_nn::Embedding::new(table, d)))
    }

    /// `(..., d)` rows for token ids of any shape.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let m = match self {
            Self::Tensor(e) => return e.forward(ids),
            Self::Mapped(m) => m,
        };
        let (vocab, d) = m.dims();
        let table = m.values();
        let mut rows = Vec::with_capacity(ids.elem_count() * d);
        for id in ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()? {
            let id = id as usize;
            if id >= vocab {
                candle_core::bail!("token id {id} outside a vocabulary of {vocab}");
            }
            rows.extend_from_slice(&table[id * d..][..d]);
        }
        let mut dims = ids.dims().to_vec();
        dims.push(d);
        Tensor::from_vec(rows, dims, ids.device())
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
    visual_projection: Dense,
    text_projection: Dense,
    logit_scale: Tensor,
    /// `logit_scale` as loaded, read once (inference never changes it).
    logit_scale_at_load: f32,
    config: ClipConfig,
}

impl ClipModel {
    /// Which of `ids` have an all-zero token embedding: words a model never learnt (the
    /// demo model zeroes the tokens its training captions never used).
    pub fn blank_tokens(&self, ids: &[u32]) -> Result<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let t = Tensor::new(ids, self.logit_scale.device())?;
        let rows = self.text.token_embedding.forward(&t)?;
        let norms = rows
            .abs()?
            .sum(1)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        Ok(norms.into_iter().map(|n| n == 0.0).collect())
    }

    /// Build the model for inference from weights in Hugging Face `CLIPModel` layout.
    pub fn load(vb: VarBuilder, config: &ClipConfig, precision: Precision) -> Result<Self> {
        Self::load_for(vb, config, Mode::Inference(precision))
    }

    /// Build the model for inference in f32 on the CPU with its dense layers mapped from
    /// `store` where it has them; the ones made from `vb` are recorded in it, to save.
    pub fn load_prepared(
        vb: VarBuilder,
        config: &ClipConfig,
        store: &PreparedStore,
    ) -> Result<Self> {
        let b = Build {
            mode: Mode::Inference(Precision::F32),
            prepared: Some(store),
        };
        Self::build(vb, config, b)
    }

    /// Build the model for inference or training. For training, `vb` should hand out
    /// variables for the weights that are to learn (and plain tensors for frozen ones).
    pub fn load_for(vb: VarBuilder, config: &ClipConfig, mode: Mode) -> Result<Self> {
        Self::build(
            vb,
            config,
            Build {
                mode,
                prepared: None,
            },
        )
    }

    fn build(vb: VarBuilder, config: &ClipConfig, b: Build) -> Result<Self> {
        let p = config.projection_dim;
        let projection = |name: &str, hidden: usize| -> Result<Dense> {
            let weight = || vb.get((p, hidden), name);
            Dense::load(tensor_name(&vb, name), (p, hidden), weight, None, b)
        };
        let logit_scale = vb.get((), "logit_scale")?.to_dtype(DType::F32)?;
        Ok(Self {
            logit_scale_at_load: logit_scale.to_scalar::<f32>()?,
            logit_scale,
            vision: VisionTower::load(vb.pp("vision_model"), &config.vision, b)?,
            text: TextTower::load(vb.pp("text_model"), &config.text, b)?,
            visual_projection: projection(
                "visual_projection.weight",
                config.vision.encoder.hidden_size,
            )?,
            text_projection: projection("text_projection.weight", config.text.encoder.hidden_size)?,
            config: config.clone(),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The learned temperature as loaded (the logits are scaled by its exponential).
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale_at_load
    }

    /// The learned temperature as a scalar tensor (a variable when training).
    pub fn logit_scale_tensor(&self) -> &Tensor {
        &self.logit_scale
    }

    /// Image embeddings (not normalised), `(B, projection_dim)`, from normalised pixels
    /// `(B, 3, S, S)`.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        self.visual_projection.apply(&self.vision.forward(pixels)?)
    }

    /// Text embeddings (not normalised), `(B, projection_dim)`, from token ids `(B, L)`
    /// with the position of each row's EOT token.
    pub fn text_features(&self, ids: &Tensor, eot: &[usize]) -> Result<Tensor> {
        self.text_projection.apply(&self.text.forward(ids, eot)?)
    }
}

/// Divide each row by its L2 norm.
pub fn l2_normalize(v: &Tensor) -> Result<Tensor> {
    v.broadcast_div(&v.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `(rows, cols)` tensor of reproducible values in [-0.5, 0.5).
    fn values(rows: usize, cols: usize, seed: u32) -> Tensor {
        let v = crate::clip::half::check_values(rows * cols, seed);
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("a matching shape")
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .expect("same-shaped f32 tensors")
    }

    #[test]
    fn the_last_block_on_the_pooled_rows_gives_those_rows_bits() {
        // Both towers of the tiny fixture in every mode: the last block run for chosen
        // tokens only, against the whole block's output at them.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip");
        let config = ClipConfig::from_file(&dir.join("config.json")).unwrap();
        let weights = [dir.join("model.safetensors")];
        // SAFETY: the fixture is not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&weights, DType::F32, &Device::Cpu) }
            .unwrap();
        // Bit for bit with clipscope's own kernels; gemm's blocking depends on the rows
        // (other CPUs, and training's products).
        let own_kernels = crate::clip::panels::Kernel::here() != crate::clip::panels::Kernel::Gemm;
        let modes = [
            (Mode::Inference(Precision::F32), own_kernels),
            (Mode::Inference(Precision::Bf16), own_kernels),
            (Mode::Inference(Precision::F16), own_kernels),
            (Mode::Training, false),
        ];
        for (mode, exact) in modes {
            let b = Build {
                mode,
                prepared: None,
            };
            let towers = [
                (vb.pp("vision_model.encoder"), &config.vision.encoder, None),
                (vb.pp("text_model.encoder"), &config.text.encoder, Some(7)),
            ];
            for (vb, c, causal) in towers {
                let encoder = Encoder::load(vb, c, b).unwrap();
                let last = encoder.blocks.last().unwrap();
                let (n, l, d) = (3, causal.unwrap_or(10), c.hidden_size);
                let x = values(n * l, d, 3).reshape((n, l, d)).unwrap();
                let mask = causal.map(|l| causal_mask(l, &Device::Cpu).unwrap());
                let rows = token_rows([0, l - 1, 4].into_iter(), l, &Device::Cpu).unwrap();
                let whole = last.forward(&x, mask.as_ref()).unwrap();
                let want = token_rows_of(&whole, &rows).unwrap();
                let got = last.forward_rows(&x, mask.as_ref(), &rows).unwrap();
                let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                if exact {
                    assert_eq!(bits(&got), bits(&want), "{mode:?}, causal {causal:?}");
                } else {
                    let err = max_abs_diff(&got, &want);
                    assert!(err < 1e-5, "{mode:?}, causal {causal:?}: {err}");
                }
            }
        }
    }

    #[test]
    fn a_16_bit_gpu_weight_multiplies_rounded_activations_and_returns_f32() {
        // The GPU path, run on the CPU (candle multiplies f16 and bf16 there too).
        let (x, w) = (values(7, 96, 1), values(40, 96, 2));
        let exact = x.matmul(&w.t().unwrap()).unwrap();
        let f32_w = packed_weight(&w, Precision::F32).unwrap();
        assert_eq!(f32_w.dtype(), DType::F32);
        assert_eq!(f32_w.dims(), &[96, 40]);
        assert!(max_abs_diff(&packed_product(&x, &f32_w).unwrap(), &exact) < 1e-5);

        for (precision, dtype, tolerance) in [
            (Precision::F16, DType::F16, 5e-3),
            (Precision::Bf16, DType::BF16, 4e-2),
        ] {
            let half_w = packed_weight(&w, precision).unwrap();
            assert_eq!(half_w.dtype(), dtype);
            let y = packed_product(&x, &half_w).unwrap();
            assert_eq!(y.dtype(), DType::F32);
            let err = max_abs_diff(&y, &exact);
            // Rounded operands and output: close to f32, but not equal to it.
            assert!(
                err > 0.0 && err < tolerance,
                "{dtype:?} product off f32 by {err}"
            );
        }
    }
}
