//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clipscope::clip::Clip;

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tiny seeded CLIP committed in the fixtures.
pub fn load_tiny() -> Clip {
    Clip::load(
        &fixtures().join("tiny-clip"),
        "tiny-clip",
        candle_core::Device::Cpu,
    )
    .unwrap()
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// What `make_fixtures.py` computed with transformers.
#[derive(serde::Deserialize)]
pub struct Reference {
    pub logit_scale: f32,
    pub labels: Vec<String>,
    pub template: String,
    pub text_embeddings: Vec<Vec<f32>>,
    pub ensemble_text_embeddings: Vec<Vec<f32>>,
    pub images: Vec<ReferenceImage>,
}

/// One image's reference outputs.
#[derive(serde::Deserialize)]
pub struct ReferenceImage {
    pub file: String,
    pub image_embedding: Vec<f32>,
    pub probabilities: Vec<f64>,
    pub ensemble_probabilities: Vec<f64>,
}

impl Reference {
    /// Read a `reference.json`.
    pub fn load(path: &Path) -> Self {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }
}

/// The Hub's file listing (`/api/models/{repo}/revision/{rev}?blobs=true`) of the folder
/// that `serve(dir, routes)` answers `/{repo}/resolve/{rev}/` from, with the sizes and,
/// for weights, the sha256 that the Hub lists for files in LFS.
fn hub_listing(dir: &Path, routes: &str, path: &str) -> Option<Vec<u8>> {
    use sha2::{Digest, Sha256};
    let rest = path
        .strip_prefix("/api/models/")?
        .strip_suffix("?blobs=true")?;
    let (repo, rev) = rest.split_once("/revision/")?;
    let files = format!("/{repo}/resolve/{rev}/");
    let folder = dir.join(files.strip_prefix(routes)?);
    let siblings: Vec<serde_json::Value> = std::fs::read_dir(folder)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            let mut s = serde_json::json!({"rfilename": name, "size": bytes.len()});
            if name.ends_with(".safetensors") {
                let sha: String = Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                s["lfs"] = serde_json::json!({"sha256": sha, "size": bytes.len()});
            }
            s
        })
        .collect();
    Some(
        serde_json::json!({ "siblings": siblings })
            .to_string()
            .into_bytes(),
    )
}

/// A minimal HTTP server for one folder, recording the paths of the files asked for. It
/// also answers the Hub's file listing for the folder (not recorded).
pub fn serve(dir: &Path, routes: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (dir, log) = (dir.to_path_buf(), seen.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let listing = hub_listing(&dir, routes, &path);
            if listing.is_none() {
                log.lock().unwrap().push(path.clone());
            }
            let body = listing.or_else(|| {
                path.strip_prefix(routes)
                    .and_then(|f| std::fs::File::open(dir.join(f)).ok())
                    .map(|mut f| {
                        let mut b = Vec::new();
                        f.read_to_end(&mut b).unwrap();
                        b
                    })
            });
            let _ = match body {
                Some(b) => write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    b.len()
                )
                .and_then(|_| stream.write_all(&b)),
                None => write!(
                    stream,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
            };
        }
    });
    (addr, seen)
}

/// A picture bundled with the demo model (models/demo/pictures).
pub fn demo_picture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/demo/pictures")
        .join(name)
}

/// Assert that a command succeeded, showing its stderr if not.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Assert that a command failed as a usage or model error (exit status 2); its stderr.
pub fn usage_error(out: &std::process::Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// The clipscope binary, kept off the user's cache and off the network: downloads go to
/// an address where nothing listens unless a test points them at its own server.
pub fn clipscope() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("clipscope").unwrap();
    cmd.env(
        "CLIPSCOPE_CACHE",
        std::env::temp_dir().join("clipscope-test-no-cache"),
    )
    .env("HF_ENDPOINT", "http://127.0.0.1:9")
    .env("CLIPSCOPE_DATA_URL", "http://127.0.0.1:9");
    cmd
}

/// `clipscope eval --checkpoint RUN --data DATA` with `extra` arguments.
pub fn eval(run: &Path, data: &Path, extra: &[&str]) -> std::process::Output {
    clipscope()
        .arg("eval")
        .args(extra)
        .arg("--checkpoint")
        .arg(run)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap()
}
