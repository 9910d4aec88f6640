//! The shipped demo CLIP, as a user meets it: the real binary, the embedded model, the
//! bundled pictures, no network.

mod common;

use common::{assert_success, clipscope, demo_picture, usage_error};
use serde_json::Value;

const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
const COLOURS: [&str; 4] = ["red", "green", "blue", "yellow"];

/// The twelve benchmark labels, "a red circle" and so on.
fn twelve_labels() -> Vec<String> {
    SHAPES
        .iter()
        .flat_map(|s| COLOURS.iter().map(move |c| format!("a {c} {s}")))
        .collect()
}

/// `classify --model demo --format json` with `args`; the parsed report.
fn classify_demo(args: &[&std::ffi::OsStr]) -> Value {
    let out = clipscope()
        .args(["classify", "--model", "demo", "--format", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_bundled_picture_gets_its_own_label_first() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/pictures");
    let mut pictures: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pictures.sort();
    assert!(
        pictures.len() >= 4,
        "too few demo pictures in {}",
        dir.display()
    );
    let labels = twelve_labels().join(",");
    let flags = ["--template", "{}", "--labels", labels.as_str()];
    let mut args: Vec<&std::ffi::OsStr> = flags.iter().map(std::ffi::OsStr::new).collect();
    args.extend(pictures.iter().map(|p| p.as_os_str()));
    let report = classify_demo(&args);
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), pictures.len());
    for (picture, result) in pictures.iter().zip(results) {
        // red-circle.png shows "a red circle".
        let stem = picture.file_stem().unwrap().to_string_lossy();
        let (colour, shape) = stem.split_once('-').unwrap();
        let top = result["predictions"][0]["label"].as_str().unwrap();
        assert_eq!(
            top,
            format!("a {colour} {shape}"),
            "{}: {result}",
            picture.display()
        );
    }
}

#[test]
fn demo_labels_of_the_app_fit_its_picture() {
    // The app opens on red-circle.png with these labels: the first must win.
    let labels = clipscope::clip::demo::DEMO_LABELS;
    assert!(labels.starts_with("a red circle,"));
    let picture = demo_picture("red-circle.png");
    let report = classify_demo(&["--labels".as_ref(), labels.as_ref(), picture.as_os_str()]);
    assert_eq!(
        report["results"][0]["predictions"][0]["label"],
        "a red circle"
    );
}

#[test]
fn missing_folders_are_one_line_errors_naming_the_flag() {
    let cases: [&[&str]; 3] = [
        &["demo", "eval", "--data", "/nonexistent-demo-dir"],
        &[
            "finetune",
            "--model",
            "demo",
            "--data",
            "/nonexistent-demo-dir",
            "--output",
            "/tmp/unused-ft",
        ],
        &[
            "finetune",
            "--model",
            "demo",
            "--captions",
            "/nonexistent-demo-dir/c.csv",
            "--output",
            "/tmp/unused-ft",
        ],
    ];
    for args in cases {
        let out = clipscope().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("clipscope: error: --"), "{args:?}: {err}");
        assert!(err.contains("/nonexistent-demo-dir"), "{args:?}: {err}");
    }
}

#[test]
fn a_short_demo_training_run_with_hard_negatives_writes_a_model_every_command_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo-run");
    let out = clipscope()
        .args([
            "demo",
            "train",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--easy-steps",
            "1",
        ])
        .args([
            "--eval-every",
            "0",
            "--shape-negatives",
            "5",
            "-q",
            "--output",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_success(&out);
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out_dir.join(file).is_file(), "{file} missing");
    }
    let scored = clipscope()
        .args([
            "classify",
            "--format",
            "json",
            "--labels",
            "a red circle,a blue square",
        ])
        .arg("--model-dir")
        .arg(&out_dir)
        .arg(demo_picture("red-circle.png"))
        .output()
        .unwrap();
    assert_success(&scored);
}

#[test]
fn shape_negatives_beyond_the_other_five_shapes_are_refused() {
    let out = clipscope()
        .args([
            "demo",
            "train",
            "--output",
            "/tmp/unused-demo",
            "--shape-negatives",
            "6",
        ])
        .output()
        .unwrap();
    let err = usage_error(&out);
    assert!(err.contains("--shape-negatives"), "{err}");
}

#[test]
fn demo_eval_marks_labels_without_pictures_and_csv_holds_every_result() {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("red-circle")).unwrap();
    std::fs::copy(
        common::fixtures().join("images/small.png"),
        data.path().join("red-circle/one.png"),
    )
    .unwrap();
    let out = demo_eval(data.path(), "csv");
    common::assert_success(&out);
    let csv = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    let folder_row = |label: &str| {
        rows.iter()
            .find(|r| r[0] == "folders" && r[1] == label)
            .unwrap_or_else(|| panic!("{label}: {csv}"))
            .clone()
    };
    assert_eq!(folder_row("a red circle")[3], "1");
    assert!(!folder_row("a red circle")[2].is_empty());
    assert_eq!(
        folder_row("a blue square")[2..],
        ["", "0"],
        "no pictures: no score"
    );
    assert!(rows
        .iter()
        .any(|r| r[0] == "generated" && r[1] == "a red circle" && r[3] == "1"));
    assert!(rows
        .iter()
        .any(|r| r[0] == "binding" && r[1] == "held-out combinations"));
}

/// `demo eval --per-label 1 --data DIR --format FORMAT`.
fn demo_eval(dir: &std::path::Path, format: &str) -> std::process::Output {
    clipscope()
        .args([
            "demo",
            "eval",
            "--per-label",
            "1",
            "--format",
            format,
            "--data",
        ])
        .arg(dir)
        .output()
        .unwrap()
}

/// `demo eval --per-label 1 --data DIR --format json`; the parsed report's folder set.
fn demo_eval_folders(dir: &std::path::Path) -> Value {
    let out = demo_eval(dir, "json");
    assert_success(&out);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["folders"].clone()
}

/// The labels and picture counts of a folder set's rows.
fn rows(set: &Value) -> Vec<(String, u64)> {
    set["per_label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["label"].as_str().unwrap().to_string(),
                l["n"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn demo_eval_scores_class_folders_of_the_twelve_and_of_data_scenes() {
    let tmp = tempfile::tempdir().unwrap();
    // Folders of the twelve labels: one row per folder.
    let twelve = tmp.path().join("twelve");
    for name in ["red-circle", "blue-square"] {
        std::fs::create_dir_all(twelve.join(name)).unwrap();
        std::fs::copy(
            demo_picture(&format!("{name}.png")),
            twelve.join(name).join("a.png"),
        )
        .unwrap();
    }
    let set = demo_eval_folders(&twelve);
    assert_eq!(set["n"], 2);
    let twelve_rows = rows(&set);
    assert_eq!(twelve_rows.len(), 12, "a row for each of the twelve");
    let with_pictures: Vec<_> = twelve_rows.into_iter().filter(|r| r.1 > 0).collect();
    assert_eq!(
        with_pictures,
        [
            ("a red circle".to_string(), 1),
            ("a blue square".to_string(), 1)
        ],
        "in the twelve labels' order"
    );
    // What `data scenes --layout folders` makes: any colour-shape combination, with a
    // row for each folder only.
    let scenes = tmp.path().join("scenes");
    let made = clipscope()
        .args([
            "data", "scenes", "--count", "12", "--layout", "folders", "--to",
        ])
        .arg(&scenes)
        .output()
        .unwrap();
    assert_success(&made);
    let folders: Vec<String> = std::fs::read_dir(&scenes)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| format!("a {}", e.file_name().to_string_lossy().replace('-', " ")))
        .collect();
    let set = demo_eval_folders(&scenes);
    assert_eq!(set["n"], 12);
    let mut labels: Vec<String> = rows(&set).into_iter().map(|r| r.0).collect();
    let mut expected = folders.clone();
    labels.sort();
    expected.sort();
    assert_eq!(labels, expected);
    // Other names are refused, naming the folder.
    std::fs::create_dir_all(scenes.join("mauve-blob")).unwrap();
    std::fs::copy(
        demo_picture("red-circle.png"),
        scenes.join("mauve-blob/a.png"),
    )
    .unwrap();
    let out = clipscope()
        .args(["demo", "eval", "--per-label", "1", "--data"])
        .arg(&scenes)
        .output()
        .unwrap();
    assert!(usage_error(&out).contains("\"mauve-blob\" is not named <colour>-<shape>"));
}
