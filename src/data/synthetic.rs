//! A synthetic labelled image set of shapes, for training tests and offline demos:
//! circles, squares, triangles and crosses in random bright colours on random dark
//! backgrounds, of random sizes, positions and slight rotations, with pixel noise.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::cnn::rng::Rng;

/// The classes, in label order (folder names).
pub const SHAPES: [&str; 4] = ["circle", "cross", "square", "triangle"];

fn inside(shape: &str, u: f64, v: f64) -> bool {
    // (u, v): the pixel in the shape's own frame, unit "radius".
    match shape {
        "circle" => u * u + v * v <= 1.0,
        "square" => u.abs() <= 0.8 && v.abs() <= 0.8,
        "cross" => (u.abs() <= 0.25 && v.abs() <= 1.0) || (v.abs() <= 0.25 && u.abs() <= 1.0),
        _ => {
            // Equilateral triangle inscribed in the unit circle, pointing up.
            let h = 3f64.sqrt() / 2.0;
            let (a, b, c) = ((0.0, 1.0), (-h, -0.5), (h, -0.5));
            let side =
                |p: (f64, f64), q: (f64, f64)| (q.0 - p.0) * (v - p.1) - (q.1 - p.1) * (u - p.0);
            let (d1, d2, d3) = (side(a, b), side(b, c), side(c, a));
            !((d1 < 0.0 || d2 < 0.0 || d3 < 0.0) && (d1 > 0.0 || d2 > 0.0 || d3 > 0.0))
        }
    }
}

fn colour(rng: &mut Rng, lo: f64, hi: f64) -> [f64; 3] {
    [rng.range(lo, hi), rng.range(lo, hi), rng.range(lo, hi)]
}

/// One image of `shape`, `side` pixels square.
pub fn draw_shape(shape: &str, side: u32, rng: &mut Rng) -> RgbImage {
    // A bright shape on a dark background, each in a random colour.
    let bg = colour(rng, 0.0, 90.0);
    let fg = colour(rng, 150.0, 255.0);
    let s = side as f64;
    let radius = rng.range(0.28, 0.42) * s;
    let cx = rng.range(radius, s - radius);
    let cy = rng.range(radius, s - radius);
    // A little rotation: enough variety, while a square stays a square (not a diamond).
    let angle = rng.range(-0.25, 0.25);
    let (sin, cos) = angle.sin_cos();
    let mut img = RgbImage::new(side, side);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (dx, dy) = (
            (x as f64 + 0.5 - cx) / radius,
            (cy - y as f64 - 0.5) / radius,
        );
        let (u, v) = if shape == "circle" {
            (dx, dy)
        } else {
            (dx * cos + dy * sin, -dx * sin + dy * cos)
        };
        let base = if inside(shape, u, v) { fg } else { bg };
        let noise = rng.range(-12.0, 12.0);
        *px = Rgb([0, 1, 2].map(|i| (base[i] + noise).clamp(0.0, 255.0) as u8));
    }
    img
}

/// Whether `parts` (a path relative to a set's root, by component) is a picture
/// [`make_shapes`] writes: `<shape>/<shape>_NNNN.png`.
pub fn is_shapes_file(parts: &[&str]) -> bool {
    match parts {
        [class, name] => {
            SHAPES.contains(class) && super::is_numbered_png(name, &format!("{class}_"), 4)
        }
        _ => false,
    }
}

/// Write `per_class` PNG images of each shape under `dir/<shape>/`.
pub fn make_shapes(dir: &Path, per_class: usize, side: u32, seed: u64) -> std::io::Result<()> {
    let mut rng = Rng::new(seed);
    for shape in SHAPES {
        let d = dir.join(shape);
        std::fs::create_dir_all(&d)?;
        for i in 0..per_class {
            draw_shape(shape, side, &mut rng)
                .save(d.join(format!("{shape}_{i:04}.png")))
                .map_err(std::io::Error::other)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pictures_are_told_from_other_files() {
        assert!(is_shapes_file(&["circle", "circle_0003.png"]));
        assert!(is_shapes_file(&["cross", "cross_12345.png"]), "past 9999");
        assert!(!is_shapes_file(&["circle", "square_0003.png"]));
        assert!(!is_shapes_file(&["circle", "mine.png"]));
        assert!(!is_shapes_file(&["notes.txt"]));
        assert!(!is_shapes_file(&["other", "other_0001.png"]));
    }

    #[test]
    fn shapes_cover_a_plausible_share_of_their_square() {
        // Area of each shape at radius 1 relative to the 2x2 square, by sampling.
        let expected = [
            ("circle", 0.785),
            ("square", 0.64),
            ("cross", 0.44),
            ("triangle", 0.325),
        ];
        for (shape, want) in expected {
            let n = 200;
            let hits = (0..n * n)
                .filter(|i| {
                    let (u, v) = (
                        (i % n) as f64 / n as f64 * 2.0 - 1.0,
                        (i / n) as f64 / n as f64 * 2.0 - 1.0,
                    );
                    inside(shape, u, v)
                })
                .count();
            let got = hits as f64 / (n * n) as f64;
            assert!((got - want).abs() < 0.02, "{shape}: {got}");
        }
    }

    #[test]
    fn images_are_written_per_class() {
        let dir = tempfile::tempdir().unwrap();
        make_shapes(dir.path(), 3, 32, 1).unwrap();
        for s in SHAPES {
            assert_eq!(std::fs::read_dir(dir.path().join(s)).unwrap().count(), 3);
        }
    }
}
