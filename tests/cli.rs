//! The headless commands, run as a user runs them: the real binary, the tiny fixture model.

mod common;

use std::path::Path;

use common::{assert_success, clipscope, cosine, fixtures, serve, usage_error, Reference};
use serde_json::Value;

fn tiny() -> String {
    fixtures().join("tiny-clip").display().to_string()
}

fn image(name: &str) -> String {
    fixtures().join("images").join(name).display().to_string()
}

fn json_of(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

#[test]
fn classify_json_matches_reference_probabilities() {
    let reference = Reference::load(&fixtures().join("reference.json"));
    let labels = reference.labels.join(",");
    let out = clipscope()
        .args(["classify", &image("chelsea.png"), &image("coffee.png")])
        .args([
            "--labels",
            &labels,
            "--model-dir",
            &tiny(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_success(&out);
    let v = json_of(&out.stdout);
    assert_eq!(v["model"], Value::String(tiny()));
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        let file = Path::new(r["image"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let want = reference.images.iter().find(|i| i.file == file).unwrap();
        let preds = r["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), 5);
        let probs: Vec<f64> = preds
            .iter()
            .map(|p| p["probability"].as_f64().unwrap())
            .collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]), "sorted: {probs:?}");
        for p in preds {
            let label = p["label"].as_str().unwrap();
            let idx = reference.labels.iter().position(|l| l == label).unwrap();
            let got = p["probability"].as_f64().unwrap();
            assert!(
                (got - want.probabilities[idx]).abs() < 1e-5,
                "{file} {label}"
            );
        }
    }
}

#[test]
fn a_bad_input_is_reported_and_the_others_classified() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.png");
    std::fs::write(&bad, b"this is not a picture").unwrap();
    let missing = dir.path().join("missing.jpg");
    let out = clipscope()
        .args(["classify", &image("chelsea.png")])
        .arg(&bad)
        .arg(&missing)
        .args([
            "--labels",
            "cat,dog",
            "--model-dir",
            &tiny(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out.stdout);
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["predictions"].as_array().unwrap().len(), 2);
    assert!(r[0].get("error").is_none());
    let err = r[1]["error"].as_str().unwrap();
    assert!(err.contains("notes.png"), "{err}");
    assert!(r[1].get("predictions").is_none());
    assert!(r[2]["error"].as_str().unwrap().contains("missing.jpg"));
    assert_eq!(r[1]["image"].as_str().unwrap(), bad.display().to_string());
}

#[test]
fn folders_are_walked_and_top_k_applies() {
    let out = clipscope()
        .args(["classify", &fixtures().join("images").display().to_string()])
        .args([
            "--labels",
            "cat, dog ,bird",
            "--top-k",
            "2",
            "--model-dir",
            &tiny(),
        ])
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert_success(&out);
    let v = json_of(&out.stdout);
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 12, "every image in the folder, LICENSE.md skipped");
    for item in r {
        assert_eq!(item["predictions"].as_array().unwrap().len(), 2);
    }
    let names: Vec<&str> = r.iter().map(|i| i["image"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

#[test]
fn text_and_csv_formats() {
    let text = clipscope()
        .args(["classify", &image("chelsea.png"), "--labels", "cat,dog"])
        .args(["--model-dir", &tiny()])
        .output()
        .unwrap();
    assert_success(&text);
    let s = String::from_utf8(text.stdout).unwrap();
    assert!(
        s.contains("chelsea.png") && s.contains("% ") && s.contains("cat"),
        "{s}"
    );

    let csv = clipscope()
        .args([
            "classify",
            &image("chelsea.png"),
            "--labels",
            "cat,\"dog, big\"",
        ])
        .args(["--labels-file", "/dev/null"])
        .args(["--model-dir", &tiny(), "--format", "csv"])
        .output()
        .unwrap();
    assert_eq!(
        csv.status.code(),
        Some(2),
        "--labels and --labels-file conflict"
    );

    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.txt");
    // With a byte-order mark and Windows line ends, as Notepad saves UTF-8.
    std::fs::write(&labels, "\u{feff}cat\r\n\r\na dog, with a ball\r\n").unwrap();
    let csv = clipscope()
        .args(["classify", &image("chelsea.png")])
        .arg("--labels-file")
        .arg(&labels)
        .args(["--model-dir", &tiny(), "--format", "csv"])
        .output()
        .unwrap();
    assert_success(&csv);
    let s = String::from_utf8(csv.stdout).unwrap();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "image,rank,label,probability,error");
    // One label a line in a file: the comma stays inside the label.
    assert_eq!(lines.len(), 3, "{s}");
    assert!(s.contains("\"a dog, with a ball\""), "{s}");
    assert!(
        s.contains("chelsea.png,1,cat,") || s.contains("chelsea.png,2,cat,"),
        "{s}"
    );
}

#[test]
fn ensemble_and_template_options() {
    let run = |extra: &[&str]| {
        let out = clipscope()
            .args(["classify", &image("tall.png"), "--labels", "cat,rocket"])
            .args(["--model-dir", &tiny(), "--format", "json"])
            .args(extra)
            .output()
            .unwrap();
        assert_success(&out);
        json_of(&out.stdout)
    };
    let default = run(&[]);
    assert_eq!(default["prompts"], "a photo of a {}.");
    let ens = run(&["--ensemble", "imagenet80"]);
    assert_eq!(ens["prompts"], "ensemble:imagenet80");
    assert_ne!(
        default["results"][0]["predictions"][0]["probability"],
        ens["results"][0]["predictions"][0]["probability"]
    );
    let bare = run(&["--template", "{}"]);
    assert_eq!(bare["prompts"], "{}");

    let bad = clipscope()
        .args(["classify", &image("tall.png"), "--labels", "cat"])
        .args(["--model-dir", &tiny(), "--template", "a photo"])
        .output()
        .unwrap();
    let err = usage_error(&bad);
    assert!(err.contains("a photo") && err.lines().count() == 1, "{err}");
}

#[test]
fn model_errors_are_one_line_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = clipscope()
        .args(["classify", &image("tall.png"), "--labels", "cat"])
        .arg("--model-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = usage_error(&out);
    assert!(err.contains(&dir.path().display().to_string()) && err.contains("config.json"));
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = clipscope()
        .args([
            "classify",
            &image("tall.png"),
            "--labels",
            "cat",
            "--model",
            "ViT-X/99",
        ])
        .output()
        .unwrap();
    assert!(usage_error(&out).contains("ViT-X/99"));
}

#[test]
fn embed_images_and_texts() {
    let reference = Reference::load(&fixtures().join("reference.json"));
    let out = clipscope()
        .args([
            "embed",
            &image("coffee.png"),
            "--model-dir",
            &tiny(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_success(&out);
    let v = json_of(&out.stdout);
    let e: Vec<f32> = serde_json::from_value(v["items"][0]["embedding"].clone()).unwrap();
    let want = reference
        .images
        .iter()
        .find(|i| i.file == "coffee.png")
        .unwrap();
    assert!(cosine(&e, &want.image_embedding) > 0.99999);
    assert!((e.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);

    let out = clipscope()
        .args([
            "embed",
            "--text",
            "cat,astronaut",
            "--template",
            "a photo of a {}.",
        ])
        .args(["--model-dir", &tiny(), "--format", "json"])
        .output()
        .unwrap();
    assert_success(&out);
    let v = json_of(&out.stdout);
    let items = v["items"].as_array().unwrap();
    assert_eq!(items[1]["text"], "astronaut");
    assert_eq!(items[1]["prompt"], "a photo of a astronaut.");
    let e: Vec<f32> = serde_json::from_value(items[0]["embedding"].clone()).unwrap();
    assert!(cosine(&e, &reference.text_embeddings[0]) > 0.99999);

    let out = clipscope()
        .args([
            "embed",
            "--text",
            "cat",
            "--model-dir",
            &tiny(),
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.starts_with("kind,input,error,e0,"), "{s}");
    assert_eq!(s.lines().nth(1).unwrap().split(',').count(), 3 + 16);

    // A failed input's row has the header's fields too, the embedding's left empty.
    let out = clipscope()
        .args([
            "embed",
            &image("chelsea.png"),
            "no-such.png",
            "--model-dir",
            &tiny(),
        ])
        .args(["--format", "csv"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let mut rows = csv::Reader::from_reader(&out.stdout[..]);
    let fields = rows.headers().unwrap().len();
    let rows: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.len() == fields), "{rows:?}");
    assert!(rows[1][2].contains("no-such.png") && rows[1][3].is_empty());
}

#[test]
fn preprocess_writes_what_the_model_sees() {
    let dir = tempfile::tempdir().unwrap();
    let out_png = dir.path().join("crop.png");
    clipscope()
        .args(["preprocess", &image("coffee_rgba.png"), "--output"])
        .arg(&out_png)
        .assert()
        .success();
    let got = image::open(&out_png).unwrap();
    assert_eq!(got.color(), image::ColorType::Rgb8);
    let want = image::open(fixtures().join("crops/coffee_rgba.png")).unwrap();
    assert_eq!(got.to_rgb8().as_raw(), want.to_rgb8().as_raw());

    // `-` reads the image from standard input, as classify does.
    let piped = dir.path().join("piped.png");
    clipscope()
        .args(["preprocess", "-", "--output"])
        .arg(&piped)
        .write_stdin(std::fs::read(image("coffee_rgba.png")).unwrap())
        .assert()
        .success();
    assert_eq!(
        std::fs::read(&piped).unwrap(),
        std::fs::read(&out_png).unwrap()
    );
    // Not an image on standard input: the error names `-`, not a temporary file.
    let out = clipscope()
        .args(["preprocess", "-", "--output"])
        .arg(&piped)
        .write_stdin("hi\n")
        .output()
        .unwrap();
    let err = usage_error(&out);
    assert!(
        err.starts_with("clipscope: error: -: ") && !err.contains("clipscope-stdin"),
        "{err}"
    );

    let out = clipscope()
        .args(["preprocess", &image("LICENSE.md"), "--output"])
        .arg(&out_png)
        .output()
        .unwrap();
    assert!(usage_error(&out).contains("LICENSE.md"));
}

/// A local hub that serves the tiny fixture model as ViT-B/32's files; the endpoint,
/// and the files asked for.
fn serve_tiny_as_vit_b32() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    serve(
        &fixtures().join("tiny-clip"),
        "/openai/clip-vit-base-patch32/resolve/refs%2Fpr%2F15/",
    )
}

#[test]
fn parallel_jobs_sharing_a_cache_download_a_model_once() {
    let (endpoint, seen) = serve_tiny_as_vit_b32();
    let cache = tempfile::tempdir().unwrap();
    let jobs: Vec<std::process::Child> = (0..3)
        .map(|_| {
            std::process::Command::new(assert_cmd::cargo::cargo_bin("clipscope"))
                .env("HF_ENDPOINT", &endpoint)
                .env("CLIPSCOPE_CACHE", cache.path())
                .args(["-q", "models", "download", "ViT-B/32"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut job in jobs {
        assert!(job.wait().unwrap().success());
    }
    let fetched = seen.lock().unwrap().clone();
    assert_eq!(fetched.len(), 3, "each file once: {fetched:?}");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(cache.path().join("models/ViT-B-32").join(file)).unwrap(),
            std::fs::read(fixtures().join("tiny-clip").join(file)).unwrap(),
            "{file}"
        );
    }
}

#[test]
fn models_download_on_first_use_then_come_from_the_cache() {
    let (endpoint, seen) = serve_tiny_as_vit_b32();
    let cache = tempfile::tempdir().unwrap();
    let run = || {
        clipscope()
            .env("HF_ENDPOINT", &endpoint)
            .env("CLIPSCOPE_CACHE", cache.path())
            .args(["classify", &image("chelsea.png"), "--labels", "cat,dog"])
            .args(["--model", "ViT-B/32", "--format", "json"])
            .output()
            .unwrap()
    };
    let first = run();
    assert_success(&first);
    assert_eq!(json_of(&first.stdout)["model"], "ViT-B/32");
    let fetched = seen.lock().unwrap().clone();
    assert_eq!(fetched.len(), 3, "{fetched:?}");
    assert!(fetched.iter().any(|p| p.ends_with("/model.safetensors")));
    let cached = cache.path().join("models/ViT-B-32/model.safetensors");
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        std::fs::read(fixtures().join("tiny-clip/model.safetensors")).unwrap()
    );
    assert!(!cached.with_extension("part").exists());
    assert!(
        !cache.path().join("prepared").exists(),
        "weights of a few MB load fast enough unprepared"
    );

    let second = run();
    assert_success(&second);
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "the second run downloads nothing"
    );

    let list = clipscope()
        .env("CLIPSCOPE_CACHE", cache.path())
        .args(["models", "list"])
        .output()
        .unwrap();
    let s = String::from_utf8(list.stdout).unwrap();
    let b32 = s.lines().find(|l| l.starts_with("ViT-B/32")).unwrap();
    assert!(b32.contains("cached"), "{s}");
    assert!(s.lines().any(|l| l.starts_with("ViT-L/14@336")));
}

#[test]
fn a_failed_download_names_the_url_and_leaves_no_file() {
    let empty = tempfile::tempdir().unwrap();
    let (endpoint, _) = serve(empty.path(), "/nothing-here/");
    let cache = tempfile::tempdir().unwrap();
    let out = clipscope()
        .env("HF_ENDPOINT", &endpoint)
        .env("CLIPSCOPE_CACHE", cache.path())
        .args(["models", "download", "ViT-B/16"])
        .output()
        .unwrap();
    let err = usage_error(&out);
    assert!(
        err.contains("openai/clip-vit-base-patch16") && err.contains("404"),
        "{err}"
    );
    let dir = cache.path().join("models/ViT-B-16");
    assert!(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0) == 0);
}
