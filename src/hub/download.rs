//! Downloading model files from a Hugging Face style server into the user's cache.
//!
//! Files come from `{endpoint}/{repo}/resolve/{revision}/{file}` (the endpoint is
//! `HF_ENDPOINT`, or huggingface.co), with a progress bar on stderr, written to a
//! temporary file and renamed into place, so an interrupted download never leaves a
//! truncated file that would be taken for a complete one.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use super::{HubError, ModelEntry};

/// Where downloads come from and go to.
#[derive(Clone, Debug)]
pub struct DownloadOptions {
    /// Base URL of the Hugging Face style server.
    pub endpoint: String,
    /// Root of the model cache.
    pub cache_root: PathBuf,
}

impl DownloadOptions {
    /// From the environment: `HF_ENDPOINT`, `CLIPSCOPE_CACHE` or the platform cache dir.
    pub fn from_env() -> Result<Self, HubError> {
        Ok(Self {
            endpoint: endpoint(),
            cache_root: cache_root()?,
        })
    }
}

/// The download endpoint: `HF_ENDPOINT` if set, else `https://huggingface.co`.
pub fn endpoint() -> String {
    crate::util::env_url("HF_ENDPOINT", "https://huggingface.co")
}

fn cache_root() -> Result<PathBuf, HubError> {
    if let Some(dir) = std::env::var_os("CLIPSCOPE_CACHE").filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("", "", "clipscope")
        .map(|d| d.cache_dir().to_path_buf())
        .ok_or(HubError::NoCacheDir)
}

/// The folder a registry model lives in once downloaded.
pub fn model_cache_dir(entry: &ModelEntry, opts: &DownloadOptions) -> PathBuf {
    opts.cache_root.join("models").join(entry.cache_name())
}

/// Reports download progress: the file being fetched, bytes so far, total if known.
pub type ProgressFn<'a> = dyn FnMut(&str, u64, Option<u64>) + 'a;

/// The model's folder, downloading whatever files are not there yet.
pub fn ensure_model(
    entry: &ModelEntry,
    opts: &DownloadOptions,
    progress: &mut ProgressFn<'_>,
) -> Result<PathBuf, HubError> {
    let dir = model_cache_dir(entry, opts);
    ensure_files(
        &entry.repo,
        &entry.revision,
        &entry.files,
        &dir,
        opts,
        progress,
    )?;
    Ok(dir)
}

/// The cache folder of a CNN's pretrained weights.
fn cnn_cache_dir(entry: &super::CnnEntry, opts: &DownloadOptions) -> PathBuf {
    opts.cache_root.join("models").join(&entry.name)
}

/// Where a CNN's pretrained weights file lives in the cache (whether or not it is there).
pub fn cnn_weights_path(entry: &super::CnnEntry, opts: &DownloadOptions) -> PathBuf {
    let file = entry
        .files
        .first()
        .map(String::as_str)
        .unwrap_or("model.safetensors");
    cnn_cache_dir(entry, opts).join(file)
}

/// The pretrained weights file of a CNN, downloaded into the cache on first use.
pub fn ensure_cnn_weights(
    entry: &super::CnnEntry,
    opts: &DownloadOptions,
    progress: &mut ProgressFn<'_>,
) -> Result<PathBuf, HubError> {
    ensure_files(
        &entry.repo,
        &entry.revision,
        &entry.files,
        &cnn_cache_dir(entry, opts),
        opts,
        progress,
    )?;
    Ok(cnn_weights_path(entry, opts))
}

/// The ImageNet weights of the CNN architecture `name` in the built-in registry, with
/// the environment's download options (`CLIPSCOPE_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`),
/// downloaded on first use: what `train --pretrained imagenet` and the Train pane load.
pub fn ensure_builtin_cnn_weights(
    name: &str,
    progress: &mut ProgressFn<'_>,
) -> Result<PathBuf, HubError> {
    let registry = super::Registry::builtin()?;
    ensure_cnn_weights(
        registry.find_cnn(name)?,
        &DownloadOptions::from_env()?,
        progress,
    )
}

/// Download the files of `repo` at `revision` that `dir` does not have yet.
fn ensure_files(
    repo: &str,
    revision: &str,
    files: &[String],
    dir: &Path,
    opts: &DownloadOptions,
    progress: &mut ProgressFn<'_>,
) -> Result<(), HubError> {
    std::fs::create_dir_all(dir).map_err(|source| HubError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for file in files {
        let dest = dir.join(file);
        if dest.is_file() {
            continue;
        }
        let url = format!(
            "{}/{}/resolve/{}/{}",
            opts.endpoint,
            repo,
            encode_revision(revision),
            file
        );
        download_file(&url, &dest, &mut |done, total| progress(file, done, total))?;
    }
    Ok(())
}

/// Whether every file of a registry model is in the cache.
pub fn is_cached(entry: &ModelEntry, opts: &DownloadOptions) -> bool {
    let dir = model_cache_dir(entry, opts);
    entry.files.iter().all(|f| dir.join(f).is_file())
}

/// Revisions such as `refs/pr/15` travel as one path segment.
fn encode_revision(rev: &str) -> String {
    rev.replace('/', "%2F")
}

/// A progress callback that draws an indicatif bar on stderr (hidden when stderr is not
/// a terminal), one bar per file.
pub fn stderr_progress() -> impl FnMut(&str, u64, Option<u64>) {
    let mut current: Option<(String, ProgressBar)> = None;
    move |file, done, total| {
        let same = current.as_ref().is_some_and(|(f, _)| f == file);
        if !same {
            if let Some((_, bar)) = current.take() {
                bar.finish_and_clear();
            }
            let bar = total.map_or_else(ProgressBar::new_spinner, ProgressBar::new);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(file.to_string());
            current = Some((file.to_string(), bar));
        }
        if let Some((_, bar)) = &current {
            bar.set_position(done);
            if total == Some(done) {
                bar.finish_and_clear();
            }
        }
    }
}

/// Fetch `url` into `dest` through a temporary file in the same folder.
pub fn download_file(
    url: &str,
    dest: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<(), HubError> {
    let fail = |message: String| HubError::Download {
        url: url.to_string(),
        message,
    };
    let mut req = ureq::get(url);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        if !token.is_empty() {
            req = req.header("Authorization", &format!("Bearer {token}"));
        }
    }
    let mut resp = req.call().map_err(|e| fail(e.to_string()))?;
    let total = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let tmp = dest.with_extension("part");
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HubError::Io { path, source }
    };
    let mut out = File::create(&tmp).map_err(io_err(&tmp))?;
    let mut reader = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = 0u64;
    progress(0, total);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(fail(e.to_string()));
            }
        };
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(io_err(&tmp))?;
        written += n as u64;
        progress(written, total);
    }
    out.sync_all().map_err(io_err(&tmp))?;
    drop(out);
    if let Some(total) = total {
        if written != total {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(format!("received {written} of {total} bytes")));
        }
    }
    std::fs::rename(&tmp, dest).map_err(io_err(dest))
}

/// Where a model comes from: a folder, or a registry name (`None`: the default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face style folder.
    Dir(PathBuf),
    /// A registry name, or the default model.
    Named(Option<String>),
}

/// The folder and display name of a model, downloading a registry model on first use.
pub fn resolve_model(
    source: &ModelSource,
    progress: &mut ProgressFn<'_>,
) -> Result<(PathBuf, String), HubError> {
    match source {
        ModelSource::Dir(dir) => Ok((dir.clone(), dir.display().to_string())),
        ModelSource::Named(name) => {
            let registry = super::Registry::builtin()?;
            let entry = match name {
                Some(n) => registry.find(n)?,
                None => registry.default_model()?,
            };
            let opts = DownloadOptions::from_env()?;
            let dir = ensure_model(entry, &opts, progress)?;
            Ok((dir, entry.name.clone()))
        }
    }
}
