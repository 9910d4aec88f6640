//! The on-disk embedding cache: image embeddings keyed by model identity and file
//! content, text embeddings by model identity and prompt, so that classifying a folder
//! again with new labels does not encode its images again.
//!
//! Layout under the cache root (`CLIPSCOPE_CACHE`, or the platform cache folder):
//! `embeddings/<model key>/<2 hex digits>/<62 hex digits>`, one small file per
//! embedding: the floats in little-endian order, then the first 8 bytes of their
//! SHA-256 as a check. The model key is the SHA-256 of the weights, the configuration,
//! the preprocessing, the device kind and [`CACHE_VERSION`]; a content key is the
//! SHA-256 of the image file's bytes (or of the prompt). Entries are written to a
//! temporary file and renamed into place, so concurrent processes (shards on a shared
//! file system) never read a part; an entry that fails its check is treated as absent.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use super::engine::{Clip, Embedding, ModelFiles, WeightsSource};
use super::model::Precision;
use super::ClipError;

/// Part of every model key. Change it when a change to clipscope alters the embeddings
/// it computes for the same weights and file (preprocessing, model arithmetic), so that
/// entries written before are no longer read.
pub const CACHE_VERSION: &str = "clipscope-embeddings-1";

/// Bytes of the check that follows the floats in an entry.
const CHECK_LEN: usize = 8;

/// The SHA-256 of something embedded: an image file's bytes, or a prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContentKey([u8; 32]);

impl ContentKey {
    /// The key of an image file's bytes.
    pub fn of_image(bytes: &[u8]) -> Self {
        Self(tagged_digest(b"image", bytes))
    }

    /// The key of a prompt (the text after the template, as the text tower sees it).
    pub fn of_prompt(prompt: &str) -> Self {
        Self(tagged_digest(b"text", prompt.as_bytes()))
    }

    fn hex(&self) -> String {
        hex(&self.0)
    }
}

/// SHA-256 of `tag`, a zero byte, then `bytes`: image and text keys never collide.
fn tagged_digest(tag: &[u8], bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tag);
    h.update([0]);
    h.update(bytes);
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Embeddings of one model on disk.
#[derive(Clone, Debug)]
pub struct EmbeddingCache {
    dir: PathBuf,
    dim: usize,
}

impl EmbeddingCache {
    /// The cache of `clip`, loaded from `files`, under `cache_root/embeddings`. The
    /// weights are hashed once (about a second for ViT-B/32 on one core); the digest is
    /// remembered by path, size and modification time.
    pub fn open(cache_root: &Path, files: &ModelFiles, clip: &Clip) -> Result<Self, ClipError> {
        let root = cache_root.join("embeddings");
        let weights = match &files.weights {
            WeightsSource::File(path) => weights_digest(&root, path)?,
            WeightsSource::Static(bytes) => hex(&Sha256::digest(bytes)),
        };
        let config = files.config_json().as_bytes().to_vec();
        let preprocess = serde_json::to_vec(clip.preprocess_config())
            .map_err(|e| ClipError::Config(e.to_string()))?;
        let mut device = String::from(if clip.device().is_cpu() { "cpu" } else { "gpu" });
        // bf16 and f16 embeddings differ from f32's; f32's key is as it always was.
        if clip.precision() != Precision::F32 {
            device = format!("{device}-{}", clip.precision());
        }
        let mut h = Sha256::new();
        for part in [
            CACHE_VERSION.as_bytes(),
            device.as_bytes(),
            &preprocess,
            &config,
            weights.as_bytes(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let key: [u8; 32] = h.finalize().into();
        Ok(Self {
            dir: root.join(&hex(&key)[..32]),
            dim: clip.config().projection_dim,
        })
    }

    /// The folder that holds this model's entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, key: &ContentKey) -> PathBuf {
        let k = key.hex();
        self.dir.join(&k[..2]).join(&k[2..])
    }

    /// The embedding stored under `key`, if there is a whole one.
    pub fn get(&self, key: &ContentKey) -> Option<Embedding> {
        let bytes = std::fs::read(self.entry(key)).ok()?;
        let (floats, check) = bytes.split_at_checked(self.dim * 4)?;
        if check.len() != CHECK_LEN || check != &Sha256::digest(floats)[..CHECK_LEN] {
            return None;
        }
        Some(
            floats
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }

    /// Store an embedding under `key`. Not synced to disk: a cache entry lost in a
    /// power cut is computed again, and a damaged one fails its check.
    pub fn put(&self, key: &ContentKey, embedding: &[f32]) -> std::io::Result<()> {
        let mut bytes: Vec<u8> = embedding.iter().flat_map(|v| v.to_le_bytes()).collect();
        let check = Sha256::digest(&bytes);
        bytes.extend_from_slice(&check[..CHECK_LEN]);
        let path = self.entry(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        rename_into_place(&path, &bytes)
    }
}

/// Write `bytes` to a temporary file beside `path`, then rename it over `path`.
fn rename_into_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// What is remembered of a hashed weights file.
#[derive(serde::Serialize, serde::Deserialize, PartialEq)]
struct WeightsStamp {
    len: u64,
    modified_ns: u128,
    sha256: String,
}

/// The SHA-256 of a weights file, remembered under `root/weights/` by the file's
/// canonical path, size and modification time (hashing 600 MB on every start would
/// cost more than a small classification).
fn weights_digest(root: &Path, weights: &Path) -> Result<String, ClipError> {
    let io = |source| ClipError::Io {
        path: weights.to_path_buf(),
        source,
    };
    let canonical = weights.canonicalize().map_err(io)?;
    let meta = std::fs::metadata(&canonical).map_err(io)?;
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let stamp_path = root.join("weights").join(hex(&tagged_digest(
        b"path",
        canonical.as_os_str().as_encoded_bytes(),
    )));
    let remembered = std::fs::read(&stamp_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<WeightsStamp>(&b).ok())
        .filter(|s| s.len == meta.len() && s.modified_ns == modified_ns);
    if let Some(stamp) = remembered {
        return Ok(stamp.sha256);
    }
    let mut file = std::fs::File::open(&canonical).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let stamp = WeightsStamp {
        len: meta.len(),
        modified_ns,
        sha256: hex(&h.finalize()),
    };
    // Remembering is an optimisation: a read-only cache still works, only slower.
    let remember = || -> std::io::Result<()> {
        if let Some(parent) = stamp_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        rename_into_place(&stamp_path, &serde_json::to_vec(&stamp)?)
    };
    if let Err(e) = remember() {
        tracing::debug!("cannot remember the weights digest: {e}");
    }
    Ok(stamp.sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, dim: usize) -> EmbeddingCache {
        EmbeddingCache {
            dir: dir.to_path_buf(),
            dim,
        }
    }

    #[test]
    fn an_entry_reads_back_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 3);
        let key = ContentKey::of_image(b"pixels");
        assert_eq!(c.get(&key), None);
        let e = vec![0.1f32, -2.5e-8, f32::MIN_POSITIVE];
        c.put(&key, &e).unwrap();
        let got = c.get(&key).unwrap();
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            e.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_damaged_or_short_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 2);
        let key = ContentKey::of_prompt("a photo of a cat.");
        c.put(&key, &[1.0, 2.0]).unwrap();
        let path = c.entry(&key);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(c.get(&key), None);
        std::fs::write(&path, &bytes[..5]).unwrap();
        assert_eq!(c.get(&key), None);
    }

    #[test]
    fn image_and_prompt_keys_differ_for_the_same_bytes() {
        assert_ne!(ContentKey::of_image(b"cat"), ContentKey::of_prompt("cat"));
        assert_ne!(ContentKey::of_image(b"cat"), ContentKey::of_image(b"cat "));
    }

    #[test]
    fn the_weights_digest_is_remembered_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("model.safetensors");
        std::fs::write(&w, b"weights one").unwrap();
        let root = dir.path().join("cache");
        let first = weights_digest(&root, &w).unwrap();
        assert_eq!(first, hex(&Sha256::digest(b"weights one")));
        assert_eq!(weights_digest(&root, &w).unwrap(), first);
        std::fs::write(&w, b"weights two, longer").unwrap();
        assert_eq!(
            weights_digest(&root, &w).unwrap(),
            hex(&Sha256::digest(b"weights two, longer"))
        );
    }
}
