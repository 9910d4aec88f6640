//! Data on disk: decoding images with limits, finding images in folders, labelled image
//! folders and their splits, and dataset downloads.

pub mod fetch;
pub mod folder;
mod image_file;
pub mod scenes;
pub mod synthetic;

/// Removes from `dir` the files a generator wrote there earlier, as `is_generated` tells
/// them by their path relative to `dir` (at most one folder deep), and the split
/// manifest made of them; nothing else is touched. What `data shapes --force` and `data
/// scenes --force` clear before writing a new set, so that two sets never mix.
pub fn remove_generated(
    dir: &std::path::Path,
    is_generated: impl Fn(&std::path::Path) -> bool,
) -> std::io::Result<usize> {
    let mut removed = 0;
    let entries = walkdir::WalkDir::new(dir).min_depth(1).max_depth(2);
    for entry in entries.into_iter().filter_map(Result::ok) {
        let Ok(rel) = entry.path().strip_prefix(dir) else {
            continue;
        };
        let manifest = rel == std::path::Path::new(folder::MANIFEST);
        if entry.file_type().is_file() && (manifest || is_generated(rel)) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    // Class folders the removal emptied go too (a folder still holding anything stays).
    for entry in std::fs::read_dir(dir)?.filter_map(Result::ok) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
    Ok(removed)
}

/// Whether `rel` is `NAME` (a number of `digits` digits, `.png`) or `prefix` + `NAME`.
fn is_numbered_png(rel: &str, prefix: &str, digits: usize) -> bool {
    rel.strip_prefix(prefix)
        .and_then(|n| n.strip_suffix(".png"))
        .is_some_and(|n| n.len() == digits && n.bytes().all(|b| b.is_ascii_digit()))
}

pub use folder::{
    display_name, held_out, load_split, scan_folder, DataError, Dataset, Sample, Split,
};
pub use image_file::{
    check_pixel_limit, collect_images, decode_image, input_limits, is_image_path, load_image,
    read_image_file, set_input_limits, ImageError, InputLimits, IMAGE_EXTENSIONS,
};
