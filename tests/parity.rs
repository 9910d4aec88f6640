//! Parity with the reference implementation on identical inputs and weights.
//!
//! The fixtures come from `tests/fixtures/make_fixtures.py`: OpenAI's tokenizer for token
//! ids, Pillow + torchvision (OpenAI's `clip._transform`) for the crops, and Hugging Face
//! transformers' `CLIPModel` with seeded random weights for embeddings and probabilities.

mod common;

use std::path::PathBuf;

use clipscope::clip::preprocess::center_crop_rgb;
use clipscope::clip::tokenizer::ClipTokenizer;
use clipscope::clip::{prepared, zeroshot, Clip, ClipError, LabelSet, ModelFiles, PromptStyle};
use clipscope::data::load_image;
use common::{cosine, fixtures, load_tiny, Reference};
use image::GenericImageView;

#[derive(serde::Deserialize)]
struct TokenCase {
    text: String,
    ids: Vec<u32>,
}

#[test]
fn token_ids_match_openai_tokenizer() {
    let tok = ClipTokenizer::from_file(&fixtures().join("tiny-clip/tokenizer.json"), 77).unwrap();
    let cases: Vec<TokenCase> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokens.json")).unwrap())
            .unwrap();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for case in &cases {
        let got = tok.encode(&case.text).unwrap();
        if got.ids != case.ids {
            failures.push(format!(
                "{:?}\n   got {:?}\n  want {:?}",
                case.text, got.ids, case.ids
            ));
        }
        assert_eq!(got.truncated, case.ids.len() == 77 && got.ids.len() == 77);
        assert!(got.ids.len() <= 77 && *got.ids.last().unwrap() == 49407);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn crop_pairs() -> Vec<(PathBuf, PathBuf)> {
    let images = fixtures().join("images");
    let mut pairs = Vec::new();
    for entry in std::fs::read_dir(fixtures().join("crops")).unwrap() {
        let crop = entry.unwrap().path();
        let stem = crop.file_stem().unwrap().to_string_lossy().to_string();
        let source = ["png", "jpg"]
            .iter()
            .map(|e| images.join(format!("{stem}.{e}")))
            .find(|p| p.exists())
            .unwrap();
        pairs.push((source, crop));
    }
    pairs.sort();
    assert!(pairs.len() >= 10, "expected the committed crops");
    pairs
}

#[test]
fn crops_match_pillow_and_torchvision() {
    for (source, reference) in crop_pairs() {
        let want = image::open(&reference).unwrap().to_rgb8();
        let got = center_crop_rgb(&load_image(&source).unwrap(), 224);
        assert_eq!(got.dimensions(), want.dimensions());
        let diffs: Vec<i32> = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .collect();
        let max = *diffs.iter().max().unwrap();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        // The resampler is a port of Pillow's and JPEGs are decoded by libjpeg-turbo's
        // decoder as in Pillow, so crops must match bit for bit.
        assert_eq!(max, 0, "{}: mean {mean}", source.display());
    }
}

/// Every JPEG encoding in `tests/fixtures/jpeg` (subsamplings, progressive, restart
/// markers, grey, partial blocks) decodes to Pillow's pixels exactly, whether the build
/// got libjpeg-turbo's SIMD code (nasm found) or its C code.
#[test]
fn jpegs_decode_as_pillow_does() {
    let folder = fixtures().join("jpeg");
    let mut checked = 0;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let jpeg = entry.unwrap().path();
        if jpeg.extension().is_none_or(|e| e != "jpg") {
            continue;
        }
        let got = load_image(&jpeg).unwrap();
        let want = image::open(jpeg.with_extension("png")).unwrap();
        assert_eq!(got.color(), want.color(), "{}", jpeg.display());
        assert_eq!(got.dimensions(), want.dimensions(), "{}", jpeg.display());
        let differing = got
            .as_bytes()
            .iter()
            .zip(want.as_bytes())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing,
            0,
            "{}: samples differ from Pillow's",
            jpeg.display()
        );
        checked += 1;
    }
    assert!(
        checked >= 10,
        "expected the committed JPEGs, found {checked}"
    );
}

#[test]
fn cmyk_jpeg_decodes_and_preprocesses() {
    let img = load_image(&fixtures().join("images/chelsea_cmyk.jpg")).unwrap();
    let crop = center_crop_rgb(&img, 224);
    assert_eq!(crop.dimensions(), (224, 224));
    // The cat photo is not blank: channels vary.
    let (min, max) = crop
        .as_raw()
        .iter()
        .fold((255u8, 0u8), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!(max - min > 100);
}

#[test]
fn embeddings_and_probabilities_match_transformers() {
    let clip = load_tiny();
    let reference = Reference::load(&fixtures().join("reference.json"));
    assert!((clip.logit_scale() - reference.logit_scale).abs() < 1e-3);
    let labels: Vec<String> = reference.labels.clone();
    let set = LabelSet::build(
        &clip,
        &labels,
        &PromptStyle::template(&reference.template).unwrap(),
    )
    .unwrap();
    for (got, want) in set.embeddings.iter().zip(&reference.text_embeddings) {
        assert!(
            cosine(got, want) > 0.99999,
            "text cos {}",
            cosine(got, want)
        );
    }
    let ensemble =
        LabelSet::build(&clip, &labels, &PromptStyle::ensemble("imagenet7").unwrap()).unwrap();
    for (got, want) in ensemble
        .embeddings
        .iter()
        .zip(&reference.ensemble_text_embeddings)
    {
        assert!(cosine(got, want) > 0.99999);
    }
    let images: Vec<_> = reference
        .images
        .iter()
        .map(|i| load_image(&fixtures().join("images").join(&i.file)).unwrap())
        .collect();
    let refs: Vec<_> = images.iter().collect();
    let embeddings = clip.embed_images(&refs).unwrap();
    let scale = clip.logit_scale();
    for (emb, want) in embeddings.iter().zip(&reference.images) {
        let cos = cosine(emb, &want.image_embedding);
        assert!(cos > 0.99999, "{}: image cos {cos}", want.file);
        let probs = zeroshot::probabilities(emb, &set, scale);
        let ens = zeroshot::probabilities(emb, &ensemble, scale);
        let ptol = 1e-5;
        for (p, q) in probs.iter().zip(&want.probabilities) {
            assert!((p - q).abs() < ptol, "{}: {p} vs {q}", want.file);
        }
        for (p, q) in ens.iter().zip(&want.ensemble_probabilities) {
            assert!((p - q).abs() < ptol, "{} (ensemble): {p} vs {q}", want.file);
        }
    }
}

/// Sharded jobs merge to the unsharded run's results only if an embedding does not
/// depend on the batch it came in: alone, first, or later in a batch, bit for bit.
#[test]
fn an_input_embeds_to_the_same_bits_alone_or_in_any_batch() {
    let clip = load_tiny();
    let names = ["rocket.jpg", "chelsea.png", "coffee.png", "tall.png"];
    let images: Vec<_> = names
        .iter()
        .map(|n| load_image(&fixtures().join("images").join(n)).unwrap())
        .collect();
    let together = clip
        .embed_images(&images.iter().collect::<Vec<_>>())
        .unwrap();
    for (i, image) in images.iter().enumerate() {
        let alone = clip.embed_images(&[image]).unwrap();
        assert_eq!(alone[0], together[i], "{}", names[i]);
    }
    let prompts: Vec<String> = [
        "a photo of a cat.",
        "a rocket",
        "a cup of coffee on a table",
    ]
    .iter()
    .map(|t| t.to_string())
    .collect();
    let together = clip.embed_texts(&prompts).unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        // A fresh model each time: the text cache would answer from the batch's run.
        let alone = load_tiny()
            .embed_texts(std::slice::from_ref(prompt))
            .unwrap();
        assert_eq!(alone[0], together[i], "{prompt}");
    }
}

#[test]
fn padding_to_77_changes_nothing() {
    let clip = load_tiny();
    let tokens: Vec<_> = [
        "a photo of a cat.",
        "x",
        "a much longer prompt about a dog in a park",
    ]
    .iter()
    .map(|t| clip.tokenize(t).unwrap())
    .collect();
    let short = clip.encode_tokens(&tokens).unwrap();
    let padded = clip.encode_tokens_padded(&tokens, 77).unwrap();
    let alone: Vec<_> = tokens
        .iter()
        .map(|t| {
            clip.encode_tokens(std::slice::from_ref(t))
                .unwrap()
                .remove(0)
        })
        .collect();
    for ((a, b), c) in short.iter().zip(&padded).zip(&alone) {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "padded to 77 differs by {d}");
        let d = a
            .iter()
            .zip(c)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "batched vs alone differs by {d}");
    }
}

#[test]
fn overlong_prompt_is_truncated_not_an_error() {
    let clip = load_tiny();
    let long = "word ".repeat(300);
    let t = clip.tokenize(&long).unwrap();
    assert!(t.truncated);
    assert_eq!(t.ids.len(), 77);
    assert_eq!(*t.ids.last().unwrap(), 49407);
    assert_eq!(clip.embed_texts(&[long]).unwrap()[0].len(), 16);
}

#[test]
fn text_cache_costs_one_encoding_per_new_prompt() {
    let clip = load_tiny();
    let a = clip.embed_texts(&["cat".into(), "dog".into()]).unwrap();
    assert_eq!(clip.cached_prompts(), 2);
    let b = clip
        .embed_texts(&["dog".into(), "cat".into(), "bird".into()])
        .unwrap();
    assert_eq!(clip.cached_prompts(), 3);
    assert_eq!(a[0], b[1]);
    assert_eq!(a[1], b[0]);
}

/// Copy the tiny model with one tensor removed or reshaped.
fn tampered_model(edit: impl Fn(&str, Vec<usize>) -> Option<Vec<usize>>) -> tempfile::TempDir {
    use safetensors::tensor::TensorView;
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny-clip");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = Vec::new();
    for (name, view) in st.tensors() {
        if let Some(shape) = edit(&name, view.shape().to_vec()) {
            let n: usize = shape.iter().product::<usize>() * view.dtype().bitsize() / 8;
            let mut data = view.data().to_vec();
            data.resize(n, 0);
            kept.push((name, data, shape, view.dtype()));
        }
    }
    let views: Vec<(String, TensorView)> = kept
        .iter()
        .map(|(n, d, s, t)| (n.clone(), TensorView::new(*t, s.clone(), d).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

fn load_error(dir: &std::path::Path) -> String {
    match Clip::load(dir, "tampered", candle_core::Device::Cpu) {
        Ok(_) => panic!("a tampered model loaded"),
        Err(e) => {
            assert!(matches!(e, ClipError::Weights { .. }), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn missing_class_embedding_is_an_error_naming_it() {
    let dir = tampered_model(|name, shape| (!name.ends_with("class_embedding")).then_some(shape));
    let err = load_error(dir.path());
    assert!(err.contains("class_embedding"), "{err}");
}

#[test]
fn missing_logit_scale_is_an_error_naming_it() {
    let dir = tampered_model(|name, shape| (name != "logit_scale").then_some(shape));
    let err = load_error(dir.path());
    assert!(err.contains("logit_scale"), "{err}");
}

#[test]
fn misshapen_tensor_is_an_error_naming_it() {
    let dir = tampered_model(|name, mut shape| {
        if name == "text_model.encoder.layers.1.mlp.fc1.weight" {
            shape[0] += 1;
        }
        Some(shape)
    });
    let err = load_error(dir.path());
    assert!(
        err.contains("text_model.encoder.layers.1.mlp.fc1.weight"),
        "{err}"
    );
}

/// Opt-in: a full-size ViT-B/32 with seeded weights, made by
/// `make_fixtures.py --full DIR` (about 600 MB, so not committed). Run with
/// `CLIPSCOPE_FULL_MODEL_DIR=DIR cargo test --release --test parity full_size -- --nocapture`.
#[test]
fn full_size_vit_b32_matches_transformers() {
    let Some(dir) = std::env::var_os("CLIPSCOPE_FULL_MODEL_DIR") else {
        eprintln!(
            "skipped: set CLIPSCOPE_FULL_MODEL_DIR to a folder made by make_fixtures.py --full"
        );
        return;
    };
    let dir = PathBuf::from(dir);
    let clip = Clip::load(&dir, "vit-b32-seeded", candle_core::Device::Cpu).unwrap();
    assert_eq!(clip.config().vision.encoder.hidden_size, 768);
    let reference = Reference::load(&dir.join("reference.json"));
    let style = PromptStyle::template(&reference.template).unwrap();
    let set = LabelSet::build(&clip, &reference.labels, &style).unwrap();
    let mut worst_text = 1f64;
    for (got, want) in set.embeddings.iter().zip(&reference.text_embeddings) {
        worst_text = worst_text.min(cosine(got, want));
    }
    let ensemble = LabelSet::build(
        &clip,
        &reference.labels,
        &PromptStyle::ensemble("imagenet7").unwrap(),
    )
    .unwrap();
    let images: Vec<_> = reference
        .images
        .iter()
        .map(|i| load_image(&fixtures().join("images").join(&i.file)).unwrap())
        .collect();
    let embeddings = clip
        .embed_images(&images.iter().collect::<Vec<_>>())
        .unwrap();
    let (mut worst_image, mut worst_prob) = (1f64, 0f64);
    for (emb, want) in embeddings.iter().zip(&reference.images) {
        worst_image = worst_image.min(cosine(emb, &want.image_embedding));
        let probs = zeroshot::probabilities(emb, &set, clip.logit_scale());
        let ens = zeroshot::probabilities(emb, &ensemble, clip.logit_scale());
        for (p, q) in probs
            .iter()
            .zip(&want.probabilities)
            .chain(ens.iter().zip(&want.ensemble_probabilities))
        {
            worst_prob = worst_prob.max((p - q).abs());
        }
    }
    eprintln!(
        "full-size ViT-B/32 (seeded): min text cos {worst_text:.7}, min image cos {worst_image:.7}, max |dp| {worst_prob:.2e}"
    );
    assert!(worst_text > 0.99999 && worst_image > 0.99999 && worst_prob < 1e-3);
}

/// The tiny model's files with prepared weights kept under `store` (any size prepared).
fn tiny_files_preparing(model: &std::path::Path, store: &std::path::Path) -> ModelFiles {
    ModelFiles::from_dir(model, "tiny-clip")
        .unwrap()
        .with_prepared_dir(store.to_path_buf(), 0)
}

/// Image and text embeddings of a model, for bit-for-bit comparisons.
fn embeddings(clip: &Clip) -> Vec<Vec<f32>> {
    let image = load_image(&fixtures().join("images/astronaut.png")).unwrap();
    let mut all = clip.embed_images(&[&image]).unwrap();
    all.extend(
        clip.embed_texts(&["a photo of a cat".into(), "an astronaut".into()])
            .unwrap(),
    );
    all
}

#[test]
fn prepared_weights_give_the_embeddings_of_the_weights_file_bit_for_bit() {
    let store = tempfile::tempdir().unwrap();
    let model = fixtures().join("tiny-clip");
    let plain = embeddings(&load_tiny());
    let path = prepared::store_path(store.path(), &model.join("model.safetensors")).unwrap();

    // The first load makes the dense layers and writes them as the store.
    let first = tiny_files_preparing(&model, store.path())
        .load(candle_core::Device::Cpu)
        .unwrap();
    assert_eq!(embeddings(&first), plain);
    let written = std::fs::metadata(&path).unwrap().modified().unwrap();

    // The next load maps them, and leaves the matching store as it was.
    let mapped = tiny_files_preparing(&model, store.path())
        .load(candle_core::Device::Cpu)
        .unwrap();
    // Used again and again, the mapped weights give the same values.
    for _ in 0..4 {
        assert_eq!(embeddings(&mapped), plain);
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        written
    );
    drop((first, mapped));

    // The values used are the store's: change one in place and the text embeddings move
    // while the image embedding stays.
    let mut bytes = std::fs::read(&path).unwrap();
    let (header, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let info = meta.tensors()["text_model.encoder.layers.0.mlp.fc1.weight"].clone();
    let at = 8 + header + info.data_offsets.0;
    bytes[at..at + 4].copy_from_slice(&9.0f32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let changed = embeddings(
        &tiny_files_preparing(&model, store.path())
            .load(candle_core::Device::Cpu)
            .unwrap(),
    );
    assert_eq!(changed[0], plain[0]);
    assert_ne!(changed[1..], plain[1..]);
}

#[test]
fn a_damaged_or_stale_prepared_store_is_replaced_not_used() {
    let store = tempfile::tempdir().unwrap();
    let model = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("tiny-clip").join(f), model.path().join(f)).unwrap();
    }
    let plain = embeddings(&load_tiny());
    let weights = model.path().join("model.safetensors");
    let path = prepared::store_path(store.path(), &weights).unwrap();
    let load = || {
        tiny_files_preparing(model.path(), store.path())
            .load(candle_core::Device::Cpu)
            .unwrap()
    };

    // Not a safetensors file: ignored, then replaced by a whole store.
    std::fs::create_dir_all(store.path()).unwrap();
    std::fs::write(&path, b"not a store").unwrap();
    assert_eq!(embeddings(&load()), plain);
    assert!(std::fs::metadata(&path).unwrap().len() > 1000);

    // A store made for other weights at the same path (a different size or time):
    // stale. Rewrite the weights with one value changed, and the store follows them.
    let bytes = std::fs::read(&weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let name = "text_model.encoder.layers.0.mlp.fc1.weight";
    let view = st.tensor(name).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let edited = tensors.iter_mut().find(|t| t.0 == name).unwrap();
    // The fixture keeps its weights in f16.
    assert_eq!(view.dtype(), safetensors::Dtype::F16);
    edited.3[..2].copy_from_slice(&half::f16::from_f32(7.5).to_le_bytes());
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, t, s, d)| {
            let v = safetensors::tensor::TensorView::new(*t, s.clone(), d).unwrap();
            (n.clone(), v)
        })
        .collect();
    // A later modification time even on coarse clocks.
    std::thread::sleep(std::time::Duration::from_millis(20));
    safetensors::serialize_to_file(views, None, &weights).unwrap();
    let fresh = ModelFiles::from_dir(model.path(), "edited")
        .unwrap()
        .load(candle_core::Device::Cpu)
        .unwrap();
    let want = embeddings(&fresh);
    assert_ne!(want, plain, "the edit changes the text embeddings");
    assert_eq!(embeddings(&load()), want);
    assert_eq!(embeddings(&load()), want, "the replaced store is used");
}
