//! Images for the CNN: a decoded cache, ImageNet normalisation, and the standard
//! augmentation (random resized crop, horizontal flip).

use candle_core::{Device, Result, Tensor};
use image::imageops::FilterType;
use image::RgbImage;

use super::rng::Rng;

/// ImageNet's per-channel mean (torchvision).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation (torchvision).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The short side images are kept at for crops of `size` (256 for 224, as torchvision).
pub fn cache_side(size: usize) -> u32 {
    ((size as f64) * 256.0 / 224.0).round() as u32
}

/// Resize so that the short side is `side` (bilinear, antialiased by the `image` crate).
pub fn resize_short_side(img: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (
            side,
            ((h as f64) * side as f64 / w as f64).round().max(1.0) as u32,
        )
    } else {
        (
            ((w as f64) * side as f64 / h as f64).round().max(1.0) as u32,
            side,
        )
    };
    image::imageops::resize(img, nw, nh, FilterType::Triangle)
}

/// The centre `size` x `size` crop (evaluation).
pub fn center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (s_w, s_h) = (size.min(w), size.min(h));
    let crop = image::imageops::crop_imm(img, (w - s_w) / 2, (h - s_h) / 2, s_w, s_h).to_image();
    if crop.dimensions() == (size, size) {
        crop
    } else {
        image::imageops::resize(&crop, size, size, FilterType::Triangle)
    }
}

/// torchvision's `RandomResizedCrop(size, scale, ratio=(3/4, 4/3))` then a horizontal flip
/// with probability 0.5.
pub fn random_resized_crop_flip(
    img: &RgbImage,
    size: u32,
    scale: (f64, f64),
    rng: &mut Rng,
) -> RgbImage {
    let (w, h) = img.dimensions();
    let area = (w * h) as f64;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    let mut region = None;
    for _ in 0..10 {
        let target = area * rng.range(scale.0, scale.1);
        let ratio = rng.range(log_lo, log_hi).exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let x = rng.below((w - cw + 1) as usize) as u32;
            let y = rng.below((h - ch + 1) as usize) as u32;
            region = Some((x, y, cw, ch));
            break;
        }
    }
    let (x, y, cw, ch) = region.unwrap_or_else(|| {
        let s = w.min(h);
        ((w - s) / 2, (h - s) / 2, s, s)
    });
    let crop = image::imageops::crop_imm(img, x, y, cw, ch).to_image();
    let mut out = image::imageops::resize(&crop, size, size, FilterType::Triangle);
    if rng.uniform() < 0.5 {
        image::imageops::flip_horizontal_in_place(&mut out);
    }
    out
}

/// A batch of equally sized RGB images as a normalised `(N, 3, S, S)` tensor.
pub fn to_tensor(images: &[RgbImage], device: &Device) -> Result<Tensor> {
    let (w, h) = images.first().map(|i| i.dimensions()).unwrap_or((0, 0));
    let plane = (w * h) as usize;
    let mut data = vec![0f32; images.len() * 3 * plane];
    for (n, img) in images.iter().enumerate() {
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                data[(n * 3 + c) * plane + i] =
                    (f32::from(px[c]) / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
    }
    Tensor::from_vec(data, (images.len(), 3, h as usize, w as usize), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_have_the_asked_size() {
        let img = RgbImage::from_fn(90, 60, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let mut rng = Rng::new(1);
        for _ in 0..20 {
            assert_eq!(
                random_resized_crop_flip(&img, 32, (0.25, 1.0), &mut rng).dimensions(),
                (32, 32)
            );
        }
        let r = resize_short_side(&img, 73);
        assert_eq!(r.dimensions(), (110, 73));
        assert_eq!(center_crop(&r, 64).dimensions(), (64, 64));
        let t = to_tensor(&[center_crop(&r, 64)], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 64, 64]);
    }
}
