//! Decoding image files: one place for every input error, each naming the file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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

/// What an input image may cost before it is refused: checked before anything is
/// allocated for it (the file's size from its metadata, the pixel count from its header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest file read, in bytes (the file is read whole before decoding).
    pub max_file_bytes: u64,
    /// Largest width x height decoded: a decompression bomb (a small file claiming
    /// gigapixels) is refused from its header.
    pub max_pixels: u64,
}

impl InputLimits {
    /// The defaults: 512 MiB files and 178,956,970 pixels (Pillow's
    /// `MAX_IMAGE_PIXELS` x 2, past which Pillow itself refuses a picture as a bomb).
    pub const DEFAULT: Self = Self {
        max_file_bytes: 512 << 20,
        max_pixels: 178_956_970,
    };
}

static LIMITS: OnceLock<InputLimits> = OnceLock::new();

/// Set the process's input limits (once, before any image is read; the command line's
/// `--max-file-size` and `--max-pixels`). Later calls are ignored.
pub fn set_input_limits(limits: InputLimits) {
    let _ = LIMITS.set(limits);
}

/// The input limits in force.
pub fn input_limits() -> InputLimits {
    LIMITS.get().copied().unwrap_or(InputLimits::DEFAULT)
}

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
    #[error("{}: not a readable image: {}", .path.display(), decode_reason(.source))]
    Decode {
        /// The file at fault.
        path: PathBuf,
        /// What the decoder said.
        source: image::ImageError,
    },
    /// The data ends before the picture does (a download cut short, say), which Pillow
    /// refuses too rather than filling the rest with grey.
    #[error("{}: truncated: the file ends before the picture does; download or copy it again", .path.display())]
    Truncated {
        /// The file at fault.
        path: PathBuf,
    },
    /// The file is larger than any image clipscope accepts.
    #[error("{path}: {size} bytes is too large for an image (at most {max}; raise it with --max-file-size)")]
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
    /// The file holds no bytes.
    #[error("{path}: empty file (0 bytes)")]
    Empty {
        /// The file at fault.
        path: PathBuf,
    },
    /// The header declares a picture with no pixels (a width or height of 0), which
    /// some formats (PNM) allow.
    #[error("{path}: the picture is {width}x{height} pixels: nothing to classify")]
    NoPixels {
        /// The file at fault.
        path: PathBuf,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
    /// A named pipe, device or socket: never read, as reading one may block forever or
    /// never end (`/dev/zero`).
    #[error("{path}: not a regular file ({kind}); give an image file or a folder")]
    NotAFile {
        /// The path at fault.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// A folder that holds no image files (by extension), so nothing would be done.
    #[error("{path}: no image files in this folder (looked for .{exts})", exts = IMAGE_EXTENSIONS.join(", ."))]
    NoImages {
        /// The folder at fault.
        path: PathBuf,
    },
    /// The header claims more pixels than the limit: a decompression bomb, or a picture
    /// larger than any CLIP input needs.
    #[error("{path}: {width}x{height} pixels is more than the limit of {max} (raise it with --max-pixels)")]
    TooManyPixels {
        /// The file at fault.
        path: PathBuf,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The limit.
        max: u64,
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
            | Self::Truncated { path }
            | Self::TooLarge { path, .. }
            | Self::Missing { path }
            | Self::NotAFile { path, .. }
            | Self::Empty { path }
            | Self::NoPixels { path, .. }
            | Self::NoImages { path }
            | Self::TooManyPixels { path, .. }
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
    let io = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::Missing {
            path: path.to_path_buf(),
        },
        _ => io(e),
    })?;
    // Checked before opening: opening a named pipe blocks until a writer comes.
    if !meta.is_file() {
        return Err(ImageError::NotAFile {
            path: path.to_path_buf(),
            kind: file_kind(&meta),
        });
    }
    let max = input_limits().max_file_bytes;
    let too_large = |size| ImageError::TooLarge {
        path: path.to_path_buf(),
        size,
        max,
    };
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    // Bounded even so: a file may grow between the check and the read.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .map_err(io)?
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The decoder's complaint on one line, in words a user can act on.
fn decode_reason(e: &image::ImageError) -> String {
    match e {
        image::ImageError::Unsupported(u)
            if matches!(
                u.kind(),
                image::error::UnsupportedErrorKind::Format(image::error::ImageFormatHint::Unknown)
            ) =>
        {
            format!(
                "not a picture in a format clipscope reads ({})",
                "JPEG, PNG, GIF, BMP, TIFF, WebP, PNM, ICO, QOI"
            )
        }
        other => other
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// What a file that is not a regular file is, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a named pipe";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a folder"
    } else {
        "not a file"
    }
}

/// Refuse a picture whose header claims more pixels than the limit, before decoding
/// allocates anything for it.
fn check_pixels(path: &Path, width: u32, height: u32) -> Result<(), ImageError> {
    let max = input_limits().max_pixels;
    if u64::from(width) * u64::from(height) > max {
        return Err(ImageError::TooManyPixels {
            path: path.to_path_buf(),
            width,
            height,
            max,
        });
    }
    Ok(())
}

/// Decode the bytes of the image file `path` (named in errors), within memory limits.
/// The bytes serve the JPEG decoder and, for other formats, the image crate.
pub fn decode_image(path: &Path, bytes: &[u8]) -> Result<DynamicImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty {
            path: path.to_path_buf(),
        });
    }
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
    check_pixel_limit(path, bytes)?;
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        match decode_jpeg_like_pillow(bytes) {
            Jpeg::Decoded(img) => return Ok(img),
            Jpeg::Truncated => {
                return Err(ImageError::Truncated {
                    path: path.to_path_buf(),
                })
            }
            Jpeg::Unhandled => {}
        }
    }
    let img = reader.decode().map_err(|source| ImageError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err(ImageError::NoPixels {
            path: path.to_path_buf(),
            width: img.width(),
            height: img.height(),
        });
    }
    Ok(img)
}

/// Refuse bytes whose image header claims more pixels than `--max-pixels` allows (a
/// header that cannot be read passes: decoding will name the problem).
pub fn check_pixel_limit(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    match header_dimensions(bytes) {
        Ok((w, h)) => check_pixels(path, w, h),
        Err(_) => Ok(()),
    }
}

/// Width and height from the header alone.
fn header_dimensions(bytes: &[u8]) -> image::ImageResult<(u32, u32)> {
    // Without the decoder's own limits, which would refuse a bomb less clearly.
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?;
    reader.no_limits();
    reader.into_dimensions()
}

/// What libjpeg-turbo made of a JPEG.
enum Jpeg {
    /// The picture.
    Decoded(DynamicImage),
    /// The data ended before the picture did.
    Truncated,
    /// Not a JPEG it handles (CMYK, oversized, corrupt): the `image` crate decodes or
    /// reports it.
    Unhandled,
}

/// The payload libjpeg's warning of a premature end unwinds with.
struct PrematureEnd;

/// libjpeg's fatal errors end decoding by unwinding (without the panic hook).
extern "C-unwind" fn unwind_on_error(_cinfo: &mut mozjpeg_sys::jpeg_common_struct) {
    std::panic::resume_unwind(Box::new(()));
}

/// libjpeg's warnings pass but "premature end of JPEG file", which Pillow refuses as
/// truncated where libjpeg would fill the rest of the picture with grey.
extern "C-unwind" fn unwind_on_premature_end(
    cinfo: &mut mozjpeg_sys::jpeg_common_struct,
    level: std::os::raw::c_int,
) {
    // SAFETY: libjpeg calls this with its own struct, whose `err` is the manager this
    // function belongs to.
    let code = unsafe { (*cinfo.err).msg_code };
    if level < 0 && code == mozjpeg_sys::JWRN_JPEG_EOF as std::os::raw::c_int {
        std::panic::resume_unwind(Box::new(PrematureEnd));
    }
}

/// libjpeg's error manager with the two handlers above.
fn jpeg_error_manager() -> mozjpeg_sys::jpeg_error_mgr {
    // SAFETY: a zeroed manager is what jpeg_std_error expects to fill in.
    let mut err: mozjpeg_sys::jpeg_error_mgr = unsafe { std::mem::zeroed() };
    // SAFETY: `err` is a valid manager for the call's duration; it keeps no pointer to
    // itself, so it may move afterwards.
    unsafe { mozjpeg_sys::jpeg_std_error(&mut err) };
    err.error_exit = Some(unwind_on_error);
    err.emit_message = Some(unwind_on_premature_end);
    err
}

/// Decode a grey or colour JPEG with libjpeg-turbo's decoder (as vendored by mozjpeg),
/// with the settings Pillow uses (integer IDCT, fancy upsampling), so that pixels are
/// the reference's. zune-jpeg, the `image` crate's decoder, differs by up to 3 levels.
fn decode_jpeg_like_pillow(bytes: &[u8]) -> Jpeg {
    let decoded = std::panic::catch_unwind(|| {
        let d = mozjpeg::Decompress::builder()
            .with_err(jpeg_error_manager())
            .from_mem(bytes)
            .ok()?;
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
    });
    match decoded {
        Ok(Some(img)) => Jpeg::Decoded(img),
        Err(payload) if payload.is::<PrematureEnd>() => Jpeg::Truncated,
        _ => Jpeg::Unhandled,
    }
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
            let before = out.len();
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
            if out.len() == before {
                out.push(Err(ImageError::NoImages {
                    path: input.clone(),
                }));
            }
        } else if input.exists() || input.symlink_metadata().is_ok() {
            // A link that leads nowhere (or round in a loop) is named as what it is when
            // it is read, not reported missing.
            out.push(Ok(input.clone()));
        } else {
            out.push(Err(ImageError::Missing {
                path: input.clone(),
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jpeg_cut_short_is_refused_as_truncated_as_pillow_does() {
        let picture =
            image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let mut jpeg = std::io::Cursor::new(Vec::new());
        picture
            .write_to(&mut jpeg, image::ImageFormat::Jpeg)
            .unwrap();
        let bytes = jpeg.into_inner();
        let path = Path::new("cut.jpg");
        assert!(decode_image(path, &bytes).is_ok());
        // Half the data, or all of it but the end-of-image marker: Pillow raises
        // "image file is truncated" for both.
        for cut in [bytes.len() / 2, bytes.len() - 2] {
            let err = decode_image(path, &bytes[..cut]).unwrap_err();
            assert!(matches!(err, ImageError::Truncated { .. }), "{cut}: {err}");
        }
    }

    #[test]
    fn a_picture_with_no_pixels_is_refused_not_resized() {
        // PNM allows a width of 0; found by the `image` fuzz target.
        for bytes in [&b"P4\n0 7\n"[..], &b"P5\n3 0\n255\n"[..]] {
            let err = decode_image(Path::new("x.pbm"), bytes).unwrap_err();
            assert!(
                matches!(err, ImageError::NoPixels { .. }) || err.to_string().contains("x.pbm"),
                "{err}"
            );
        }
        let crop = crate::clip::preprocess::center_crop_rgb(&DynamicImage::new_rgb8(0, 7), 4);
        assert_eq!(crop.dimensions(), (4, 4));
    }
}
