//! Training parity: clipscope's trainable CLIP against transformers' `CLIPModel` on the
//! tiny fixture model (seeded weights): the contrastive loss, the gradients of weights
//! across both towers, and three AdamW steps. The reference is made by
//! `tests/fixtures/make_clip_train_fixture.py`.

mod common;

use candle_core::{Device, Tensor};
use clipscope::clip::config::ClipConfig;
use clipscope::clip::preprocess::{normalize_chw, PreprocessConfig};
use clipscope::clip::tokenizer::{id_batch, ClipTokenizer};
use clipscope::clip::train::{clip_logits, contrastive_loss, ClipOptimizer, Params, Trainable};
use serde::Deserialize;

#[derive(Deserialize)]
struct GradRef {
    norm: f64,
    positions: Vec<usize>,
    values: Vec<f64>,
}

#[derive(Deserialize)]
struct AdamRef {
    lr: f64,
    weight_decay: f64,
    losses: Vec<f64>,
}

#[derive(Deserialize)]
struct Reference {
    images: Vec<String>,
    captions: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    loss: f64,
    logits_per_image: Vec<Vec<f64>>,
    grads: std::collections::BTreeMap<String, GradRef>,
    adamw: AdamRef,
}

struct Setup {
    reference: Reference,
    params: Params,
    pixels: Tensor,
    ids: Tensor,
    eot: Vec<usize>,
}

fn setup() -> Setup {
    let fx = common::fixtures();
    let text = std::fs::read_to_string(fx.join("clip_train_reference.json")).unwrap();
    let reference: Reference = serde_json::from_str(&text).unwrap();
    let dir = fx.join("tiny-clip");
    let config = ClipConfig::from_file(&dir.join("config.json")).unwrap();
    let params = Params::load(&dir.join("model.safetensors"), &config, &Device::Cpu).unwrap();
    let pp = PreprocessConfig::openai(config.vision.image_size);
    let mut data = Vec::new();
    for name in &reference.images {
        let crop = image::open(fx.join("crops").join(name)).unwrap().to_rgb8();
        data.extend(normalize_chw(&crop, &pp));
    }
    let s = pp.image_size;
    let pixels = Tensor::from_vec(data, (reference.images.len(), 3, s, s), &Device::Cpu).unwrap();
    let tok = ClipTokenizer::from_file(&dir.join("tokenizer.json"), 77).unwrap();
    let tokens: Vec<_> = reference
        .captions
        .iter()
        .map(|c| tok.encode(c).unwrap())
        .collect();
    for (t, want) in tokens.iter().zip(&reference.token_ids) {
        assert_eq!(&t.ids, want, "token ids differ from transformers'");
    }
    let (ids, eot) = id_batch(&tokens, 0, 77, &Device::Cpu).unwrap();
    Setup {
        reference,
        params,
        pixels,
        ids,
        eot,
    }
}

fn loss_of(s: &Setup, trainable: &Trainable) -> (Tensor, Tensor) {
    let config = s.params.config().clone();
    let model = s.params.model(&|n| trainable.includes(n, &config)).unwrap();
    let logits = clip_logits(
        &model.image_features(&s.pixels).unwrap(),
        &model.text_features(&s.ids, &s.eot).unwrap(),
        model.logit_scale_tensor(),
    )
    .unwrap();
    (contrastive_loss(&logits, None).unwrap(), logits)
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

#[test]
fn loss_and_gradients_match_transformers() {
    let s = setup();
    let (loss, logits) = loss_of(&s, &Trainable::All);
    let loss_v = loss.to_scalar::<f32>().unwrap() as f64;
    assert!(
        (loss_v - s.reference.loss).abs() < 1e-5,
        "loss {loss_v} vs {}",
        s.reference.loss
    );
    let got = flat(&logits);
    let want: Vec<f64> = s.reference.logits_per_image.concat();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "logits differ by {worst}");

    let grads = loss.backward().unwrap();
    let mut report = Vec::new();
    for (name, r) in &s.reference.grads {
        let var = s.params.get(name).unwrap();
        let g = flat(
            grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}")),
        );
        let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        let rel = (norm - r.norm).abs() / r.norm.max(1e-12);
        // Elementwise on the sample, relative to the gradient's scale.
        let scale = r.norm / (g.len() as f64).sqrt();
        let worst = r
            .positions
            .iter()
            .zip(&r.values)
            .map(|(&i, &v)| (g[i] - v).abs())
            .fold(0.0, f64::max)
            / scale.max(1e-12);
        report.push(format!("{name}: norm rel {rel:.2e}, sample {worst:.2e}"));
        assert!(rel < 2e-5, "{name}: gradient norm {norm} vs {}", r.norm);
        assert!(
            worst < 2e-4,
            "{name}: sampled gradient differs by {worst} of its scale"
        );
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn three_adamw_steps_match_pytorch() {
    let s = setup();
    let a = &s.reference.adamw;
    let mut opt = ClipOptimizer::new(&s.params, &|_| true, a.lr, a.weight_decay);
    let mut losses = Vec::new();
    for _ in 0..3 {
        let (loss, _) = loss_of(&s, &Trainable::All);
        losses.push(loss.to_scalar::<f32>().unwrap() as f64);
        opt.step(&loss.backward().unwrap()).unwrap();
        s.params.clamp_logit_scale().unwrap();
    }
    losses.push(loss_of(&s, &Trainable::All).0.to_scalar::<f32>().unwrap() as f64);
    for (i, (got, want)) in losses.iter().zip(&a.losses).enumerate() {
        assert!(
            (got - want).abs() < 2e-4 * want.abs().max(1.0),
            "loss before step {i}: {got} vs PyTorch {want}"
        );
    }
}

#[test]
fn frozen_weights_get_no_gradient_and_do_not_move() {
    let s = setup();
    let trainable = Trainable::Projections;
    let config = s.params.config().clone();
    let mut opt = ClipOptimizer::new(&s.params, &|n| trainable.includes(n, &config), 1e-3, 0.1);
    let before = flat(
        s.params
            .get("vision_model.encoder.layers.0.mlp.fc1.weight")
            .unwrap()
            .as_tensor(),
    );
    let proj_before = flat(
        s.params
            .get("visual_projection.weight")
            .unwrap()
            .as_tensor(),
    );
    let (loss, _) = loss_of(&s, &trainable);
    let grads = loss.backward().unwrap();
    let frozen = s
        .params
        .get("vision_model.encoder.layers.0.mlp.fc1.weight")
        .unwrap();
    assert!(grads.get(frozen.as_tensor()).is_none());
    opt.step(&grads).unwrap();
    assert_eq!(before, flat(frozen.as_tensor()));
    assert_ne!(
        proj_before,
        flat(
            s.params
                .get("visual_projection.weight")
                .unwrap()
                .as_tensor()
        )
    );
}
