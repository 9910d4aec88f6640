//! Downloads against a local server that speaks the Hub's API: the revision chosen from
//! the file listing (safetensors on a pull-request ref, a PyTorch pickle converted),
//! resuming after a connection lost midway, verification against the listed sha256,
//! and the offline message.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clipscope::hub::{self, DownloadOptions, ModelEntry, Registry};
use common::{clipscope, fixtures, usage_error};
use sha2::{Digest, Sha256};

const REPO: &str = "test/tiny-clip";

/// A fake Hub: answers for exact paths (query included), honours `Range: bytes=N-`, and
/// can cut one path's first answer after some bytes.
#[derive(Default)]
struct FakeHub {
    routes: HashMap<String, Vec<u8>>,
    /// (path, bytes sent before the connection is closed), for the first request only.
    cut: Option<(String, usize)>,
    /// Answer every request with the whole file, as servers without Range support do.
    ignore_range: bool,
}

/// Every request: the path and its Range header, if any.
type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

impl FakeHub {
    fn file(&mut self, rev: &str, name: &str, bytes: Vec<u8>) {
        let rev = rev.replace('/', "%2F");
        self.routes
            .insert(format!("/{REPO}/resolve/{rev}/{name}"), bytes);
    }

    /// A revision listing as the Hub's `?blobs=true` answer: LFS metadata for weights.
    fn listing(&mut self, rev: &str, files: &[(&str, &[u8])], sha_override: Option<&str>) {
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|(name, bytes)| {
                let mut s = serde_json::json!({"rfilename": name, "size": bytes.len()});
                if name.ends_with(".safetensors") || name.ends_with(".bin") {
                    let sha = sha_override
                        .map(str::to_string)
                        .unwrap_or_else(|| hex(&Sha256::digest(bytes)));
                    s["size"] = serde_json::json!(135);
                    s["lfs"] =
                        serde_json::json!({"sha256": sha, "size": bytes.len(), "pointerSize": 135});
                }
                s
            })
            .collect();
        let body = serde_json::json!({"id": REPO, "siblings": siblings});
        let enc = rev.replace('/', "%2F");
        self.routes.insert(
            format!("/api/models/{REPO}/revision/{enc}?blobs=true"),
            body.to_string().into_bytes(),
        );
        for (name, bytes) in files {
            self.file(rev, name, bytes.to_vec());
        }
    }

    fn pull_requests(&mut self, refs: &[&str]) {
        let prs: Vec<_> = refs
            .iter()
            .map(|r| serde_json::json!({"name": r, "ref": r, "targetCommit": "0"}))
            .collect();
        let body =
            serde_json::json!({"branches": [], "converts": [], "tags": [], "pullRequests": prs});
        self.routes.insert(
            format!("/api/models/{REPO}/refs?include_prs=1"),
            body.to_string().into_bytes(),
        );
    }

    fn serve(self) -> (String, Log) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let log: Log = Arc::default();
        let seen = log.clone();
        std::thread::spawn(move || {
            let mut cut = self.cut;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let mut range = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
                        range = Some(v.trim().to_string());
                    }
                }
                let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                seen.lock().unwrap().push((path.clone(), range.clone()));
                let Some(body) = self.routes.get(&path) else {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    continue;
                };
                let from = range
                    .as_deref()
                    .filter(|_| !self.ignore_range)
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
                    .unwrap_or(0);
                let part = &body[from.min(body.len())..];
                let head = if from > 0 {
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{}\r\n",
                        body.len() - 1,
                        body.len()
                    )
                } else {
                    "HTTP/1.1 200 OK\r\n".to_string()
                };
                let _ = write!(
                    stream,
                    "{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    part.len()
                );
                let send = match &cut {
                    Some((p, n)) if *p == path => {
                        let n = *n;
                        cut = None;
                        &part[..n]
                    }
                    _ => part,
                };
                let _ = stream.write_all(send);
            }
        });
        (addr, log)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tiny(file: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("tiny-clip").join(file)).unwrap()
}

/// A registry entry for the fake repository, first trying `revision`.
fn entry(revision: &str) -> ModelEntry {
    let mut e = Registry::builtin()
        .unwrap()
        .find("ViT-B/16")
        .unwrap()
        .clone();
    e.name = "tiny".into();
    e.repo = REPO.into();
    e.revision = revision.into();
    e
}

fn options(endpoint: &str, cache: &Path) -> DownloadOptions {
    DownloadOptions {
        endpoint: endpoint.to_string(),
        cache_root: cache.to_path_buf(),
    }
}

fn ensure(endpoint: &str, cache: &Path, revision: &str) -> Result<PathBuf, hub::HubError> {
    hub::ensure_model(
        &entry(revision),
        &options(endpoint, cache),
        &mut |_, _, _| {},
    )
}

fn support() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("config.json", tiny("config.json")),
        ("tokenizer.json", tiny("tokenizer.json")),
    ]
}

fn with<'a>(
    files: &'a [(&'static str, Vec<u8>)],
    extra: &'a [(&'static str, &'a [u8])],
) -> Vec<(&'a str, &'a [u8])> {
    files
        .iter()
        .map(|(n, b)| (*n, b.as_slice()))
        .chain(extra.iter().copied())
        .collect()
}

fn paths(log: &Log) -> Vec<String> {
    log.lock().unwrap().iter().map(|(p, _)| p.clone()).collect()
}

/// Whether anything but the finished model's folder is left under `models/`.
fn leftovers(cache: &Path) -> Vec<String> {
    walkdir::WalkDir::new(cache.join("models"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().display().to_string())
        .collect()
}

#[test]
fn safetensors_on_a_pull_request_ref_is_found_from_the_listing() {
    let weights = tiny("model.safetensors");
    let support = support();
    let mut hub = FakeHub::default();
    hub.listing(
        "main",
        &with(&support, &[("pytorch_model.bin", b"unused")]),
        None,
    );
    hub.pull_requests(&["refs/pr/3", "refs/pr/7"]);
    hub.listing("refs/pr/3", &with(&support, &[]), None);
    hub.listing(
        "refs/pr/7",
        &[("model.safetensors", weights.as_slice())],
        None,
    );
    let (endpoint, log) = hub.serve();
    let cache = tempfile::tempdir().unwrap();
    let dir = ensure(&endpoint, cache.path(), "main").unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(
        std::fs::read(dir.join("config.json")).unwrap(),
        support[0].1
    );
    let seen = paths(&log);
    // Newest pull request first; the weights from refs/pr/7, the rest from main.
    let pr7 = seen
        .iter()
        .position(|p| p.contains("revision/refs%2Fpr%2F7"))
        .unwrap();
    assert!(
        !seen[..pr7].iter().any(|p| p.contains("refs%2Fpr%2F3")),
        "{seen:?}"
    );
    assert!(seen.contains(&format!("/{REPO}/resolve/refs%2Fpr%2F7/model.safetensors")));
    assert!(seen.contains(&format!("/{REPO}/resolve/main/tokenizer.json")));
    assert!(
        !seen.iter().any(|p| p.ends_with("pytorch_model.bin")),
        "{seen:?}"
    );
    clipscope::clip::ModelFiles::from_dir(&dir, "tiny").unwrap();
    assert!(!cache.path().join("models").join(hub::PARTIAL_DIR).exists());
}

#[test]
fn a_pytorch_pickle_is_downloaded_and_converted_when_no_revision_has_safetensors() {
    let bin = std::fs::read(fixtures().join("tiny-clip-bin/pytorch_model.bin")).unwrap();
    let support = support();
    let mut hub = FakeHub::default();
    hub.listing(
        "main",
        &with(&support, &[("pytorch_model.bin", &bin)]),
        None,
    );
    hub.pull_requests(&[]);
    let (endpoint, _) = hub.serve();
    let cache = tempfile::tempdir().unwrap();
    let dir = ensure(&endpoint, cache.path(), "main").unwrap();
    assert!(!dir.join("pytorch_model.bin").exists());
    let device = candle_core::Device::Cpu;
    let converted = candle_core::safetensors::load(dir.join("model.safetensors"), &device).unwrap();
    let original =
        candle_core::safetensors::load(fixtures().join("tiny-clip/model.safetensors"), &device)
            .unwrap();
    assert_eq!(converted.len(), original.len());
    for (name, t) in &original {
        let c = &converted[name];
        assert_eq!(c.dims(), t.dims(), "{name}");
        let diff = (c.to_dtype(candle_core::DType::F32).unwrap()
            - t.to_dtype(candle_core::DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert_eq!(diff, 0.0, "{name}");
    }
}

#[test]
fn no_weights_anywhere_says_which_revisions_were_tried() {
    let support = support();
    let mut hub = FakeHub::default();
    hub.listing("main", &with(&support, &[]), None);
    hub.pull_requests(&["refs/pr/2"]);
    hub.listing("refs/pr/2", &with(&support, &[]), None);
    let (endpoint, _) = hub.serve();
    let cache = tempfile::tempdir().unwrap();
    let err = ensure(&endpoint, cache.path(), "refs/pr/9")
        .unwrap_err()
        .to_string();
    for tried in [
        "refs/pr/9 (not found)",
        "main (no model.safetensors)",
        "refs/pr/2 (no model.safetensors)",
        "--model-dir",
    ] {
        assert!(err.contains(tried), "{tried} in {err}");
    }
    assert!(leftovers(cache.path()).is_empty());
}

#[test]
fn a_download_cut_midway_resumes_with_a_range_request() {
    let weights = tiny("model.safetensors");
    let support = support();
    let mut hub = FakeHub::default();
    hub.listing(
        "main",
        &with(&support, &[("model.safetensors", &weights)]),
        None,
    );
    let path = format!("/{REPO}/resolve/main/model.safetensors");
    hub.cut = Some((path.clone(), 1_000_000));
    let (endpoint, log) = hub.serve();
    let cache = tempfile::tempdir().unwrap();
    let err = ensure(&endpoint, cache.path(), "main")
        .unwrap_err()
        .to_string();
    assert!(err.contains("run the command again to resume"), "{err}");
    let models = cache.path().join("models");
    assert!(
        !models.join("tiny").exists(),
        "the model must not look present"
    );
    let part = models
        .join(hub::PARTIAL_DIR)
        .join("tiny/model.safetensors.part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 1_000_000);
    let dir = ensure(&endpoint, cache.path(), "main").unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        weights
    );
    let ranges: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| *p == path)
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(ranges, vec![None, Some("bytes=1000000-".to_string())]);
    assert!(!models.join(hub::PARTIAL_DIR).exists());
}

#[test]
fn a_file_that_does_not_match_the_listed_sha256_is_refused_and_removed() {
    let weights = tiny("model.safetensors");
    let support = support();
    let mut hub = FakeHub::default();
    let wrong = "0".repeat(64);
    hub.listing(
        "main",
        &with(&support, &[("model.safetensors", &weights)]),
        Some(&wrong),
    );
    let (endpoint, _) = hub.serve();
    let cache = tempfile::tempdir().unwrap();
    let err = ensure(&endpoint, cache.path(), "main")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("where the hub lists {wrong}")),
        "{err}"
    );
    assert!(err.contains(&hex(&Sha256::digest(&weights))), "{err}");
    assert!(
        leftovers(cache.path()).is_empty(),
        "{:?}",
        leftovers(cache.path())
    );
}

#[test]
fn offline_the_error_names_the_next_steps_and_leaves_no_folder() {
    let cache = tempfile::tempdir().unwrap();
    let out = clipscope()
        .env("CLIPSCOPE_CACHE", cache.path())
        .args(["classify", "--model", "ViT-B/16", "--labels", "a,b"])
        .arg(fixtures().join("images/camera.png"))
        .output()
        .unwrap();
    let err = usage_error(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    let dir = cache.path().join("models/ViT-B-16");
    for needed in [
        "cannot reach http://127.0.0.1:9/",
        "--model-dir DIR",
        "HF_ENDPOINT",
        "config.json, model.safetensors (or pytorch_model.bin) and tokenizer.json",
        &dir.display().to_string(),
    ] {
        assert!(err.contains(needed), "{needed} in {err}");
    }
    assert!(!cache.path().join("models").exists());
    let out = clipscope()
        .env("CLIPSCOPE_CACHE", cache.path())
        .args(["models", "download", "resnet18"])
        .output()
        .unwrap();
    let err = usage_error(&out);
    assert!(
        err.contains("--pretrained none") && err.contains("HF_ENDPOINT"),
        "{err}"
    );
    assert!(!cache.path().join("models").exists());
}

#[test]
fn models_download_fetches_cnn_weights_and_list_reports_them() {
    let weights = b"not really weights, but bytes to fetch".to_vec();
    let body = serde_json::json!({"siblings": [{"rfilename": "model.safetensors", "size": weights.len()}]});
    let mut hub = FakeHub::default();
    hub.routes.insert(
        "/api/models/timm/resnet18.tv_in1k/revision/main?blobs=true".into(),
        body.to_string().into_bytes(),
    );
    hub.routes.insert(
        "/timm/resnet18.tv_in1k/resolve/main/model.safetensors".into(),
        weights.clone(),
    );
    let (endpoint, _) = hub.serve();
    let cache = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        clipscope()
            .env("CLIPSCOPE_CACHE", cache.path())
            .env("HF_ENDPOINT", &endpoint)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["models", "download", "resnet18"]);
    common::assert_success(&out);
    let path = cache.path().join("models/resnet18/model.safetensors");
    assert_eq!(std::fs::read(&path).unwrap(), weights);
    let out = run(&["models", "list", "--format", "json"]);
    common::assert_success(&out);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = list["models"].as_array().unwrap();
    let resnet = rows.iter().find(|r| r["name"] == "resnet18").unwrap();
    assert_eq!(resnet["cached"], true);
    assert_eq!(resnet["kind"], "cnn");
    assert_eq!(resnet["path"], path.display().to_string());
    let vit = rows.iter().find(|r| r["name"] == "ViT-B/32").unwrap();
    assert_eq!(
        (vit["cached"].clone(), vit["default"].clone()),
        (false.into(), true.into())
    );
    let out = run(&["models", "list"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("resnet18") && l.contains("cached")),
        "{text}"
    );
    for line in text.lines().filter(|l| !l.starts_with("* the default")) {
        assert!(
            line.chars().count() <= 100,
            "{} columns: {line}",
            line.chars().count()
        );
    }
    let err = usage_error(&run(&["models", "download", "resnet19"]));
    assert!(
        err.contains("resnet18") && err.contains("ViT-B/32"),
        "{err}"
    );
}

#[test]
fn a_server_that_ignores_the_range_replaces_the_partial_file() {
    let weights = tiny("model.safetensors");
    let support = support();
    let mut hub = FakeHub::default();
    hub.listing(
        "main",
        &with(&support, &[("model.safetensors", &weights)]),
        None,
    );
    hub.cut = Some((format!("/{REPO}/resolve/main/model.safetensors"), 500_000));
    hub.ignore_range = true;
    let (endpoint, _) = hub.serve();
    let cache = tempfile::tempdir().unwrap();
    assert!(ensure(&endpoint, cache.path(), "main").is_err());
    let dir = ensure(&endpoint, cache.path(), "main").unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        weights
    );
}
