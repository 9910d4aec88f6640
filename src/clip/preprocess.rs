//! OpenAI's CLIP preprocessing (`clip._transform`), reproduced exactly.
//!
//! Resize the short side to the model's input size with Pillow's bicubic filter (the
//! long side truncated as torchvision computes it), centre-crop with torchvision's
//! offset rounding, convert to RGB after the crop, then scale to [0, 1] and normalise
//! with CLIP's mean and standard deviation.
//!
//! Pixel modes follow Pillow, with two documented departures where Pillow's behaviour
//! would be a bug for a user: palette and 1-bit images are expanded before resizing
//! (Pillow resizes them with NEAREST whatever filter is asked), and 16-bit and float
//! images are rounded to 8 bits first (Pillow's conversion of 16-bit grey to RGB clips
//! every value above 255 to white). RGBA and LA are resized with premultiplied alpha,
//! as Pillow does, and the alpha is then dropped without compositing.

use std::borrow::Cow;

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};

use super::resample::{premultiply, unpremultiply, Planar8};

/// CLIP's per-channel mean (RGB), from OpenAI's `clip.py`.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation (RGB), from OpenAI's `clip.py`.
// The digits are OpenAI's as published; they round to f32 exactly as in PyTorch.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// What a model expects of its input picture.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreprocessConfig {
    /// Side of the square input, in pixels (224, or 336 for ViT-L/14@336).
    pub image_size: usize,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after the mean.
    pub std: [f32; 3],
}

impl PreprocessConfig {
    /// OpenAI's numbers for a model with square inputs of `image_size` pixels.
    pub fn openai(image_size: usize) -> Self {
        Self {
            image_size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }
}

/// Turn any decoded image into 8-bit samples in Pillow's mode for it:
/// L, LA, RGB or RGBA (8-bit images borrowed, not copied).
fn to_planar8(img: &DynamicImage) -> Planar8<Cow<'_, [u8]>> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let (channels, data) = match img {
        DynamicImage::ImageLuma8(b) => (1, Cow::Borrowed(b.as_raw().as_slice())),
        DynamicImage::ImageLumaA8(b) => (2, Cow::Borrowed(b.as_raw().as_slice())),
        DynamicImage::ImageRgb8(b) => (3, Cow::Borrowed(b.as_raw().as_slice())),
        DynamicImage::ImageRgba8(b) => (4, Cow::Borrowed(b.as_raw().as_slice())),
        DynamicImage::ImageLuma16(b) => (1, Cow::Owned(round16(b.as_raw()))),
        DynamicImage::ImageLumaA16(b) => (2, Cow::Owned(round16(b.as_raw()))),
        DynamicImage::ImageRgb16(b) => (3, Cow::Owned(round16(b.as_raw()))),
        DynamicImage::ImageRgba16(b) => (4, Cow::Owned(round16(b.as_raw()))),
        other if other.color().has_alpha() => (4, Cow::Owned(other.to_rgba8().into_raw())),
        other => (3, Cow::Owned(other.to_rgb8().into_raw())),
    };
    Planar8 {
        width,
        height,
        channels,
        data,
    }
}

/// 16-bit to 8-bit with rounding: `round(v / 257)`.
fn round16(samples: &[u16]) -> Vec<u8> {
    samples
        .iter()
        .map(|&v| ((u32::from(v) + 128) / 257) as u8)
        .collect()
}

/// torchvision's `Resize(size)` on a `width` x `height` image: the short side becomes
/// `size`, the long side `int(size * long / short)`.
pub fn resized_dims(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision's `CenterCrop` offset: `int(round((len - size) / 2))`, with Python's
/// round-half-to-even.
pub fn crop_offset(len: usize, size: usize) -> usize {
    ((len as f64 - size as f64) / 2.0)
        .round_ties_even()
        .max(0.0) as usize
}

/// The square RGB picture the model sees, before normalisation. A picture with no
/// pixels (which [`crate::data::decode_image`] refuses) gives a black square.
pub fn center_crop_rgb(img: &DynamicImage, size: usize) -> RgbImage {
    if img.width() == 0 || img.height() == 0 {
        return RgbImage::new(size as u32, size as u32);
    }
    let mut planar = to_planar8(img);
    let has_alpha = planar.channels.is_multiple_of(2);
    if has_alpha {
        premultiply(planar.data.to_mut(), planar.channels);
    }
    let (w, h) = resized_dims(planar.width, planar.height, size);
    let (x0, y0) = (crop_offset(w, size), crop_offset(h, size));
    // Only the crop is resized: the same pixels, without the parts that are cut away.
    let mut crop = planar.resize_bicubic_window(w, h, x0..x0 + size, y0..y0 + size);
    if has_alpha {
        unpremultiply(&mut crop);
    }
    let rgb: Vec<u8> = match crop.channels {
        1 | 2 => crop
            .data
            .chunks_exact(crop.channels)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        3 => crop.data,
        _ => crop
            .data
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
    };
    RgbImage::from_raw(size as u32, size as u32, rgb)
        .unwrap_or_else(|| unreachable!("crop holds size * size * 3 samples"))
}

/// Scale an RGB crop to [0, 1], normalise it, and lay it out as a CHW `f32` vector.
pub fn normalize_chw(crop: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let plane = (crop.width() * crop.height()) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in crop.pixels().enumerate() {
        for c in 0..3 {
            // The same operations, in the same order and precision, as ToTensor + Normalize.
            out[c * plane + i] = (f32::from(px[c]) / 255.0 - cfg.mean[c]) / cfg.std[c];
        }
    }
    out
}

/// Preprocess a batch of images into a `(N, 3, S, S)` tensor on `device`.
pub fn batch_tensor(
    images: &[&DynamicImage],
    cfg: &PreprocessConfig,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let s = cfg.image_size;
    let mut data = Vec::with_capacity(images.len() * 3 * s * s);
    for img in images {
        data.extend(normalize_chw(&center_crop_rgb(img, s), cfg));
    }
    Tensor::from_vec(data, (images.len(), 3, s, s), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_dims_follow_torchvision() {
        assert_eq!(resized_dims(640, 427, 224), (335, 224));
        assert_eq!(resized_dims(451, 300, 224), (336, 224));
        assert_eq!(resized_dims(300, 451, 224), (224, 336));
        assert_eq!(resized_dims(512, 512, 224), (224, 224));
        assert_eq!(resized_dims(100, 80, 224), (280, 224));
    }

    #[test]
    fn crop_offset_rounds_half_to_even() {
        assert_eq!(crop_offset(225, 224), 0); // 0.5 -> 0
        assert_eq!(crop_offset(227, 224), 2); // 1.5 -> 2
        assert_eq!(crop_offset(229, 224), 2); // 2.5 -> 2
        assert_eq!(crop_offset(224, 224), 0);
    }

    #[test]
    fn grey_images_become_three_equal_channels() {
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_fn(300, 250, |x, y| {
            image::Luma([((x * 7 + y * 3) % 256) as u8])
        }));
        let crop = center_crop_rgb(&img, 224);
        assert_eq!(crop.dimensions(), (224, 224));
        assert!(crop.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    }

    #[test]
    fn an_extremely_long_image_is_cropped_without_resizing_all_of_it() {
        // Resized whole, this would be 224 x 4,480,000 pixels (3 GB).
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_fn(1, 20_000, |_, y| {
            image::Luma([(y % 256) as u8])
        }));
        let crop = center_crop_rgb(&img, 224);
        assert_eq!(crop.dimensions(), (224, 224));
    }

    #[test]
    fn normalisation_uses_clip_mean_and_std() {
        let crop = RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 128]));
        let v = normalize_chw(&crop, &PreprocessConfig::openai(2));
        assert!((v[0] - (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]).abs() < 1e-6);
        assert!((v[4] - (0.0 - CLIP_MEAN[1]) / CLIP_STD[1]).abs() < 1e-6);
    }
}
