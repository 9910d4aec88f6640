//! Data on disk: decoding images with limits, and finding images in folders.

mod image_file;

pub use image_file::{collect_images, is_image_path, load_image, ImageError, IMAGE_EXTENSIONS};
