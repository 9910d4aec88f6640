//! Kitty graphics by direct placement: for terminals that speak the kitty protocol but
//! draw no Unicode placeholders (kitty before 0.28, Konsole). The pixels are transmitted
//! once under an id, then placed at the cursor as often as needed, and freed when the
//! picture is replaced. Every command asks for no answer (`q=2`), which would otherwise
//! arrive as keys.

use base64::Engine;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{DynamicImage, ImageEncoder};

/// Base64 characters per transmission chunk (the protocol's limit is 4096).
const CHUNK: usize = 4096;

/// Transmit `image` under `id` without showing it (`a=t`), as PNG (`f=100`: photos
/// come out at about two thirds of the bytes of zlib-compressed pixels), in chunks.
/// Opaque images go as RGB, others as RGBA.
pub fn transmit(image: &DynamicImage, id: u32) -> Result<String, image::ImageError> {
    let png = encode_png(image)?;
    let payload = base64::engine::general_purpose::STANDARD.encode(png);
    let chunks: Vec<&str> = payload
        .as_bytes()
        .chunks(CHUNK)
        // base64 is ASCII: every chunk boundary is a character boundary.
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    let mut out = String::with_capacity(payload.len() + chunks.len() * 24 + 64);
    for (i, chunk) in chunks.iter().enumerate() {
        let more = u8::from(i + 1 < chunks.len());
        if i == 0 {
            out.push_str(&format!(
                "\x1b_Ga=t,f=100,i={id},q=2,m={more};{chunk}\x1b\\"
            ));
        } else {
            out.push_str(&format!("\x1b_Gm={more};{chunk}\x1b\\"));
        }
    }
    Ok(out)
}

/// PNG at the fastest compression: encoding time on a background thread matters more
/// than a few more bytes to the terminal.
fn encode_png(image: &DynamicImage) -> Result<Vec<u8>, image::ImageError> {
    let mut png = Vec::new();
    let encoder =
        PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::Adaptive);
    let rgba = image.to_rgba8();
    let (w, h) = rgba.dimensions();
    if rgba.pixels().all(|p| p[3] == u8::MAX) {
        let rgb = DynamicImage::ImageRgba8(rgba).to_rgb8();
        encoder.write_image(rgb.as_raw(), w, h, image::ExtendedColorType::Rgb8)?;
    } else {
        encoder.write_image(rgba.as_raw(), w, h, image::ExtendedColorType::Rgba8)?;
    }
    Ok(png)
}

/// Show image `id` at the cursor over `cols` x `rows` cells, leaving the cursor where it
/// is (`C=1`). Placement 1 replaces an earlier placement of the same image.
pub fn place(id: u32, cols: u16, rows: u16) -> String {
    format!("\x1b_Ga=p,i={id},p=1,c={cols},r={rows},C=1,q=2\x1b\\")
}

/// Remove every picture placed on the screen (the pixels stay, for placing again).
pub const DELETE_PLACEMENTS: &str = "\x1b_Ga=d,d=a,q=2\x1b\\";

/// Remove image `id`'s placements and free its pixels.
pub fn free(id: u32) -> String {
    format!("\x1b_Ga=d,d=I,i={id},q=2\x1b\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmission_is_chunked_and_decodes_to_the_pixels() {
        // Noise compresses badly, so the payload needs several chunks.
        let mut seed = 1u32;
        let img = image::RgbImage::from_fn(64, 64, |_, _| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let [r, g, b, _] = seed.to_le_bytes();
            image::Rgb([r, g, b])
        });
        let t = transmit(&DynamicImage::ImageRgb8(img.clone()), 7).unwrap();
        let commands: Vec<&str> = t.split("\x1b\\").filter(|c| !c.is_empty()).collect();
        assert!(commands.len() > 1);
        assert!(commands[0].starts_with("\x1b_Ga=t,f=100,i=7,q=2,m=1;"));
        assert!(commands.last().unwrap().starts_with("\x1b_Gm=0;"));
        let payload: String = commands
            .iter()
            .map(|c| c.split_once(';').unwrap().1)
            .collect();
        let png = base64::engine::general_purpose::STANDARD
            .decode(payload)
            .unwrap();
        let back = image::load_from_memory(&png).unwrap();
        assert_eq!(back.to_rgb8(), img);
    }

    #[test]
    fn placing_and_freeing_name_the_image() {
        assert_eq!(
            place(9, 30, 12),
            "\x1b_Ga=p,i=9,p=1,c=30,r=12,C=1,q=2\x1b\\"
        );
        assert_eq!(free(9), "\x1b_Ga=d,d=I,i=9,q=2\x1b\\");
    }
}
