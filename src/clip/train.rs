//! Training CLIP: its parameters as variables, what to freeze, the contrastive loss with
//! its learnable temperature, and one optimiser step.
//!
//! The model trained is the inference model's own code ([`ClipModel::load_for`] in
//! [`Mode::Training`]); only the way weights are handed out differs. The loss and the
//! temperature follow OpenAI's training code as open_clip reproduces it
//! (`open_clip/loss.py`, `training/train.py`): logits are `exp(logit_scale)` times the
//! cosine similarities, the loss is the mean of the image-to-text and text-to-image
//! cross entropies, and `logit_scale` is clamped to `[0, ln 100]` after every step.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarBuilder;

use super::config::ClipConfig;
use super::model::{l2_normalize, ClipModel, Mode};
use crate::cnn::optim::{Optimizer, OptimizerKind, Param};
use crate::cnn::rng::{name_seed, Rng};

type Result<T> = candle_core::Result<T>;

/// The largest temperature OpenAI allows: `logit_scale` is clamped to `ln 100`.
pub const MAX_LOGIT_SCALE: f64 = 4.605_170_185_988_092;

/// Which weights learn; the others are frozen (constants in the graph, no gradient).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trainable {
    /// Every weight.
    All,
    /// Only the two projections into the shared space and the temperature.
    Projections,
    /// Only the LayerNorms' gains and biases (and the temperature).
    LayerNorms,
    /// The last N blocks of each tower, the final LayerNorms, the projections and the
    /// temperature.
    LastBlocks(usize),
}

impl FromStr for Trainable {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad =
            || format!("{s:?}: expected all, projections, layernorms or last:N (e.g. last:2)");
        match s {
            "all" => Ok(Self::All),
            "projections" => Ok(Self::Projections),
            "layernorms" => Ok(Self::LayerNorms),
            other => match other.strip_prefix("last:").map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => Ok(Self::LastBlocks(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl std::fmt::Display for Trainable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => write!(f, "all"),
            Self::Projections => write!(f, "projections"),
            Self::LayerNorms => write!(f, "layernorms"),
            Self::LastBlocks(n) => write!(f, "last:{n}"),
        }
    }
}

fn is_projection(name: &str) -> bool {
    name == "visual_projection.weight" || name == "text_projection.weight" || name == "logit_scale"
}

fn is_layer_norm(name: &str) -> bool {
    name.contains("layer_norm") || name.contains("layrnorm") || name.contains("layernorm")
}

/// The block index of a tower weight: `vision_model.encoder.layers.7.…` gives
/// `(vision, 7)`.
fn block_of(name: &str) -> Option<(&str, usize)> {
    let (tower, rest) = name.split_once(".encoder.layers.")?;
    let index = rest.split('.').next()?.parse().ok()?;
    Some((tower, index))
}

impl Trainable {
    /// Whether the weight `name` learns under this choice (`config` tells how many
    /// blocks each tower has).
    pub fn includes(&self, name: &str, config: &ClipConfig) -> bool {
        match self {
            Self::All => true,
            Self::Projections => is_projection(name),
            Self::LayerNorms => is_layer_norm(name) || name == "logit_scale",
            Self::LastBlocks(n) => {
                if is_projection(name)
                    || name.starts_with("vision_model.post_layernorm")
                    || name.starts_with("text_model.final_layer_norm")
                {
                    return true;
                }
                match block_of(name) {
                    Some(("vision_model", i)) => i + n >= config.vision.encoder.num_layers,
                    Some(("text_model", i)) => i + n >= config.text.encoder.num_layers,
                    _ => false,
                }
            }
        }
    }
}

/// Every weight of a CLIP model as a named variable (f32), in Hugging Face naming.
pub struct Params {
    vars: BTreeMap<String, Var>,
    config: ClipConfig,
    device: Device,
}

impl Params {
    /// Fresh weights with Hugging Face's initialisation for `CLIPModel`
    /// (`CLIPPreTrainedModel._init_weights`, `initializer_factor` 1), seeded per tensor
    /// name so that a seed gives the same model on any machine.
    pub fn init(config: &ClipConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut vars = BTreeMap::new();
        for spec in weight_specs(config) {
            let n: usize = spec.shape.iter().product();
            let values: Vec<f32> = match spec.init {
                Init::Normal(std) => {
                    let mut rng = Rng::new(seed ^ name_seed(&spec.name));
                    (0..n).map(|_| (rng.normal() * std) as f32).collect()
                }
                Init::Const(v) => vec![v as f32; n],
            };
            let t = Tensor::from_vec(values, spec.shape.as_slice(), device)?;
            vars.insert(spec.name, Var::from_tensor(&t)?);
        }
        Ok(Self {
            vars,
            config: config.clone(),
            device: device.clone(),
        })
    }

    /// The weights of a safetensors file, every one the architecture needs, as f32
    /// variables (an f16 file is widened). Extra tensors are ignored.
    pub fn load(path: &Path, config: &ClipConfig, device: &Device) -> Result<Self> {
        let file = candle_core::safetensors::load(path, device)?;
        Self::from_tensors(file, config, device)
    }

    /// As [`Params::load`], from a safetensors file's bytes.
    pub fn load_bytes(bytes: &[u8], config: &ClipConfig, device: &Device) -> Result<Self> {
        let file = candle_core::safetensors::load_buffer(bytes, device)?;
        Self::from_tensors(file, config, device)
    }

    fn from_tensors(
        mut file: HashMap<String, Tensor>,
        config: &ClipConfig,
        device: &Device,
    ) -> Result<Self> {
        let mut vars = BTreeMap::new();
        for spec in weight_specs(config) {
            let t = file
                .remove(&spec.name)
                .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {}", spec.name)))?;
            if t.dims() != spec.shape.as_slice() {
                candle_core::bail!(
                    "tensor {} has shape {:?}, the config needs {:?}",
                    spec.name,
                    t.dims(),
                    spec.shape
                );
            }
            vars.insert(spec.name, Var::from_tensor(&t.to_dtype(DType::F32)?)?);
        }
        Ok(Self {
            vars,
            config: config.clone(),
            device: device.clone(),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The variable of one weight.
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }

    /// Names and variables, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    /// The model on these weights, for training: weights for which `learns` is true are
    /// the variables themselves (gradients reach them); the others are detached copies
    /// that share their storage (no gradient is computed for them).
    pub fn model(&self, learns: &dyn Fn(&str) -> bool) -> Result<ClipModel> {
        let tensors: HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(name, var)| {
                let t = if learns(name) {
                    var.as_tensor().clone()
                } else {
                    var.as_tensor().detach()
                };
                (name.clone(), t)
            })
            .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &self.device);
        ClipModel::load_for(vb, &self.config, Mode::Training)
    }

    /// The variables for which `learns` is true, split into those that take weight decay
    /// (matrices and embedding tables) and those that do not (gains, biases, the class
    /// embedding, the temperature), as open_clip splits them (`p.ndim < 2` excluded).
    pub fn param_groups(&self, learns: &dyn Fn(&str) -> bool) -> (Vec<Param>, Vec<Param>) {
        let (mut decay, mut plain) = (Vec::new(), Vec::new());
        for (name, var) in &self.vars {
            if !learns(name) {
                continue;
            }
            let p = Param {
                name: name.clone(),
                var: var.clone(),
            };
            if var.rank() >= 2 {
                decay.push(p);
            } else {
                plain.push(p);
            }
        }
        (decay, plain)
    }

    /// Clamp the temperature to `[0, ln 100]` in place, as OpenAI does after each step.
    pub fn clamp_logit_scale(&self) -> Result<()> {
        if let Some(v) = self.vars.get("logit_scale") {
            let clamped = v.as_tensor().clamp(0.0, MAX_LOGIT_SCALE)?;
            v.set(&clamped)?;
        }
        Ok(())
    }

    /// The weights as named tensors in `dtype` (f32, or f16 to halve a file).
    pub fn tensors(&self, dtype: DType) -> Result<HashMap<String, Tensor>> {
        self.vars
            .iter()
            .map(|(name, var)| Ok((name.clone(), var.as_tensor().to_dtype(dtype)?)))
            .collect()
    }

    /// The weights mixed with `zero_shot` as `(1 - alpha) * zero_shot + alpha * self`
    /// (WiSE-FT, Wortsman et al. 2022). At `alpha = 0` the result is `zero_shot` exactly.
    pub fn interpolated(&self, zero_shot: &Params, alpha: f64) -> Result<HashMap<String, Tensor>> {
        self.vars
            .iter()
            .map(|(name, var)| {
                let z = zero_shot
                    .vars
                    .get(name)
                    .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {name}")))?;
                Ok((
                    name.clone(),
                    interpolate(z.as_tensor(), var.as_tensor(), alpha)?,
                ))
            })
            .collect()
    }
}

/// Named tensors as the bytes of a safetensors file.
pub fn safetensors_bytes(tensors: &HashMap<String, Tensor>) -> Result<Vec<u8>> {
    safetensors::tensor::serialize(tensors.iter(), None)
        .map_err(|e| candle_core::Error::Msg(format!("safetensors: {e}")))
}

/// `(1 - alpha) * a + alpha * b`, returning `a` itself at 0 and `b` at 1 (no rounding).
pub fn interpolate(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    if alpha == 0.0 {
        return a.copy();
    }
    if alpha == 1.0 {
        return b.copy();
    }
    (a * (1.0 - alpha))? + (b * alpha)?
}

/// How a fresh weight starts.
enum Init {
    Normal(f64),
    Const(f64),
}

/// One weight of the architecture.
struct WeightSpec {
    name: String,
    shape: Vec<usize>,
    init: Init,
}

/// The name and shape of every weight a Hugging Face `CLIPModel` with this
/// configuration holds (what a weights file is checked against before loading).
pub fn weight_shapes(c: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    weight_specs(c)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect()
}

/// Every weight of a Hugging Face `CLIPModel` with its shape and initialisation.
fn weight_specs(c: &ClipConfig) -> Vec<WeightSpec> {
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, init: Init| {
        out.push(WeightSpec { name, shape, init });
    };
    let (t, v) = (&c.text, &c.vision);
    let (dt, dv) = (t.encoder.hidden_size, v.encoder.hidden_size);
    add(
        "text_model.embeddings.token_embedding.weight".into(),
        vec![t.vocab_size, dt],
        Init::Normal(0.02),
    );
    add(
        "text_model.embeddings.position_embedding.weight".into(),
        vec![t.max_positions, dt],
        Init::Normal(0.01),
    );
    add(
        "vision_model.embeddings.class_embedding".into(),
        vec![dv],
        Init::Normal((dv as f64).powf(-0.5)),
    );
    add(
        "vision_model.embeddings.patch_embedding.weight".into(),
        vec![dv, v.num_channels, v.patch_size, v.patch_size],
        Init::Normal(0.02),
    );
    add(
        "vision_model.embeddings.position_embedding.weight".into(),
        vec![v.num_positions(), dv],
        Init::Normal(0.02),
    );
    for (tower, e) in [("text_model", &t.encoder), ("vision_model", &v.encoder)] {
        let d = e.hidden_size;
        let layers = e.num_layers as f64;
        let in_std = (d as f64).powf(-0.5) * (2.0 * layers).powf(-0.5);
        let out_std = (d as f64).powf(-0.5);
        let fc_std = (2.0 * d as f64).powf(-0.5);
        for i in 0..e.num_layers {
            let p = format!("{tower}.encoder.layers.{i}");
            for (name, std) in [
                ("q_proj", in_std),
                ("k_proj", in_std),
                ("v_proj", in_std),
                ("out_proj", out_std),
            ] {
                add(
                    format!("{p}.self_attn.{name}.weight"),
                    vec![d, d],
                    Init::Normal(std),
                );
                add(
                    format!("{p}.self_attn.{name}.bias"),
                    vec![d],
                    Init::Const(0.0),
                );
            }
            let inter = e.intermediate_size;
            add(
                format!("{p}.mlp.fc1.weight"),
                vec![inter, d],
                Init::Normal(fc_std),
            );
            add(format!("{p}.mlp.fc1.bias"), vec![inter], Init::Const(0.0));
            add(
                format!("{p}.mlp.fc2.weight"),
                vec![d, inter],
                Init::Normal(in_std),
            );
            add(format!("{p}.mlp.fc2.bias"), vec![d], Init::Const(0.0));
            for ln in ["layer_norm1", "layer_norm2"] {
                add(format!("{p}.{ln}.weight"), vec![d], Init::Const(1.0));
                add(format!("{p}.{ln}.bias"), vec![d], Init::Const(0.0));
            }
        }
    }
    for (name, d) in [
        ("text_model.final_layer_norm", dt),
        ("vision_model.pre_layrnorm", dv),
        ("vision_model.post_layernorm", dv),
    ] {
        add(format!("{name}.weight"), vec![d], Init::Const(1.0));
        add(format!("{name}.bias"), vec![d], Init::Const(0.0));
    }
    let p = c.projection_dim;
    add(
        "visual_projection.weight".into(),
        vec![p, dv],
        Init::Normal((dv as f64).powf(-0.5)),
    );
    add(
        "text_projection.weight".into(),
        vec![p, dt],
        Init::Normal((dt as f64).powf(-0.5)),
    );
    // transformers' default `logit_scale_init_value`: ln(1 / 0.07).
    add("logit_scale".into(), vec![], Init::Const(2.6592));
    out
}

/// Cosine-similarity logits, `exp(logit_scale) * norm(images) · norm(texts)ᵀ`, of shape
/// `(images, texts)`.
pub fn clip_logits(image_f: &Tensor, text_f: &Tensor, logit_scale: &Tensor) -> Result<Tensor> {
    let sim = l2_normalize(image_f)?.matmul(&l2_normalize(text_f)?.t()?)?;
    sim.broadcast_mul(&logit_scale.exp()?)
}

/// Cross entropy of `logits` (rows) against soft `targets` whose rows sum to 1.
fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    (log_p * targets)?.sum(D::Minus1)?.neg()?.mean_all()
}

/// Rows of `m` divided by their sums.
fn row_normalise(m: &Tensor) -> Result<Tensor> {
    m.broadcast_div(&m.sum_keepdim(D::Minus1)?)
}

/// CLIP's symmetric contrastive loss on a square logit matrix `(n, n)` whose diagonal
/// holds the matching pairs: the mean of the image-to-text and text-to-image cross
/// entropies. With `positives`, an `(n, n)` 0/1 matrix marking which image-text pairs
/// match (the diagonal and any other captions that also describe an image), each row's
/// target is spread evenly over its positives instead of the diagonal alone: with the
/// identity it is exactly CLIP's loss.
///
/// With `positives`, the logits may also be `(n, m)` with `m > n`: the further captions
/// are extra negatives (hard negatives), and a caption that describes no picture of the
/// batch takes part only in the image-to-text term.
pub fn contrastive_loss(logits: &Tensor, positives: Option<&Tensor>) -> Result<Tensor> {
    let (n, m) = logits.dims2()?;
    if n != m && positives.is_none() {
        candle_core::bail!("contrastive loss needs a square logit matrix, got ({n}, {m})");
    }
    let eye;
    let pos = match positives {
        Some(p) => p,
        None => {
            eye = Tensor::eye(n, DType::F32, logits.device())?;
            &eye
        }
    };
    let image_loss = soft_cross_entropy(logits, &row_normalise(pos)?)?;
    let described: Vec<u32> = pos
        .sum(0)?
        .to_vec1::<f32>()?
        .iter()
        .enumerate()
        .filter(|(_, &count)| count > 0.0)
        .map(|(j, _)| j as u32)
        .collect();
    let (text_logits, text_pos) = if described.len() == m {
        (logits.t()?, pos.t()?)
    } else {
        let keep = Tensor::new(described.as_slice(), logits.device())?;
        (
            logits.index_select(&keep, 1)?.t()?,
            pos.index_select(&keep, 1)?.t()?,
        )
    };
    let text_loss = soft_cross_entropy(&text_logits, &row_normalise(&text_pos)?)?;
    (image_loss + text_loss)? / 2.0
}

/// AdamW for CLIP: decoupled weight decay on matrices only, none on gains, biases and
/// the temperature (open_clip's split).
pub struct ClipOptimizer {
    decay: Optimizer,
    plain: Optimizer,
}

impl ClipOptimizer {
    /// AdamW over the weights for which `learns` is true.
    pub fn new(params: &Params, learns: &dyn Fn(&str) -> bool, lr: f64, weight_decay: f64) -> Self {
        let (decay, plain) = params.param_groups(learns);
        Self {
            decay: Optimizer::new(OptimizerKind::Adamw, decay, lr, weight_decay),
            plain: Optimizer::new(OptimizerKind::Adamw, plain, lr, 0.0),
        }
    }

    /// Set the learning rate of both groups.
    pub fn set_lr(&mut self, lr: f64) {
        self.decay.set_lr(lr);
        self.plain.set_lr(lr);
    }

    /// One update from the gradients of `loss`.
    pub fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        self.decay.step(grads)?;
        self.plain.step(grads)
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.decay.steps()
    }

    /// Moments as named tensors, for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = self.decay.state();
        out.extend(self.plain.state());
        out
    }

    /// Restore the state of [`ClipOptimizer::state`] after `steps` steps.
    pub fn restore(&mut self, state: HashMap<String, Tensor>, steps: u64) -> Result<()> {
        self.decay.restore(state.clone(), steps)?;
        self.plain.restore(state, steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ClipConfig {
        ClipConfig::from_json(
            r#"{"projection_dim": 8,
                "text_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "vocab_size": 49408},
                "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3,
                                  "num_attention_heads": 2, "image_size": 32, "patch_size": 16}}"#,
        )
        .unwrap()
    }

    #[test]
    fn trainable_choices_parse_and_select() {
        let c = tiny();
        assert_eq!(
            "last:2".parse::<Trainable>().unwrap(),
            Trainable::LastBlocks(2)
        );
        assert!("last:0".parse::<Trainable>().is_err());
        assert!("some".parse::<Trainable>().is_err());
        let last = Trainable::LastBlocks(1);
        assert!(last.includes("vision_model.encoder.layers.2.mlp.fc1.weight", &c));
        assert!(!last.includes("vision_model.encoder.layers.1.mlp.fc1.weight", &c));
        assert!(last.includes("text_model.encoder.layers.1.mlp.fc1.weight", &c));
        assert!(!last.includes("text_model.embeddings.token_embedding.weight", &c));
        let ln = Trainable::LayerNorms;
        assert!(ln.includes("vision_model.pre_layrnorm.weight", &c));
        assert!(ln.includes("text_model.encoder.layers.0.layer_norm2.bias", &c));
        assert!(!ln.includes("visual_projection.weight", &c));
        assert!(Trainable::Projections.includes("text_projection.weight", &c));
    }

    #[test]
    fn init_covers_every_weight_the_model_loads() {
        let c = tiny();
        let params = Params::init(&c, 1, &Device::Cpu).unwrap();
        let model = params.model(&|_| true).unwrap();
        let pixels = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(model.image_features(&pixels).unwrap().dims(), &[2, 8]);
        // Same seed, same weights; another seed, others.
        let again = Params::init(&c, 1, &Device::Cpu).unwrap();
        let other = Params::init(&c, 2, &Device::Cpu).unwrap();
        let w = |p: &Params| {
            p.get("visual_projection.weight")
                .unwrap()
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(w(&params), w(&again));
        assert_ne!(w(&params), w(&other));
    }

    #[test]
    fn identity_positives_give_clips_loss() {
        let logits = Tensor::new(
            &[[2.0f32, 0.5, -1.0], [0.1, 1.5, 0.3], [0.0, 0.2, 3.0]],
            &Device::Cpu,
        )
        .unwrap();
        let ours = contrastive_loss(&logits, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let y = Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
        let ce = |l: &Tensor| {
            candle_nn::loss::cross_entropy(l, &y)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let want = (ce(&logits) + ce(&logits.t().unwrap().contiguous().unwrap())) / 2.0;
        assert!((ours - want).abs() < 1e-6, "{ours} vs {want}");
        // Marking a second positive lowers the loss when its logit is high.
        let pos = Tensor::new(
            &[[1.0f32, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            &Device::Cpu,
        )
        .unwrap();
        let soft = contrastive_loss(&logits, Some(&pos))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(soft.is_finite() && soft != ours);
    }

    #[test]
    fn extra_negative_captions_join_only_the_image_to_text_term() {
        // Two pictures, three captions: the third describes neither.
        let rows = [[2.0f64, 0.5, 1.0], [0.1, 1.5, 0.7]];
        let logits = Tensor::new(&rows.map(|r| r.map(|v| v as f32)), &Device::Cpu).unwrap();
        let pos = Tensor::new(&[[1.0f32, 0.0, 0.0], [0.0, 1.0, 0.0]], &Device::Cpu).unwrap();
        let ours = contrastive_loss(&logits, Some(&pos))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let lse = |v: &[f64]| v.iter().map(|x| x.exp()).sum::<f64>().ln();
        let image = ((lse(&rows[0]) - rows[0][0]) + (lse(&rows[1]) - rows[1][1])) / 2.0;
        let cols = [[rows[0][0], rows[1][0]], [rows[0][1], rows[1][1]]];
        let text = ((lse(&cols[0]) - cols[0][0]) + (lse(&cols[1]) - cols[1][1])) / 2.0;
        let want = (image + text) / 2.0;
        assert!((f64::from(ours) - want).abs() < 1e-5, "{ours} vs {want}");
        assert!(contrastive_loss(&logits, None).is_err());
    }

    #[test]
    fn wise_ft_at_zero_is_the_zero_shot_model_exactly() {
        let c = tiny();
        let zs = Params::init(&c, 1, &Device::Cpu).unwrap();
        let ft = Params::init(&c, 2, &Device::Cpu).unwrap();
        let mixed = ft.interpolated(&zs, 0.0).unwrap();
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (name, var) in zs.iter() {
            assert_eq!(values(var.as_tensor()), values(&mixed[name]), "{name}");
        }
    }
}
