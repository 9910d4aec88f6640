//! Evaluating a trained checkpoint on held-out images: top-1, top-5, per-class accuracy
//! and the confusion matrix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use image::RgbImage;
use serde::Serialize;

use super::augment;
use super::checkpoint::{self, CheckpointError};
use crate::data::{held_out, load_image, DataError, ImageError};

/// The confusion matrix: `matrix[true][predicted]`, classes in label order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Confusion {
    /// Class names, in the order of rows and columns.
    pub classes: Vec<String>,
    /// Counts: row = true class, column = predicted class.
    pub matrix: Vec<Vec<usize>>,
}

/// The result of an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    /// The checkpoint's run folder.
    pub checkpoint: String,
    /// The data folder.
    pub data: String,
    /// Images evaluated.
    pub n: usize,
    /// Files skipped because they could not be read.
    pub skipped: usize,
    /// Top-1 accuracy.
    pub top1: f64,
    /// Top-5 accuracy (top-k with k = min(5, classes)).
    pub top5: f64,
    /// Accuracy per class name.
    pub per_class: BTreeMap<String, f64>,
    /// The confusion matrix.
    pub confusion: Confusion,
}

/// What can go wrong evaluating.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The checkpoint is unusable.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The data is unusable.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The data has classes the model does not know.
    #[error("{data}: class folder {class:?} is not one of the model's classes ({known})")]
    UnknownClass {
        /// The data folder.
        data: String,
        /// The unknown class.
        class: String,
        /// The model's classes.
        known: String,
    },
    /// No image could be read.
    #[error("{0}: no readable images")]
    NoImages(String),
    /// A tensor computation failed.
    #[error("evaluation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

/// A trained CNN from a run folder, ready to score pictures: what `eval`, `predict` and
/// the comparison study use.
pub struct CnnClassifier {
    model: super::Network,
    meta: checkpoint::CheckpointMeta,
    device: Device,
}

impl Drop for CnnClassifier {
    /// The convolutions keep their largest patch matrices between batches (hundreds of
    /// MB at 224 px); once the classifier is gone nothing reuses them.
    fn drop(&mut self) {
        super::conv::release_scratch();
    }
}

impl CnnClassifier {
    /// Load the run in `run_dir` (its latest checkpoint) onto `device`: the CPU (its own
    /// kernels) or a GPU (candle's operations).
    pub fn load_on(run_dir: &Path, device: Device) -> Result<Self, EvalError> {
        let (model, _vars, meta) = checkpoint::load_model(run_dir, &device)?;
        Ok(Self {
            model,
            meta,
            device,
        })
    }

    /// The checkpoint's record (classes, image size, metrics per epoch, ...).
    pub fn meta(&self) -> &checkpoint::CheckpointMeta {
        &self.meta
    }

    /// The evaluation crop of a picture: short side to 8/7 of the input size, then the
    /// centre crop (as torchvision's ImageNet evaluation does).
    pub fn crop(&self, img: &image::DynamicImage) -> RgbImage {
        let size = self.meta.image_size as u32;
        let r =
            augment::resize_short_side(&img.to_rgb8(), augment::cache_side(self.meta.image_size));
        augment::center_crop(&r, size)
    }

    /// Class logits `(n, classes)` of evaluation crops.
    pub fn logits(&self, crops: &[RgbImage]) -> Result<Vec<Vec<f32>>, EvalError> {
        if crops.is_empty() {
            return Ok(Vec::new());
        }
        let logits = self
            .model
            .forward_t(&augment::to_tensor(crops, &self.device)?, false)?;
        Ok(logits.to_vec2::<f32>()?)
    }

    /// Class probabilities of image files, in input order, `batch` pictures per forward
    /// pass: each entry the probabilities of its picture, or why it has none (not
    /// found, unreadable, not an image).
    pub fn probabilities_of_files(
        &self,
        items: &[Result<PathBuf, ImageError>],
        batch: usize,
    ) -> Result<Vec<Result<Vec<f32>, String>>, EvalError> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(batch.max(1)) {
            let mut readable = Vec::with_capacity(chunk.len());
            let decoded: Vec<Result<(), String>> = chunk
                .iter()
                .map(|item| {
                    let path = item.as_ref().map_err(ToString::to_string)?;
                    let img = load_image(path).map_err(|e| e.to_string())?;
                    readable.push(self.crop(&img));
                    Ok(())
                })
                .collect();
            out.extend(in_input_order(decoded, self.probabilities(&readable)?));
        }
        Ok(out)
    }

    /// Class probabilities (softmax of the logits) of evaluation crops.
    pub fn probabilities(&self, crops: &[RgbImage]) -> Result<Vec<Vec<f32>>, EvalError> {
        Ok(self
            .logits(crops)?
            .into_iter()
            .map(|row| softmax(&row))
            .collect())
    }
}

/// Each entry of `inputs` with its row of `rows`, which holds one row per `Ok` entry in
/// order; failed entries keep their error and take no row.
fn in_input_order<T, R>(inputs: Vec<Result<T, String>>, rows: Vec<R>) -> Vec<Result<R, String>> {
    let mut rows = rows.into_iter();
    inputs
        .into_iter()
        .map(|input| {
            input.and_then(|_| {
                rows.next()
                    .ok_or_else(|| "no result for this picture".to_string())
            })
        })
        .collect()
}

/// The softmax of one row of logits.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|v| v / sum).collect()
}

/// Evaluate the run in `run_dir` on the held-out images of `data` (its `val/`, its split
/// manifest's held-out list, or all its images), on `device`. `progress(done, total)` is
/// called per batch.
pub fn evaluate(
    run_dir: &Path,
    data: &Path,
    batch: usize,
    device: Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport, EvalError> {
    let cnn = CnnClassifier::load_on(run_dir, device)?;
    let meta = cnn.meta().clone();
    let set = held_out(data)?;
    let data_name = data.display().to_string();
    // Map the folder's labels onto the model's by class name.
    let mut remap = Vec::with_capacity(set.classes.len());
    for c in &set.classes {
        match meta.classes.iter().position(|m| m == c) {
            Some(i) => remap.push(i),
            None => {
                return Err(EvalError::UnknownClass {
                    data: data_name,
                    class: c.clone(),
                    known: meta.classes.join(", "),
                })
            }
        }
    }
    let k = meta.classes.len();
    let mut matrix = vec![vec![0usize; k]; k];
    let (mut n, mut top5_hits, mut skipped) = (0usize, 0usize, 0usize);
    let total = set.samples.len();
    let batch = batch.max(1);
    for (bi, chunk) in set.samples.chunks(batch).enumerate() {
        let mut crops: Vec<RgbImage> = Vec::with_capacity(chunk.len());
        let mut labels = Vec::with_capacity(chunk.len());
        for s in chunk {
            match load_image(&s.path) {
                Ok(img) => {
                    crops.push(cnn.crop(&img));
                    labels.push(remap[s.label]);
                }
                Err(e) => {
                    tracing::warn!("skipped: {e}");
                    skipped += 1;
                }
            }
        }
        for (row, &truth) in cnn.logits(&crops)?.iter().zip(&labels) {
            let mut order: Vec<usize> = (0..k).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            matrix[truth][order[0]] += 1;
            if order.iter().take(5).any(|&c| c == truth) {
                top5_hits += 1;
            }
            n += 1;
        }
        progress(((bi + 1) * batch).min(total), total);
    }
    if n == 0 {
        return Err(EvalError::NoImages(data_name));
    }
    let correct: usize = (0..k).map(|i| matrix[i][i]).sum();
    let per_class = (0..k)
        .filter(|&i| matrix[i].iter().sum::<usize>() > 0)
        .map(|i| {
            let row: usize = matrix[i].iter().sum();
            (
                meta.class_names[i].clone(),
                matrix[i][i] as f64 / row as f64,
            )
        })
        .collect();
    Ok(EvalReport {
        checkpoint: run_dir.display().to_string(),
        data: data_name,
        n,
        skipped,
        top1: correct as f64 / n as f64,
        top5: top5_hits as f64 / n as f64,
        per_class,
        confusion: Confusion {
            classes: meta.class_names.clone(),
            matrix,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_inputs_take_no_row_and_the_others_keep_their_own() {
        let inputs = vec![
            Ok(()),
            Err("bad.png: not an image".to_string()),
            Ok(()),
            Err("gone.png: no such file".to_string()),
            Ok(()),
        ];
        let got = in_input_order(inputs, vec!["a", "b", "c"]);
        assert_eq!(
            got,
            [
                Ok("a"),
                Err("bad.png: not an image".to_string()),
                Ok("b"),
                Err("gone.png: no such file".to_string()),
                Ok("c"),
            ]
        );
    }

    #[test]
    fn a_missing_row_is_an_error_not_a_shift() {
        let got = in_input_order(vec![Ok(()), Ok(())], vec![1]);
        assert_eq!(got[0], Ok(1));
        assert!(got[1].is_err());
    }
}
