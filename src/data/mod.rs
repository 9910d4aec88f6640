//! Data on disk: decoding images with limits, finding images in folders, labelled image
//! folders and their splits, and dataset downloads.

pub mod fetch;
pub mod folder;
mod image_file;
pub mod scenes;
pub mod synthetic;

pub use folder::{
    display_name, held_out, load_split, scan_folder, DataError, Dataset, Sample, Split,
};
pub use image_file::{
    check_pixel_limit, collect_images, decode_image, input_limits, is_image_path, load_image,
    read_image_file, set_input_limits, ImageError, InputLimits, IMAGE_EXTENSIONS,
};
