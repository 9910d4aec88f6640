//! Broken model folders, built in a temporary folder from the tiny fixture: each is one
//! line naming the file (and tensor) at fault, exit status 2, never a panic and never a
//! model with made-up weights.

mod common;

use std::path::{Path, PathBuf};

use common::{clipscope, fixtures, usage_error};

/// A copy of the tiny CLIP fixture in a temporary folder, to break.
fn tiny_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("tiny-clip").join(f), dir.join(f)).unwrap();
    }
    (tmp, dir)
}

/// `classify --model-dir DIR` on a fixture picture: its stderr, checked to be one
/// `clipscope: error:` line with exit status 2 and no panic.
fn classify_error(dir: &Path) -> String {
    let out = clipscope()
        .args(["classify", "--labels", "a,b", "--model-dir"])
        .arg(dir)
        .arg(fixtures().join("images/camera.png"))
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = usage_error(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("clipscope: error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// Rewrite the weights with `change` applied to the tensors.
fn edit_weights(
    path: &Path,
    change: impl FnOnce(&mut std::collections::HashMap<String, candle_core::Tensor>),
) {
    let mut tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    change(&mut tensors);
    candle_core::safetensors::save(&tensors, path).unwrap();
}

#[test]
fn a_missing_folder_is_named_as_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let err = classify_error(&tmp.path().join("no-such-model"));
    assert!(err.contains("no-such-model: no such folder"), "{err}");
    assert!(!err.contains("config.json in the model folder"), "{err}");
    assert_eq!(err.matches("no-such-model").count(), 1, "{err}");
}

#[test]
fn each_missing_file_is_named() {
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        let (_tmp, dir) = tiny_copy();
        std::fs::remove_file(dir.join(file)).unwrap();
        let err = classify_error(&dir);
        assert!(err.contains(&format!("no {file}")), "{file}: {err}");
        assert_eq!(err.matches(&*dir.display().to_string()).count(), 1, "{err}");
    }
}

#[test]
fn truncated_or_corrupt_weights_are_named() {
    let (_tmp, dir) = tiny_copy();
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = classify_error(&dir);
    assert!(
        err.contains("model.safetensors: not a readable safetensors file"),
        "{err}"
    );
    assert!(err.contains("truncated or corrupt"), "{err}");
    std::fs::write(&weights, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    let err = classify_error(&dir);
    assert!(
        err.contains("model.safetensors: not a readable safetensors file"),
        "{err}"
    );
    std::fs::write(&weights, b"").unwrap();
    classify_error(&dir);
}

#[test]
fn a_config_that_does_not_match_the_weights_names_the_tensor() {
    let (_tmp, dir) = tiny_copy();
    edit_json(&dir.join("config.json"), |c| {
        c["text_config"]["hidden_size"] = 48.into();
    });
    let err = classify_error(&dir);
    assert!(
        err.contains("tensor text_model.embeddings.token_embedding.weight is [49408, 32] where config.json needs [49408, 48]"),
        "{err}"
    );
}

#[test]
fn a_missing_tensor_or_an_integer_tensor_is_named() {
    let (_tmp, dir) = tiny_copy();
    let weights = dir.join("model.safetensors");
    edit_weights(&weights, |t| {
        t.remove("vision_model.embeddings.class_embedding");
    });
    let err = classify_error(&dir);
    assert!(
        err.contains("no tensor vision_model.embeddings.class_embedding"),
        "{err}"
    );
    let (_tmp, dir) = tiny_copy();
    let weights = dir.join("model.safetensors");
    edit_weights(&weights, |t| {
        let name = "text_model.final_layer_norm.weight";
        let as_int = t[name].to_dtype(candle_core::DType::I64).unwrap();
        t.insert(name.to_string(), as_int);
    });
    let err = classify_error(&dir);
    assert!(
        err.contains("tensor text_model.final_layer_norm.weight is I64, not a floating-point type"),
        "{err}"
    );
}

#[test]
fn a_tokenizer_of_another_vocabulary_size_is_refused() {
    let (_tmp, dir) = tiny_copy();
    edit_json(&dir.join("tokenizer.json"), |t| {
        let added = t["added_tokens"].as_array_mut().unwrap();
        added.push(serde_json::json!({
            "id": 49408, "content": "<|extra|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
    });
    let err = classify_error(&dir);
    assert!(
        err.contains(
            "tokenizer.json: 49409 tokens where config.json's text_config.vocab_size is 49408"
        ),
        "{err}"
    );
    assert!(
        !err.contains("cannot load model"),
        "the folder is named once: {err}"
    );
}

#[test]
fn a_folder_with_pytorch_weights_is_converted_once_into_the_cache() {
    let (tmp, dir) = tiny_copy();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::copy(
        fixtures().join("tiny-clip-bin/pytorch_model.bin"),
        dir.join("pytorch_model.bin"),
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    let run = |model: &Path| {
        clipscope()
            .env("CLIPSCOPE_CACHE", &cache)
            .args(["embed", "--format", "json", "--model-dir"])
            .arg(model)
            .arg(fixtures().join("images/camera.png"))
            .output()
            .unwrap()
    };
    let from_bin = run(&dir);
    common::assert_success(&from_bin);
    let from_safetensors = run(&fixtures().join("tiny-clip"));
    common::assert_success(&from_safetensors);
    let embedding = |out: &std::process::Output| {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["items"][0]["embedding"].clone()
    };
    assert!(embedding(&from_bin).is_array());
    assert_eq!(embedding(&from_bin), embedding(&from_safetensors));
    let converted: Vec<_> = walkdir::WalkDir::new(cache.join("converted"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_name() == "model.safetensors")
        .collect();
    assert_eq!(converted.len(), 1);
}

#[test]
fn an_io_error_is_not_repeated() {
    let tmp = tempfile::tempdir().unwrap();
    let out = clipscope()
        .args(["classify", "--labels-file"])
        .arg(tmp.path().join("missing.txt"))
        .args(["--model", "demo"])
        .arg(fixtures().join("images/camera.png"))
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}

/// `train --pretrained FILE` on four shape classes: its stderr, checked to be one error
/// line with exit status 2.
fn train_error(weights: &Path) -> String {
    let data = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    clipscope::data::synthetic::make_shapes(data.path(), 2, 16, 1).unwrap();
    let out = clipscope()
        .args(["train", "--epochs", "1", "--data"])
        .arg(data.path())
        .arg("--pretrained")
        .arg(weights)
        .arg("--output")
        .arg(run.path().join("run"))
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = usage_error(&out);
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("candle_core::error"),
        "{err}"
    );
    errors[0].to_string()
}

#[test]
fn broken_cnn_weights_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let map = candle_nn::VarMap::new();
    clipscope::cnn::ResNet18::new(&map, &candle_core::Device::Cpu, 1000, 0).unwrap();
    let good = tmp.path().join("resnet18.safetensors");
    map.save(&good).unwrap();

    let truncated = tmp.path().join("truncated.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let err = train_error(&truncated);
    assert!(
        err.contains("truncated.safetensors: not a readable safetensors file"),
        "{err}"
    );

    let mut tensors = candle_core::safetensors::load(&good, &candle_core::Device::Cpu).unwrap();
    let mut names: Vec<String> = tensors.keys().cloned().collect();
    names.sort();
    let first = names[0].clone();
    let as_int = tensors[&first].to_dtype(candle_core::DType::I64).unwrap();
    tensors.insert(first.clone(), as_int);
    let int = tmp.path().join("int.safetensors");
    candle_core::safetensors::save(&tensors, &int).unwrap();
    let err = train_error(&int);
    assert!(
        err.contains(&format!("tensor {first} is I64, not a floating-point type")),
        "{err}"
    );

    tensors.remove(&first);
    let missing = tmp.path().join("missing.safetensors");
    candle_core::safetensors::save(&tensors, &missing).unwrap();
    let err = train_error(&missing);
    assert!(err.contains(&format!("missing tensor {first}")), "{err}");
}
