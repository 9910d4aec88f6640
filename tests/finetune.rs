//! Fine-tuning CLIP (`clip::finetune`) on the tiny fixture model with synthetic data:
//! it learns, WiSE-FT mixes exactly, a stopped run resumes to the same end, captions
//! train contrastively, and a run folder is never overwritten by accident.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use clipscope::clip::finetune::{finetune, FinetuneConfig, FinetuneEvent, RunRecord, Task};
use clipscope::clip::train::Trainable;
use clipscope::clip::ModelFiles;

fn tiny() -> ModelFiles {
    ModelFiles::from_dir(&common::fixtures().join("tiny-clip"), "tiny").unwrap()
}

fn shapes(dir: &Path) -> PathBuf {
    let data = dir.join("shapes");
    clipscope::data::synthetic::make_shapes(&data, 16, 48, 3).unwrap();
    data
}

fn config(data: &Path, epochs: usize, alpha: f64) -> FinetuneConfig {
    FinetuneConfig {
        task: Task::Classify {
            data: data.to_path_buf(),
            val: None,
            template: "a photo of a {}.".into(),
        },
        trainable: Trainable::All,
        epochs,
        batch_size: 16,
        lr: 2e-3,
        weight_decay: 0.1,
        warmup_fraction: 0.1,
        seed: 5,
        val_fraction: 0.25,
        flip: true,
        wise_alpha: alpha,
    }
}

fn run(
    cfg: &FinetuneConfig,
    out: &Path,
    resume: bool,
    stop_at: Option<(usize, usize)>,
) -> RunRecord {
    let stop = AtomicBool::new(false);
    let outcome = finetune(&tiny(), cfg, out, resume, false, &stop, &mut |ev| {
        if let (FinetuneEvent::Step { epoch, step, .. }, Some(at)) = (&ev, stop_at) {
            if (*epoch, *step) == at {
                stop.store(true, Ordering::SeqCst);
            }
        }
    })
    .unwrap();
    assert_eq!(outcome.stopped, stop_at.is_some());
    outcome.record
}

fn tensors(path: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn classification_beats_zero_shot_and_wise_ft_mixes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shapes(tmp.path());
    let out = tmp.path().join("ft");
    let record = run(&config(&data, 12, 1.0), &out, false, None);
    let zero_shot = record.metrics[0].val_top1.unwrap();
    let last = record.metrics.last().unwrap().val_top1.unwrap();
    eprintln!("zero-shot top-1 {zero_shot:.3}, fine-tuned {last:.3}");
    assert!(last > zero_shot + 0.2, "{zero_shot} -> {last}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "head.json",
        "head.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // The folder is a model every command loads.
    let clip = ModelFiles::from_dir(&out, "ft")
        .unwrap()
        .load(Device::Cpu)
        .unwrap();
    assert_eq!(clip.config().projection_dim, 16);

    // WiSE-FT: re-export the finished run at 0 (the zero-shot model exactly) and 0.5.
    let base = tensors(&common::fixtures().join("tiny-clip/model.safetensors"));
    let fine = tensors(&out.join("checkpoint/weights.safetensors"));
    let mut cfg = config(&data, 12, 0.0);
    run(&cfg, &out, true, None);
    let mixed0 = tensors(&out.join("model.safetensors"));
    for (name, t) in &mixed0 {
        assert_eq!(values(t), values(&base[name]), "{name} at alpha 0");
    }
    let head0 = values(&tensors(&out.join("head.safetensors"))["classifier.weight"]);
    cfg.wise_alpha = 0.5;
    run(&cfg, &out, true, None);
    let mixed = tensors(&out.join("model.safetensors"));
    let name = "vision_model.encoder.layers.0.mlp.fc1.weight";
    let (b, f, m) = (
        values(&base[name]),
        values(&fine[name]),
        values(&mixed[name]),
    );
    for i in (0..b.len()).step_by(97) {
        assert!(
            (m[i] - (0.5 * b[i] + 0.5 * f[i])).abs() < 1e-6,
            "{name}[{i}]"
        );
    }
    // At 0 the head is the zero-shot head: text embeddings of the class prompts.
    let norms: Vec<f32> = head0
        .chunks(16)
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect();
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4), "{norms:?}");
}

#[test]
fn a_stopped_run_resumes_to_the_same_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shapes(tmp.path());
    let cfg = config(&data, 3, 1.0);
    let whole = run(&cfg, &tmp.path().join("whole"), false, None);
    let part = tmp.path().join("part");
    let stopped = run(&cfg, &part, false, Some((2, 2)));
    assert_eq!(stopped.epochs_done, 1);
    let resumed = run(&cfg, &part, true, None);
    assert_eq!(resumed.epochs_done, 3);
    for (a, b) in whole.metrics.iter().zip(&resumed.metrics) {
        let (va, vb) = (a.val_loss.unwrap(), b.val_loss.unwrap());
        assert!((va - vb).abs() < 1e-6, "epoch {}: {va} vs {vb}", a.epoch);
        if let (Some(ta), Some(tb)) = (a.train_loss, b.train_loss) {
            assert!((ta - tb).abs() < 1e-6, "epoch {}: {ta} vs {tb}", a.epoch);
        }
    }
    let w1 = tensors(&tmp.path().join("whole/model.safetensors"));
    let w2 = tensors(&part.join("model.safetensors"));
    let name = "visual_projection.weight";
    let worst = values(&w1[name])
        .iter()
        .zip(values(&w2[name]))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-6, "weights differ by {worst}");
}

#[test]
fn captions_train_contrastively() {
    let tmp = tempfile::tempdir().unwrap();
    let caps = tmp.path().join("caps");
    clipscope::data::scenes::write_scenes(&caps, 48, clipscope::data::scenes::Layout::Captions, 1)
        .unwrap();
    let mut cfg = config(&caps, 4, 1.0);
    cfg.task = Task::Captions {
        file: caps.join("captions.csv"),
    };
    cfg.flip = false;
    cfg.lr = 1e-3;
    // Into a folder a classification run left its head in (--force): a head left
    // behind would be taken for this model's by `classify` and `compare`.
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    for name in ["head.json", "head.safetensors"] {
        std::fs::write(out.join(name), "stale").unwrap();
    }
    let stop = AtomicBool::new(false);
    let record = finetune(&tiny(), &cfg, &out, false, true, &stop, &mut |_| {})
        .unwrap()
        .record;
    let first = record.metrics[1].train_loss.unwrap();
    let last = record.metrics.last().unwrap().train_loss.unwrap();
    assert!(last < first, "train loss {first} -> {last}");
    assert_eq!(record.train_examples + record.val_examples, 48);
    assert!(!out.join("head.json").exists() && !out.join("head.safetensors").exists());
}

#[test]
fn an_existing_run_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shapes(tmp.path());
    let out = tmp.path().join("ft");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let stop = AtomicBool::new(false);
    let err = finetune(
        &tiny(),
        &config(&data, 1, 1.0),
        &out,
        false,
        false,
        &stop,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--resume") && err.contains("--force"), "{err}");
    let err = finetune(
        &tiny(),
        &config(&data, 1, 1.0),
        &tmp.path().join("none"),
        true,
        false,
        &stop,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--resume"), "{err}");
}

#[test]
fn resume_keeps_the_runs_settings_and_names_any_that_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shapes(tmp.path());
    let out = tmp.path().join("ft");
    let finetune_cli = |extra: &[&str]| {
        common::clipscope()
            .args(["finetune", "--data"])
            .arg(&data)
            .arg("--output")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let first = finetune_cli(&["--model", "demo", "--epochs", "1", "--format", "json"]);
    common::assert_success(&first);
    let record: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(record["config"]["epochs"], 1, "stdout is one JSON object");
    for (flag, value) in [
        ("--lr", "0.1"),
        ("--weight-decay", "0"),
        ("--warmup", "0.5"),
        ("--batch-size", "8"),
        ("--trainable", "projections"),
        ("--template", "{}"),
    ] {
        let err = common::usage_error(&finetune_cli(&["--resume", flag, value]));
        assert!(err.contains(&format!("trained with {flag} ")), "{err}");
    }
    let err = common::usage_error(&finetune_cli(&["--resume", "--no-flip"]));
    assert!(err.contains("flips"), "{err}");
    let tiny_dir = common::fixtures().join("tiny-clip");
    let err = common::usage_error(&finetune_cli(&[
        "--resume",
        "--model-dir",
        tiny_dir.to_str().unwrap(),
    ]));
    assert!(err.contains("fine-tuned from the model demo"), "{err}");
    // A registry model, by an alias, is refused by its name before anything is
    // fetched (the tests' downloads cannot succeed, so a fetch would fail otherwise).
    let err = common::usage_error(&finetune_cli(&["--resume", "--model", "b32"]));
    assert!(err.contains("from the model demo, not ViT-B/32"), "{err}");
    // Left out, every setting (the model too) is the run's; --epochs trains on.
    common::assert_success(&finetune_cli(&["--resume", "--epochs", "2"]));
    let record = clipscope::clip::finetune::read_record(&out).unwrap();
    assert_eq!((record.epochs_done, record.config.epochs), (2, 2));
    assert_eq!(record.config.lr, 1e-5);
    // The data too, from any folder: the record keeps absolute paths.
    let elsewhere = tempfile::tempdir().unwrap();
    let out2 = common::clipscope()
        .current_dir(elsewhere.path())
        .args(["finetune", "--resume", "--epochs", "3", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    common::assert_success(&out2);
    let record = clipscope::clip::finetune::read_record(&out).unwrap();
    assert_eq!(record.epochs_done, 3);
}
