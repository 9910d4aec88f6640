//! Prepared weights: the dense layers' weights as the CPU multiplies by them (f32 in
//! panels of 32 output columns, [`super::panels`]), kept in a file under the cache folder and memory-mapped
//! by later loads.
//!
//! Building a model from `model.safetensors` reads every dense weight and transposes it
//! into panels in fresh memory: for ViT-B/32 about 490 MB, most of a 0.4 s load, and the kernel's
//! zeroing of fresh pages alone can take a second on a busy virtual machine. Mapped
//! prepared weights are the page cache's own pages: nothing is read, copied or zeroed,
//! and the weights are resident once, as file pages shared by every process that maps
//! them.
//!
//! A store is one safetensors file, `<dir>/<32 hex digits>.safetensors`, named by the
//! SHA-256 of the weights file's canonical path; its metadata records the source's size
//! and modification time and [`FORMAT`]. A file whose record does not match, or that
//! cannot be read, is ignored and replaced after the load. Written to a temporary file
//! and renamed into place, so a concurrent load never maps a part.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use memmap2::Mmap;
use safetensors::Dtype;
use sha2::{Digest, Sha256};

use super::ClipError;

/// Recorded in every store; change it when the layout of a prepared weight or of the
/// store changes (a store of another format is rewritten once).
pub const FORMAT: &str = "clipscope-prepared-3";

/// Where a store's values begin, and each whole-line tensor's after them: a cache-line
/// boundary, so that no vector load of a panel's row (each 64-byte half: one AVX-512
/// load, two AVX2 loads) spans two lines. safetensors pads its header to 8 bytes only,
/// which started the values a multiple of 8 bytes into a line (8 in the store measured);
/// on the line, with the AVX2 kernel fetching a row's other half ahead, the image
/// encoder at batch 1 took 3% less time on an Intel Xeon kept to AVX2 (aligned rows
/// without that prefetch took 5% more).
const DATA_ALIGN: usize = 64;

/// Weights files below this size are not prepared: they load in milliseconds.
pub const MIN_SOURCE_BYTES: u64 = 32 << 20;

/// A mapped f32 matrix of a prepared-weights file: a dense layer's `(inputs, outputs)`
/// weight in panels, or the token embedding's row-major `(vocabulary, width)` table.
#[derive(Clone)]
pub struct MappedMatrix {
    map: Arc<Mmap>,
    /// Offset of the first value, in bytes, checked to be f32-aligned.
    start: usize,
    /// Values stored: `inputs × outputs`, or whole panels' worth.
    len: usize,
    inputs: usize,
    outputs: usize,
}

impl MappedMatrix {
    /// `(rows, columns)`: `(inputs, outputs)` for a dense layer.
    pub fn dims(&self) -> (usize, usize) {
        (self.inputs, self.outputs)
    }

    /// The values as stored: row-major, or panel by panel.
    pub fn values(&self) -> &[f32] {
        let bytes = &self.map[self.start..][..self.len * 4];
        // SAFETY: `start` was checked to be 4-byte aligned in a page-aligned map and the
        // range to lie in it when the matrix was made; any bits are a valid f32.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), self.len) }
    }
}

/// The source a store stands for: its size and modification time.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified_ns: u128,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            len: meta.len(),
            modified_ns,
        })
    }

    fn metadata(self) -> HashMap<String, String> {
        HashMap::from([
            ("format".into(), FORMAT.into()),
            ("source_len".into(), self.len.to_string()),
            ("source_modified_ns".into(), self.modified_ns.to_string()),
        ])
    }

    fn matches(self, metadata: &HashMap<String, String>) -> bool {
        metadata.get("format").map(String::as_str) == Some(FORMAT)
            && metadata.get("source_len") == Some(&self.len.to_string())
            && metadata.get("source_modified_ns") == Some(&self.modified_ns.to_string())
    }
}

/// The prepared weights of one weights file: mapped when a matching store exists, and
/// the weights the load had to make itself, to save for next time.
pub struct PreparedStore {
    path: PathBuf,
    stamp: Stamp,
    mapped: Option<Mapped>,
    made: Mutex<Vec<Made>>,
}

impl PreparedStore {
    /// The store of `weights` under `dir`, mapped if a matching one is there. A missing,
    /// stale or unreadable store is no error: the load makes the weights and
    /// [`PreparedStore::save`] replaces it.
    pub fn open(dir: &Path, weights: &Path) -> Result<Self, ClipError> {
        let io = |source| ClipError::Io {
            path: weights.to_path_buf(),
            source,
        };
        let path = store_path(dir, weights).map_err(io)?;
        let stamp = Stamp::of(weights).map_err(io)?;
        let mapped = map_store(&path, stamp);
        if mapped.is_none() && path.exists() {
            tracing::debug!(
                "prepared weights {} are stale or unreadable",
                path.display()
            );
        }
        Ok(Self {
            path,
            stamp,
            mapped,
            made: Mutex::new(Vec::new()),
        })
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a matching store was mapped.
    pub fn is_mapped(&self) -> bool {
        self.mapped.is_some()
    }

    /// Tensor `name` as a row-major `(rows, cols)` matrix, if the store has one of that
    /// shape.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Option<MappedMatrix> {
        self.find(name, &[rows, cols], (rows, cols))
    }

    /// Layer `name`'s `(inputs, outputs)` weight in panels, if the store has one of
    /// that shape.
    pub fn panels(&self, name: &str, inputs: usize, outputs: usize) -> Option<MappedMatrix> {
        self.find(name, &panel_shape(inputs, outputs), (inputs, outputs))
    }

    fn find(
        &self,
        name: &str,
        want: &[usize],
        (inputs, outputs): (usize, usize),
    ) -> Option<MappedMatrix> {
        let mapped = self.mapped.as_ref()?;
        let (start, shape) = mapped.index.get(name)?;
        (shape.as_slice() == want).then(|| MappedMatrix {
            map: Arc::clone(&mapped.map),
            start: *start,
            len: want.iter().product(),
            inputs,
            outputs,
        })
    }

    /// Remember a row-major `(rows, cols)` matrix the load made, to save.
    pub fn record(&self, name: String, values: Arc<Vec<f32>>, rows: usize, cols: usize) {
        self.remember(name, values, vec![rows, cols]);
    }

    /// Remember an `(inputs, outputs)` weight in panels the load made, to save.
    pub fn record_panels(
        &self,
        name: String,
        values: Arc<Vec<f32>>,
        inputs: usize,
        outputs: usize,
    ) {
        self.remember(name, values, panel_shape(inputs, outputs).to_vec());
    }

    fn remember(&self, name: String, values: Arc<Vec<f32>>, shape: Vec<usize>) {
        debug_assert_eq!(values.len(), shape.iter().product::<usize>());
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        made.push(Made {
            name,
            values,
            shape,
        });
    }

    /// Write the weights the load made as the store when none matched, returning its
    /// size in bytes; `None` when there was nothing to write.
    pub fn save(&self) -> Result<Option<u64>, ClipError> {
        if self.mapped.is_some() || cfg!(target_endian = "big") {
            return Ok(None);
        }
        let made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if made.is_empty() {
            return Ok(None);
        }
        let failed = |message: String| ClipError::Weights {
            path: self.path.clone(),
            message,
        };
        let io = |source| ClipError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        let written = write_store(&tmp, &made, self.stamp.metadata())
            .map_err(|e| failed(format!("writing prepared weights: {e}")))
            .and_then(|()| std::fs::rename(&tmp, &self.path).map_err(io));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        if let Some(dir) = self.path.parent() {
            crate::util::remove_orphaned_temporaries(dir);
        }
        Ok(Some(std::fs::metadata(&self.path).map_err(io)?.len()))
    }
}

/// Write `made` as a safetensors file at `path` whose values start on a [`DATA_ALIGN`]
/// boundary, as do those of every tensor whose predecessors fill whole lines.
fn write_store(
    path: &Path,
    made: &[Made],
    metadata: HashMap<String, String>,
) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = |m: &Made| -> &[u8] {
        // SAFETY: the bytes of live f32 values, little-endian on this machine (stores
        // are not written on big-endian ones).
        unsafe { std::slice::from_raw_parts(m.values.as_ptr().cast::<u8>(), m.values.len() * 4) }
    };
    if let Some(m) = made
        .iter()
        .find(|m| m.values.len() != m.shape.iter().product::<usize>())
    {
        // Written, such a store would be refused by every load and rewritten by each.
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: {} values for shape {:?}",
                m.name,
                m.values.len(),
                m.shape
            ),
        ));
    }
    // Tensors of whole lines first (every panel weight is), so that each starts on one.
    let mut order: Vec<&Made> = made.iter().collect();
    order.sort_by_key(|m| bytes(m).len() % DATA_ALIGN != 0);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    let mut offset = 0;
    for m in &order {
        let end = offset + bytes(m).len();
        let entry =
            serde_json::json!({"dtype": "F32", "shape": m.shape, "data_offsets": [offset, end]});
        header.insert(m.name.clone(), entry);
        offset = end;
    }
    let mut header = serde_json::to_string(&header)?.into_bytes();
    // Padded with spaces, as safetensors pads its own headers.
    header.resize((8 + header.len()).next_multiple_of(DATA_ALIGN) - 8, b' ');
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    for m in order {
        out.write_all(bytes(m))?;
    }
    out.flush()
}

/// A weight the load made, to save.
struct Made {
    name: String,
    values: Arc<Vec<f32>>,
    shape: Vec<usize>,
}

/// How a weight in panels is stored: `[panels, inputs, 32]`.
fn panel_shape(inputs: usize, outputs: usize) -> [usize; 3] {
    [
        outputs.div_ceil(super::panels::PANEL),
        inputs,
        super::panels::PANEL,
    ]
}

/// Where the store of `weights` lives under `dir`: named by the SHA-256 of the weights
/// file's canonical path.
pub fn store_path(dir: &Path, weights: &Path) -> std::io::Result<PathBuf> {
    let canonical = weights.canonicalize()?;
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    Ok(dir.join(format!("{name}.safetensors")))
}

/// The store at `path` mapped with its index of aligned f32 tensors, if it exists, is
/// whole and stands for `stamp`.
fn map_store(path: &Path, stamp: Stamp) -> Option<Mapped> {
    // Stores hold little-endian values, as safetensors does; reading them natively
    // elsewhere would be wrong (and none is ever written there).
    if cfg!(target_endian = "big") {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: stores are only ever renamed into place whole, never written in place; one
    // truncated by hand while mapped would fault, as any mapped file would.
    let map = unsafe { Mmap::map(&file) }.ok()?;
    let (header, metadata) = safetensors::SafeTensors::read_metadata(&map).ok()?;
    if !metadata
        .metadata()
        .as_ref()
        .is_some_and(|m| stamp.matches(m))
    {
        return None;
    }
    let data_start = 8 + header;
    let mut index = HashMap::new();
    for (name, info) in metadata.tensors() {
        let start = data_start + info.data_offsets.0;
        if info.dtype != Dtype::F32 || start % 4 != 0 {
            return None;
        }
        index.insert(name, (start, info.shape.clone()));
    }
    Some(Mapped {
        map: Arc::new(map),
        index,
    })
}

/// A mapped store and where each tensor's values start, with its shape.
struct Mapped {
    map: Arc<Mmap>,
    index: HashMap<String, (usize, Vec<usize>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made(name: &str, shape: &[usize], first: f32) -> Made {
        let n = shape.iter().product::<usize>();
        Made {
            name: name.into(),
            values: Arc::new((0..n).map(|i| first + i as f32).collect()),
            shape: shape.to_vec(),
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn a_written_store_is_safetensors_with_values_on_cache_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.safetensors");
        // A tensor of 3 floats between two of whole lines: written after them.
        let tensors = [
            made("a", &[2, 3, 32], 1.0),
            made("odd", &[3], -5.0),
            made("b", &[16, 4], 100.0),
        ];
        let meta = HashMap::from([("format".to_string(), FORMAT.to_string())]);
        write_store(&path, &tensors, meta).unwrap();

        let bytes = std::fs::read(&path).unwrap();
        let (header, info) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!((8 + header) % DATA_ALIGN, 0, "values start on a line");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for m in &tensors {
            let view = st.tensor(&m.name).unwrap();
            assert_eq!(view.dtype(), Dtype::F32);
            assert_eq!(view.shape(), m.shape.as_slice());
            let got: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(&got, m.values.as_ref());
        }
        for name in ["a", "b"] {
            let start = 8 + header + info.tensors()[name].data_offsets.0;
            assert_eq!(start % DATA_ALIGN, 0, "{name} starts on a line");
        }
        let meta = info.metadata().clone().unwrap();
        assert_eq!(meta["format"], FORMAT);
    }

    #[test]
    fn a_store_of_another_format_is_not_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("model.safetensors");
        std::fs::write(&weights, b"weights").unwrap();
        let store = store_path(dir.path(), &weights).unwrap();
        let stamp = Stamp::of(&weights).unwrap();
        let tensors = [made("a", &[2, 3, 32], 1.0)];
        let mut meta = stamp.metadata();
        meta.insert("format".into(), "clipscope-prepared-2".into());
        write_store(&store, &tensors, meta).unwrap();
        assert!(!PreparedStore::open(dir.path(), &weights)
            .unwrap()
            .is_mapped());

        write_store(&store, &tensors, stamp.metadata()).unwrap();
        let opened = PreparedStore::open(dir.path(), &weights).unwrap();
        assert!(
            opened.is_mapped(),
            "the same store in this format is mapped"
        );
        assert!(opened.panels("a", 3, 64).is_some());
    }

    #[test]
    fn a_tensor_whose_values_do_not_fill_its_shape_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.safetensors");
        let mut wrong = made("a", &[2, 3], 1.0);
        wrong.shape = vec![2, 4];
        let err = write_store(&path, &[wrong], HashMap::new()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
