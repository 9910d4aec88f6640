//! Models by name: the registry in `models/registry.toml`, the cache folder, downloads.

mod download;
mod registry;

use std::path::PathBuf;

pub use download::{
    cnn_weights_path, download_file, endpoint, ensure_builtin_cnn_weights, ensure_cnn_weights,
    ensure_model, is_cached, model_cache_dir, resolve_model, stderr_progress, DownloadOptions,
    ModelSource, ProgressFn,
};
pub use registry::{CnnEntry, ModelEntry, Registry};

/// The name of the built-in demo model (`--model demo`).
pub const DEMO_MODEL: &str = "demo";

/// The files of a model: the built-in demo, a folder, or a registry model (downloaded
/// into the cache on first use, with `progress`).
pub fn resolve_files(
    source: &ModelSource,
    progress: &mut ProgressFn<'_>,
) -> Result<crate::clip::ModelFiles, HubError> {
    if let ModelSource::Named(Some(name)) = source {
        if name.eq_ignore_ascii_case(DEMO_MODEL) {
            return Ok(crate::clip::demo::files()?);
        }
    }
    let (dir, name) = resolve_model(source, progress)?;
    Ok(crate::clip::ModelFiles::from_dir(&dir, &name)?)
}

/// What can go wrong finding or fetching a model.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The name is not in the registry.
    #[error("unknown model {name:?} (known: {known})")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The names that exist.
        known: String,
    },
    /// The registry file is malformed.
    #[error("model registry: {0}")]
    Registry(String),
    /// No cache folder could be determined.
    #[error("cannot determine a cache folder; set CLIPSCOPE_CACHE")]
    NoCacheDir,
    /// A download failed.
    #[error("downloading {url}: {message}")]
    Download {
        /// What was being fetched.
        url: String,
        /// Why it failed.
        message: String,
    },
    /// The model's files are unusable.
    #[error(transparent)]
    Model(#[from] crate::clip::ClipError),
    /// A file in the cache could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}
