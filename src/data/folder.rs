//! Labelled image folders (`root/<class>/<image>`), train/validation splits, and the
//! split manifest that makes every later evaluation, CLIP's included, use the same
//! held-out images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::image_file::is_image_path;
use crate::cnn::rng::Rng;

/// Name of the split manifest written into a data folder that has no `train/`/`val/`.
pub const MANIFEST: &str = "clipscope-split.json";

/// Imagenette's ten ImageNet classes: WordNet id and name (as torchvision names them).
pub const IMAGENETTE_CLASSES: [(&str, &str); 10] = [
    ("n01440764", "tench"),
    ("n02102040", "English springer"),
    ("n02979186", "cassette player"),
    ("n03000684", "chain saw"),
    ("n03028079", "church"),
    ("n03394916", "French horn"),
    ("n03417042", "garbage truck"),
    ("n03425413", "gas pump"),
    ("n03445777", "golf ball"),
    ("n03888257", "parachute"),
];

/// A class's display name: the human name for an Imagenette WordNet id, else the folder
/// name with `_` as a space.
pub fn display_name(folder: &str) -> String {
    IMAGENETTE_CLASSES
        .iter()
        .find(|(id, _)| *id == folder)
        .map(|(_, name)| name.to_string())
        .unwrap_or_else(|| folder.replace('_', " "))
}

/// What can go wrong reading a data folder.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The folder has no class subfolders with images.
    #[error("{0}: no class folders with images (expected ROOT/<class>/<image>)")]
    Empty(PathBuf),
    /// A manifest is unreadable or does not fit the folder.
    #[error("{path}: {message}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Train and validation folders have different classes.
    #[error("{train} and {val} have different class folders")]
    ClassMismatch {
        /// The training folder.
        train: PathBuf,
        /// The validation folder.
        val: PathBuf,
    },
}

/// One labelled image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Its file.
    pub path: PathBuf,
    /// Index into the classes.
    pub label: usize,
}

/// Labelled images and their classes.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Class folder names, sorted (the label order).
    pub classes: Vec<String>,
    /// The images.
    pub samples: Vec<Sample>,
}

impl Dataset {
    /// Display names of the classes.
    pub fn display_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| display_name(c)).collect()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Read `root/<class>/...` (images found recursively under each class folder).
pub fn scan_folder(root: &Path) -> Result<Dataset, DataError> {
    let mut classes: Vec<String> = std::fs::read_dir(root)
        .map_err(io(root))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    classes.sort();
    let mut samples = Vec::new();
    let mut kept = Vec::new();
    for class in &classes {
        let label = kept.len();
        let mut files: Vec<PathBuf> = walkdir::WalkDir::new(root.join(class))
            .follow_links(true)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file() && is_image_path(e.path()))
            .map(|e| e.into_path())
            .collect();
        if files.is_empty() {
            continue;
        }
        files.sort();
        samples.extend(files.into_iter().map(|path| Sample { path, label }));
        kept.push(class.clone());
    }
    if samples.is_empty() {
        return Err(DataError::Empty(root.to_path_buf()));
    }
    Ok(Dataset {
        classes: kept,
        samples,
    })
}

/// A training set and a held-out set with the same classes.
#[derive(Clone, Debug)]
pub struct Split {
    /// For training.
    pub train: Dataset,
    /// Held out: validation during training, the test set of the comparison.
    pub val: Dataset,
    /// How the split was made: `folders` or the manifest's path.
    pub source: String,
}

#[derive(Serialize, Deserialize)]
struct ManifestFile {
    version: u32,
    seed: u64,
    val_fraction: f64,
    classes: Vec<String>,
    train: Vec<(String, usize)>,
    val: Vec<(String, usize)>,
}

/// The train/held-out split of `root`:
/// - `val` given: `root` trains, `val` is held out;
/// - `root/train` and `root/val` exist (Imagenette's layout): those;
/// - otherwise a seeded split per class (`val_fraction` held out), written to
///   `root/clipscope-split.json` the first time and read from it after, so that every
///   evaluation uses exactly the same held-out images.
pub fn load_split(
    root: &Path,
    val: Option<&Path>,
    seed: u64,
    val_fraction: f64,
) -> Result<Split, DataError> {
    if let Some(val) = val {
        return paired(root, val);
    }
    if root.join("train").is_dir() && root.join("val").is_dir() {
        return paired(&root.join("train"), &root.join("val"));
    }
    let manifest = root.join(MANIFEST);
    if manifest.is_file() {
        let (made_seed, made_fraction) = read_split_settings(&manifest)?;
        if (made_seed, made_fraction) != (seed, val_fraction) {
            return Err(DataError::Manifest {
                path: manifest,
                message: format!(
                    "this split was made with --seed {made_seed} --val-fraction {made_fraction}, not --seed {seed} --val-fraction {val_fraction}; give those (or leave both out), or delete the file for a new split"
                ),
            });
        }
        let split = read_manifest(root, &manifest)?;
        warn_unlisted(root, &manifest, &split);
        return Ok(split);
    }
    let all = scan_folder(root)?;
    let split = seeded_split(&all, seed, val_fraction);
    // A split that holds nothing out is not kept: images added later would be left out
    // of every later run by a manifest that lists only the earlier ones.
    if !split.val.samples.is_empty() {
        write_manifest(root, &manifest, &split, seed, val_fraction)?;
    }
    Ok(Split {
        source: manifest.display().to_string(),
        ..split
    })
}

/// Warns when `root` holds images its split manifest does not list (added after the
/// split was made): every run leaves them out, which should not pass unnoticed.
fn warn_unlisted(root: &Path, manifest: &Path, split: &Split) {
    let Ok(all) = scan_folder(root) else { return };
    let listed: std::collections::HashSet<&Path> = (split.train.samples.iter())
        .chain(&split.val.samples)
        .map(|s| s.path.as_path())
        .collect();
    let unlisted = (all.samples.iter())
        .filter(|s| !listed.contains(s.path.as_path()))
        .count();
    if unlisted > 0 {
        tracing::warn!(
            "{}: {unlisted} image(s) are not in the split manifest {} (added after the split was made) and are left out; delete it for a new split that includes them",
            root.display(),
            manifest.display()
        );
    }
}

fn paired(train: &Path, val: &Path) -> Result<Split, DataError> {
    let t = scan_folder(train)?;
    let v = scan_folder(val)?;
    if t.classes != v.classes {
        return Err(DataError::ClassMismatch {
            train: train.to_path_buf(),
            val: val.to_path_buf(),
        });
    }
    Ok(Split {
        train: t,
        val: v,
        source: "folders".into(),
    })
}

/// Hold out `val_fraction` of each class (at least one image where a class has two).
pub fn seeded_split(all: &Dataset, seed: u64, val_fraction: f64) -> Split {
    let mut by_class: BTreeMap<usize, Vec<Sample>> = BTreeMap::new();
    for s in &all.samples {
        by_class.entry(s.label).or_default().push(s.clone());
    }
    let mut rng = Rng::new(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (_, mut items) in by_class {
        rng.shuffle(&mut items);
        let mut n_val = (items.len() as f64 * val_fraction).round() as usize;
        if items.len() >= 2 {
            n_val = n_val.clamp(1, items.len() - 1);
        }
        val.extend(items.drain(..n_val));
        train.extend(items);
    }
    train.sort_by(|a, b| a.path.cmp(&b.path));
    val.sort_by(|a, b| a.path.cmp(&b.path));
    Split {
        train: Dataset {
            classes: all.classes.clone(),
            samples: train,
        },
        val: Dataset {
            classes: all.classes.clone(),
            samples: val,
        },
        source: "seeded".into(),
    }
}

fn relative(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .to_string()
}

fn write_manifest(
    root: &Path,
    path: &Path,
    split: &Split,
    seed: u64,
    val_fraction: f64,
) -> Result<(), DataError> {
    let file = ManifestFile {
        version: 1,
        seed,
        val_fraction,
        classes: split.train.classes.clone(),
        train: split
            .train
            .samples
            .iter()
            .map(|s| (relative(root, &s.path), s.label))
            .collect(),
        val: split
            .val
            .samples
            .iter()
            .map(|s| (relative(root, &s.path), s.label))
            .collect(),
    };
    let text = serde_json::to_string_pretty(&file).map_err(|e| DataError::Manifest {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    crate::util::write_atomic(path, text.as_bytes()).map_err(io(path))
}

/// The `--seed` and `--val-fraction` of the split manifest in `root`, if it has one (and
/// no `train/` and `val/` folders, which take precedence).
pub fn split_settings(root: &Path) -> Result<Option<(u64, f64)>, DataError> {
    let manifest = root.join(MANIFEST);
    if (root.join("train").is_dir() && root.join("val").is_dir()) || !manifest.is_file() {
        return Ok(None);
    }
    read_split_settings(&manifest).map(Some)
}

/// The error for a split manifest that is not valid: it says how to get a new one.
fn unreadable_manifest(path: &Path) -> impl FnOnce(serde_json::Error) -> DataError + '_ {
    move |e| DataError::Manifest {
        path: path.to_path_buf(),
        message: format!("not a valid split manifest ({e}); delete it for a new split"),
    }
}

fn read_split_settings(path: &Path) -> Result<(u64, f64), DataError> {
    #[derive(Deserialize)]
    struct Settings {
        seed: u64,
        val_fraction: f64,
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let s: Settings = serde_json::from_str(&text).map_err(unreadable_manifest(path))?;
    Ok((s.seed, s.val_fraction))
}

fn read_manifest(root: &Path, path: &Path) -> Result<Split, DataError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let m: ManifestFile = serde_json::from_str(&text).map_err(unreadable_manifest(path))?;
    let to_set = |items: &[(String, usize)]| -> Result<Dataset, DataError> {
        let mut samples = Vec::with_capacity(items.len());
        for (rel, label) in items {
            if *label >= m.classes.len() {
                return Err(DataError::Manifest {
                    path: path.to_path_buf(),
                    message: format!("{rel}: label {label} out of range"),
                });
            }
            samples.push(Sample {
                path: root.join(rel),
                label: *label,
            });
        }
        Ok(Dataset {
            classes: m.classes.clone(),
            samples,
        })
    };
    Ok(Split {
        train: to_set(&m.train)?,
        val: to_set(&m.val)?,
        source: path.display().to_string(),
    })
}

/// The held-out images of a data folder as the comparison should see them: `val/` when
/// the folder has `train/` and `val/`, the manifest's held-out list when it has one,
/// else every image in it.
pub fn held_out(root: &Path) -> Result<Dataset, DataError> {
    if root.join("val").is_dir() {
        return scan_folder(&root.join("val"));
    }
    let manifest = root.join(MANIFEST);
    if manifest.is_file() {
        return Ok(read_manifest(root, &manifest)?.val);
    }
    scan_folder(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_tree(root: &Path, classes: &[(&str, usize)]) {
        for (c, n) in classes {
            std::fs::create_dir_all(root.join(c)).unwrap();
            for i in 0..*n {
                std::fs::write(root.join(c).join(format!("{i:03}.png")), b"x").unwrap();
            }
        }
        std::fs::write(root.join("README.txt"), b"not a class").unwrap();
    }

    #[test]
    fn imagenette_ids_get_names() {
        assert_eq!(display_name("n01440764"), "tench");
        assert_eq!(display_name("n03888257"), "parachute");
        assert_eq!(display_name("red_circle"), "red circle");
    }

    #[test]
    fn a_seeded_split_is_written_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        make_tree(dir.path(), &[("a", 10), ("b", 7), ("empty", 0)]);
        let s1 = load_split(dir.path(), None, 1, 0.3).unwrap();
        assert_eq!(s1.train.classes, ["a", "b"]);
        assert_eq!(s1.val.samples.len(), 3 + 2);
        assert_eq!(s1.train.samples.len() + s1.val.samples.len(), 17);
        assert!(dir.path().join(MANIFEST).is_file());
        // The same settings read the manifest back; others are refused, not ignored.
        let s2 = load_split(dir.path(), None, 1, 0.3).unwrap();
        assert_eq!(s1.val.samples, s2.val.samples);
        let err = load_split(dir.path(), None, 99, 0.5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--seed 1 --val-fraction 0.3"), "{err}");
        assert_eq!(split_settings(dir.path()).unwrap(), Some((1, 0.3)));
        assert_eq!(held_out(dir.path()).unwrap().samples, s1.val.samples);
    }

    #[test]
    fn a_split_that_holds_nothing_out_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        make_tree(dir.path(), &[("a", 1), ("b", 1)]);
        let s = load_split(dir.path(), None, 0, 0.2).unwrap();
        assert!(s.val.samples.is_empty());
        assert!(!dir.path().join(MANIFEST).exists());
        // Once the classes have two images each, the split holds one of each out.
        make_tree(dir.path(), &[("a", 2), ("b", 2)]);
        let s = load_split(dir.path(), None, 0, 0.2).unwrap();
        assert_eq!(s.val.samples.len(), 2);
        assert!(dir.path().join(MANIFEST).is_file());
    }

    #[test]
    fn a_broken_manifest_says_how_to_get_a_new_split() {
        let dir = tempfile::tempdir().unwrap();
        make_tree(dir.path(), &[("a", 3), ("b", 3)]);
        load_split(dir.path(), None, 0, 0.2).unwrap();
        let path = dir.path().join(MANIFEST);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("0.2", "null")).unwrap();
        for err in [
            load_split(dir.path(), None, 0, 0.2).unwrap_err(),
            split_settings(dir.path()).unwrap_err(),
        ] {
            let err = err.to_string();
            assert!(err.contains(MANIFEST) && err.contains("delete it"), "{err}");
        }
    }

    #[test]
    fn train_and_val_folders_are_used_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        make_tree(
            &dir.path().join("train"),
            &[("n01440764", 3), ("n02102040", 2)],
        );
        make_tree(
            &dir.path().join("val"),
            &[("n01440764", 1), ("n02102040", 1)],
        );
        let s = load_split(dir.path(), None, 0, 0.2).unwrap();
        assert_eq!(s.source, "folders");
        assert_eq!(s.train.display_names(), ["tench", "English springer"]);
        assert_eq!(s.val.samples.len(), 2);
        assert!(!dir.path().join(MANIFEST).exists());
    }

    #[test]
    fn an_empty_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = scan_folder(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()));
    }
}
