//! `.npy` files of embeddings (rows of f32 or f16) that grow as rows come and are cut
//! back to whole rows after a crash. Written here rather than with an npy crate because
//! the file is streamed: its header, padded to a fixed 128 bytes, is rewritten in place
//! with the row count after each batch, which NumPy's format allows (the header is a
//! Python literal padded with spaces) and which the crates do not offer.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{io_error, ScaleError};

/// Bytes before the data: magic, version, header length, the header and its padding.
const HEADER_LEN: usize = 128;
const MAGIC: &[u8] = b"\x93NUMPY\x01\x00";

/// How embeddings are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats, as computed.
    F32,
    /// 16-bit floats (IEEE half), half the size; rounding error about 5e-4 relative.
    F16,
}

impl Precision {
    fn descr(self) -> &'static str {
        match self {
            Self::F32 => "<f4",
            Self::F16 => "<f2",
        }
    }

    fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }

    fn encode(self, row: &[f32], out: &mut Vec<u8>) {
        match self {
            Self::F32 => out.extend(row.iter().flat_map(|v| v.to_le_bytes())),
            Self::F16 => out.extend(
                row.iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes()),
            ),
        }
    }
}

/// What the header of an `.npy` written here says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// Element type.
    pub precision: Precision,
    /// Rows (the header's count; the file may hold a torn row more).
    pub rows: u64,
    /// Floats per row.
    pub dim: usize,
}

impl NpyHeader {
    fn row_bytes(&self) -> u64 {
        (self.dim * self.precision.bytes()) as u64
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let dict = format!(
            "{{'descr': '{}', 'fortran_order': False, 'shape': ({}, {}), }}",
            self.precision.descr(),
            self.rows,
            self.dim
        );
        let mut out = [b' '; HEADER_LEN];
        out[..MAGIC.len()].copy_from_slice(MAGIC);
        let text_len = (HEADER_LEN - MAGIC.len() - 2) as u16;
        out[MAGIC.len()..MAGIC.len() + 2].copy_from_slice(&text_len.to_le_bytes());
        let start = MAGIC.len() + 2;
        out[start..start + dict.len()].copy_from_slice(dict.as_bytes());
        out[HEADER_LEN - 1] = b'\n';
        out
    }

    /// Read the header of an `.npy` written by [`NpyRows`].
    pub fn read(path: &Path) -> Result<Self, ScaleError> {
        let mut head = [0u8; HEADER_LEN];
        File::open(path)
            .and_then(|mut f| f.read_exact(&mut head))
            .map_err(io_error(path))?;
        Self::parse(&head).ok_or_else(|| ScaleError::Invalid {
            path: path.to_path_buf(),
            message: "not an embeddings file written by clipscope (an .npy with a \
                      128-byte header of 2-D little-endian f4 or f2)"
                .into(),
        })
    }

    fn parse(head: &[u8; HEADER_LEN]) -> Option<Self> {
        if !head.starts_with(MAGIC) {
            return None;
        }
        let text = std::str::from_utf8(&head[MAGIC.len() + 2..]).ok()?;
        let precision = if text.contains("'descr': '<f4'") {
            Precision::F32
        } else if text.contains("'descr': '<f2'") {
            Precision::F16
        } else {
            return None;
        };
        let shape = text.split("'shape': (").nth(1)?.split(')').next()?;
        let (rows, dim) = shape.split_once(',')?;
        Some(Self {
            precision,
            rows: rows.trim().parse().ok()?,
            dim: dim.trim().parse().ok()?,
        })
    }
}

/// Rows appended to an `.npy` file.
pub struct NpyRows {
    file: File,
    path: PathBuf,
    header: NpyHeader,
    pending: Vec<u8>,
    pending_rows: u64,
}

impl NpyRows {
    /// Size of a file with no rows.
    pub const EMPTY_LEN: u64 = HEADER_LEN as u64;

    /// Create the file (or empty it) with no rows.
    pub fn create(path: &Path, dim: usize, precision: Precision) -> Result<Self, ScaleError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io_error(path))?;
        let mut rows = Self::new(
            file,
            path,
            NpyHeader {
                precision,
                rows: 0,
                dim,
            },
        );
        rows.write_header()?;
        Ok(rows)
    }

    fn new(file: File, path: &Path, header: NpyHeader) -> Self {
        Self {
            file,
            path: path.to_path_buf(),
            header,
            pending: Vec::new(),
            pending_rows: 0,
        }
    }

    /// Open an existing file to append to, keeping the whole rows that are there (at
    /// most `max_rows`) and cutting off the rest. It must hold `dim` floats a row in
    /// `precision`.
    pub fn recover(
        path: &Path,
        dim: usize,
        precision: Precision,
        max_rows: Option<u64>,
    ) -> Result<Self, ScaleError> {
        let header = NpyHeader::read(path)?;
        if header.dim != dim || header.precision != precision {
            return Err(ScaleError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "holds {} floats a row as {:?}, not {dim} as {precision:?}",
                    header.dim, header.precision
                ),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        let len = file.metadata().map_err(io_error(path))?.len();
        let on_disk = len.saturating_sub(HEADER_LEN as u64) / header.row_bytes().max(1);
        let rows = max_rows.map_or(on_disk, |m| m.min(on_disk));
        file.set_len(HEADER_LEN as u64 + rows * header.row_bytes())
            .map_err(io_error(path))?;
        let mut out = Self::new(file, path, NpyHeader { rows, ..header });
        out.write_header()?;
        Ok(out)
    }

    /// Rows on disk.
    pub fn rows(&self) -> u64 {
        self.header.rows
    }

    /// Queue one row (it must have `dim` floats).
    pub fn push(&mut self, row: &[f32]) -> Result<(), ScaleError> {
        if row.len() != self.header.dim {
            return Err(ScaleError::Invalid {
                path: self.path.clone(),
                message: format!(
                    "a row of {} floats, expected {}",
                    row.len(),
                    self.header.dim
                ),
            });
        }
        self.header.precision.encode(row, &mut self.pending);
        self.pending_rows += 1;
        Ok(())
    }

    /// Append the queued rows, then count them in the header.
    pub fn flush(&mut self) -> Result<(), ScaleError> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let end = HEADER_LEN as u64 + self.header.rows * self.header.row_bytes();
        self.file
            .seek(SeekFrom::Start(end))
            .and_then(|_| self.file.write_all(&self.pending))
            .map_err(io_error(&self.path))?;
        self.header.rows += self.pending_rows;
        self.pending.clear();
        self.pending_rows = 0;
        self.write_header()
    }

    /// Append the queued rows and make the file durable.
    pub fn sync(&mut self) -> Result<(), ScaleError> {
        self.flush()?;
        self.file.sync_data().map_err(io_error(&self.path))
    }

    fn write_header(&mut self) -> Result<(), ScaleError> {
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.write_all(&self.header.encode()))
            .map_err(io_error(&self.path))
    }
}

/// Append the data rows of `from` (an `.npy` written here) to `to`.
pub(super) fn copy_rows(
    from: &Path,
    header: &NpyHeader,
    to: &mut NpyRows,
) -> Result<(), ScaleError> {
    to.flush()?;
    let mut src = File::open(from).map_err(io_error(from))?;
    src.seek(SeekFrom::Start(HEADER_LEN as u64))
        .map_err(io_error(from))?;
    let bytes = header.rows * header.row_bytes();
    let end = HEADER_LEN as u64 + to.header.rows * to.header.row_bytes();
    to.file
        .seek(SeekFrom::Start(end))
        .map_err(io_error(&to.path))?;
    let copied = std::io::copy(&mut src.take(bytes), &mut to.file).map_err(io_error(&to.path))?;
    if copied != bytes {
        return Err(ScaleError::Invalid {
            path: from.to_path_buf(),
            message: format!("holds fewer rows than its header's {}", header.rows),
        });
    }
    to.header.rows += header.rows;
    to.write_header()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_stream_in_and_a_torn_row_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.npy");
        let mut npy = NpyRows::create(&path, 3, Precision::F32).unwrap();
        npy.push(&[1.0, 2.0, 3.0]).unwrap();
        npy.flush().unwrap();
        npy.push(&[4.0, 5.0, 6.0]).unwrap();
        npy.sync().unwrap();
        assert!(npy.push(&[1.0]).is_err());
        drop(npy);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 128 + 24);
        let text = std::str::from_utf8(&bytes[10..128]).unwrap();
        assert!(text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(text.ends_with(" \n"));
        assert_eq!(&bytes[128 + 12..128 + 16], &4.0f32.to_le_bytes());

        // A kill mid-write: half a row more on disk than the header counts.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0u8; 6]).unwrap();
        drop(f);
        let npy = NpyRows::recover(&path, 3, Precision::F32, None).unwrap();
        assert_eq!(npy.rows(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 128 + 24);
        drop(npy);
        let npy = NpyRows::recover(&path, 3, Precision::F32, Some(1)).unwrap();
        assert_eq!(npy.rows(), 1);
        assert_eq!(NpyHeader::read(&path).unwrap().rows, 1);
        assert!(NpyRows::recover(&path, 4, Precision::F32, None).is_err());
        assert!(NpyRows::recover(&path, 3, Precision::F16, None).is_err());
    }

    #[test]
    fn half_precision_rows_round_to_nearest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.npy");
        let mut npy = NpyRows::create(&path, 2, Precision::F16).unwrap();
        npy.push(&[0.1, -1.0]).unwrap();
        npy.sync().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 128 + 4);
        let h = NpyHeader::read(&path).unwrap();
        assert_eq!((h.precision, h.rows, h.dim), (Precision::F16, 1, 2));
        let v = half::f16::from_le_bytes([bytes[128], bytes[129]]).to_f32();
        assert!((v - 0.1).abs() < 1e-4);
    }
}
