//! The CNN baseline: parity with torchvision's resnet18 (forward, training-mode forward,
//! gradients, running statistics), training on synthetic shapes, checkpoints and resume,
//! evaluation, and the Imagenette fetch path against a local server.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use clipscope::cnn::checkpoint;
use clipscope::cnn::eval::evaluate;
use clipscope::cnn::optim::OptimizerKind;
use clipscope::cnn::rng::{name_seed, uniform_at};
use clipscope::cnn::train::{train, Pretrained, TrainConfig, TrainEvent};
use clipscope::cnn::{ResNet18, Vgg16};
use clipscope::data::synthetic::make_shapes;
use common::{assert_success, clipscope, fixtures, usage_error};

/// The parity weights: the same formula as `make_resnet_fixture.py`'s `value`.
fn parity_value(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let seed = name_seed(name);
    (0..n as u64)
        .map(|i| {
            let u = uniform_at(seed, i);
            let v = if name.ends_with("running_var") {
                0.75 + 0.25 * u
            } else if name.ends_with("running_mean")
                || (shape.len() == 1 && name.starts_with("fc."))
            {
                0.1 * u
            } else if shape.len() == 1 && name.ends_with("weight") {
                1.0 + 0.2 * u
            } else if shape.len() == 1 {
                0.1 * u
            } else {
                let fan_in: usize = shape[1..].iter().product();
                u * (6.0 / fan_in as f64).sqrt()
            };
            v as f32
        })
        .collect()
}

/// Fill every variable of `map` with the parity weights, after checking that the names
/// are torchvision's (`keys`, sorted).
fn set_parity_weights(map: &VarMap, keys: &[String]) -> HashMap<String, candle_core::Var> {
    let vars: HashMap<String, candle_core::Var> = map.data().lock().unwrap().clone();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    assert_eq!(
        names,
        keys.iter().collect::<Vec<_>>(),
        "torchvision's names"
    );
    for (name, var) in &vars {
        let v = parity_value(name, var.dims());
        var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
    vars
}

/// The fixtures' input batch `(2, 3, 64, 64)`, from the "input" stream.
fn parity_input() -> Tensor {
    let x: Vec<f32> = (0..2 * 3 * 64 * 64u64)
        .map(|i| (2.0 * uniform_at(name_seed("input"), i)) as f32)
        .collect();
    Tensor::from_vec(x, (2, 3, 64, 64), &Device::Cpu).unwrap()
}

#[derive(serde::Deserialize)]
struct Reference {
    keys: Vec<String>,
    targets: Vec<u32>,
    eval_logits: Vec<Vec<f32>>,
    train_logits: Vec<Vec<f32>>,
    loss: f32,
    grads: HashMap<String, Vec<f32>>,
    grad_norms: HashMap<String, f32>,
    running_mean_after: HashMap<String, Vec<f32>>,
}

/// Assert that each row of `got` is within `tol` (relative, see `max_rel_diff`) of `want`.
fn assert_rows_close(got: &Tensor, want: &[Vec<f32>], tol: f32, what: &str) {
    let got = got.to_vec2::<f32>().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (g, w) in got.iter().zip(want) {
        let d = max_rel_diff(g, w);
        assert!(d < tol, "{what} differ by {d} (relative)");
    }
}

/// A JSON file of `tests/fixtures`.
fn read_fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

/// Assert that a gradient's first values are within 1e-3 (relative) of `want` and its
/// norm within `norm_tol` of `want_norm`.
fn assert_gradient_close(name: &str, g: &Tensor, want: &[f32], want_norm: f32, norm_tol: f32) {
    let flat = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = max_rel_diff(&flat[..want.len()], want);
    assert!(d < 1e-3, "gradient of {name} differs by {d}");
    let norm = l2_norm(g);
    assert!(
        (norm - want_norm).abs() <= norm_tol * want_norm,
        "{name}: norm {norm} vs {want_norm}"
    );
}

/// The L2 norm of a tensor, summed in f64 (an f32 sum over 100 M values is off by 1e-3).
fn l2_norm(t: &Tensor) -> f32 {
    let t = t.to_dtype(candle_core::DType::F64).unwrap();
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_vec0::<f64>()
        .unwrap() as f32
}

/// The largest absolute difference between two same-shaped tensors.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max).max(1e-6);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

#[derive(serde::Deserialize)]
struct VggReference {
    keys: Vec<String>,
    targets: Vec<u32>,
    logits: Vec<Vec<f32>>,
    loss: f32,
    grads: HashMap<String, Vec<f32>>,
    grad_norms: HashMap<String, f32>,
}

#[test]
fn vgg16_matches_torchvision_forward_and_backward() {
    let reference: VggReference = read_fixture("vgg16_reference.json");
    let dev = Device::Cpu;
    let map = VarMap::new();
    let mut model = Vgg16::new(&map, &dev, 10, 0).unwrap();
    let vars = set_parity_weights(&map, &reference.keys);
    let x = parity_input();
    // 64 px leaves a 2x2 map that the adaptive pool spreads over 7x7 windows.
    let eval = model.forward_t(&x, false).unwrap();
    assert_rows_close(&eval, &reference.logits, 1e-4, "eval logits");
    // Gradients without dropout (the reference's masks are random).
    model.set_dropout(0.0);
    let logits = model.forward_t(&x, true).unwrap();
    let y = Tensor::new(reference.targets.clone(), &dev).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
    assert!((loss.to_vec0::<f32>().unwrap() - reference.loss).abs() < 1e-4);
    let grads = loss.backward().unwrap();
    for (name, want) in &reference.grads {
        let g = grads.get(vars[name].as_tensor()).unwrap();
        let norm = l2_norm(g);
        let want_norm = reference.grad_norms[name];
        if name.starts_with("features.") {
            // Below a max-pool, a window whose two largest inputs differ only by rounding
            // sends its gradient to either (PyTorch in f32 and in f64 disagree on such
            // windows too), which moves single values by up to 1e-2 of the largest: compare
            // the convolutions' gradients by norm. The classifier's come before any pool.
            assert!(
                (norm - want_norm).abs() <= 1e-3 * want_norm,
                "{name}: norm {norm} vs {want_norm}"
            );
            continue;
        }
        assert_gradient_close(name, g, want, want_norm, 1e-4);
    }
}

#[test]
fn resnet18_matches_torchvision_forward_backward_and_running_stats() {
    let reference: Reference = read_fixture("resnet18_reference.json");
    let dev = Device::Cpu;
    let map = VarMap::new();
    let model = ResNet18::new(&map, &dev, 10, 0).unwrap();
    let vars = set_parity_weights(&map, &reference.keys);
    let x = parity_input();

    let eval = model.forward_t(&x, false).unwrap();
    assert_rows_close(&eval, &reference.eval_logits, 1e-4, "eval logits");
    let logits = model.forward_t(&x, true).unwrap();
    assert_rows_close(
        &logits,
        &reference.train_logits,
        1e-4,
        "training-mode logits",
    );
    let y = Tensor::new(reference.targets.clone(), &dev).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
    assert!((loss.to_vec0::<f32>().unwrap() - reference.loss).abs() < 1e-4);
    let grads = loss.backward().unwrap();
    for (name, want) in &reference.grads {
        let g = grads.get(vars[name].as_tensor()).unwrap();
        assert_gradient_close(name, g, want, reference.grad_norms[name], 1e-3);
    }
    for (name, want) in &reference.running_mean_after {
        let got = vars[name].as_tensor().to_vec1::<f32>().unwrap();
        let d = max_rel_diff(&got, want);
        assert!(d < 1e-4, "{name} after one training step differs by {d}");
    }
}

fn shapes_config(data: &Path, out: &Path, epochs: usize, image_size: usize) -> TrainConfig {
    TrainConfig {
        arch: clipscope::cnn::Arch::Resnet18,
        data: data.to_path_buf(),
        val: None,
        pretrained: Pretrained::None,
        freeze_backbone: false,
        epochs,
        batch_size: 32,
        image_size,
        optimizer: OptimizerKind::Adamw,
        lr: 1e-3,
        weight_decay: 0.01,
        seed: 0,
        output: out.to_path_buf(),
        resume: false,
        val_fraction: 0.2,
        crop_scale: (0.25, 1.0),
        device: candle_core::Device::Cpu,
    }
}

/// A shapes set (`per_class` pictures of `side` px per class, drawn with `seed`) and a
/// run folder holding one epoch of training on it at `image_size`.
fn one_epoch_run(
    per_class: usize,
    side: u32,
    seed: u64,
    image_size: usize,
) -> (tempfile::TempDir, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    make_shapes(data.path(), per_class, side, seed).unwrap();
    let run = tempfile::tempdir().unwrap();
    train(
        &shapes_config(data.path(), run.path(), 1, image_size),
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    (data, run)
}

#[test]
fn training_from_scratch_learns_shapes_and_evaluates() {
    let data = tempfile::tempdir().unwrap();
    make_shapes(data.path(), 50, 48, 3).unwrap();
    let run = tempfile::tempdir().unwrap();
    let cfg = shapes_config(data.path(), run.path(), 10, 40);
    let mut steps = 0;
    let outcome = train(&cfg, &AtomicBool::new(false), &mut |e| {
        if matches!(e, TrainEvent::Step { .. }) {
            steps += 1;
        }
    })
    .unwrap();
    assert_eq!(outcome.metrics.len(), 10);
    assert_eq!(steps, 10 * 160usize.div_ceil(32));
    let last = outcome.metrics.last().unwrap();
    assert!(
        last.val_acc >= 0.85,
        "held-out accuracy {:.3}",
        last.val_acc
    );
    // Evaluation of the checkpoint on the same held-out images agrees with training's.
    let report = evaluate(
        run.path(),
        data.path(),
        64,
        candle_core::Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.n, 40);
    assert!(
        (report.top1 - last.val_acc).abs() < 1e-9,
        "{} vs {}",
        report.top1,
        last.val_acc
    );
    assert_eq!(report.top5, 1.0, "4 classes: top-5 is trivially 1");
    assert_eq!(report.confusion.matrix.iter().flatten().sum::<usize>(), 40);
    assert_eq!(report.per_class.len(), 4);
    assert_eq!(
        report.confusion.classes,
        ["circle", "cross", "square", "triangle"]
    );
}

#[test]
fn a_stopped_run_saves_and_resumes_to_the_same_result() {
    let data = tempfile::tempdir().unwrap();
    make_shapes(data.path(), 12, 40, 5).unwrap();
    // Straight through: 3 epochs.
    let full = tempfile::tempdir().unwrap();
    let straight = train(
        &shapes_config(data.path(), full.path(), 3, 32),
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    // Stopped after epoch 2 (the flag is raised during epoch 3's first step), then resumed.
    let run = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let mut cfg = shapes_config(data.path(), run.path(), 3, 32);
    let first = train(&cfg, &stop, &mut |e| {
        if let TrainEvent::Step { epoch: 3, .. } = e {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .unwrap();
    assert!(first.stopped);
    let meta = checkpoint::load_meta(run.path()).unwrap();
    assert_eq!((meta.epochs_done, meta.interrupted), (2, true));
    assert!(run.path().join(&meta.weights).is_file());
    // Only the files of the latest save are kept; no temporary files are left.
    let names: Vec<String> = std::fs::read_dir(run.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.ends_with(".safetensors")).count(),
        2,
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("tmp")), "{names:?}");

    cfg.resume = true;
    let resumed = train(&cfg, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert!(!resumed.stopped);
    assert_eq!(resumed.metrics.len(), 3);
    // Epochs 1 and 2 are identical to the straight run (deterministic for a seed).
    for (a, b) in resumed.metrics.iter().zip(&straight.metrics).take(2) {
        assert_eq!(a.train_loss, b.train_loss);
        assert_eq!(a.val_acc, b.val_acc);
    }
    let meta = checkpoint::load_meta(run.path()).unwrap();
    assert_eq!((meta.epochs_done, meta.interrupted), (3, false));

    // The saved optimiser state belongs to that optimiser and those parameters.
    let other = if cfg.optimizer == OptimizerKind::Sgd {
        OptimizerKind::Adamw
    } else {
        OptimizerKind::Sgd
    };
    let mut changed = cfg.clone();
    changed.optimizer = other;
    let err = train(&changed, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("--optimizer"), "{err}");
    let mut changed = cfg.clone();
    changed.freeze_backbone = !cfg.freeze_backbone;
    let err = train(&changed, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("--freeze-backbone"), "{err}");
}

#[test]
fn a_checkpoint_whose_json_is_not_replaced_still_loads_the_previous_save() {
    // Atomicity: weights are written under new names before checkpoint.json is replaced,
    // so a crash in between leaves the old record pointing at files that still exist.
    let (_data, run) = one_epoch_run(6, 40, 9, 32);
    let before = std::fs::read_to_string(run.path().join("checkpoint.json")).unwrap();
    // Simulate the crash: a later save's weights exist, but the JSON was never replaced.
    let meta = checkpoint::load_meta(run.path()).unwrap();
    std::fs::write(run.path().join("model-e2-s99.safetensors"), b"partial").unwrap();
    assert_eq!(
        std::fs::read_to_string(run.path().join("checkpoint.json")).unwrap(),
        before
    );
    let (_, _, loaded) = checkpoint::load_model(run.path(), &Device::Cpu).unwrap();
    assert_eq!(loaded.weights, meta.weights);
}

#[test]
fn unreadable_images_are_skipped_and_counted() {
    let data = tempfile::tempdir().unwrap();
    make_shapes(data.path(), 6, 40, 2).unwrap();
    std::fs::write(data.path().join("circle/broken.png"), b"not an image").unwrap();
    let run = tempfile::tempdir().unwrap();
    let mut skipped = None;
    train(
        &shapes_config(data.path(), run.path(), 1, 32),
        &AtomicBool::new(false),
        &mut |e| {
            if let TrainEvent::Ready { skipped: s, .. } = e {
                skipped = Some(s);
            }
        },
    )
    .unwrap();
    assert_eq!(skipped, Some(1));
    assert_eq!(checkpoint::load_meta(run.path()).unwrap().data.skipped, 1);
}

#[test]
fn vgg16_loads_timm_imagenet_weights_trains_its_head_and_evaluates() {
    // timm's vgg16.tv_in1k stores torchvision's classifier as convolutions under other
    // names; serve a 1000-class VGG16 in that form.
    let hub = tempfile::tempdir().unwrap();
    let map = VarMap::new();
    Vgg16::new(&map, &Device::Cpu, 1000, 42).unwrap();
    let mut timm: HashMap<String, Tensor> = HashMap::new();
    for (name, var) in map.data().lock().unwrap().iter() {
        let t = var.as_tensor().clone();
        let (name, t) = match name.as_str() {
            "classifier.0.weight" => (
                "pre_logits.fc1.weight".into(),
                t.reshape((4096, 512, 7, 7)).unwrap(),
            ),
            "classifier.0.bias" => ("pre_logits.fc1.bias".into(), t),
            "classifier.3.weight" => (
                "pre_logits.fc2.weight".into(),
                t.reshape((4096, 4096, 1, 1)).unwrap(),
            ),
            "classifier.3.bias" => ("pre_logits.fc2.bias".into(), t),
            "classifier.6.weight" => ("head.fc.weight".into(), t),
            "classifier.6.bias" => ("head.fc.bias".into(), t),
            _ => (name.clone(), t),
        };
        timm.insert(name, t);
    }
    candle_core::safetensors::save(&timm, hub.path().join("model.safetensors")).unwrap();
    drop(timm);
    let (endpoint, _seen) = common::serve(hub.path(), "/timm/vgg16.tv_in1k/resolve/main/");
    let data = tempfile::tempdir().unwrap();
    make_shapes(data.path(), 6, 40, 1).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let out = clipscope()
        .env("HF_ENDPOINT", &endpoint)
        .env("CLIPSCOPE_CACHE", cache.path())
        .args(["train", "--model", "vgg16", "--data"])
        .arg(data.path())
        .args([
            "--freeze-backbone",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--output",
        ])
        .arg(run.path())
        .output()
        .unwrap();
    assert_success(&out);
    let meta = checkpoint::load_meta(run.path()).unwrap();
    assert_eq!(meta.config.model, "vgg16");
    // The backbone is the served one (classifier.0 reshaped from timm's 7x7 convolution).
    let trained =
        candle_core::safetensors::load(run.path().join(&meta.weights), &Device::Cpu).unwrap();
    let original = map.data().lock().unwrap()["classifier.0.weight"]
        .as_tensor()
        .clone();
    assert_eq!(
        max_abs_diff(&trained["classifier.0.weight"], &original),
        0.0
    );
    assert_eq!(trained["classifier.6.weight"].dims(), &[4, 4096]);
    let out = common::eval(run.path(), data.path(), &["--format", "json"]);
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["n"].as_u64().unwrap() > 0, "{report}");
    // A usage error comes before any download.
    let out = clipscope()
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .args(["train", "--model", "vgg16", "--image-size", "16", "--data"])
        .arg(data.path())
        .arg("--output")
        .arg(run.path().join("other"))
        .output()
        .unwrap();
    let err = usage_error(&out);
    assert!(err.contains("vgg16 needs at least 32"), "{err}");
}

#[test]
fn train_and_eval_commands_with_imagenet_weights_from_a_local_server() {
    // An "ImageNet" checkpoint: a 1000-class ResNet18 in torchvision naming.
    let hub = tempfile::tempdir().unwrap();
    let map = VarMap::new();
    ResNet18::new(&map, &Device::Cpu, 1000, 42).unwrap();
    map.save(hub.path().join("model.safetensors")).unwrap();
    let (endpoint, seen) = common::serve(hub.path(), "/timm/resnet18.tv_in1k/resolve/main/");
    let data = tempfile::tempdir().unwrap();
    make_shapes(data.path(), 8, 40, 1).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let out = clipscope()
        .env("HF_ENDPOINT", &endpoint)
        .env("CLIPSCOPE_CACHE", cache.path())
        .args(["train", "--data"])
        .arg(data.path())
        .args([
            "--freeze-backbone",
            "--epochs",
            "2",
            "--image-size",
            "32",
            "--optimizer",
            "adamw",
            "--output",
        ])
        .arg(run.path())
        .output()
        .unwrap();
    assert_success(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("epoch   2") && stdout.contains("val loss"),
        "{stdout}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the weights were downloaded once"
    );
    assert!(cache
        .path()
        .join("models/resnet18/model.safetensors")
        .is_file());

    // The frozen backbone kept the downloaded weights; the new 4-class head was trained.
    let meta = checkpoint::load_meta(run.path()).unwrap();
    assert_eq!(meta.config.pretrained, "imagenet");
    let trained =
        candle_core::safetensors::load(run.path().join(&meta.weights), &Device::Cpu).unwrap();
    let original =
        candle_core::safetensors::load(hub.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let same = |k: &str| max_abs_diff(&trained[k], &original[k]) == 0.0;
    assert!(same("layer3.1.conv2.weight") && same("bn1.running_mean"));
    assert_eq!(trained["fc.weight"].dims(), &[4, 512]);

    let out = common::eval(run.path(), data.path(), &["--format", "json"]);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n"], 8);
    for key in ["top1", "top5"] {
        assert!(v[key].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(v["per_class"].as_object().unwrap().len(), 4);
    assert_eq!(v["confusion"]["classes"].as_array().unwrap().len(), 4);
    assert_eq!(v["confusion"]["matrix"].as_array().unwrap().len(), 4);
}

#[test]
fn predict_keeps_each_result_with_its_own_image_when_others_fail() {
    let (data, run) = one_epoch_run(4, 32, 5, 16);
    let good = [
        "circle/circle_0000.png",
        "square/square_0001.png",
        "cross/cross_0002.png",
    ]
    .map(|f| data.path().join(f));
    let bad = data.path().join("broken.png");
    std::fs::write(&bad, b"not an image").unwrap();
    let missing = data.path().join("missing.png");
    let predict = |inputs: &[&Path]| {
        let out = clipscope()
            .args(["predict", "--format", "json", "--checkpoint"])
            .arg(run.path())
            .args(inputs)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v["results"].as_array().unwrap().clone())
    };
    let (status, alone) = predict(&[&good[0], &good[1], &good[2]]);
    assert_eq!(status, Some(0));
    let (status, mixed) = predict(&[&good[0], &bad, &good[1], &missing, &good[2]]);
    assert_eq!(status, Some(1), "some inputs failed");
    assert_eq!(mixed.len(), 5);
    for (got, want) in [&mixed[0], &mixed[2], &mixed[4]].into_iter().zip(&alone) {
        assert_eq!(got["image"], want["image"]);
        assert_eq!(got["predictions"], want["predictions"], "{}", got["image"]);
        assert!(got.get("error").is_none());
    }
    for (failed, path) in [(&mixed[1], &bad), (&mixed[3], &missing)] {
        assert_eq!(failed["image"], path.display().to_string());
        assert!(failed.get("predictions").is_none());
        let error = failed["error"].as_str().unwrap();
        assert!(error.contains(&path.display().to_string()), "{error}");
    }

    // eval takes the run folder or its checkpoint.json, and an unreadable test image
    // is skipped, counted, and makes the exit status 1 (as in classify and compare).
    let test = tempfile::tempdir().unwrap();
    make_shapes(test.path(), 2, 32, 9).unwrap();
    std::fs::write(test.path().join("circle/broken.png"), b"not an image").unwrap();
    let out = common::eval(
        &run.path().join("checkpoint.json"),
        test.path(),
        &["--format", "json"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["n"].as_u64(), v["skipped"].as_u64()), (Some(8), Some(1)));
    let out = common::eval(run.path(), data.path(), &["--batch-size", "0"]);
    assert!(usage_error(&out).contains("--batch-size"));
    // Checkpoints get the permissions of any new file, not a temporary file's 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = checkpoint::load_meta(run.path()).unwrap();
        let mode = |name: &str| {
            let path = run.path().join(name);
            std::fs::metadata(path).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode(&meta.weights), mode("checkpoint.json"));
        assert_eq!(mode(&meta.optimizer_state), mode("checkpoint.json"));
    }
}

#[test]
fn bad_train_arguments_are_one_line_errors() {
    let data = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let out = clipscope()
        .args(["train", "--data"])
        .arg(data.path())
        .args(["--pretrained", "none", "--output"])
        .arg(run.path())
        .output()
        .unwrap();
    let err = usage_error(&out);
    assert!(
        err.contains("no class folders") && err.lines().count() == 1,
        "{err}"
    );

    make_shapes(data.path(), 2, 16, 1).unwrap();
    let out = clipscope()
        .args(["train", "--data"])
        .arg(data.path())
        .args(["--pretrained", "none", "--epochs", "0", "--output"])
        .arg(run.path())
        .output()
        .unwrap();
    assert!(usage_error(&out).contains("--epochs"));
}

#[test]
fn training_without_held_out_images_is_refused_before_it_starts() {
    let data = tempfile::tempdir().unwrap();
    make_shapes(data.path(), 1, 16, 1).unwrap();
    let run = tempfile::tempdir().unwrap();
    let train_error = |extra: &[&str]| {
        let out = clipscope()
            .args([
                "train",
                "--pretrained",
                "none",
                "--image-size",
                "16",
                "--data",
            ])
            .arg(data.path())
            .arg("--output")
            .arg(run.path().join("run"))
            .args(extra)
            .output()
            .unwrap();
        usage_error(&out)
    };
    let err = train_error(&[]);
    assert!(
        err.contains("no images held out") && err.contains("--val"),
        "{err}"
    );
    assert!(!run.path().join("run/checkpoint.json").exists());
    assert!(!data.path().join("clipscope-split.json").exists());
    let err = train_error(&["--epochs", "-1"]);
    assert!(
        err.contains("--epochs"),
        "negative numbers reach the option: {err}"
    );
    for fraction in ["nan", "1.5", "-0.1"] {
        let err = train_error(&["--val-fraction", fraction]);
        assert!(err.contains("--val-fraction"), "{fraction}: {err}");
    }
}

#[test]
fn imagenette_fetch_checks_the_checksum() {
    use clipscope::data::fetch::{fetch_archive, md5_file};
    // A small archive in Imagenette's layout.
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    make_shapes(&tree.join("imagenette2-160/train"), 1, 16, 1).unwrap();
    let archive = src.path().join("imagenette2-160.tgz");
    let status = std::process::Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(&tree)
        .arg("imagenette2-160")
        .status()
        .unwrap();
    assert!(status.success());
    let (endpoint, _) = common::serve(src.path(), "/");

    // The real command pins torchvision's MD5: this archive is rejected and removed.
    let to = tempfile::tempdir().unwrap();
    let out = clipscope()
        .env("CLIPSCOPE_DATA_URL", &endpoint)
        .args(["data", "fetch", "imagenette", "--size", "160", "--to"])
        .arg(to.path())
        .output()
        .unwrap();
    let err = usage_error(&out);
    assert!(
        err.contains("imagenette2-160.tgz") && err.contains("e793b78cc4c9e9a4ccc0c1155377a412"),
        "{err}"
    );
    assert!(!to.path().join("imagenette2-160.tgz").exists());

    // With the archive's own checksum it is downloaded and unpacked.
    let md5 = md5_file(&archive).unwrap();
    let dir = fetch_archive(
        &format!("{endpoint}/imagenette2-160.tgz"),
        &md5,
        to.path(),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(dir.join("train/circle/circle_0000.png").is_file());
}
