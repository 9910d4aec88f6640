//! Dev tool: what the folder pipeline spends per photo before the encoder, split into
//! reading the file, decoding it and OpenAI's preprocessing (resize, crop, normalise),
//! on one thread; medians over ROUNDS passes of the folder. Compare with Pillow's
//! numbers from `python3 bench/decode_pillow.py FOLDER`; photos from
//! `python3 bench/make_photos.py FOLDER 40`.
//!
//!     cargo run --release --example decode_bench FOLDER [ROUNDS]
use clipscope::clip::preprocess::{center_crop_rgb, normalize_chw};
use clipscope::clip::PreprocessConfig;
use clipscope::data::{collect_images, decode_image};
use std::path::PathBuf;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let folder = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: decode_bench FOLDER [ROUNDS]"))?,
    );
    let rounds: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5);
    let paths: Vec<PathBuf> = collect_images(&[folder])
        .into_iter()
        .collect::<Result<_, _>>()?;
    let cfg = PreprocessConfig::openai(224);
    let (mut read, mut decode, mut prep) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (mut r, mut d, mut p) = (0.0, 0.0, 0.0);
        for path in &paths {
            let t = Instant::now();
            let bytes = std::fs::read(path)?;
            let t1 = Instant::now();
            let img = decode_image(path, &bytes)?;
            let t2 = Instant::now();
            let chw = normalize_chw(&center_crop_rgb(&img, cfg.image_size), &cfg);
            let t3 = Instant::now();
            std::hint::black_box(chw);
            r += (t1 - t).as_secs_f64();
            d += (t2 - t1).as_secs_f64();
            p += (t3 - t2).as_secs_f64();
        }
        let n = paths.len() as f64;
        read.push(r / n * 1e3);
        decode.push(d / n * 1e3);
        prep.push(p / n * 1e3);
    }
    println!(
        "{} photos, ms per photo (median of {rounds} passes): read {:.2}, decode {:.2}, preprocess {:.2}",
        paths.len(),
        median(read),
        median(decode),
        median(prep)
    );
    Ok(())
}
