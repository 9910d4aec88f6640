//! A shard's outputs on disk: `classify --output FILE.jsonl` (one result a line) and
//! `embed --output DIR` (an `.npy` of rows, a JSON-lines table of their images, and the
//! failed inputs), each with its manifest, flushed in batches and resumable.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::lines::{LineLog, LineSummary};
use super::npy::{NpyHeader, NpyRows, Precision};
use super::{Manifest, ScaleError, Shard};
use crate::clip::IMAGE_BATCH;

/// Results written between two flushes: one batch of the model.
const FLUSH_EVERY: usize = IMAGE_BATCH;
/// Shortest time between two syncs to disk (a kill loses nothing flushed; a power cut
/// loses at most this much).
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What a job does with results that an earlier run left in its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Earlier {
    /// Refuse to start, so that a rerun without a flag cannot wipe out hours of
    /// results (the default, as `train` does).
    Refuse,
    /// Keep them and process only the inputs without one (`--resume`).
    Resume,
    /// Start over (`--force`).
    Replace,
}

impl Earlier {
    /// From the command line's `--resume` and `--force` (which clap keeps apart).
    pub fn from_flags(resume: bool, force: bool) -> Self {
        match (resume, force) {
            (true, _) => Self::Resume,
            (false, true) => Self::Replace,
            (false, false) => Self::Refuse,
        }
    }
}

/// What an output already held when it was opened.
#[derive(Debug, Default)]
pub struct Resumed {
    /// Names of the inputs with a result (or an error) on disk.
    pub done: HashSet<String>,
    /// How many of those are errors.
    pub failed: usize,
}

impl Resumed {
    fn from_lines(lines: &[LineSummary]) -> Self {
        Self {
            done: lines.iter().map(|l| l.image.clone()).collect(),
            failed: lines.iter().filter(|l| l.failed).count(),
        }
    }

    fn add(&mut self, other: Resumed) {
        self.done.extend(other.done);
        self.failed += other.failed;
    }
}

/// Results and failures in a finished output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// Inputs with a line (results and errors).
    pub items: usize,
    /// Of which errors.
    pub failed: usize,
}

/// Refuse an output whose `data` files (each with its size when empty) hold results of
/// an earlier run, unless `earlier` says to resume or replace them; without its manifest
/// the file is not a clipscope output at all, and the message says so. Files emptied by
/// a run killed before its first result are no loss.
fn refuse_earlier(
    data: &[(&Path, u64)],
    manifest_path: &Path,
    earlier: Earlier,
) -> Result<(), ScaleError> {
    if earlier != Earlier::Refuse {
        return Ok(());
    }
    let Some((kept, _)) = data.iter().find(|d| holds_results(d)) else {
        return Ok(());
    };
    let message = if manifest_path.exists() {
        "holds results of an earlier run; give --resume to continue it, --force to start \
         over, or another --output"
            .to_string()
    } else {
        format!(
            "exists and is not a clipscope output (it has no manifest {}); give --force to \
             replace it, or another --output",
            manifest_path.display()
        )
    };
    Err(ScaleError::Invalid {
        path: kept.to_path_buf(),
        message,
    })
}

/// Whether the file `path` is longer than `empty` bytes (a folder in its place holds no
/// results: creating the file there fails with its own error).
fn holds_results((path, empty): &(&Path, u64)) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > *empty)
}

/// Decide between resuming and starting over, checking that an output being resumed is
/// this job's and that one holding results is not started over unasked. `data` are the
/// output's files, each with its size when empty; returns whether to resume. When
/// starting over, the caller empties the files and then writes the manifest, so that a
/// manifest never vouches for another job's lines.
fn resuming(
    manifest_path: &Path,
    data: &[(&Path, u64)],
    expected: &Manifest,
    earlier: Earlier,
) -> Result<bool, ScaleError> {
    refuse_earlier(data, manifest_path, earlier)?;
    let resume = earlier == Earlier::Resume;
    if resume && manifest_path.exists() {
        let found = Manifest::read(manifest_path)?;
        let other_job = found.job_difference(expected).or_else(|| {
            (found.shard != expected.shard)
                .then(|| format!("it is shard {}, not {}", found.shard(), expected.shard()))
        });
        if let Some(why) = other_job {
            return Err(ScaleError::Invalid {
                path: manifest_path.to_path_buf(),
                message: format!(
                    "another job's output ({why}); remove it, or give --force instead of \
                     --resume to start over"
                ),
            });
        }
        return Ok(true);
    }
    if resume {
        if let Some((orphan, _)) = data.iter().find(|d| holds_results(d)) {
            return Err(ScaleError::Invalid {
                path: orphan.to_path_buf(),
                message: format!(
                    "exists without its manifest {}, so it cannot be resumed; remove it, \
                     or give --force instead of --resume to start over",
                    manifest_path.display()
                ),
            });
        }
    }
    Ok(false)
}

/// Flushes after every [`FLUSH_EVERY`] results and syncs at most every
/// [`SYNC_INTERVAL`].
struct Pace {
    since_flush: usize,
    last_sync: Instant,
}

impl Pace {
    fn new() -> Self {
        Self {
            since_flush: 0,
            last_sync: Instant::now(),
        }
    }

    /// Count one result; whether to flush now, and whether to sync too.
    fn tick(&mut self) -> Option<bool> {
        self.since_flush += 1;
        if self.since_flush < FLUSH_EVERY {
            return None;
        }
        self.since_flush = 0;
        let sync = self.last_sync.elapsed() >= SYNC_INTERVAL;
        if sync {
            self.last_sync = Instant::now();
        }
        Some(sync)
    }
}

/// `classify --output FILE.jsonl`: one result object a line, the manifest beside it as
/// `FILE.jsonl.manifest.json`.
pub struct ResultsFile {
    /// Held while the job writes, so that a second run of the same shard is refused.
    _lock: std::fs::File,
    lines: LineLog,
    manifest: Manifest,
    manifest_path: PathBuf,
    pace: Pace,
    written: Written,
}

impl ResultsFile {
    /// The manifest's path for a results file.
    pub fn manifest_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".manifest.json");
        PathBuf::from(name)
    }

    /// Before any work: refuse `path` if it holds results of an earlier run and
    /// `earlier` says to refuse (as [`ResultsFile::open`] would).
    pub fn check_earlier(path: &Path, earlier: Earlier) -> Result<(), ScaleError> {
        refuse_earlier(&[(path, 0)], &Self::manifest_path(path), earlier)
    }

    /// Start the output (creating its folder), or continue it (a torn last line is
    /// dropped), as `earlier` says; the results already there are returned.
    pub fn open(
        path: &Path,
        manifest: Manifest,
        earlier: Earlier,
    ) -> Result<(Self, Resumed), ScaleError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(super::io_error(dir))?;
        }
        let manifest_path = Self::manifest_path(path);
        let lock = lock_output(path, &manifest_path)?;
        let (lines, kept) = if resuming(&manifest_path, &[(path, 0)], &manifest, earlier)? {
            recover_or_create(path, None)?
        } else {
            let lines = LineLog::create(path)?;
            manifest.write(&manifest_path)?;
            (lines, Vec::new())
        };
        let resumed = Resumed::from_lines(&kept);
        let written = Written {
            items: kept.len(),
            failed: resumed.failed,
        };
        Ok((
            Self {
                _lock: lock,
                lines,
                manifest,
                manifest_path,
                pace: Pace::new(),
                written,
            },
            resumed,
        ))
    }

    /// Add one result (`failed`: it reports an error).
    pub fn push<T: Serialize>(&mut self, result: &T, failed: bool) -> Result<(), ScaleError> {
        self.lines.push(result)?;
        self.written.items += 1;
        self.written.failed += usize::from(failed);
        match self.pace.tick() {
            Some(true) => self.lines.sync(),
            Some(false) => self.lines.flush(),
            None => Ok(()),
        }
    }

    /// Write what is left, sync, and mark the shard complete if every input has a
    /// line.
    pub fn finish(mut self) -> Result<Written, ScaleError> {
        self.lines.sync()?;
        mark_complete(&mut self.manifest, &self.manifest_path, self.written)?;
        Ok(self.written)
    }
}

fn mark_complete(manifest: &mut Manifest, path: &Path, written: Written) -> Result<(), ScaleError> {
    if written.items != manifest.items {
        return Err(ScaleError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "the shard has {} results of {}: run it again with --resume",
                written.items, manifest.items
            ),
        });
    }
    manifest.complete = true;
    manifest.write(path)
}

/// `embed --output DIR`: for shard `part-I-of-N`, `DIR/part-I-of-N.npy` (one row per
/// embedded image), `.jsonl` (`{"image": ...}` per row, same order), `.errors.jsonl`
/// (`{"image": ..., "error": ...}` per failed input) and `.manifest.json`.
pub struct EmbeddingShard {
    /// Held while the job writes, so that a second run of the same shard is refused.
    _lock: std::fs::File,
    npy: NpyRows,
    table: LineLog,
    errors: LineLog,
    manifest: Manifest,
    manifest_path: PathBuf,
    pace: Pace,
    written: Written,
}

/// An exclusive lock on one shard's output (`.NAME.lock` beside its manifest, left in
/// place: removing it would race with a run that has it open), refused at once when
/// another process holds it: two runs of one shard (a task started twice, a pod
/// restarted while the old one still runs) would interleave their results.
fn lock_output(output: &Path, manifest: &Path) -> Result<std::fs::File, ScaleError> {
    let name = manifest.file_name().unwrap_or_default().to_string_lossy();
    let dir = manifest.parent().unwrap_or(Path::new("."));
    let path = dir.join(format!(".{name}.lock"));
    let file = crate::util::open_lock_file(&path).map_err(super::io_error(&path))?;
    match file.try_lock() {
        Err(std::fs::TryLockError::WouldBlock) => Err(ScaleError::Invalid {
            path: output.to_path_buf(),
            message: "another clipscope is writing this output now (the same shard started twice?); let it finish, or stop it and run again with --resume".into(),
        }),
        // A file system without locks (some network ones): go on unguarded.
        _ => Ok(file),
    }
}

/// The files of one shard of embeddings.
pub struct ShardFiles {
    /// The rows.
    pub npy: PathBuf,
    /// The images of the rows.
    pub table: PathBuf,
    /// The failed inputs.
    pub errors: PathBuf,
    /// The manifest.
    pub manifest: PathBuf,
}

impl ShardFiles {
    /// The files of `shard` in `dir`.
    pub fn new(dir: &Path, shard: &Shard) -> Self {
        Self::from_stem(dir, &shard.stem())
    }

    /// The files that hold results, each with its size when empty.
    fn data(&self) -> [(&Path, u64); 3] {
        [
            (self.npy.as_path(), NpyRows::EMPTY_LEN),
            (&self.table, 0),
            (&self.errors, 0),
        ]
    }

    pub(super) fn from_stem(dir: &Path, stem: &str) -> Self {
        Self {
            npy: dir.join(format!("{stem}.npy")),
            table: dir.join(format!("{stem}.jsonl")),
            errors: dir.join(format!("{stem}.errors.jsonl")),
            manifest: dir.join(format!("{stem}.manifest.json")),
        }
    }
}

#[derive(Serialize)]
struct Row<'a> {
    image: &'a str,
}

#[derive(Serialize)]
struct Failure<'a> {
    image: &'a str,
    error: &'a str,
}

impl EmbeddingShard {
    /// Before any work: refuse `shard`'s files in `dir` if they hold results of an
    /// earlier run and `earlier` says to refuse (as [`EmbeddingShard::open`] would).
    pub fn check_earlier(dir: &Path, shard: &Shard, earlier: Earlier) -> Result<(), ScaleError> {
        let files = ShardFiles::new(dir, shard);
        refuse_earlier(&files.data(), &files.manifest, earlier)?;
        // Shards of a job split another way could never be merged with these.
        let split = format!("-of-{:05}", shard.count);
        let stems = match dir.is_dir() {
            true => super::merge::shard_stems(dir)?,
            false => Vec::new(),
        };
        match stems.iter().find(|stem| !stem.ends_with(&split)) {
            Some(other) => Err(ScaleError::Invalid {
                path: dir.join(format!("{other}.manifest.json")),
                message: format!(
                    "a shard of a job split another way than this one ({shard}); give this job another --output, or remove that job's part-* files"
                ),
            }),
            None => Ok(()),
        }
    }

    /// Start this shard's files in `dir` (created if needed), or continue them as
    /// `earlier` says, keeping the rows that both the `.npy` and the table hold whole.
    pub fn open(
        dir: &Path,
        manifest: Manifest,
        dim: usize,
        precision: Precision,
        earlier: Earlier,
    ) -> Result<(Self, Resumed), ScaleError> {
        std::fs::create_dir_all(dir).map_err(super::io_error(dir))?;
        let files = ShardFiles::new(dir, &manifest.shard());
        let lock = lock_output(dir, &files.manifest)?;
        let resume =
            resuming(&files.manifest, &files.data(), &manifest, earlier)? && files.npy.exists();
        let (npy, table, errors, resumed) = if resume {
            Self::recover(&files, dim, precision)?
        } else {
            let created = (
                NpyRows::create(&files.npy, dim, precision)?,
                LineLog::create(&files.table)?,
                LineLog::create(&files.errors)?,
                Resumed::default(),
            );
            manifest.write(&files.manifest)?;
            created
        };
        let written = Written {
            items: resumed.done.len(),
            failed: resumed.failed,
        };
        Ok((
            Self {
                _lock: lock,
                npy,
                table,
                errors,
                manifest,
                manifest_path: files.manifest,
                pace: Pace::new(),
                written,
            },
            resumed,
        ))
    }

    /// Rows are written before their table lines, so after a kill the table may be
    /// shorter than the rows, never longer (but after a power cut it may, hence both
    /// ways).
    fn recover(
        files: &ShardFiles,
        dim: usize,
        precision: Precision,
    ) -> Result<(NpyRows, LineLog, LineLog, Resumed), ScaleError> {
        let rows = NpyRows::recover(&files.npy, dim, precision, None)?.rows();
        let (table, kept) = recover_or_create(&files.table, Some(rows as usize))?;
        let npy = NpyRows::recover(&files.npy, dim, precision, Some(kept.len() as u64))?;
        let (errors, failed) = recover_or_create(&files.errors, None)?;
        let mut resumed = Resumed::from_lines(&kept);
        resumed.add(Resumed::from_lines(&failed));
        Ok((npy, table, errors, resumed))
    }

    /// Add one input's embedding, or its error.
    pub fn push(&mut self, image: &str, outcome: Result<&[f32], &str>) -> Result<(), ScaleError> {
        match outcome {
            Ok(row) => {
                self.npy.push(row)?;
                self.table.push(&Row { image })?;
            }
            Err(error) => {
                self.errors.push(&Failure { image, error })?;
                self.written.failed += 1;
            }
        }
        self.written.items += 1;
        match self.pace.tick() {
            Some(sync) => self.flush(sync),
            None => Ok(()),
        }
    }

    /// Rows first, then the lines that name them.
    fn flush(&mut self, sync: bool) -> Result<(), ScaleError> {
        if sync {
            self.npy.sync()?;
            self.table.sync()?;
            self.errors.sync()
        } else {
            self.npy.flush()?;
            self.table.flush()?;
            self.errors.flush()
        }
    }

    /// Write what is left, sync, and mark the shard complete if every input is in.
    pub fn finish(mut self) -> Result<Written, ScaleError> {
        self.flush(true)?;
        mark_complete(&mut self.manifest, &self.manifest_path, self.written)?;
        Ok(self.written)
    }
}

fn recover_or_create(
    path: &Path,
    max_lines: Option<usize>,
) -> Result<(LineLog, Vec<LineSummary>), ScaleError> {
    if path.exists() {
        LineLog::recover(path, max_lines)
    } else {
        Ok((LineLog::create(path)?, Vec::new()))
    }
}

/// The header of a shard's `.npy`, checked against its table's length.
pub(super) fn rows_header(files: &ShardFiles, table_len: usize) -> Result<NpyHeader, ScaleError> {
    let header = NpyHeader::read(&files.npy)?;
    if header.rows != table_len as u64 {
        return Err(ScaleError::Invalid {
            path: files.npy.clone(),
            message: format!(
                "{} rows, but {} lists {table_len} images",
                header.rows,
                files.table.display()
            ),
        });
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest::new(
            "classify",
            "m",
            serde_json::json!({}),
            Shard::WHOLE,
            2,
            "h",
            0,
            2,
        )
    }

    #[test]
    fn a_second_run_of_a_shard_is_refused_while_the_first_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let (mut first, _) = ResultsFile::open(&path, manifest(), Earlier::Refuse).unwrap();
        first
            .push(&serde_json::json!({"image": "a"}), false)
            .unwrap();
        let Err(err) = ResultsFile::open(&path, manifest(), Earlier::Resume) else {
            panic!("two writers of one output");
        };
        assert!(
            err.to_string()
                .contains("another clipscope is writing this output"),
            "{err}"
        );
        drop(first);
        assert!(ResultsFile::open(&path, manifest(), Earlier::Resume).is_ok());
        let embeddings = dir.path().join("emb");
        let open =
            || EmbeddingShard::open(&embeddings, manifest(), 4, Precision::F32, Earlier::Resume);
        let held = open().unwrap();
        assert!(open().is_err());
        drop(held);
        assert!(open().is_ok());
    }

    #[test]
    fn a_file_without_its_manifest_is_resumed_only_if_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/r.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Emptied by a run killed before it wrote its manifest: nothing is lost.
        std::fs::write(&path, b"").unwrap();
        let (mut file, resumed) = ResultsFile::open(&path, manifest(), Earlier::Resume).unwrap();
        assert!(resumed.done.is_empty());
        file.push(&serde_json::json!({"image": "a"}), false)
            .unwrap();
        file.push(&serde_json::json!({"image": "b", "error": "b: bad"}), true)
            .unwrap();
        assert_eq!(
            file.finish().unwrap(),
            Written {
                items: 2,
                failed: 1
            }
        );
        assert!(
            Manifest::read(&ResultsFile::manifest_path(&path))
                .unwrap()
                .complete
        );

        std::fs::remove_file(ResultsFile::manifest_path(&path)).unwrap();
        let err = ResultsFile::open(&path, manifest(), Earlier::Resume)
            .err()
            .unwrap();
        assert!(err.to_string().contains("without its manifest"), "{err}");
    }

    /// A new `r.jsonl` in `dir` with the first of the manifest's two results.
    fn one_result_of_two(dir: &Path) -> (PathBuf, ResultsFile) {
        let path = dir.join("r.jsonl");
        let (mut file, _) = ResultsFile::open(&path, manifest(), Earlier::Refuse).unwrap();
        file.push(&serde_json::json!({"image": "a"}), false)
            .unwrap();
        (path, file)
    }

    #[test]
    fn earlier_results_are_kept_unless_resumed_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (path, file) = one_result_of_two(dir.path());
        file.finish().ok();
        let before = std::fs::read(&path).unwrap();

        let err = ResultsFile::open(&path, manifest(), Earlier::Refuse)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("r.jsonl: holds results of an earlier run")
                && err.contains("--resume")
                && err.contains("--force"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before, "refused, untouched");

        let (_, resumed) = ResultsFile::open(&path, manifest(), Earlier::Resume).unwrap();
        assert_eq!(resumed.done.len(), 1);
        let (_, replaced) = ResultsFile::open(&path, manifest(), Earlier::Replace).unwrap();
        assert!(replaced.done.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "started over");
        // An empty output (a run killed before its first result) is no loss.
        ResultsFile::open(&path, manifest(), Earlier::Refuse).unwrap();
    }

    #[test]
    fn an_embedding_shard_is_refused_once_any_of_its_files_holds_a_result() {
        let dir = tempfile::tempdir().unwrap();
        let open =
            |earlier| EmbeddingShard::open(dir.path(), manifest(), 4, Precision::F32, earlier);
        // Killed before its first result: the `.npy` holds only its header.
        drop(open(Earlier::Refuse).unwrap());
        EmbeddingShard::check_earlier(dir.path(), &Shard::WHOLE, Earlier::Refuse).unwrap();
        // Every input failed: only the errors file holds anything, and that is a result.
        let (mut shard, _) = open(Earlier::Refuse).unwrap();
        shard.push("a", Err("a: bad")).unwrap();
        shard.finish().ok();
        let err = open(Earlier::Refuse).err().unwrap().to_string();
        assert!(
            err.contains("errors.jsonl: holds results of an earlier run"),
            "{err}"
        );
        assert!(EmbeddingShard::check_earlier(dir.path(), &Shard::WHOLE, Earlier::Refuse).is_err());
        // A shard of the same inputs split another way cannot join them.
        let other = Shard::parse("1/2", None).unwrap();
        let err = EmbeddingShard::check_earlier(dir.path(), &other, Earlier::Refuse)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("part-00000-of-00001.manifest.json: a shard of a job split another way"),
            "{err}"
        );
        // A file of something else is named as such.
        let notes = dir.path().join("notes.txt");
        std::fs::write(&notes, "hello").unwrap();
        let err = ResultsFile::check_earlier(&notes, Earlier::Refuse)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("notes.txt: exists and is not a clipscope output"),
            "{err}"
        );
        // A folder where the results file should be is not an earlier run's results.
        let folder = dir.path().join("r.jsonl");
        std::fs::create_dir(&folder).unwrap();
        ResultsFile::check_earlier(&folder, Earlier::Refuse).unwrap();
    }

    #[test]
    fn a_shard_with_results_missing_is_not_marked_complete() {
        let dir = tempfile::tempdir().unwrap();
        let (path, file) = one_result_of_two(dir.path());
        assert!(file
            .finish()
            .unwrap_err()
            .to_string()
            .contains("1 results of 2"));
        let (_, resumed) = ResultsFile::open(&path, manifest(), Earlier::Resume).unwrap();
        assert_eq!(resumed.done.len(), 1);
    }
}
