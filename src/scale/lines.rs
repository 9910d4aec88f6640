//! JSON-lines files that grow by whole lines and are cut back to whole lines after a
//! crash.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_error, ScaleError};

/// An append-only file of JSON objects, one a line. Lines are buffered and written by
/// [`LineLog::flush`], so a crash loses at most the unflushed lines and may leave one
/// torn line at the end, which [`LineLog::recover`] cuts off.
pub struct LineLog {
    file: File,
    path: PathBuf,
    pending: Vec<u8>,
}

/// What a recovered line says about its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineSummary {
    /// The input's name (`image`).
    pub image: String,
    /// Whether the line reports an error for it.
    pub failed: bool,
}

#[derive(Deserialize)]
struct Seen {
    image: String,
    error: Option<serde::de::IgnoredAny>,
}

impl LineLog {
    /// Create the file, or empty it.
    pub fn create(path: &Path) -> Result<Self, ScaleError> {
        let file = File::create(path).map_err(io_error(path))?;
        Ok(Self::at_end(file, path))
    }

    fn at_end(file: File, path: &Path) -> Self {
        Self {
            file,
            path: path.to_path_buf(),
            pending: Vec::new(),
        }
    }

    /// Open an existing file to append to, keeping at most `max_lines` whole lines (all
    /// when `None`) and cutting off the rest, a torn last line included. Returns the
    /// kept lines' summaries. A damaged line before the last is an error, not a tear.
    pub fn recover(
        path: &Path,
        max_lines: Option<usize>,
    ) -> Result<(Self, Vec<LineSummary>), ScaleError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(io_error(path))?;
        let (kept, keep_bytes) = whole_lines(&file, path, max_lines)?;
        file.set_len(keep_bytes).map_err(io_error(path))?;
        file.seek(std::io::SeekFrom::End(0))
            .map_err(io_error(path))?;
        Ok((Self::at_end(file, path), kept))
    }

    /// Queue one object as a line.
    pub fn push<T: Serialize>(&mut self, value: &T) -> Result<(), ScaleError> {
        serde_json::to_writer(&mut self.pending, value).map_err(|e| ScaleError::Invalid {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        self.pending.push(b'\n');
        Ok(())
    }

    /// Queue a line that is already JSON (without its newline).
    pub(super) fn push_raw(&mut self, line: &str) {
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
    }

    /// Write the queued lines (one `write` call: a kill leaves at most a torn tail).
    pub fn flush(&mut self) -> Result<(), ScaleError> {
        if !self.pending.is_empty() {
            self.file
                .write_all(&self.pending)
                .map_err(io_error(&self.path))?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Write the queued lines and make the file durable.
    pub fn sync(&mut self) -> Result<(), ScaleError> {
        self.flush()?;
        self.file.sync_data().map_err(io_error(&self.path))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Read whole lines from the start: the summaries of at most `max_lines` of them and
/// the byte length they span.
fn whole_lines(
    file: &File,
    path: &Path,
    max_lines: Option<usize>,
) -> Result<(Vec<LineSummary>, u64), ScaleError> {
    let mut reader = BufReader::new(file);
    let mut kept = Vec::new();
    let mut bytes = 0u64;
    let mut line = Vec::new();
    let mut line_no = 0;
    loop {
        if max_lines.is_some_and(|m| kept.len() >= m) {
            break;
        }
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(io_error(path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break; // the end, or a torn last line
        }
        line_no += 1;
        match serde_json::from_slice::<Seen>(&line) {
            Ok(seen) => kept.push(LineSummary {
                image: seen.image,
                failed: seen.error.is_some(),
            }),
            Err(e) => {
                // Damage on the last line is a tear (a crash mid-write after a power
                // cut can leave it whole but garbled); anywhere else, not ours to cut.
                let at_end = reader.fill_buf().map_err(io_error(path))?.is_empty();
                if at_end {
                    break;
                }
                return Err(ScaleError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "line {line_no} is not a result ({e}); the file is damaged: \
                         remove it to start the shard again"
                    ),
                });
            }
        }
        bytes += n as u64;
    }
    Ok((kept, bytes))
}

/// Count and check the lines of a finished file, without changing it.
pub(super) fn read_all(path: &Path) -> Result<Vec<(LineSummary, String)>, ScaleError> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_error(path))?;
        let seen: Seen = serde_json::from_str(&line).map_err(|e| ScaleError::Invalid {
            path: path.to_path_buf(),
            message: format!("line {} is not a result: {e}", i + 1),
        })?;
        out.push((
            LineSummary {
                image: seen.image,
                failed: seen.error.is_some(),
            },
            line,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_lines(path: &Path, images: &[&str]) {
        let mut log = LineLog::create(path).unwrap();
        for im in images {
            log.push(&json!({"image": im, "predictions": []})).unwrap();
        }
        log.sync().unwrap();
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        write_lines(&path, &["a", "b"]);
        let whole = std::fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"image": "c", "predic"#).unwrap();
        drop(f);
        let (mut log, kept) = LineLog::recover(&path, None).unwrap();
        assert_eq!(
            kept.iter().map(|s| s.image.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        log.push(&json!({"image": "c", "error": "c: cannot read"}))
            .unwrap();
        log.sync().unwrap();
        let all = read_all(&path).unwrap();
        assert_eq!(all.len(), 3);
        assert!(all[2].0.failed && !all[0].0.failed);
    }

    #[test]
    fn a_garbled_last_line_is_a_tear_but_one_before_it_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        write_lines(&path, &["a"]);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"\0\0\0\n").unwrap();
        drop(f);
        let (_, kept) = LineLog::recover(&path, None).unwrap();
        assert_eq!(kept.len(), 1);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"garbage\n{\"image\": \"b\"}\n").unwrap();
        drop(f);
        let err = LineLog::recover(&path, None).err().unwrap().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn recovery_can_keep_fewer_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        write_lines(&path, &["a", "b", "c"]);
        let (_, kept) = LineLog::recover(&path, Some(1)).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(read_all(&path).unwrap().len(), 1);
    }
}
