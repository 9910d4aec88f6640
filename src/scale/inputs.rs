//! A job's input list: paths from the command line and from `--inputs LIST`, expanded,
//! without duplicates, with a digest that every shard of the same job shares.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{io_error, ScaleError, Shard};
use crate::data::{collect_images, ImageError};

/// Read a list of inputs, one path a line, from a file or from standard input (`-`).
/// Blank lines are skipped, a line's trailing carriage return and the file's leading
/// byte-order mark (Windows editors write both) are dropped; nothing else is trimmed,
/// so names with surrounding blanks survive.
pub fn read_input_list(list: &Path) -> Result<Vec<PathBuf>, ScaleError> {
    let read = |reader: &mut dyn BufRead| -> std::io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line?;
            let line = line.strip_suffix('\r').unwrap_or(&line);
            let line = match i {
                0 => line.strip_prefix('\u{feff}').unwrap_or(line),
                _ => line,
            };
            if !line.trim().is_empty() {
                out.push(PathBuf::from(line));
            }
        }
        Ok(out)
    };
    if list == Path::new("-") {
        read(&mut std::io::stdin().lock()).map_err(io_error(Path::new("standard input")))
    } else {
        let file = std::fs::File::open(list).map_err(io_error(list))?;
        read(&mut std::io::BufReader::new(file)).map_err(io_error(list))
    }
}

/// The expanded inputs of a job, in order, each once.
pub struct JobInputs {
    /// Each input: a file to embed, or why it cannot be (missing, unlistable folder).
    pub items: Vec<Result<PathBuf, ImageError>>,
    /// Each input's name as it appears in outputs (the path as given or found).
    pub names: Vec<String>,
    /// SHA-256 (hex, first 32 digits) of the names in order: equal for every shard of
    /// the same job, whatever the shard.
    pub list_hash: String,
}

impl JobInputs {
    /// Expand paths (folders walked in sorted order) and drop repeated names, keeping
    /// the first: a job processes each image once.
    pub fn expand(paths: &[PathBuf]) -> Self {
        let mut seen = HashSet::new();
        let (mut items, mut names) = (Vec::new(), Vec::new());
        for item in collect_images(paths) {
            let name = match &item {
                Ok(p) => p.display().to_string(),
                Err(e) => e.path().display().to_string(),
            };
            if seen.insert(name.clone()) {
                items.push(item);
                names.push(name);
            }
        }
        let mut h = Sha256::new();
        for name in &names {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
        }
        let list_hash = h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            items,
            names,
            list_hash,
        }
    }

    /// Keep only `shard`'s part of the list; returns the position of its first input
    /// in the whole list.
    pub fn keep_shard(&mut self, shard: &Shard) -> usize {
        let range = shard.range(self.items.len());
        self.items.truncate(range.end);
        self.names.truncate(range.end);
        self.items.drain(..range.start);
        self.names.drain(..range.start);
        range.start
    }

    /// Drop the inputs whose names `done` holds (finished by an earlier run).
    pub fn drop_done(&mut self, done: &HashSet<String>) {
        let items = std::mem::take(&mut self.items);
        let names = std::mem::take(&mut self.names);
        for (item, name) in items.into_iter().zip(names) {
            if !done.contains(&name) {
                self.items.push(item);
                self.names.push(name);
            }
        }
    }

    /// How many inputs there are.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_saved_on_windows_reads_as_its_paths() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list.txt");
        std::fs::write(&list, "\u{feff}a.png\r\n\r\n b .png\r\n").unwrap();
        let paths = read_input_list(&list).unwrap();
        assert_eq!(paths, [PathBuf::from("a.png"), PathBuf::from(" b .png")]);
    }

    #[test]
    fn expansion_drops_repeats_and_shards_partition_it() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.png", "a.png", "c.jpg", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let a = dir.path().join("a.png");
        let missing = dir.path().join("missing.png");
        let all = JobInputs::expand(&[dir.path().to_path_buf(), a.clone(), missing.clone()]);
        let names: Vec<String> = ["a.png", "b.png", "c.jpg"]
            .iter()
            .map(|n| dir.path().join(n).display().to_string())
            .chain([missing.display().to_string()])
            .collect();
        assert_eq!(all.names, names);
        assert!(all.items[3].is_err());
        assert_eq!(
            all.list_hash,
            JobInputs::expand(&[dir.path().to_path_buf(), missing]).list_hash
        );

        let mut part = JobInputs::expand(&[dir.path().to_path_buf()]);
        assert_ne!(part.list_hash, all.list_hash);
        let first = part.keep_shard(&Shard { index: 1, count: 2 });
        assert_eq!((first, part.len()), (1, 2));
        part.drop_done(&HashSet::from([names[1].clone()]));
        assert_eq!(part.names, vec![names[2].clone()]);
    }

    #[test]
    fn lists_skip_blank_lines_and_carriage_returns() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list.txt");
        std::fs::write(&list, "a.jpg\r\n\n  \n dir/b c.png\n").unwrap();
        assert_eq!(
            read_input_list(&list).unwrap(),
            vec![PathBuf::from("a.jpg"), PathBuf::from(" dir/b c.png")]
        );
        assert!(read_input_list(&dir.path().join("none.txt"))
            .unwrap_err()
            .to_string()
            .contains("none.txt"));
    }
}
