//! Models by name: the registry in `models/registry.toml`, the cache folder, downloads.

mod download;
mod http;
pub mod listing;
mod registry;

use std::path::PathBuf;

pub use download::{
    cnn_weights_path, endpoint, ensure_builtin_cnn_weights, ensure_cnn_weights, ensure_model,
    is_cached, model_cache_dir, resolve_model, stderr_progress, DownloadOptions, ModelSource,
    ProgressFn, PARTIAL_DIR,
};
pub use http::{download_file, fetch_file, part_path, sha256_file, Expected};
pub use registry::{CnnEntry, ModelEntry, Registry};

/// The name of the built-in demo model (`--model demo`).
pub const DEMO_MODEL: &str = "demo";

/// The name [`resolve_files`] gives the model of `source`, found without fetching it:
/// a registry model's own name (whatever alias picked it), or the folder as given.
pub fn source_name(source: &ModelSource) -> Result<String, HubError> {
    Ok(match source {
        ModelSource::Dir(dir) => dir.display().to_string(),
        ModelSource::Named(Some(name)) if name.eq_ignore_ascii_case(DEMO_MODEL) => {
            DEMO_MODEL.to_string()
        }
        ModelSource::Named(Some(name)) => Registry::builtin()?.find(name)?.name.clone(),
        ModelSource::Named(None) => Registry::builtin()?.default_model()?.name.clone(),
    })
}

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
    let bin = dir.join(listing::PYTORCH_BIN);
    let files = if !dir.join(listing::SAFETENSORS).is_file() && bin.is_file() {
        let converted = converted_weights(&bin)?;
        crate::clip::ModelFiles::from_dir_with_weights(&dir, &name, &converted)?
    } else {
        crate::clip::ModelFiles::from_dir(&dir, &name)?
    };
    // Without a cache folder the model still loads, only without prepared weights.
    Ok(match DownloadOptions::from_env() {
        Ok(o) => files.with_prepared_dir(
            o.cache_root.join("prepared"),
            crate::clip::prepared::MIN_SOURCE_BYTES,
        ),
        Err(_) => files,
    })
}

/// The safetensors conversion of a folder's `pytorch_model.bin`, made once under
/// `CACHE/converted/` (keyed by the file's path, size and modification time) and reused.
fn converted_weights(bin: &std::path::Path) -> Result<PathBuf, HubError> {
    use sha2::{Digest, Sha256};
    let io = |source| HubError::Io {
        path: bin.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(bin).map_err(io)?;
    let path = std::fs::canonicalize(bin).map_err(io)?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = Sha256::digest(format!("{}\n{}\n{modified}", path.display(), meta.len()));
    let key: String = key.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let dir = DownloadOptions::from_env()?
        .cache_root
        .join("converted")
        .join(key);
    let dest = dir.join(listing::SAFETENSORS);
    if !dest.is_file() {
        std::fs::create_dir_all(&dir).map_err(|source| HubError::Io {
            path: dir.clone(),
            source,
        })?;
        tracing::info!(
            "converting {} to safetensors in {}",
            bin.display(),
            dir.display()
        );
        crate::clip::weights::convert_pytorch_bin(bin, &dest)?;
    }
    Ok(dest)
}

/// What the app opens when it is started with no model, picture or labels.
#[derive(Clone, Debug, PartialEq)]
pub struct AppStart {
    /// The model.
    pub source: ModelSource,
    /// A picture to open, when the demo model stands in.
    pub picture: Option<PathBuf>,
    /// Labels to start with, when the demo model stands in.
    pub labels: Option<String>,
    /// A line for the status bar saying what the demo model is.
    pub notice: Option<String>,
}

/// The line the app shows while the demo model stands in for a real one.
pub const DEMO_NOTICE: &str =
    "a toy CLIP for drawn shapes, not OpenAI's; for photos: clipscope models download ViT-B/32";

/// With no model named, the registry default when it is in the cache, else the built-in
/// demo model (no download on a first run), opened on a bundled picture with fitting
/// labels when none were given. The picture is written once under the cache folder.
pub fn app_start(source: ModelSource, has_input: bool, has_labels: bool) -> AppStart {
    match DownloadOptions::from_env() {
        Ok(opts) => app_start_in(&opts, source, has_input, has_labels),
        Err(_) => AppStart {
            source,
            picture: None,
            labels: None,
            notice: None,
        },
    }
}

/// [`app_start`] with the cache and endpoint given.
pub fn app_start_in(
    opts: &DownloadOptions,
    source: ModelSource,
    has_input: bool,
    has_labels: bool,
) -> AppStart {
    let plain = AppStart {
        source: source.clone(),
        picture: None,
        labels: None,
        notice: None,
    };
    if source != ModelSource::Named(None) {
        return plain;
    }
    let default_cached = Registry::builtin()
        .and_then(|r| r.default_model().map(|e| is_cached(e, opts)))
        .unwrap_or(false);
    if default_cached {
        return plain;
    }
    let picture = (!has_input)
        .then(|| demo_picture(&opts.cache_root))
        .flatten();
    AppStart {
        source: ModelSource::Named(Some(DEMO_MODEL.to_string())),
        picture,
        labels: (!has_labels).then(|| crate::clip::demo::DEMO_LABELS.to_string()),
        notice: Some(DEMO_NOTICE.to_string()),
    }
}

/// The bundled demo pictures as files under `cache_root/demo/`, so that PgDn pages
/// through them; the red circle's path (None when it cannot be written: the app then
/// opens with no picture rather than failing).
fn demo_picture(cache_root: &std::path::Path) -> Option<PathBuf> {
    let dir = cache_root.join("demo");
    std::fs::create_dir_all(&dir).ok()?;
    for (name, bytes) in crate::clip::demo::DEMO_PICTURES {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() != Some(bytes) {
            crate::util::write_atomic(&path, bytes).ok()?;
        }
    }
    Some(dir.join(crate::clip::demo::DEMO_PICTURES[0].0))
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
    /// The server could not be reached (offline, DNS, refused, timed out).
    #[error("cannot reach {url} ({reason}); {hint}")]
    Unreachable {
        /// What was being fetched.
        url: String,
        /// What the connection said.
        reason: String,
        /// The next step: `--model-dir`, `HF_ENDPOINT`, the cache folder.
        hint: String,
    },
    /// No revision of the repository holds weights clipscope can read.
    #[error(
        "{repo}: no revision has model.safetensors or pytorch_model.bin (tried {tried}); \
         fetch the weights elsewhere and pass --model-dir DIR"
    )]
    NoWeights {
        /// The repository.
        repo: String,
        /// The revisions looked at, each with why it did not do.
        tried: String,
    },
    /// A file the model needs is in none of the revisions looked at.
    #[error("{repo}: no {file} at revision {revision} or main")]
    NoFile {
        /// The repository.
        repo: String,
        /// The file.
        file: String,
        /// The revision that holds the weights.
        revision: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn options(root: &std::path::Path) -> DownloadOptions {
        DownloadOptions {
            endpoint: "http://127.0.0.1:9".into(),
            cache_root: root.to_path_buf(),
        }
    }

    #[test]
    fn a_first_start_opens_the_demo_on_its_picture() {
        let root = tempfile::tempdir().unwrap();
        let start = app_start_in(
            &options(root.path()),
            ModelSource::Named(None),
            false,
            false,
        );
        assert_eq!(start.source, ModelSource::Named(Some(DEMO_MODEL.into())));
        let picture = start.picture.expect("a picture");
        assert_eq!(
            std::fs::read(&picture).unwrap(),
            crate::clip::demo::DEMO_PICTURE
        );
        // Beside it the other bundled pictures, for PgDn.
        let folder = std::fs::read_dir(picture.parent().unwrap()).unwrap();
        assert_eq!(folder.count(), crate::clip::demo::DEMO_PICTURES.len());
        assert_eq!(
            start.labels.as_deref(),
            Some(crate::clip::demo::DEMO_LABELS)
        );
        assert!(start.notice.unwrap().contains("models download ViT-B/32"));
    }

    #[test]
    fn given_picture_and_labels_are_kept_with_the_demo() {
        let root = tempfile::tempdir().unwrap();
        let start = app_start_in(&options(root.path()), ModelSource::Named(None), true, true);
        assert_eq!(start.source, ModelSource::Named(Some(DEMO_MODEL.into())));
        assert_eq!((start.picture, start.labels), (None, None));
    }

    #[test]
    fn a_cached_default_or_a_named_model_is_used_as_is() {
        let root = tempfile::tempdir().unwrap();
        let opts = options(root.path());
        let named = ModelSource::Named(Some("ViT-B/16".into()));
        assert_eq!(
            app_start_in(&opts, named.clone(), false, false).source,
            named
        );
        let entry = Registry::builtin()
            .unwrap()
            .default_model()
            .unwrap()
            .clone();
        let dir = model_cache_dir(&entry, &opts);
        std::fs::create_dir_all(&dir).unwrap();
        for f in &entry.files {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let start = app_start_in(&opts, ModelSource::Named(None), false, false);
        assert_eq!(start.source, ModelSource::Named(None));
        assert_eq!(start.notice, None);
    }
}
