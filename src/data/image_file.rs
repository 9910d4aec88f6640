//! Decoding image files: one place for every input error, each naming the file.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageReader, Limits};

/// File extensions that are taken for images when a folder is walked.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp", "pnm", "pbm", "pgm", "ppm", "ico",
    "qoi",
];

/// Largest width or height accepted, so that a hostile header cannot exhaust memory.
const MAX_SIDE: u32 = 32_768;
/// Largest decoding allocation accepted.
const MAX_ALLOC: u64 = 1 << 30;
/// Largest file read (the file is read whole before decoding).
const MAX_FILE: u64 = 512 << 20;

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The bytes are not an image in a format clipscope decodes, or are corrupt.
    #[error("{path}: not a readable image: {source}")]
    Decode {
        /// The file at fault.
        path: PathBuf,
        /// What the decoder said.
        source: image::ImageError,
    },
    /// The file is larger than any image clipscope accepts.
    #[error("{path}: {size} bytes is too large for an image (at most {max})")]
    TooLarge {
        /// The file at fault.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A path given on the command line does not exist.
    #[error("{path}: no such file or directory")]
    Missing {
        /// The path at fault.
        path: PathBuf,
    },
    /// Decoding or preprocessing the file failed in a way the decoder did not report
    /// (a panic inside it), caught so that the other inputs go on.
    #[error("{path}: decoding failed unexpectedly: {message}")]
    Crashed {
        /// The file at fault.
        path: PathBuf,
        /// The panic's message.
        message: String,
    },
    /// A folder could not be walked.
    #[error("{path}: cannot list folder: {message}")]
    Walk {
        /// The folder at fault.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl ImageError {
    /// The file or folder at fault.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::Decode { path, .. }
            | Self::TooLarge { path, .. }
            | Self::Missing { path }
            | Self::Crashed { path, .. }
            | Self::Walk { path, .. } => path,
        }
    }
}

/// Decode an image file, whatever its extension says, within memory limits.
///
/// EXIF orientation is not applied, as in OpenAI's reference code (Pillow's
/// `Image.open`), so that results match it.
pub fn load_image(path: &Path) -> Result<DynamicImage, ImageError> {
    decode_image(path, &read_image_file(path)?)
}

/// Read an image file's bytes whole, refusing files larger than any image accepted.
/// With [`decode_image`], the two halves of [`load_image`], for callers that also need
/// the bytes (the embedding cache keys on them).
pub fn read_image_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    let size = std::fs::metadata(path)
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if size > MAX_FILE {
        return Err(ImageError::TooLarge {
            path: path.to_path_buf(),
            size,
            max: MAX_FILE,
        });
    }
    std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Decode the bytes of the image file `path` (named in errors), within memory limits.
/// The bytes serve the JPEG decoder and, for other formats, the image crate.
pub fn decode_image(path: &Path, bytes: &[u8]) -> Result<DynamicImage, ImageError> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        if let Some(img) = decode_jpeg_like_pillow(bytes) {
            return Ok(img);
        }
    }
    reader.decode().map_err(|source| ImageError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// Decode a grey or colour JPEG with libjpeg-turbo's decoder (as vendored by mozjpeg),
/// with the settings Pillow uses (integer IDCT, fancy upsampling), so that pixels are
/// the reference's. zune-jpeg, the `image` crate's decoder, differs by up to 3 levels.
/// Returns `None` for what it does not handle (CMYK, oversized, corrupt), which the
/// `image` crate then decodes or reports.
fn decode_jpeg_like_pillow(bytes: &[u8]) -> Option<DynamicImage> {
    // libjpeg reports fatal errors by unwinding (without the panic hook): catch them.
    std::panic::catch_unwind(|| {
        let d = mozjpeg::Decompress::new_mem(bytes).ok()?;
        let (w, h) = (d.width() as u32, d.height() as u32);
        if w > MAX_SIDE || h > MAX_SIDE {
            return None;
        }
        match d.color_space() {
            mozjpeg::ColorSpace::JCS_GRAYSCALE => {
                let mut s = d.grayscale().ok()?;
                let data: Vec<u8> = s.read_scanlines().ok()?;
                s.finish().ok()?;
                image::GrayImage::from_raw(w, h, data).map(DynamicImage::ImageLuma8)
            }
            mozjpeg::ColorSpace::JCS_YCbCr | mozjpeg::ColorSpace::JCS_RGB => {
                let mut s = d.rgb().ok()?;
                let data: Vec<u8> = s.read_scanlines().ok()?;
                s.finish().ok()?;
                image::RgbImage::from_raw(w, h, data).map(DynamicImage::ImageRgb8)
            }
            _ => None,
        }
    })
    .ok()
    .flatten()
}

/// Whether a path's extension marks it as an image (case-insensitive).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Expand the inputs: files are kept as given (whatever their extension), folders are
/// walked recursively for image files in sorted order. A path that does not exist is
/// returned as an error in its place so that the caller can report it and go on.
pub fn collect_images(inputs: &[PathBuf]) -> Vec<Result<PathBuf, ImageError>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let walker = walkdir::WalkDir::new(input)
                .follow_links(true)
                .sort_by_file_name();
            for entry in walker {
                match entry {
                    Ok(e) if e.file_type().is_file() && is_image_path(e.path()) => {
                        out.push(Ok(e.into_path()))
                    }
                    Ok(_) => {}
                    Err(err) => out.push(Err(ImageError::Walk {
                        path: err.path().unwrap_or(input).to_path_buf(),
                        message: err.to_string(),
                    })),
                }
            }
        } else if input.exists() {
            out.push(Ok(input.clone()));
        } else {
            out.push(Err(ImageError::Missing {
                path: input.clone(),
            }));
        }
    }
    out
}
