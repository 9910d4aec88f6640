//! Dev tool: dump generated demo training pairs (preprocessed 64x64 crops, captions,
//! scene facts and caption mentions) for the PyTorch side of the demo benchmarks.
//!
//!     cargo run --release --example dump_scenes N DIR [SEED] [VARIETY]
use clipscope::clip::preprocess::center_crop_rgb;
use clipscope::cnn::rng::Rng;
use clipscope::data::scenes;
use rayon::prelude::*;
use std::io::Write;

/// One dumped pair: crop bytes, caption, scene facts, caption mentions (-1: unstated).
type Item = (Vec<u8>, String, [i64; 5], [i64; 5]);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args[1].parse().unwrap();
    let out = std::path::Path::new(&args[2]);
    let seed: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
    let variety: f64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    std::fs::create_dir_all(out).unwrap();
    let items: Vec<Item> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let s = scenes::sample_with(
                scenes::random_scene_with(&mut rng, &scenes::HELD_OUT, variety),
                &mut rng,
                variety,
            );
            let crop = center_crop_rgb(&image::DynamicImage::ImageRgb8(s.image), 64).into_raw();
            let sc = [
                s.scene.shape,
                s.scene.colour,
                s.scene.size,
                s.scene.position,
                s.scene.background,
            ]
            .map(|v| v as i64);
            let m = s.mentions;
            let mm = [m.shape, m.colour, m.size, m.position, m.background]
                .map(|v| v.map_or(-1, |v| v as i64));
            (crop, s.caption, sc, mm)
        })
        .collect();
    let mut pix = std::fs::File::create(out.join("pixels.u8")).unwrap();
    let mut meta = std::fs::File::create(out.join("meta.jsonl")).unwrap();
    for (c, cap, sc, mm) in &items {
        pix.write_all(c).unwrap();
        writeln!(
            meta,
            "{}",
            serde_json::json!({"caption": cap, "scene": sc, "mentions": mm})
        )
        .unwrap();
    }
}
