//! The comparison study end to end on small synthetic data: the tiny fixture CLIP against
//! a ResNet18 trained for one epoch, through the library and through `clipscope compare`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use clipscope::clip::ModelFiles;
use clipscope::cnn::optim::OptimizerKind;
use clipscope::cnn::train::{train, Pretrained, TrainConfig};
use clipscope::data::synthetic::make_shapes;
use clipscope::study::compare::class_names;
use clipscope::study::{compare, write_outputs, CompareConfig, Report};
use common::{assert_success, clipscope, fixtures, usage_error};
use serde_json::Value;

/// Test, training and open-set folders and a CNN run, made once per test binary.
struct Study {
    test: PathBuf,
    train: PathBuf,
    open_set: PathBuf,
    run: PathBuf,
}

const PER_CLASS: usize = 5;
const CLASSES: usize = 4;

fn study() -> &'static Study {
    static STUDY: OnceLock<Study> = OnceLock::new();
    STUDY.get_or_init(|| {
        // One folder per test process: nextest runs each test in its own process, and
        // two processes rebuilding one shared folder would read each other's half-made
        // files. Folders of earlier runs are removed first, so they do not pile up.
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("study-fixture");
        let root = base.join(std::process::id().to_string());
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let stale = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 3600));
                if stale {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(&root);
        let s = Study {
            test: root.join("test"),
            train: root.join("train"),
            open_set: root.join("open"),
            run: root.join("run"),
        };
        make_shapes(&s.test, PER_CLASS, 40, 1).unwrap();
        make_shapes(&s.train, 8, 40, 2).unwrap();
        // Classes the CNN never saw: two of the generator's classes under new names.
        let drawn = root.join("drawn");
        make_shapes(&drawn, 3, 40, 3).unwrap();
        std::fs::create_dir_all(&s.open_set).unwrap();
        std::fs::rename(drawn.join("circle"), s.open_set.join("disc")).unwrap();
        std::fs::rename(drawn.join("cross"), s.open_set.join("plus_sign")).unwrap();
        let cfg = TrainConfig {
            arch: clipscope::cnn::Arch::Resnet18,
            data: s.train.clone(),
            val: None,
            pretrained: Pretrained::None,
            freeze_backbone: false,
            epochs: 1,
            batch_size: 8,
            image_size: 32,
            optimizer: OptimizerKind::Adamw,
            lr: 1e-3,
            weight_decay: 0.01,
            seed: 0,
            output: s.run.clone(),
            resume: false,
            val_fraction: 0.25,
            crop_scale: (0.25, 1.0),
            device: candle_core::Device::Cpu,
        };
        train(&cfg, &AtomicBool::new(false), &mut |_| {}).unwrap();
        s
    })
}

fn tiny() -> PathBuf {
    fixtures().join("tiny-clip")
}

fn config(s: &Study) -> CompareConfig {
    CompareConfig {
        data: s.test.clone(),
        cnn_runs: vec![s.run.clone()],
        clip_models: vec![ModelFiles::from_dir(&tiny(), "tiny").unwrap()],
        train: Some(s.train.clone()),
        classes_file: None,
        open_set: Some(s.open_set.clone()),
        abstain: Some(0.4),
        seed: 0,
        bootstrap: 200,
        shots: vec![1, 2],
        few_shot_seeds: 2,
        device: candle_core::Device::Cpu,
    }
}

/// The full study, once per test binary.
fn full_report() -> &'static Report {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT.get_or_init(|| {
        let mut phases = 0;
        let report = compare(&config(study()), &mut |e| {
            phases += usize::from(matches!(e, clipscope::study::StudyEvent::Phase(..)));
        })
        .unwrap();
        assert!(phases >= 4, "progress phases: {phases}");
        report
    })
}

fn top1_from_predictions(report: &Report, model: usize) -> f64 {
    let hits = report
        .predictions
        .iter()
        .filter(|p| p.answers[model].0 == p.truth)
        .count();
    hits as f64 / report.predictions.len() as f64
}

#[test]
fn every_model_sees_the_same_test_images() {
    let report = full_report();
    let n = PER_CLASS * CLASSES;
    let mut on_disk: Vec<String> = walk(&study().test);
    on_disk.sort();
    let mut listed = report.images.clone();
    listed.sort();
    assert_eq!(
        listed, on_disk,
        "the report lists the test images, relative to TEST_DIR"
    );
    assert_eq!(report.predictions.len(), n);
    assert_eq!(report.skipped, 0);
    let kinds: Vec<&str> = report.models.iter().map(|m| m.kind.as_str()).collect();
    assert_eq!(kinds, ["clip-zero-shot", "cnn"]);
    for (i, p) in report.predictions.iter().enumerate() {
        assert_eq!(p.image, report.images[i]);
        assert_eq!(p.answers.len(), report.models.len());
        let class = &report.classes[p.truth].folder;
        assert!(
            p.image.starts_with(&format!("{class}/")),
            "{} is not in {class}",
            p.image
        );
    }
    for (j, m) in report.models.iter().enumerate() {
        assert_eq!(m.n, n, "{}", m.name);
        assert_eq!(m.confusion.iter().flatten().sum::<usize>(), n);
        for (c, row) in m.confusion.iter().enumerate() {
            assert_eq!(row.iter().sum::<usize>(), PER_CLASS, "{} row {c}", m.name);
        }
        // The per-image answers are the ones the metrics were computed from.
        assert!(
            (top1_from_predictions(report, j) - m.top1).abs() < 1e-12,
            "{}",
            m.name
        );
    }
}

#[test]
fn the_report_fills_every_field_the_study_promises() {
    let report = full_report();
    for m in &report.models {
        assert!(!m.name.is_empty() && !m.source.is_empty());
        assert!((0.0..=1.0).contains(&m.top1));
        assert!(
            m.top1_ci[0] <= m.top1 && m.top1 <= m.top1_ci[1],
            "{:?}",
            m.top1_ci
        );
        assert_eq!(m.top5_k, 4);
        assert_eq!(m.top5, 1.0, "four classes: every truth is in the top four");
        assert!(m.macro_f1.is_finite());
        assert_eq!(m.per_class.len(), CLASSES);
        assert!(m.latency_ms_per_image > 0.0 && m.images_per_sec > 0.0);
        assert!(m.size_bytes > 0);
        let a = m.abstain.as_ref().expect("abstain outcome with --abstain");
        assert_eq!(a.answered + a.abstained, PER_CLASS * CLASSES);
    }
    let cnn = &report.models[1];
    assert_eq!(cnn.learning_curve.len(), 1);
    let gap = cnn.training_gap.as_ref().unwrap();
    assert!((gap.gap - (gap.train_acc - gap.val_acc)).abs() < 1e-12);

    let names: Vec<&str> = report
        .prompt_variants
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert!(names.len() >= 6, "{names:?}");
    assert!(names.contains(&"class name") && names.contains(&"a photo of a {}."));
    let ensemble = report
        .prompt_variants
        .iter()
        .find(|v| v.templates.len() == 80);
    assert!(ensemble.is_some(), "OpenAI's 80-template ensemble");
    // The main table's CLIP row is the "a photo of a {}." variant.
    let photo = report
        .prompt_variants
        .iter()
        .find(|v| v.name == "a photo of a {}.")
        .unwrap();
    assert_eq!(photo.top1, report.models[0].top1);

    let probe = &report.linear_probe.as_ref().unwrap()[0];
    assert!(probe.train_images > 0 && probe.lambda > 0.0 && !probe.lambdas.is_empty());
    let curve = &report.few_shot.as_ref().unwrap()[0];
    let shots: Vec<usize> = curve.points.iter().map(|p| p.shots).collect();
    assert_eq!(shots, [1, 2]);
    assert!(curve.points.iter().all(|p| p.runs.len() == 2));
    assert_eq!(curve.shots_to_match.len(), 1);

    let open = report.open_set.as_ref().unwrap();
    assert_eq!(open.images, 6);
    let unseen: Vec<&str> = open.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(unseen, ["disc", "plus sign"]);
    assert_eq!(open.threshold, 0.4);
    assert_eq!(open.cnn.len(), 1);
    assert_eq!(open.cnn[0].answers.iter().map(|a| a.1).sum::<usize>(), 6);
    assert_eq!(open.clip.len(), 1);
    // Over test and unseen images together.
    assert_eq!(
        open.clip[0].abstain.answered + open.clip[0].abstain.abstained,
        26
    );
}

#[test]
fn outputs_are_written_and_read_back() {
    let report = full_report();
    let out = tempfile::tempdir().unwrap();
    let files = write_outputs(report, out.path()).unwrap();
    for f in &files {
        assert!(f.is_file(), "{}", f.display());
    }
    // report.json: the fields the issue names, none of them null, and it reads back.
    let text = std::fs::read_to_string(out.path().join("report.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    for key in [
        "images",
        "models",
        "prompt_variants",
        "linear_probe",
        "few_shot",
        "open_set",
    ] {
        assert!(!v[key].is_null(), "report.json lacks {key}");
    }
    for m in v["models"].as_array().unwrap() {
        for key in [
            "name",
            "kind",
            "top1",
            "top1_ci",
            "top5",
            "macro_f1",
            "per_class",
            "confusion",
            "latency_ms_per_image",
            "size_bytes",
        ] {
            assert!(!m[key].is_null(), "a model lacks {key}");
        }
    }
    for p in v["prompt_variants"].as_array().unwrap() {
        for key in ["name", "templates", "top1"] {
            assert!(!p[key].is_null(), "a prompt variant lacks {key}");
        }
    }
    let back: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(back.images, report.images);

    // predictions.csv: a header and one row per image, two columns per model.
    let mut csv = csv::Reader::from_path(out.path().join("predictions.csv")).unwrap();
    let header = csv.headers().unwrap().clone();
    assert_eq!(header.len(), 2 + 2 * report.models.len());
    assert_eq!(&header[0], "image");
    let rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), report.images.len());
    assert_eq!(&rows[0][0], report.images[0].as_str());

    // The plots: a confusion matrix per model, the prompt bars, the few-shot curve and
    // the CNN's learning curves, each a PNG.
    let pngs: Vec<&PathBuf> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "png"))
        .collect();
    assert_eq!(pngs.len(), report.models.len() + 3, "{pngs:?}");
    for p in pngs {
        let bytes = std::fs::read(p).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{}", p.display());
        let img = image::load_from_memory(&bytes).unwrap();
        assert!(img.width() > 100 && img.height() > 100);
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for section in [
        "## Discussion",
        "## Models",
        "## Prompt study",
        "## Linear probe",
        "## Open set",
    ] {
        assert!(md.contains(section), "report.md lacks {section}");
    }
    for m in &report.models {
        assert!(md.contains(&m.name));
    }
    // Nothing is left half-written.
    let leftovers = std::fs::read_dir(out.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp-")
        })
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn a_classes_file_renames_prompts_and_bad_lines_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let folders: Vec<String> = ["n01440764", "red_circle", "a-b"]
        .map(String::from)
        .to_vec();
    let names: Vec<String> = class_names(&folders, None)
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["tench", "red circle", "a b"]);
    let file = dir.path().join("classes.csv");
    std::fs::write(&file, "# folder,name\nred_circle, a round red thing\n").unwrap();
    let names: Vec<String> = class_names(&folders, Some(&file))
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["tench", "a round red thing", "a b"]);
    std::fs::write(&file, "violet,purple\n").unwrap();
    let err = class_names(&folders, Some(&file)).unwrap_err().to_string();
    assert!(
        err.contains("classes.csv: line 1") && err.contains("violet"),
        "{err}"
    );
    std::fs::write(&file, "no separator\n").unwrap();
    let err = class_names(&folders, Some(&file)).unwrap_err().to_string();
    assert!(err.contains("expected `folder,name`"), "{err}");
}

#[test]
fn compare_command_writes_the_report_with_overridden_class_names() {
    let s = study();
    let out = tempfile::tempdir().unwrap();
    let classes = out.path().join("classes.txt");
    std::fs::write(&classes, "circle,round disc\ncross,plus sign\n").unwrap();
    let output = clipscope()
        .args(["compare", "--data"])
        .arg(&s.test)
        .arg("--cnn")
        .arg(s.run.join("checkpoint.json"))
        .arg("--model-dir")
        .arg(tiny())
        .arg("--classes")
        .arg(&classes)
        .args(["--abstain", "0.3", "--bootstrap", "100", "--device", "cpu"])
        .arg("--output")
        .arg(out.path().join("study"))
        .output()
        .unwrap();
    assert_success(&output);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("20 test images, 4 classes"), "{stdout}");
    assert!(
        stdout.contains("tiny-clip") && stdout.contains("resnet18"),
        "{stdout}"
    );
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("study/report.json")).unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = v["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["round disc", "plus sign", "square", "triangle"]);
    assert_eq!(v["models"][0]["name"], "tiny-clip");
    assert_eq!(v["models"][0]["abstain"]["threshold"], 0.3);
    assert!(v.get("linear_probe").is_none() && v.get("open_set").is_none());
    assert!(out.path().join("study/predictions.csv").is_file());
    assert!(out.path().join("study/prompt-variants.png").is_file());

    // The report is not replaced unasked, and the refusal comes before the study runs.
    let again = |extra: &[&str]| {
        clipscope()
            .args(["compare", "--data"])
            .arg(&s.test)
            .arg("--model-dir")
            .arg(tiny())
            .args(["--bootstrap", "10", "--device", "cpu", "--output"])
            .arg(out.path().join("study"))
            .args(extra)
            .output()
            .unwrap()
    };
    let err = usage_error(&again(&[]));
    assert!(
        err.contains("holds the report of an earlier comparison") && err.contains("--force"),
        "{err}"
    );
    let models = |v: &Value| v["models"].as_array().unwrap().len();
    let report = || -> Value {
        let text = std::fs::read_to_string(out.path().join("study/report.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    assert_eq!(models(&report()), models(&v), "the earlier report is kept");
    assert_success(&again(&["--force"]));
    assert_eq!(models(&report()), 1, "replaced by the CLIP-only report");
}

#[test]
fn bad_compare_inputs_are_one_line_errors() {
    let s = study();
    let out = tempfile::tempdir().unwrap();
    let bad_classes = out.path().join("classes.txt");
    std::fs::write(&bad_classes, "violet,purple\n").unwrap();
    let missing = out.path().join("no-such-run");
    let cases: Vec<(Vec<std::ffi::OsString>, String)> = vec![
        (
            vec!["--abstain".into(), "1.5".into()],
            "--abstain 1.5".into(),
        ),
        (
            vec!["--cnn".into(), missing.clone().into()],
            missing.display().to_string(),
        ),
        (
            vec!["--classes".into(), bad_classes.clone().into()],
            bad_classes.display().to_string(),
        ),
        (
            vec!["--device".into(), "tpu".into()],
            "tpu: expected auto, cpu or cuda[:N]".into(),
        ),
        (
            vec!["--classes".into(), out.path().into()],
            "a folder, not a file".into(),
        ),
        (
            vec!["--open-set".into(), s.test.clone().into()],
            "is also a class of the test set".into(),
        ),
    ];
    for (extra, expect) in cases {
        let output = clipscope()
            .args(["compare", "--data"])
            .arg(&s.test)
            .arg("--model-dir")
            .arg(tiny())
            .args(&extra)
            .arg("--output")
            .arg(out.path().join("study"))
            .output()
            .unwrap();
        let err = usage_error(&output);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.starts_with("clipscope: error: ") && err.contains(&expect),
            "{err}"
        );
    }
    // A folder with a report.md of the user's own and no report.json is not written
    // over either.
    let notes = out.path().join("notes");
    std::fs::create_dir(&notes).unwrap();
    std::fs::write(notes.join("report.md"), "# My notes\n").unwrap();
    let output = clipscope()
        .args(["compare", "--data"])
        .arg(&s.test)
        .arg("--model-dir")
        .arg(tiny())
        .arg("--output")
        .arg(&notes)
        .output()
        .unwrap();
    let err = usage_error(&output);
    let at_fault = notes.join("report.md").display().to_string();
    assert!(
        err.contains(&format!("{at_fault} would be written over")),
        "{err}"
    );
}

fn classify(extra: &[&str]) -> std::process::Output {
    clipscope()
        .arg("classify")
        .arg(fixtures().join("images/chelsea.png"))
        .args(["--labels", "a cat,a dog,a car", "--model-dir"])
        .arg(tiny())
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn classify_abstains_below_the_threshold_in_every_format() {
    let plain = classify(&["--format", "json"]);
    assert_success(&plain);
    let v: Value = serde_json::from_slice(&plain.stdout).unwrap();
    let top = &v["results"][0]["predictions"][0];
    let (label, p) = (
        top["label"].as_str().unwrap(),
        top["probability"].as_f64().unwrap(),
    );
    assert!(
        v["results"][0].get("answer").is_none(),
        "no answer field without --abstain"
    );
    let below = format!("{:.6}", (p - 0.001).max(0.0));
    let above = format!("{:.6}", (p + 0.001).min(1.0));
    assert!(
        p + 0.001 <= 1.0,
        "the top probability {p} leaves no room above it"
    );

    let answered: Value =
        serde_json::from_slice(&classify(&["--format", "json", "--abstain", &below]).stdout)
            .unwrap();
    assert_eq!(answered["results"][0]["answer"], label);
    let abstained: Value =
        serde_json::from_slice(&classify(&["--format", "json", "--abstain", &above]).stdout)
            .unwrap();
    assert_eq!(abstained["results"][0]["answer"], "none of these");
    assert_eq!(abstained["abstain"].as_f64(), above.parse().ok());

    let csv =
        String::from_utf8(classify(&["--format", "csv", "--abstain", &above]).stdout).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("image,rank,label,probability,error,answer")
    );
    assert!(lines.all(|l| l.ends_with(",none of these")), "{csv}");
    let text = String::from_utf8(classify(&["--abstain", &above]).stdout).unwrap();
    assert!(text.contains("answer: none of these"), "{text}");

    let err = usage_error(&classify(&["--abstain=-0.5"]));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--abstain -0.5"), "{err}");
}

/// Files under `root`, relative to it, with `/` separators.
fn walk(root: &Path) -> Vec<String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "png"))
        .map(|e| e.path().strip_prefix(root).unwrap().display().to_string())
        .collect()
}
