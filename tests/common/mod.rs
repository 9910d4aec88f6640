//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use clipscope::clip::Clip;

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tiny seeded CLIP committed in the fixtures.
pub fn load_tiny() -> Clip {
    Clip::load(
        &fixtures().join("tiny-clip"),
        "tiny-clip",
        candle_core::Device::Cpu,
    )
    .unwrap()
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// What `make_fixtures.py` computed with transformers.
#[derive(serde::Deserialize)]
pub struct Reference {
    pub logit_scale: f32,
    pub labels: Vec<String>,
    pub template: String,
    pub text_embeddings: Vec<Vec<f32>>,
    pub ensemble_text_embeddings: Vec<Vec<f32>>,
    pub images: Vec<ReferenceImage>,
}

/// One image's reference outputs.
#[derive(serde::Deserialize)]
pub struct ReferenceImage {
    pub file: String,
    pub image_embedding: Vec<f32>,
    pub probabilities: Vec<f64>,
    pub ensemble_probabilities: Vec<f64>,
}

impl Reference {
    /// Read a `reference.json`.
    pub fn load(path: &Path) -> Self {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }
}
