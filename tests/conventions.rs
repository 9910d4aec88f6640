//! The command line's conventions and hostile inputs, run as a user runs them: `-` for
//! standard input, quoted labels, one-line errors and warnings in clipscope's style,
//! formats that do what they say, and inputs that must be refused before they are read.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{assert_success, clipscope, demo_picture, fixtures, usage_error};
use serde_json::Value;

fn tiny() -> String {
    fixtures().join("tiny-clip").display().to_string()
}

fn image(name: &str) -> String {
    fixtures().join("images").join(name).display().to_string()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// classify on the tiny model with `extra` arguments, within a time limit: a hang fails.
fn classify(extra: &[&str]) -> std::process::Output {
    clipscope()
        .arg("classify")
        .args(extra)
        .args(["--model-dir", &tiny()])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap()
}

#[cfg(unix)]
#[test]
fn named_pipes_and_devices_are_refused_without_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("x.jpg");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let fifo = fifo.display().to_string();
    let out = classify(&[
        &fifo,
        "/dev/zero",
        &image("chelsea.png"),
        "--labels",
        "cat,dog",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!(
            "clipscope: error: {fifo}: not a regular file (a named pipe)"
        )),
        "{err}"
    );
    assert!(
        err.contains("/dev/zero: not a regular file (a device)"),
        "{err}"
    );
    // The good file was still classified.
    assert!(String::from_utf8_lossy(&out.stdout).contains("% "));
}

#[test]
fn a_folder_without_images_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("photos.jpg");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "no pictures here").unwrap();
    let out = classify(&[
        empty.to_str().unwrap(),
        "--labels",
        "cat,dog",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("photos.jpg: no image files in this folder"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["results"][0]["error"]
        .as_str()
        .unwrap()
        .contains("no image files"));
}

#[test]
fn size_and_pixel_limits_refuse_before_decoding() {
    let out = classify(&[
        &image("chelsea.png"),
        "--labels",
        "cat",
        "--max-file-size",
        "1K",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out)
            .contains("too large for an image (at most 1024; raise it with --max-file-size)"),
        "{}",
        stderr_of(&out)
    );
    let out = classify(&[
        &image("chelsea.png"),
        "--labels",
        "cat",
        "--max-pixels",
        "100",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("pixels is more than the limit of 100"),
        "{}",
        stderr_of(&out)
    );
    // A decompression bomb: a tiny PNG whose header claims 100,000 x 100,000 pixels.
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.png");
    std::fs::write(&bomb, png_claiming(100_000, 100_000)).unwrap();
    let out = classify(&[bomb.to_str().unwrap(), "--labels", "cat"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("100000x100000 pixels is more than the limit"),
        "{}",
        stderr_of(&out)
    );
    let out = classify(&[
        &image("chelsea.png"),
        "--labels",
        "cat",
        "--max-file-size",
        "12X",
    ]);
    usage_error(&out);
}

/// A PNG whose header claims `w` x `h` RGB pixels, with a few bytes of image data.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (b"IHDR", ihdr),
        (b"IDAT", vec![0x78, 0x9c, 0x03, 0, 0, 0, 0, 1]),
        (b"IEND", vec![]),
    ] {
        png.extend((data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(&data);
        png.extend(kind);
        png.extend(&data);
        png.extend(crc.sum().to_be_bytes());
    }
    png
}

#[test]
fn dash_reads_an_image_or_the_labels_from_standard_input() {
    let bytes = std::fs::read(image("chelsea.png")).unwrap();
    let out = clipscope()
        .args(["classify", "-", "--labels", "cat,dog", "--format", "json"])
        .args(["--model-dir", &tiny()])
        .write_stdin(bytes)
        .output()
        .unwrap();
    assert_success(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"][0]["image"], "-");
    assert_eq!(v["results"][0]["predictions"].as_array().unwrap().len(), 2);
    // Not an image: the error names `-`, not the temporary file it was read into.
    let out = clipscope()
        .args(["classify", "-", "--labels", "cat,dog", "--format", "json"])
        .args(["--model-dir", &tiny()])
        .write_stdin("hi\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = v["results"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("-: ") && !stderr_of(&out).contains("clipscope-stdin"),
        "{error}"
    );

    let out = clipscope()
        .args([
            "classify",
            &image("chelsea.png"),
            "--labels-file",
            "-",
            "--format",
            "json",
        ])
        .args(["--model-dir", &tiny()])
        .write_stdin("cat\na dog, with a ball\r\n\n")
        .output()
        .unwrap();
    assert_success(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let labels: Vec<&str> = v["results"][0]["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels.len(), 2);
    assert!(labels.contains(&"a dog, with a ball"), "{labels:?}");

    let out = clipscope()
        .args(["classify", "-", "--inputs", "-", "--labels", "cat"])
        .args(["--model-dir", &tiny()])
        .write_stdin("x")
        .output()
        .unwrap();
    assert!(usage_error(&out).contains("cannot hold both"));

    // Labels and an image both from standard input: refused before either is read.
    let out = clipscope()
        .args(["classify", "-", "--labels-file", "-"])
        .args(["--model-dir", &tiny()])
        .write_stdin("cat\n")
        .output()
        .unwrap();
    assert!(
        usage_error(&out).contains("standard input can feed only one"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn labels_quote_commas_repeats_are_scored_once_and_articles_are_not_doubled() {
    let out = classify(&[
        &image("chelsea.png"),
        "--labels",
        r#"a cat,"dog, big",A cat"#,
        "--format",
        "json",
    ]);
    assert_success(&out);
    let err = stderr_of(&out);
    assert!(
        err.contains("clipscope: warning: repeated labels scored once") && err.contains("A cat"),
        "{err}"
    );
    assert!(
        !err.contains('\x1b'),
        "no colour when stderr is not a terminal: {err:?}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let preds = v["results"][0]["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2);
    let sum: f64 = preds
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-5);
    // -q keeps warnings off stderr.
    let out = classify(&["-q", &image("chelsea.png"), "--labels", "cat,cat"]);
    assert_success(&out);
    assert_eq!(stderr_of(&out), "");
    // One label is 100% whatever the picture: said once, not hidden.
    let out = classify(&[&image("chelsea.png"), "--labels", "cat"]);
    assert_success(&out);
    assert!(
        stderr_of(&out).contains("one label (cat) scores 100% on every image"),
        "{}",
        stderr_of(&out)
    );

    let out = clipscope()
        .args([
            "embed",
            "--text",
            "a red car,car,the car",
            "--template",
            "a photo of a {}.",
        ])
        .args(["--model-dir", &tiny()])
        .output()
        .unwrap();
    assert_success(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let prompts: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["prompt"].as_str().unwrap())
        .collect();
    assert_eq!(
        prompts,
        [
            "a photo of a red car.",
            "a photo of a car.",
            "a photo of the car."
        ]
    );
}

#[test]
fn missing_inputs_and_labels_name_every_way_to_give_them() {
    let out = classify(&["--labels", "cat"]);
    let err = usage_error(&out);
    assert!(
        err.starts_with("clipscope: error: no images:") && err.contains("--inputs"),
        "{err}"
    );
    let out = classify(&[&image("chelsea.png")]);
    let err = usage_error(&out);
    assert!(
        err.contains("--labels") && err.contains("--labels-file"),
        "{err}"
    );
    let out = clipscope()
        .args(["embed", "--model-dir", &tiny()])
        .output()
        .unwrap();
    assert!(usage_error(&out).contains("--text"));
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("labels.txt");
    std::fs::write(&binary, [0u8, 159, 146, 150]).unwrap();
    let out = classify(&[
        &image("chelsea.png"),
        "--labels-file",
        binary.to_str().unwrap(),
    ]);
    let err = usage_error(&out);
    assert!(err.contains("labels.txt: binary data"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn every_format_the_help_lists_does_what_it_says() {
    let out = clipscope()
        .args([
            "embed",
            &image("chelsea.png"),
            "--format",
            "text",
            "--model-dir",
            &tiny(),
        ])
        .output()
        .unwrap();
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        serde_json::from_str::<Value>(&text).is_err(),
        "text is not JSON: {text}"
    );
    assert!(
        text.contains("chelsea.png") && text.contains("-d  ["),
        "{text}"
    );

    let out = clipscope()
        .args([
            "bench",
            "--iters",
            "1",
            "--batch",
            "1",
            "--format",
            "csv",
            "--model-dir",
            &tiny(),
        ])
        .output()
        .unwrap();
    assert_success(&out);
    let csv = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        csv.lines().next(),
        Some("what,median_ms,per_item_ms"),
        "{csv}"
    );

    // JSON names where and how it ran, so saved results can be compared across machines.
    let out = clipscope()
        .args(["bench", "--iters", "1", "--batch", "1", "--format", "json"])
        .args(["--precision", "bf16", "--model-dir", &tiny()])
        .output()
        .unwrap();
    assert_success(&out);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["device"], "cpu", "{json}");
    assert_eq!(json["precision"], "bf16", "{json}");
    assert!(
        json["cpu"].as_str().is_some_and(|c| !c.is_empty()),
        "{json}"
    );
    assert!(
        json["rows"].as_array().is_some_and(|r| !r.is_empty()),
        "{json}"
    );

    let dir = tempfile::tempdir().unwrap();
    for (name, magic) in [
        ("seen.jpg", &b"\xff\xd8\xff"[..]),
        ("seen.png", b"\x89PNG"),
        ("seen.bmp", b"BM"),
        // A binary pixmap, which every Netpbm reader takes; .pam asks for P7.
        ("seen.ppm", b"P6\n32 32 255\n"),
        ("seen.pam", b"P7\n"),
    ] {
        let path = dir.path().join(name);
        let out = clipscope()
            .args(["preprocess", &image("chelsea.png"), "--size", "32", "-o"])
            .arg(&path)
            .output()
            .unwrap();
        assert_success(&out);
        assert!(std::fs::read(&path).unwrap().starts_with(magic), "{name}");
    }
    let out = clipscope()
        .args(["preprocess", &image("chelsea.png"), "-o", "x.gifx"])
        .output()
        .unwrap();
    assert!(usage_error(&out).contains(".gifx"));
    // A folder is named as what it is, on either side.
    let out = clipscope()
        .args(["preprocess", &image("chelsea.png"), "-o"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(usage_error(&out).contains("a folder; give the file to write"));
    let out = clipscope()
        .arg("preprocess")
        .arg(dir.path())
        .args(["-o", "x.png"])
        .output()
        .unwrap();
    assert!(usage_error(&out).contains("a folder; preprocess takes one image file"));
}

#[test]
fn completions_and_man_pages_come_from_the_argument_parser() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = clipscope().args(["completions", shell]).output().unwrap();
        assert_success(&out);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("classify"),
            "{shell}"
        );
    }
    // --model completes to the models' names, not to file names.
    let bash = clipscope().args(["completions", "bash"]).output().unwrap();
    let bash = String::from_utf8_lossy(&bash.stdout).into_owned();
    assert!(bash.contains("compgen -W \"demo ViT-B/32"), "{bash}");
    let out = clipscope().arg("man").output().unwrap();
    assert_success(&out);
    let page = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(page.contains(".TH clipscope 1"));
    assert!(
        page.contains(".SH \"EXIT STATUS\"") && page.contains("CLIPSCOPE_CACHE"),
        "{page}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = clipscope()
        .args(["man", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_success(&out);
    let classify = std::fs::read_to_string(dir.path().join("clipscope-classify.1")).unwrap();
    assert!(classify.contains(r"\-\-labels") && classify.contains("EXIT STATUS"));
    let dir = tempfile::tempdir().unwrap();
    let out = clipscope().arg("man").arg(dir.path()).output().unwrap();
    assert_success(&out);
    assert!(
        dir.path().join("clipscope.1").is_file(),
        "a folder as argument"
    );
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("clipscope"))
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!stderr_of(&out).contains("panicked"), "{}", stderr_of(&out));
    let _ = std::io::stdout().flush();
}

#[test]
fn a_run_folder_is_not_overwritten_and_the_split_is_not_silently_changed() {
    let data = tempfile::tempdir().unwrap();
    clipscope::data::synthetic::make_shapes(data.path(), 4, 32, 1).unwrap();
    let run = tempfile::tempdir().unwrap();
    // `train` on this data into this run folder, with `args` before the folders and
    // `extra` after.
    let train_with = |args: &[&str], extra: &[&str]| {
        clipscope()
            .arg("train")
            .args(args)
            .arg("--data")
            .arg(data.path())
            .arg("--output")
            .arg(run.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let settings = [
        "--model",
        "resnet18",
        "--pretrained",
        "none",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--seed",
        "3",
    ];
    let train = |extra: &[&str]| train_with(&settings, extra);
    assert_success(&train(&[]));
    let err = usage_error(&train(&[]));
    assert!(
        err.contains("is not empty; give --resume") && err.contains("--force"),
        "{err}"
    );
    let out = train(&["--force", "--format", "json"]);
    assert_success(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["epochs"].as_array().unwrap().len(), 1);
    assert_eq!(v["stopped"], false);
    // The replaced run's epochs are not left in the new run's log.
    let log = std::fs::read_to_string(run.path().join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    let err = usage_error(&train(&["--force", "--val-fraction", "0.5"]));
    assert!(
        err.contains("made with --seed 3 --val-fraction 0.2"),
        "{err}"
    );

    // --resume takes the run's settings for options left out, refuses different ones
    // (naming the option), and records the new number of epochs.
    let resume = |extra: &[&str]| train_with(&["--resume"], extra);
    for (flag, value) in [
        ("--image-size", "48"),
        ("--batch-size", "4"),
        ("--lr", "0.5"),
        ("--optimizer", "adamw"),
    ] {
        let err = usage_error(&resume(&[flag, value]));
        assert!(err.contains(&format!("trained with {flag} ")), "{err}");
    }
    let other = tempfile::tempdir().unwrap();
    clipscope::data::synthetic::make_shapes(other.path(), 4, 32, 1).unwrap();
    let err = usage_error(
        &clipscope()
            .args(["train", "--resume", "--data"])
            .arg(other.path())
            .arg("--output")
            .arg(run.path())
            .output()
            .unwrap(),
    );
    assert!(err.contains("trained with --data"), "{err}");
    assert_success(&resume(&["--epochs", "2"]));
    let meta = clipscope::cnn::checkpoint::load_meta(run.path()).unwrap();
    assert_eq!((meta.epochs_done, meta.config.epochs), (2, 2));
    assert_eq!((meta.image_size, meta.config.batch_size), (32, 8));
    // From another folder and without --data: the run's data, by its absolute path.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = clipscope()
        .current_dir(elsewhere.path())
        .args(["train", "--resume", "--epochs", "3", "--output"])
        .arg(run.path())
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(
        clipscope::cnn::checkpoint::load_meta(run.path())
            .unwrap()
            .epochs_done,
        3
    );
    let out = resume(&[]);
    assert_success(&out);
    let warning = stderr_of(&out);
    assert!(warning.contains("nothing to train"), "{warning}");
}

#[test]
fn an_output_that_is_a_file_is_refused_before_any_work() {
    let data = tempfile::tempdir().unwrap();
    clipscope::data::synthetic::make_shapes(data.path(), 2, 32, 1).unwrap();
    let file = data.path().join("a-file");
    std::fs::write(&file, b"keep me").unwrap();
    let data_arg = data.path().to_str().unwrap();
    let commands: [&[&str]; 4] = [
        &["train", "--pretrained", "none", "--data", data_arg],
        &["finetune", "--model", "demo", "--data", data_arg],
        &["demo", "train"],
        &["compare", "--model", "demo", "--data", data_arg],
    ];
    for args in commands {
        let out = clipscope()
            .args(args)
            .arg("--output")
            .arg(&file)
            .output()
            .unwrap();
        let err = usage_error(&out);
        assert!(err.contains("is a file, not a folder"), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    // A folder under a file cannot be made either, and is found as early.
    let out = clipscope()
        .args([
            "train",
            "--pretrained",
            "none",
            "--data",
            data_arg,
            "--output",
        ])
        .arg(file.join("sub"))
        .output()
        .unwrap();
    assert!(usage_error(&out).contains("a-file is a file, not a folder"));
}

#[test]
fn finetune_refuses_devices_and_precisions_it_does_not_use() {
    let data = tempfile::tempdir().unwrap();
    clipscope::data::synthetic::make_shapes(data.path(), 2, 32, 1).unwrap();
    for (flag, value) in [
        ("--device", "cuda"),
        ("--device", "gpu"),
        ("--precision", "bf16"),
    ] {
        let out = clipscope()
            .args(["finetune", "--model", "demo", "--data"])
            .arg(data.path())
            .args([flag, value, "--output"])
            .arg(data.path().join("run"))
            .output()
            .unwrap();
        let err = usage_error(&out);
        assert!(err.contains(flag) || err.contains(value), "{err}");
        assert!(!data.path().join("run").exists());
    }
}

#[cfg(unix)]
#[test]
fn sigterm_during_training_leaves_a_checkpoint_that_resumes() {
    let run = tempfile::tempdir().unwrap();
    stop_training_with(libc::SIGTERM, 143, run.path());
    // SIGHUP (the terminal closed) stops it the same way, with its own status.
    let run = tempfile::tempdir().unwrap();
    stop_training_with(libc::SIGHUP, 129, run.path());
}

/// Start a long training run into `run`, send `signal` after its first epoch, and check
/// that it saved, said how to go on and exited with `status`; then that its checkpoint
/// evaluates.
#[cfg(unix)]
fn stop_training_with(signal: i32, status: i32, run: &std::path::Path) {
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    clipscope::data::synthetic::make_shapes(data.path(), 6, 32, 2).unwrap();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("clipscope"))
        .args([
            "train",
            "--model",
            "resnet18",
            "--pretrained",
            "none",
            "--epochs",
            "500",
        ])
        .args(["--image-size", "32", "--batch-size", "8"])
        .arg("--data")
        .arg(data.path())
        .arg("--output")
        .arg(run)
        .args(["--force"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("epoch   1"), "{first}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let ended = child.wait().unwrap();
    // 128 + the signal's number, as a shell reports a process the signal ended.
    assert_eq!(ended.code(), Some(status), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("--resume")), "{rest:?}");
    let out = common::eval(run, data.path(), &["--format", "json"]);
    assert_success(&out);
}

#[test]
fn unusual_pictures_are_classified_and_broken_ones_refused_on_one_line() {
    let odd = fixtures().join("odd");
    let out = clipscope()
        .args(["classify", "--no-cache", "--format", "json"])
        .arg(&odd)
        .arg(odd.join("no-extension"))
        .args(["--labels", "red,blue,👍🏽 مرحبا שלום", "--model-dir", &tiny()])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    let broken = ["empty.png", "text.png", "truncated.jpg"];
    let mut probs = std::collections::HashMap::new();
    for r in results {
        let image = r["image"].as_str().unwrap();
        let name = image.rsplit('/').next().unwrap();
        match r["error"].as_str() {
            Some(e) => {
                assert!(broken.contains(&name), "{name} refused: {e}");
                assert!(e.starts_with(image) && !e.contains('\n'), "{e:?}");
            }
            None => {
                assert!(!broken.contains(&name), "{name} was classified");
                assert_eq!(r["predictions"].as_array().unwrap().len(), 3);
                probs.insert(
                    name.to_string(),
                    r["predictions"][0]["probability"].as_f64().unwrap(),
                );
            }
        }
    }
    // The folder's 18 files with an image extension (upper-case .JPG included; the
    // extensionless file is skipped by the walk) and the extensionless one given by name.
    assert_eq!(results.len(), 19);
    assert_eq!(probs.len(), 16, "{probs:?}");
    // EXIF orientation is not applied, as Pillow's Image.open (the reference) does not.
    assert_eq!(probs["exif-none.jpg"], probs["exif-rotate.jpg"]);
    assert_eq!(
        stderr_of(&out).lines().count(),
        broken.len(),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn words_the_demo_model_never_saw_are_named() {
    let picture = demo_picture("red-circle.png");
    let out = clipscope()
        .args([
            "classify",
            "--no-cache",
            "--model",
            "demo",
            "--labels",
            "cat,a red circle",
        ])
        .arg(&picture)
        .output()
        .unwrap();
    assert_success(&out);
    let err = stderr_of(&out);
    assert!(
        err.contains("never seen these words") && err.contains(": \"cat\""),
        "{err}"
    );
    assert!(!err.contains("circle"), "{err}");
    // Punctuation is no part of a word, and texts to embed are checked as labels are.
    let out = clipscope()
        .args([
            "embed",
            "--model",
            "demo",
            "--text",
            r#""cat, sitting",a red circle"#,
        ])
        .output()
        .unwrap();
    assert_success(&out);
    let err = stderr_of(&out);
    assert!(err.contains(r#": "cat", "sitting""#), "{err}");
    // Many unseen words: the first twenty, and how many more.
    let many: Vec<String> = (0..30).map(|i| format!("zorblax{i}")).collect();
    let out = clipscope()
        .args(["embed", "--model", "demo", "--text", &many.join(",")])
        .output()
        .unwrap();
    assert_success(&out);
    let err = stderr_of(&out);
    assert!(
        err.contains("\"zorblax19\" and 10 more") && !err.contains("zorblax20"),
        "{err}"
    );
    let out = classify(&[&image("chelsea.png"), "--labels", "cat,dog"]);
    assert!(
        !stderr_of(&out).contains("never seen"),
        "a real vocabulary: {}",
        stderr_of(&out)
    );
}

/// Assert that a batch failed only in part (exit 1) with a one-line error for `path` that
/// says `why`; its stderr.
fn failed_input(out: &std::process::Output, path: &str, why: &str) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(out));
    let err = stderr_of(out);
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("clipscope: error: {path}: ")) && l.contains(why)),
        "{err}"
    );
    err
}

#[cfg(unix)]
#[test]
fn symlink_loops_are_named_and_the_batch_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let looped = dir.path().join("loop.jpg");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let folder = dir.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(image("small.png"), folder.join("small.png")).unwrap();
    std::os::unix::fs::symlink(&folder, folder.join("again")).unwrap();
    let looped = looped.display().to_string();
    let out = classify(&[
        &looped,
        folder.to_str().unwrap(),
        "--labels",
        "cat,dog",
        "--format",
        "json",
    ]);
    let err = failed_input(&out, &looped, "symbolic links");
    assert!(err.contains("loop"), "the folder's loop is named: {err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let classified = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["error"].is_null())
        .count();
    assert_eq!(
        classified, 1,
        "the one real picture is still classified: {v}"
    );
}

#[cfg(unix)]
#[test]
fn an_unreadable_file_is_named_and_the_batch_goes_on() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let locked = dir.path().join("locked.png");
    std::fs::copy(image("small.png"), &locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let locked = locked.display().to_string();
    let args = [
        "classify",
        locked.as_str(),
        &image("small.png"),
        "--labels",
        "cat,dog",
        "--no-cache",
        "--model-dir",
        &tiny(),
    ];
    // Root reads anything: run as nobody there, as a user would meet the file.
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root
        && std::process::Command::new("setpriv")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("SKIPPED: running as root without setpriv, every file is readable");
        return;
    }
    let out = if as_root {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(assert_cmd::cargo::cargo_bin("clipscope"))
            .args(args)
            .env("HOME", dir.path())
            .output()
            .unwrap()
    } else {
        clipscope().args(args).output().unwrap()
    };
    failed_input(&out, &locked, "ermission denied");
    assert!(String::from_utf8_lossy(&out.stdout).contains("small.png"));
}

#[test]
fn every_listed_device_and_precision_works_and_a_wrong_one_is_named() {
    let rocket = image("rocket.jpg");
    let probability = |out: &std::process::Output| -> Value {
        assert_success(out);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let base = classify(&[&rocket, "--labels", "rocket,cat", "--format", "json"]);
    let want = probability(&base);
    for extra in [
        ["--device", "auto"],
        ["--device", "cpu"],
        ["--precision", "f32"],
        ["--precision", "bf16"],
        ["--precision", "f16"],
    ] {
        let mut args = vec![
            rocket.as_str(),
            "--labels",
            "rocket,cat",
            "--format",
            "json",
        ];
        args.extend(extra);
        let got = probability(&classify(&args));
        let top = |v: &Value| v["results"][0]["predictions"][0]["label"].clone();
        assert_eq!(top(&got), top(&want), "{extra:?}");
    }
    let err = usage_error(&classify(&[
        &rocket,
        "--labels",
        "a,b",
        "--precision",
        "f8",
    ]));
    assert!(
        err.contains("'f8'") && err.contains("f32, bf16, f16"),
        "{err}"
    );
    // Names are not case-sensitive.
    probability(&classify(&[
        &rocket, "--labels", "a,b", "--format", "json", "--device", "CPU",
    ]));
    let out = classify(&[&rocket, "--labels", "a,b", "--device", "tpu"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("tpu: expected auto, cpu or cuda[:N]"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_bad_flag_is_one_error_line_and_help_is_still_help() {
    for args in [
        &["classify", "x.png", "--format", "xml"][..],
        &["classify", "x.png", "--model", "demo", "--model-dir", "."],
        &["preprocess", "x.png"],
        &["completions", "tcsh"],
    ] {
        let out = clipscope().args(args).output().unwrap();
        let err = usage_error(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("clipscope: error: "), "{args:?}: {err}");
    }
    // A model folder given to --model is pointed at --model-dir; an unknown name is
    // refused by the app too, before it takes the terminal.
    let out = clipscope()
        .args([
            "classify",
            &image("chelsea.png"),
            "--labels",
            "a,b",
            "--model",
            &tiny(),
        ])
        .output()
        .unwrap();
    let err = usage_error(&out);
    assert!(
        err.contains("give a model folder with --model-dir"),
        "{err}"
    );
    let err = usage_error(
        &clipscope()
            .args(["tui", "--model", "nosuch"])
            .output()
            .unwrap(),
    );
    assert!(err.contains("unknown model \"nosuch\""), "{err}");
    // A flag clipscope does not have, for a setting it has elsewhere, says where.
    let err = usage_error(&classify(&[
        &image("chelsea.png"),
        "--labels",
        "a",
        "--threads",
        "2",
    ]));
    assert!(
        err.contains("RAYON_NUM_THREADS=N") && err.lines().count() == 1,
        "{err}"
    );
    // `models` alone lists them.
    let out = clipscope().arg("models").output().unwrap();
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ViT-B/32"));
    let err = usage_error(&clipscope().args(["completions", "tcsh"]).output().unwrap());
    assert!(err.contains("possible values: bash"), "{err}");
    let out = clipscope().args(["classify", "--help"]).output().unwrap();
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: clipscope classify"));
}

#[test]
fn a_generated_set_is_not_written_over_another_unless_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("set");
    let shapes = |extra: &[&str]| {
        clipscope()
            .args(["data", "shapes", "--size", "16", "--to"])
            .arg(&to)
            .args(extra)
            .output()
            .unwrap()
    };
    let count = |dir: &std::path::Path| {
        walkdir::WalkDir::new(dir)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .count()
    };
    assert_success(&shapes(&["--per-class", "10"]));
    std::fs::write(to.join("notes.txt"), "mine").unwrap();
    let err = usage_error(&shapes(&["--per-class", "5", "--seed", "3"]));
    assert!(
        err.contains("not empty") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(count(&to), 41);
    assert_success(&shapes(&["--per-class", "5", "--seed", "3", "--force"]));
    assert_eq!(count(&to), 21, "20 new pictures and the user's own file");
    assert_eq!(
        std::fs::read_to_string(to.join("notes.txt")).unwrap(),
        "mine"
    );

    // Scenes: folders replaced by captions leave no class folder behind.
    let scenes = dir.path().join("scenes");
    let run = |extra: &[&str]| {
        clipscope()
            .args(["data", "scenes", "--to"])
            .arg(&scenes)
            .args(extra)
            .output()
            .unwrap()
    };
    assert_success(&run(&["--count", "6", "--layout", "folders"]));
    assert_success(&run(&["--count", "3", "--force"]));
    // Either generator's set is replaced by the other's, not mixed with it.
    let mixed = dir.path().join("mixed");
    let scenes_into = |extra: &[&str]| {
        clipscope()
            .args([
                "data", "scenes", "--count", "6", "--layout", "folders", "--to",
            ])
            .arg(&mixed)
            .args(extra)
            .output()
            .unwrap()
    };
    assert_success(&scenes_into(&[]));
    let out = clipscope()
        .args([
            "data",
            "shapes",
            "--per-class",
            "1",
            "--size",
            "16",
            "--force",
            "--to",
        ])
        .arg(&mixed)
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(
        std::fs::read_dir(&mixed).unwrap().count(),
        4,
        "the four shape folders only"
    );
    let names: Vec<String> = std::fs::read_dir(&scenes)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(usage_error(&run(&["--count", "0", "--force"])).contains("--count 0"));
}

#[cfg(unix)]
#[test]
fn control_characters_in_file_names_never_reach_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("esc\x1b[31mred.png");
    std::fs::copy(image("chelsea.png"), &odd).unwrap();
    let missing = dir.path().join("gone\x1b]0;title\x07.png");
    let out = clipscope()
        .arg("classify")
        .arg(&odd)
        .arg(&missing)
        .args(["--labels", "cat,dog", "--model-dir", &tiny()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    for stream in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(stream);
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("esc\u{fffd}[31mred.png"));
}

/// The terminal a training run writes to closes (SIGHUP; writes to it fail from then
/// on): the run saves, and exits 129 rather than panicking on the lines it prints after.
#[cfg(unix)]
#[test]
fn a_training_run_whose_terminal_closes_saves_and_exits_129() {
    use portable_pty::{native_pty_system, CommandBuilder, PtySize};
    use std::io::Read;
    let data = tempfile::tempdir().unwrap();
    clipscope::data::synthetic::make_shapes(data.path(), 6, 32, 2).unwrap();
    let run = tempfile::tempdir().unwrap();
    let pair = native_pty_system().openpty(PtySize::default()).unwrap();
    let mut cmd = CommandBuilder::new(assert_cmd::cargo::cargo_bin("clipscope"));
    cmd.args(["train", "--model", "resnet18", "--pretrained", "none"]);
    cmd.args([
        "--epochs",
        "500",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--force",
    ]);
    cmd.arg("--data");
    cmd.arg(data.path());
    cmd.arg("--output");
    cmd.arg(run.path());
    let mut child = pair.slave.spawn_command(cmd).unwrap();
    drop(pair.slave);
    let mut reader = pair.master.try_clone_reader().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("epoch   1") {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    // Every descriptor of the master closed: the kernel hangs the terminal up.
    drop(reader);
    drop(pair.master);
    let status = child.wait().unwrap();
    assert_eq!(status.exit_code(), 129);
    assert!(run.path().join("checkpoint.json").is_file());
}
