//! `clipscope bench`: median wall-clock times of the encoders, for side-by-side
//! comparison with PyTorch (`bench/bench_torch.py` measures the same things).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use candle_core::Tensor;

use clipscope::clip::model::Precision;
use clipscope::clip::preprocess::{center_crop_rgb, normalize_chw};
use clipscope::data::load_image;

use super::args::{BenchArgs, Format};
use super::EXIT_OK;

/// One measurement.
#[derive(serde::Serialize)]
struct Row {
    what: String,
    median_ms: f64,
    per_item_ms: f64,
}

fn median_ms(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up: first-call allocations and lazy initialisation
    let mut times: Vec<Duration> = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2].as_secs_f64() * 1e3)
}

/// Run the benchmark and print its table.
pub fn run(args: &BenchArgs) -> Result<u8> {
    if args.iters == 0 {
        bail!("--iters 0: give at least 1 timed run");
    }
    if args.batch.contains(&0) {
        bail!("--batch 0: batch sizes must be at least 1");
    }
    let t = Instant::now();
    let clip = super::load_model(&args.model)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut rows = vec![Row {
        what: "load model".into(),
        median_ms: load_ms,
        per_item_ms: load_ms,
    }];
    let s = clip.preprocess_config().image_size;
    for &b in &args.batch {
        // Deterministic pixels in CLIP's normalised range; the content does not matter.
        let data: Vec<f32> = (0..b * 3 * s * s)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let pixels = Tensor::from_vec(data, (b, 3, s, s), clip.device())?;
        let ms = median_ms(args.iters, || {
            clip.embed_pixels(&pixels)?;
            Ok(())
        })?;
        rows.push(Row {
            what: format!("image encoder, batch {b}"),
            median_ms: ms,
            per_item_ms: ms / b as f64,
        });
    }
    let prompts: Vec<_> = ["cat", "dog", "car", "tree", "house"]
        .iter()
        .map(|l| clip.tokenize(&format!("a photo of a {l}.")))
        .collect::<Result<_, _>>()?;
    let ms = median_ms(args.iters, || {
        clip.encode_tokens(&prompts)?;
        Ok(())
    })?;
    rows.push(Row {
        what: "text encoder, 5 prompts".into(),
        median_ms: ms,
        per_item_ms: ms / 5.0,
    });
    if let Some(path) = &args.image {
        let cfg = clip.preprocess_config().clone();
        let ms = median_ms(args.iters, || {
            let img = load_image(path)?;
            normalize_chw(&center_crop_rgb(&img, s), &cfg);
            Ok(())
        })?;
        rows.push(Row {
            what: format!("decode + preprocess {}", path.display()),
            median_ms: ms,
            per_item_ms: ms,
        });
    }
    // Which kernel the CPU's dense-layer products ran on: f32 on AVX-512, AVX2 or gemm;
    // bf16 on AMX, AVX512-BF16 or the portable loop.
    let kernel = match clip.precision() {
        _ if !clip.device().is_cpu() => None,
        Precision::F32 => Some(clipscope::clip::panels::Kernel::here().name()),
        Precision::Bf16 => Some(clipscope::clip::half::bf16_kernel()),
        Precision::F16 => None,
    };
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::json!({
                "model": clip.name(),
                "device": clip.device_name(),
                "precision": clip.precision().as_str(),
                "kernel": kernel,
                "cpu": clipscope::util::cpu_summary(),
                "threads": candle_core::utils::get_num_threads(),
                "rows": rows,
            })
        ),
        Format::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout().lock());
            w.write_record(["what", "median_ms", "per_item_ms"])?;
            for r in &rows {
                w.write_record([
                    r.what.clone(),
                    format!("{:.3}", r.median_ms),
                    format!("{:.3}", r.per_item_ms),
                ])?;
            }
            w.flush()?;
        }
        Format::Text => {
            let mut device = clip.device_name().to_string();
            if clip.device().is_cpu() {
                device += &format!(" ({})", clipscope::util::cpu_summary());
            }
            let mut precision = clip.precision().to_string();
            if let Some(kernel) = kernel {
                precision += &format!(" ({kernel})");
            }
            println!(
                "model {}  device {device}  precision {precision}  threads {}",
                clip.name(),
                candle_core::utils::get_num_threads()
            );
            // As wide as the longest row's name (a long --image path), so columns align.
            let width = rows
                .iter()
                .map(|r| r.what.chars().count())
                .max()
                .unwrap_or(0);
            for r in &rows {
                println!(
                    "{:<width$} {:>10.1} ms {:>10.1} ms/item",
                    r.what,
                    r.median_ms,
                    r.per_item_ms,
                    width = width.max(36)
                );
            }
        }
    }
    Ok(EXIT_OK)
}
