//! Kitty graphics by direct placement: for terminals that speak the kitty protocol but
//! draw no Unicode placeholders (kitty before 0.28, Konsole). The pixels are transmitted
//! once under an id, then placed at the cursor as often as needed, and freed when the
//! picture is replaced. Every command asks for no answer (`q=2`), which would otherwise
//! arrive as keys.

use base64::Engine;
use image::RgbaImage;

/// Base64 characters per transmission chunk (the protocol's limit is 4096).
const CHUNK: usize = 4096;

/// Transmit `rgba` under `id` without showing it (`a=t`), zlib-compressed, in chunks.
pub fn transmit(rgba: &RgbaImage, id: u32) -> String {
    let compressed = zlib(rgba.as_raw());
    let payload = base64::engine::general_purpose::STANDARD.encode(compressed);
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
                "\x1b_Ga=t,f=32,o=z,s={},v={},i={id},q=2,m={more};{chunk}\x1b\\",
                rgba.width(),
                rgba.height()
            ));
        } else {
            out.push_str(&format!("\x1b_Gm={more};{chunk}\x1b\\"));
        }
    }
    out
}

/// Show image `id` at the cursor over `cols` x `rows` cells, leaving the cursor where it
/// is (`C=1`). Placement 1 replaces an earlier placement of the same image.
pub fn place(id: u32, cols: u16, rows: u16) -> String {
    format!("\x1b_Ga=p,i={id},p=1,c={cols},r={rows},C=1,q=2\x1b\\")
}

/// Remove every picture placed on the screen (the data stays for placing again).
pub const DELETE_PLACEMENTS: &str = "\x1b_Ga=d,d=a,q=2\x1b\\";

/// Remove image `id`'s placements and free its data.
pub fn free(id: u32) -> String {
    format!("\x1b_Ga=d,d=I,i={id},q=2\x1b\\")
}

/// zlib-compress (RFC 1950, which `o=z` means) at the fastest level: encoding time on a
/// background thread matters more than a few more bytes to the terminal.
fn zlib(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(raw);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmission_is_chunked_and_decodes_to_the_pixels() {
        // Noise compresses badly, so the payload needs several chunks.
        let mut seed = 1u32;
        let img = RgbaImage::from_fn(64, 64, |_, _| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            image::Rgba(seed.to_le_bytes())
        });
        let t = transmit(&img, 7);
        let commands: Vec<&str> = t.split("\x1b\\").filter(|c| !c.is_empty()).collect();
        assert!(commands.len() > 1);
        assert!(commands[0].starts_with("\x1b_Ga=t,f=32,o=z,s=64,v=64,i=7,q=2,m=1;"));
        assert!(commands.last().unwrap().starts_with("\x1b_Gm=0;"));
        let payload: String = commands
            .iter()
            .map(|c| c.split_once(';').unwrap().1)
            .collect();
        let compressed = base64::engine::general_purpose::STANDARD
            .decode(payload)
            .unwrap();
        let mut raw = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::ZlibDecoder::new(&compressed[..]),
            &mut raw,
        )
        .unwrap();
        assert_eq!(raw, img.as_raw().as_slice());
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
