//! Data on disk: decoding images with limits, finding images in folders, labelled image
//! folders and their splits, and dataset downloads.

pub mod fetch;
pub mod folder;
mod image_file;
pub mod scenes;
pub mod synthetic;

/// Removes from `dir` the files a generator wrote there earlier, as `is_generated` tells
/// them by the components of their path relative to `dir` (at most one folder deep),
/// the split manifest made of them, and the folders this leaves empty; nothing else is
/// touched. What `data shapes --force` and `data scenes --force` clear before writing a
/// new set, so that two sets never mix.
pub fn remove_generated(
    dir: &std::path::Path,
    is_generated: impl Fn(&[&str]) -> bool,
) -> std::io::Result<usize> {
    let mut removed = 0;
    let mut emptied = std::collections::BTreeSet::new();
    let entries = walkdir::WalkDir::new(dir).min_depth(1).max_depth(2);
    for entry in entries.into_iter().filter_map(Result::ok) {
        let Ok(rel) = entry.path().strip_prefix(dir) else {
            continue;
        };
        let parts: Vec<String> = (rel.components())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let manifest = parts == [folder::MANIFEST];
        if entry.file_type().is_file() && (manifest || is_generated(&parts)) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
            if parts.len() == 2 {
                emptied.insert(dir.join(parts[0]));
            }
        }
    }
    // Only folders that held generated files, and only once nothing else is in them.
    for folder in emptied {
        let _ = std::fs::remove_dir(folder);
    }
    Ok(removed)
}

/// Whether `name` is a number of at least `digits` digits followed by `.png`, after
/// `prefix` (the generators pad numbers to `digits` and go beyond when they must).
fn is_numbered_png(name: &str, prefix: &str, digits: usize) -> bool {
    name.strip_prefix(prefix)
        .and_then(|n| n.strip_suffix(".png"))
        .is_some_and(|n| n.len() >= digits && n.bytes().all(|b| b.is_ascii_digit()))
}

pub use folder::{
    display_name, held_out, load_split, scan_folder, DataError, Dataset, Sample, Split,
};
pub use image_file::{
    check_pixel_limit, collect_images, decode_image, input_limits, is_image_path, load_image,
    read_image_file, set_input_limits, ImageError, InputLimits, IMAGE_EXTENSIONS,
};
