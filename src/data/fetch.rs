//! Downloading and unpacking data sets: Imagenette (fast.ai's 10-class ImageNet subset).
//!
//! The archive is downloaded with progress, its MD5 checked against the value that
//! torchvision's `Imagenette` dataset pins (or `CLIPSCOPE_DATA_MD5`, for a mirror that
//! serves another build), and unpacked (`imagenette2-160/train`, `.../val`, class
//! folders by WordNet id). What is already there is kept: an archive with the right
//! checksum is not downloaded again, a completely unpacked folder not unpacked again.

use std::io::Read;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::hub::{download_file, HubError};

/// Imagenette's sizes: short side 160, 320, or the full images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagenetteSize {
    /// `imagenette2-160.tgz`, about 99 MB.
    S160,
    /// `imagenette2-320.tgz`, about 342 MB.
    S320,
    /// `imagenette2.tgz`, about 1.56 GB.
    Full,
}

impl ImagenetteSize {
    /// Archive name and MD5 (torchvision's `datasets/imagenette.py`).
    pub fn archive(self) -> (&'static str, &'static str) {
        match self {
            Self::S160 => ("imagenette2-160.tgz", "e793b78cc4c9e9a4ccc0c1155377a412"),
            Self::S320 => ("imagenette2-320.tgz", "3df6f0d01a2c9592104656642f5e78a3"),
            Self::Full => ("imagenette2.tgz", "fe2fc210e6bb7c5664d602c3cd71e612"),
        }
    }
}

/// The MD5 an Imagenette archive must have: `CLIPSCOPE_DATA_MD5` if set, else the pinned
/// one.
pub fn imagenette_md5(size: ImagenetteSize) -> String {
    std::env::var("CLIPSCOPE_DATA_MD5")
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| size.archive().1.to_string())
}

/// Where Imagenette is downloaded from: `CLIPSCOPE_DATA_URL` or fast.ai's bucket.
pub fn imagenette_base_url() -> String {
    crate::util::env_url(
        "CLIPSCOPE_DATA_URL",
        "https://s3.amazonaws.com/fast-ai-imageclas",
    )
}

/// The URL of an Imagenette archive.
pub fn imagenette_url(size: ImagenetteSize) -> String {
    format!("{}/{}", imagenette_base_url(), size.archive().0)
}

/// What can go wrong fetching data.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The download failed.
    #[error(transparent)]
    Download(#[from] HubError),
    /// The archive's checksum is wrong.
    #[error("{path}: MD5 {got} does not match the expected {want}; the file was removed")]
    Checksum {
        /// The archive.
        path: PathBuf,
        /// Its MD5.
        got: String,
        /// The pinned MD5.
        want: String,
    },
    /// Reading, writing or unpacking failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// MD5 of a file, as lower-case hex.
pub fn md5_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The folder an archive named `name` unpacks into, inside `dir`.
pub fn unpacked_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(name.trim_end_matches(".tgz").trim_end_matches(".tar.gz"))
}

/// The marker present while an archive is being unpacked: a folder beside it is then
/// incomplete (the unpacking was interrupted) and is unpacked again.
fn unpacking_marker(tree: &Path) -> PathBuf {
    let name = tree
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    tree.with_file_name(format!(".{name}.unpacking"))
}

/// Whether `tree` holds a completely unpacked archive.
pub fn is_unpacked(tree: &Path) -> bool {
    tree.is_dir() && !unpacking_marker(tree).exists()
}

/// Download `url` into `dir`, check its MD5 and unpack the `.tgz` there. An archive
/// already present with the right checksum is not downloaded again, and an archive
/// already unpacked completely is neither checked nor unpacked again.
pub fn fetch_archive(
    url: &str,
    md5: &str,
    dir: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf, FetchError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Io { path, source }
    };
    let name = url.rsplit('/').next().unwrap_or("archive.tgz");
    let tree = unpacked_dir(dir, name);
    if is_unpacked(&tree) {
        return Ok(tree);
    }
    let created = !dir.exists();
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let archive = dir.join(name);
    let have = archive.is_file() && md5_file(&archive).map_err(io(&archive))? == md5;
    if !have {
        if let Err(e) = download_file(url, &archive, progress) {
            if created {
                // Only if still empty: a partial download stays to be resumed.
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e.into());
        }
        let got = md5_file(&archive).map_err(io(&archive))?;
        if got != md5 {
            let _ = std::fs::remove_file(&archive);
            return Err(FetchError::Checksum {
                path: archive,
                got,
                want: md5.to_string(),
            });
        }
    }
    let marker = unpacking_marker(&tree);
    std::fs::write(&marker, b"").map_err(io(&marker))?;
    let file = std::fs::File::open(&archive).map_err(io(&archive))?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(dir)
        .map_err(io(&archive))?;
    std::fs::remove_file(&marker).map_err(io(&marker))?;
    Ok(tree)
}

/// Fetch Imagenette into `dir`; returns the unpacked folder (with `train/` and `val/`).
pub fn fetch_imagenette(
    size: ImagenetteSize,
    dir: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf, FetchError> {
    fetch_archive(&imagenette_url(size), &imagenette_md5(size), dir, progress)
}
