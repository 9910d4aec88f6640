//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly), kept in the
//! library so that `tests/fuzz_corpus.rs` replays every committed corpus file through
//! the same code on stable. Each takes arbitrary bytes and must return without
//! panicking, hanging or allocating without bound, whatever the bytes.

use std::path::Path;
use std::sync::OnceLock;

use crate::clip::config::ClipConfig;
use crate::clip::tokenizer::ClipTokenizer;
use crate::data::{set_input_limits, InputLimits};

/// The tiny fixture CLIP's configuration: small enough that a valid weights file is
/// cheap to load many times.
const TINY_CONFIG: &str = include_str!("../tests/fixtures/tiny-clip/config.json");

/// Limits for fuzzing: well under libFuzzer's 2 GB memory limit.
fn fuzz_limits() {
    set_input_limits(InputLimits {
        max_file_bytes: 16 << 20,
        max_pixels: 4 << 20,
    });
}

/// Image decoding and CLIP preprocessing of one file's bytes.
pub fn image(data: &[u8]) {
    fuzz_limits();
    let path = Path::new("fuzz-input");
    let _ = crate::data::check_pixel_limit(path, data);
    if let Ok(img) = crate::data::decode_image(path, data) {
        let pp = crate::clip::preprocess::PreprocessConfig::openai(32);
        let crop = crate::clip::preprocess::center_crop_rgb(&img, pp.image_size);
        let pixels = crate::clip::preprocess::normalize_chw(&crop, &pp);
        assert_eq!(pixels.len(), 3 * 32 * 32);
    }
}

fn tokenizer() -> &'static ClipTokenizer {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        crate::clip::demo::tokenizer(77)
            .unwrap_or_else(|e| panic!("the embedded tokenizer loads: {e}"))
    })
}

/// Label parsing (`--labels` and `--labels-file`), templates and tokenisation.
pub fn labels(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let tok = tokenizer();
    for parsed in [
        crate::clip::zeroshot::parse_labels(&text),
        crate::clip::zeroshot::parse_label_lines(&text),
    ] {
        let (kept, _) = crate::clip::zeroshot::dedupe_labels(parsed);
        for label in kept.iter().take(64) {
            assert!(!label.trim().is_empty(), "blank label {label:?} kept");
            for template in ["{}", "a photo of a {}."] {
                let prompt = crate::clip::zeroshot::fill_template(template, label);
                if let Ok(tokens) = tok.encode(&prompt) {
                    assert!(tokens.ids.len() <= 77, "{} tokens", tokens.ids.len());
                    assert!(tokens.eot_index() < tokens.ids.len());
                }
            }
        }
    }
    let _ = crate::clip::tokenizer::clean_text(&text);
}

/// Keymap TOML, the model registry's TOML and a model's `config.json`.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(mut map) = crate::tui::keymap::Keymap::parse("fuzz", &text) {
        let _ = map.apply("fuzz", &text);
    }
    let _ = crate::hub::Registry::parse(&text);
    if let Ok(c) = ClipConfig::from_json(&text) {
        let _ = crate::clip::train::weight_shapes(&c);
    }
}

/// A training checkpoint's `checkpoint.json`.
pub fn checkpoint_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::cnn::checkpoint::parse_meta(&text, Path::new("checkpoint.json"));
}

/// A safetensors file checked against, then loaded for, the tiny CLIP.
pub fn safetensors(data: &[u8]) {
    static CONFIG: OnceLock<ClipConfig> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        ClipConfig::from_json(TINY_CONFIG)
            .unwrap_or_else(|e| panic!("the fixture config parses: {e}"))
    });
    let origin = Path::new("model.safetensors");
    if crate::clip::weights::check_bytes(data, origin, config).is_ok() {
        let _ = crate::clip::train::Params::load_bytes(data, config, &candle_core::Device::Cpu);
    }
}
