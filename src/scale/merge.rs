//! `clipscope merge`: join a job's shard outputs into one, in shard order (which is the
//! unsharded order), checking that every shard is there once, finished, and that no
//! image is missing or repeated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::lines::{read_all, LineLog, LineSummary};
use super::npy::{copy_rows, NpyRows};
use super::outputs::{rows_header, ResultsFile, ShardFiles};
use super::{io_error, Manifest, ScaleError, Shard};

/// What a merge joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeSummary {
    /// Shards joined.
    pub shards: usize,
    /// Inputs in the merged output (results and errors).
    pub items: usize,
    /// Of which errors.
    pub failed: usize,
}

/// One shard's output: where it is (for messages) and its manifest.
struct Part {
    name: PathBuf,
    manifest: Manifest,
    /// An embeddings shard's files.
    files: Option<ShardFiles>,
}

/// Merge `classify --output` files into `out` (and its manifest). An existing `out` is
/// replaced only with `force`; a merge that fails part-way leaves no output behind.
pub fn merge_results(
    files: &[PathBuf],
    out: &Path,
    force: bool,
) -> Result<MergeSummary, ScaleError> {
    let mut parts = files
        .iter()
        .map(|f| {
            let manifest_path = ResultsFile::manifest_path(f);
            if !manifest_path.is_file() {
                return Err(ScaleError::Merge(format!(
                    "{}: not the output of a clipscope job (no {} beside it); give classify's .jsonl results, or embed's output folders",
                    f.display(),
                    manifest_path.file_name().unwrap_or_default().to_string_lossy()
                )));
            }
            Ok(Part {
                name: f.clone(),
                manifest: Manifest::read(&manifest_path)?,
                files: None,
            })
        })
        .collect::<Result<Vec<_>, ScaleError>>()?;
    check_parts(&mut parts, "classify")?;
    refuse_overwriting(out, files)?;
    let manifest_path = ResultsFile::manifest_path(out);
    refuse_replacing(out, &[out.to_path_buf(), manifest_path.clone()], force)?;
    // Written under temporary names, renamed over an earlier output only once whole.
    let tmp_out = merging_name(out);
    let tmp_manifest = ResultsFile::manifest_path(&tmp_out);
    let renames = [
        (tmp_out.clone(), out.to_path_buf()),
        (tmp_manifest.clone(), manifest_path),
    ];
    replaced_on_success(&renames, || {
        let merged = merged_manifest(&parts[0].manifest);
        merged.write(&tmp_manifest)?;
        let mut log = LineLog::create(&tmp_out)?;
        let mut seen = Seen::default();
        for part in &parts {
            let lines = read_all(&part.name)?;
            expect_items(part, lines.len())?;
            for (summary, line) in lines {
                seen.add(&summary, &part.name)?;
                log.push_raw(&line);
            }
            log.flush()?;
        }
        log.sync()?;
        finish(merged, &tmp_manifest, &seen, parts.len())
    })
}

/// `path` with a hidden temporary name in the same folder (`.NAME.merging`).
fn merging_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.merging"))
}

/// Refuse to write over an earlier output (`written`, the files a merge into `out`
/// makes) unless `force`.
fn refuse_replacing(out: &Path, written: &[PathBuf], force: bool) -> Result<(), ScaleError> {
    match written.iter().find(|p| p.exists()) {
        Some(p) if !force => Err(ScaleError::Merge(format!(
            "{}: already there; give --force to replace {}, or another --output",
            p.display(),
            out.display()
        ))),
        _ => Ok(()),
    }
}

/// Run `merge`, which writes the first path of each of `renames`; when it succeeds,
/// rename each over the second (the manifest last), else remove them: a partial output
/// is never taken for a whole one, and an earlier output survives a failed `--force`.
fn replaced_on_success(
    renames: &[(PathBuf, PathBuf)],
    merge: impl FnOnce() -> Result<MergeSummary, ScaleError>,
) -> Result<MergeSummary, ScaleError> {
    let outcome = merge();
    if outcome.is_err() {
        for (tmp, _) in renames {
            let _ = std::fs::remove_file(tmp);
        }
        return outcome;
    }
    for (tmp, path) in renames {
        if tmp.exists() {
            std::fs::rename(tmp, path).map_err(io_error(path))?;
        } else {
            // A part the merge had nothing for (no rows: no .npy).
            let _ = std::fs::remove_file(path);
        }
    }
    outcome
}

/// Merge `embed --output` shards found in `dirs` into `out` as one shard
/// (`part-00000-of-00001.*`). An earlier merge there is replaced only with `force`; a
/// merge that fails part-way leaves none of its files behind.
pub fn merge_embeddings(
    dirs: &[PathBuf],
    out: &Path,
    force: bool,
) -> Result<MergeSummary, ScaleError> {
    let mut parts = Vec::new();
    for dir in dirs {
        for stem in shard_stems(dir)? {
            let files = ShardFiles::from_stem(dir, &stem);
            parts.push(Part {
                manifest: Manifest::read(&files.manifest)?,
                name: dir.join(stem),
                files: Some(files),
            });
        }
    }
    if parts.is_empty() {
        return Err(ScaleError::Merge(format!(
            "no shards (part-*-of-*.manifest.json) in {}",
            list(dirs)
        )));
    }
    check_parts(&mut parts, "embed")?;
    refuse_overwriting(out, dirs)?;
    let target = ShardFiles::new(out, &Shard::WHOLE);
    let finals = [&target.npy, &target.table, &target.errors, &target.manifest];
    refuse_replacing(out, &finals.map(|p| p.to_path_buf()), force)?;
    let created = !out.exists();
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    // Written under temporary names, renamed over an earlier output only once whole.
    let stem = format!(".merging-{}", Shard::WHOLE.stem());
    let tmp = ShardFiles::from_stem(out, &stem);
    let temps = [&tmp.npy, &tmp.table, &tmp.errors, &tmp.manifest];
    let renames: Vec<(PathBuf, PathBuf)> = temps
        .iter()
        .zip(finals)
        .map(|(t, f)| (t.to_path_buf(), f.to_path_buf()))
        .collect();
    let outcome = replaced_on_success(&renames, || {
        let merged = merged_manifest(&parts[0].manifest);
        merged.write(&tmp.manifest)?;
        let mut npy: Option<NpyRows> = None;
        let mut table = LineLog::create(&tmp.table)?;
        let mut errors = LineLog::create(&tmp.errors)?;
        let mut seen = Seen::default();
        for part in &parts {
            let Some(files) = &part.files else { continue };
            let rows = read_all(&files.table)?;
            let failed = read_all(&files.errors)?;
            expect_items(part, rows.len() + failed.len())?;
            let header = rows_header(files, rows.len())?;
            let npy = match &mut npy {
                Some(n) => n,
                None => npy.insert(NpyRows::create(&tmp.npy, header.dim, header.precision)?),
            };
            copy_rows(&files.npy, &header, npy)?;
            for (log, lines) in [(&mut table, rows), (&mut errors, failed)] {
                for (summary, line) in lines {
                    seen.add(&summary, &part.name)?;
                    log.push_raw(&line);
                }
                log.flush()?;
            }
        }
        if let Some(n) = &mut npy {
            n.sync()?;
        }
        table.sync()?;
        errors.sync()?;
        finish(merged, &tmp.manifest, &seen, parts.len())
    });
    if outcome.is_err() && created {
        let _ = std::fs::remove_dir(out);
    }
    outcome
}

/// The stems of the shard manifests in `dir`, sorted.
pub(super) fn shard_stems(dir: &Path) -> Result<Vec<String>, ScaleError> {
    let mut stems: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let stem = name.strip_suffix(".manifest.json")?;
            stem.starts_with("part-").then(|| stem.to_string())
        })
        .collect();
    stems.sort();
    Ok(stems)
}

/// Check that the parts are the shards of one `command` job, each once and finished,
/// and sort them by shard.
fn check_parts(parts: &mut [Part], command: &str) -> Result<(), ScaleError> {
    let Some(first) = parts.first() else {
        return Err(ScaleError::Merge("nothing to merge".into()));
    };
    for part in parts.iter() {
        if part.manifest.command != command {
            return Err(ScaleError::Merge(format!(
                "{} is a {} output, not {command}",
                part.name.display(),
                part.manifest.command
            )));
        }
        if let Some(why) = first.manifest.job_difference(&part.manifest) {
            return Err(ScaleError::Merge(format!(
                "{} and {} are outputs of different jobs: {why}",
                first.name.display(),
                part.name.display()
            )));
        }
    }
    parts.sort_by_key(|p| p.manifest.shard);
    let count = parts[0].manifest.shards;
    for pair in parts.windows(2) {
        if pair[0].manifest.shard == pair[1].manifest.shard {
            return Err(ScaleError::Merge(format!(
                "{} and {} are both shard {}",
                pair[0].name.display(),
                pair[1].name.display(),
                pair[0].manifest.shard()
            )));
        }
    }
    let present: Vec<usize> = parts.iter().map(|p| p.manifest.shard).collect();
    let missing: Vec<String> = (0..count)
        .filter(|i| !present.contains(i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        let (noun, verb) = if missing.len() == 1 {
            ("shard", "is")
        } else {
            ("shards", "are")
        };
        return Err(ScaleError::Merge(format!(
            "{noun} {} {verb} missing (the job has {count} shards; give all of their outputs)",
            missing.join(", ")
        )));
    }
    if let Some(p) = parts.iter().find(|p| !p.manifest.complete) {
        return Err(ScaleError::Merge(format!(
            "{}: shard {} is not finished: run it again with --resume",
            p.name.display(),
            p.manifest.shard()
        )));
    }
    Ok(())
}

fn expect_items(part: &Part, found: usize) -> Result<(), ScaleError> {
    if found == part.manifest.items {
        return Ok(());
    }
    Err(ScaleError::Merge(format!(
        "{}: shard {} should have {} results but has {found}: run it again with --resume",
        part.name.display(),
        part.manifest.shard(),
        part.manifest.items
    )))
}

fn refuse_overwriting(out: &Path, inputs: &[PathBuf]) -> Result<(), ScaleError> {
    let same = |p: &Path| match (out.canonicalize(), p.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    match inputs.iter().find(|p| same(p)) {
        Some(p) => Err(ScaleError::Merge(format!(
            "{}: the merged output would overwrite an input; choose another --output",
            p.display()
        ))),
        None => Ok(()),
    }
}

fn merged_manifest(part: &Manifest) -> Manifest {
    Manifest {
        shard: 0,
        shards: 1,
        first: 0,
        items: part.list_len,
        complete: false,
        ..part.clone()
    }
}

/// Every image once, across all parts.
#[derive(Default)]
struct Seen {
    first_in: HashMap<String, PathBuf>,
    failed: usize,
}

impl Seen {
    fn add(&mut self, line: &LineSummary, part: &Path) -> Result<(), ScaleError> {
        if let Some(earlier) = self.first_in.insert(line.image.clone(), part.to_path_buf()) {
            return Err(ScaleError::Merge(format!(
                "{} is in {} and again in {}",
                line.image,
                earlier.display(),
                part.display()
            )));
        }
        self.failed += usize::from(line.failed);
        Ok(())
    }
}

fn finish(
    mut merged: Manifest,
    manifest_path: &Path,
    seen: &Seen,
    shards: usize,
) -> Result<MergeSummary, ScaleError> {
    if seen.first_in.len() != merged.list_len {
        return Err(ScaleError::Merge(format!(
            "the shards hold {} inputs but the job's list has {}",
            seen.first_in.len(),
            merged.list_len
        )));
    }
    merged.complete = true;
    merged.write(manifest_path)?;
    Ok(MergeSummary {
        shards,
        items: seen.first_in.len(),
        failed: seen.failed,
    })
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
