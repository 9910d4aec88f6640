//! Downloading model files from a Hugging Face style server into the user's cache.
//!
//! Files come from `{endpoint}/{repo}/resolve/{revision}/{file}` (the endpoint is
//! `HF_ENDPOINT`, or huggingface.co), the revision chosen from the hub's file listing
//! ([`super::listing`]), with a progress bar on stderr. They grow as `.part` files in
//! `models/.partial/NAME/` (resumed after an interruption), are checked against the size
//! and sha256 the hub lists, and the folder `models/NAME/` appears only when every file
//! is there, so a failed download never looks like a model.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use super::http::fetch_file;
use super::listing::{self, PYTORCH_BIN, SAFETENSORS};
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

/// The model's folder, downloading it into the cache if it is not there yet.
pub fn ensure_model(
    entry: &ModelEntry,
    opts: &DownloadOptions,
    progress: &mut ProgressFn<'_>,
) -> Result<PathBuf, HubError> {
    let dir = model_cache_dir(entry, opts);
    let target = Target {
        repo: &entry.repo,
        revision: &entry.revision,
        files: &entry.files,
        dir: dir.clone(),
        hint: clip_hint(&entry.repo, &dir),
    };
    target.ensure(opts, progress)?;
    Ok(dir)
}

/// The next step when a CLIP model cannot be downloaded.
fn clip_hint(repo: &str, dir: &Path) -> String {
    format!(
        "to work offline, fetch config.json, model.safetensors (or pytorch_model.bin) and \
         tokenizer.json of huggingface.co/{repo} elsewhere, then pass --model-dir DIR or copy \
         them into {}; or set HF_ENDPOINT to a mirror; or try clipscope offline with \
         --model demo (built in, coloured shapes only)",
        dir.display()
    )
}

/// The next step when a CNN's weights cannot be downloaded.
fn cnn_hint(repo: &str, dir: &Path) -> String {
    format!(
        "to work offline, fetch model.safetensors of huggingface.co/{repo} elsewhere and copy \
         it into {}; or set HF_ENDPOINT to a mirror; or train with --pretrained none",
        dir.display()
    )
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
        .unwrap_or(SAFETENSORS);
    cnn_cache_dir(entry, opts).join(file)
}

/// The pretrained weights file of a CNN, downloaded into the cache on first use.
pub fn ensure_cnn_weights(
    entry: &super::CnnEntry,
    opts: &DownloadOptions,
    progress: &mut ProgressFn<'_>,
) -> Result<PathBuf, HubError> {
    let dir = cnn_cache_dir(entry, opts);
    let target = Target {
        repo: &entry.repo,
        revision: &entry.revision,
        files: &entry.files,
        dir: dir.clone(),
        hint: cnn_hint(&entry.repo, &dir),
    };
    target.ensure(opts, progress)?;
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

/// One folder of the cache to fill from a repository.
struct Target<'a> {
    repo: &'a str,
    revision: &'a str,
    files: &'a [String],
    /// The folder in the cache.
    dir: PathBuf,
    /// The next step when the hub cannot be reached.
    hint: String,
}

impl Target<'_> {
    fn is_complete(&self) -> bool {
        self.files.iter().all(|f| self.dir.join(f).is_file())
    }

    /// An exclusive lock on this model's downloads (`CACHE/locks/NAME.lock`, outside
    /// `models/` so that a failed download leaves no folder there; left in place:
    /// removing it would let a waiting process lock a file that a third then replaces),
    /// held until the returned file is dropped; waits for another process's download.
    fn lock(&self) -> Result<Option<std::fs::File>, HubError> {
        let name = self.dir.file_name().unwrap_or_default().to_string_lossy();
        let models = self.dir.parent().unwrap_or(&self.dir);
        let locks = models.parent().unwrap_or(models).join("locks");
        std::fs::create_dir_all(&locks).map_err(io_at(&locks))?;
        let path = locks.join(format!("{name}.lock"));
        let file = crate::util::open_lock_file(&path).map_err(io_at(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::warn!(
                    "another clipscope is downloading {name} into {}; waiting for it",
                    models.display()
                );
                file.lock().map_err(io_at(&path))?;
                Ok(Some(file))
            }
            // A file system without locks: download unguarded, as before locks.
            Err(std::fs::TryLockError::Error(_)) => Ok(None),
        }
    }

    /// Where the files grow until all are there: a folder of its own, so that the
    /// model's folder exists only once it is complete.
    fn staging(&self) -> PathBuf {
        let name = self.dir.file_name().unwrap_or_default();
        self.dir
            .parent()
            .unwrap_or(&self.dir)
            .join(PARTIAL_DIR)
            .join(name)
    }

    /// Download whatever is missing: resolve the revision from the hub's listing, fetch
    /// into the staging folder (resuming `.part` files), convert a PyTorch pickle, then
    /// move the files into place.
    fn ensure(
        &self,
        opts: &DownloadOptions,
        progress: &mut ProgressFn<'_>,
    ) -> Result<(), HubError> {
        if self.is_complete() {
            return Ok(());
        }
        // One download at a time per model: parallel jobs sharing a cache (array tasks,
        // pods) wait for the first, then find the model complete.
        let _lock = self.lock()?;
        if self.is_complete() {
            return Ok(());
        }
        let plan = listing::plan(
            &opts.endpoint,
            self.repo,
            self.revision,
            self.files,
            &self.hint,
        )?;
        let staging = self.staging();
        std::fs::create_dir_all(&staging).map_err(io_at(&staging))?;
        let fetched = self.fetch(&plan, &staging, opts, progress);
        if fetched.is_err() {
            remove_if_nothing_to_resume(&staging);
            return fetched;
        }
        self.install(&staging)
    }

    fn fetch(
        &self,
        plan: &listing::Plan,
        staging: &Path,
        opts: &DownloadOptions,
        progress: &mut ProgressFn<'_>,
    ) -> Result<(), HubError> {
        for file in &plan.files {
            let dest = staging.join(&file.name);
            if dest.is_file() {
                continue;
            }
            let url = listing::file_url(&opts.endpoint, self.repo, &file.revision, &file.name);
            fetch_file(&url, &dest, &file.expect, &self.hint, &mut |done, total| {
                progress(&file.name, done, total)
            })?;
        }
        if plan.needs_conversion() {
            let bin = staging.join(PYTORCH_BIN);
            crate::clip::weights::convert_pytorch_bin(&bin, &staging.join(SAFETENSORS))?;
            std::fs::remove_file(&bin).map_err(io_at(&bin))?;
        }
        Ok(())
    }

    /// Move the complete files from `staging` into the model's folder.
    fn install(&self, staging: &Path) -> Result<(), HubError> {
        if let Some(parent) = self.dir.parent() {
            std::fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        if !self.dir.exists() && std::fs::rename(staging, &self.dir).is_ok() {
            remove_if_empty(staging.parent());
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(io_at(&self.dir))?;
        for file in self.files {
            let from = staging.join(file);
            if from.is_file() {
                let to = self.dir.join(file);
                std::fs::rename(&from, &to).map_err(io_at(&to))?;
            }
        }
        let _ = std::fs::remove_dir_all(staging);
        remove_if_empty(staging.parent());
        Ok(())
    }
}

/// The folder under `models/` where unfinished downloads wait.
pub const PARTIAL_DIR: &str = ".partial";

/// After a failed download, remove the staging folder unless it holds a `.part` file
/// with bytes in it that the next attempt can resume.
fn remove_if_nothing_to_resume(staging: &Path) {
    let resumable = std::fs::read_dir(staging)
        .map(|entries| {
            entries.flatten().any(|e| {
                e.file_name().to_string_lossy().ends_with(".part")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            })
        })
        .unwrap_or(false);
    if !resumable {
        let _ = std::fs::remove_dir_all(staging);
        remove_if_empty(staging.parent());
    }
}

/// Remove `dir` if it is an empty folder (the shared `.partial` folder once unused).
fn remove_if_empty(dir: Option<&Path>) {
    if let Some(dir) = dir {
        // remove_dir fails on a folder that is not empty, which is what is wanted.
        let _ = std::fs::remove_dir(dir);
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether every file of a registry model is in the cache.
pub fn is_cached(entry: &ModelEntry, opts: &DownloadOptions) -> bool {
    let dir = model_cache_dir(entry, opts);
    entry.files.iter().all(|f| dir.join(f).is_file())
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
