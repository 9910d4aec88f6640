//! Training checkpoints: weights and optimiser state as safetensors, and a JSON record
//! of everything needed to evaluate or resume (classes, image size, normalisation,
//! epochs, metrics, configuration, data manifest).
//!
//! Saving is atomic: weights and optimiser state go to new files named by the save,
//! then `checkpoint.json`, which names them, is replaced by a rename; the files of the
//! previous save are removed after. A crash leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::network::{Arch, Network};
use super::optim::OptimizerKind;

/// The checkpoint record's file name inside a run folder.
pub const CHECKPOINT_JSON: &str = "checkpoint.json";

/// One epoch's metrics. A loss that diverged is NaN, which JSON writes as `null`; such
/// values read back as NaN, so that the run stays loadable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss.
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    /// Training accuracy (on augmented crops).
    #[serde(deserialize_with = "nan_if_null")]
    pub train_acc: f64,
    /// Validation loss.
    #[serde(deserialize_with = "nan_if_null")]
    pub val_loss: f64,
    /// Validation top-1 accuracy.
    #[serde(deserialize_with = "nan_if_null")]
    pub val_acc: f64,
    /// Wall time of the epoch's training steps, seconds.
    pub seconds: f64,
    /// Training throughput.
    pub images_per_sec: f64,
}

/// A number, or NaN where the record holds `null` (serde_json writes NaN so).
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// How the run was configured (recorded for reproducibility).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Architecture (`resnet18` or `vgg16`).
    pub model: String,
    /// `imagenet`, `none` or a weights file.
    pub pretrained: String,
    /// Whether only the classifier was trained.
    pub freeze_backbone: bool,
    /// Epochs asked for.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Seed.
    pub seed: u64,
}

/// Which data the run used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    /// The data folder.
    pub root: PathBuf,
    /// A separate validation folder, if given.
    pub val: Option<PathBuf>,
    /// `folders`, or the split manifest's path.
    pub split: String,
    /// Training images used.
    pub train_images: usize,
    /// Held-out images used.
    pub val_images: usize,
    /// Files skipped because they could not be read.
    pub skipped: usize,
}

/// `checkpoint.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Format version.
    pub format: u32,
    /// Class folder names, in label order.
    pub classes: Vec<String>,
    /// Human names of the classes.
    pub class_names: Vec<String>,
    /// Input side in pixels.
    pub image_size: usize,
    /// Normalisation mean.
    pub mean: [f32; 3],
    /// Normalisation std.
    pub std: [f32; 3],
    /// Completed epochs.
    pub epochs_done: usize,
    /// Whether training was interrupted during epoch `epochs_done + 1` (the weights are
    /// then from within that epoch).
    pub interrupted: bool,
    /// Optimiser steps taken.
    pub optimizer_steps: u64,
    /// Metrics of the completed epochs.
    pub metrics: Vec<EpochMetrics>,
    /// The run's configuration.
    pub config: RunConfig,
    /// The data.
    pub data: DataRecord,
    /// Weights file, relative to the run folder.
    pub weights: String,
    /// Optimiser state file, relative to the run folder.
    pub optimizer_state: String,
}

/// What can go wrong with a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A save failed (a full disk, say); what was written of it is removed.
    #[error("{run_dir}: the checkpoint was not saved ({source}); {kept}")]
    NotSaved {
        /// The run folder.
        run_dir: PathBuf,
        /// What failed.
        #[source]
        source: Box<CheckpointError>,
        /// What the folder still holds.
        kept: String,
    },
    /// A file is malformed or does not fit.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn invalid(path: &Path, message: impl ToString) -> CheckpointError {
    CheckpointError::Invalid {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), CheckpointError> {
    let tmp = path.with_extension("tmp");
    let result = write_tensors(path, &tmp, tensors);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_tensors(
    path: &Path,
    tmp: &Path,
    tensors: &HashMap<String, Tensor>,
) -> Result<(), CheckpointError> {
    candle_core::safetensors::save(tensors, tmp).map_err(|e| match e {
        candle_core::Error::Io(source) => CheckpointError::Io {
            path: tmp.to_path_buf(),
            source,
        },
        other => invalid(tmp, other),
    })?;
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| crate::util::with_usual_permissions(tmp))
        .map_err(|source| CheckpointError::Io {
            path: tmp.to_path_buf(),
            source,
        })?;
    std::fs::rename(tmp, path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Save weights, optimiser state and `meta` into `run_dir` atomically; returns the
/// path of `checkpoint.json`. `meta.weights` and `meta.optimizer_state` are set here.
pub fn save(
    run_dir: &Path,
    meta: &mut CheckpointMeta,
    vars: &VarMap,
    optimizer_state: &HashMap<String, Tensor>,
) -> Result<PathBuf, CheckpointError> {
    std::fs::create_dir_all(run_dir).map_err(|source| CheckpointError::Io {
        path: run_dir.to_path_buf(),
        source,
    })?;
    let previous = load_meta(run_dir).ok();
    let tag = format!(
        "e{}{}-s{}",
        meta.epochs_done,
        if meta.interrupted { "i" } else { "" },
        meta.optimizer_steps
    );
    meta.weights = format!("model-{tag}.safetensors");
    meta.optimizer_state = format!("optimizer-{tag}.safetensors");
    let weights: HashMap<String, Tensor> = vars
        .data()
        .lock()
        .map_err(|_| invalid(run_dir, "parameter store poisoned"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let written = write_files(run_dir, meta, &weights, optimizer_state);
    let old_files: [String; 2] = previous
        .as_ref()
        .map(|p| [p.weights.clone(), p.optimizer_state.clone()])
        .unwrap_or_default();
    let new_files = [meta.weights.clone(), meta.optimizer_state.clone()];
    match written {
        Ok(json_path) => {
            remove_files_but(run_dir, &old_files, &new_files);
            Ok(json_path)
        }
        Err(source) => {
            // checkpoint.json still names the previous save's files: the new ones go.
            remove_files_but(run_dir, &new_files, &old_files);
            Err(CheckpointError::NotSaved {
                run_dir: run_dir.to_path_buf(),
                source: Box::new(source),
                kept: match &previous {
                    Some(p) => format!(
                        "the previous checkpoint (epoch {}) is intact: free some space and \
                         continue with --resume",
                        p.epochs_done
                    ),
                    None => "the folder holds no checkpoint yet".to_string(),
                },
            })
        }
    }
}

/// Weights, optimiser state, then `checkpoint.json` naming them.
fn write_files(
    run_dir: &Path,
    meta: &CheckpointMeta,
    weights: &HashMap<String, Tensor>,
    optimizer_state: &HashMap<String, Tensor>,
) -> Result<PathBuf, CheckpointError> {
    save_tensors(&run_dir.join(&meta.weights), weights)?;
    save_tensors(&run_dir.join(&meta.optimizer_state), optimizer_state)?;
    let json_path = run_dir.join(CHECKPOINT_JSON);
    let text = serde_json::to_string_pretty(meta).map_err(|e| invalid(&json_path, e))?;
    crate::util::write_atomic(&json_path, text.as_bytes()).map_err(|source| {
        CheckpointError::Io {
            path: json_path.clone(),
            source,
        }
    })?;
    Ok(json_path)
}

/// Remove the files named in `remove` from `run_dir`, except those named in `keep`.
fn remove_files_but(run_dir: &Path, remove: &[String], keep: &[String]) {
    for f in remove {
        if !f.is_empty() && !keep.contains(f) {
            let _ = std::fs::remove_file(run_dir.join(f));
        }
    }
}

/// Read `run_dir/checkpoint.json`.
pub fn load_meta(run_dir: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let run_dir = &run_folder(run_dir);
    if run_dir.is_file() {
        return Err(invalid(
            run_dir,
            format!("a file, not a run folder; give the folder of `clipscope train` (or its {CHECKPOINT_JSON})"),
        ));
    }
    let path = run_dir.join(CHECKPOINT_JSON);
    let text = std::fs::read_to_string(&path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => invalid(
            run_dir,
            format!("not a run folder of `clipscope train` (it has no {CHECKPOINT_JSON})"),
        ),
        _ => CheckpointError::Io {
            path: path.clone(),
            source,
        },
    })?;
    parse_meta(&text, &path)
}

/// The run folder `path` names: itself, or the folder of a `checkpoint.json` given in
/// its place.
pub fn run_folder(path: &Path) -> PathBuf {
    let is_record = path.file_name() == Some(std::ffi::OsStr::new(CHECKPOINT_JSON));
    match path.parent() {
        Some(parent) if is_record && path.is_file() => {
            if parent.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                parent.to_path_buf()
            }
        }
        _ => path.to_path_buf(),
    }
}

/// Parse the text of a `checkpoint.json` (named `path` in errors).
pub fn parse_meta(text: &str, path: &Path) -> Result<CheckpointMeta, CheckpointError> {
    serde_json::from_str(text).map_err(|e| invalid(path, e))
}

/// Load the trained model of a run folder.
pub fn load_model(
    run_dir: &Path,
    device: &Device,
) -> Result<(Network, VarMap, CheckpointMeta), CheckpointError> {
    let run_dir = &run_folder(run_dir);
    let meta = load_meta(run_dir)?;
    let arch = Arch::from_name(&meta.config.model).ok_or_else(|| {
        invalid(
            run_dir,
            format!("unknown model {:?} in {CHECKPOINT_JSON}", meta.config.model),
        )
    })?;
    let map = VarMap::new();
    let model =
        Network::new(arch, &map, device, meta.classes.len(), 0).map_err(|e| invalid(run_dir, e))?;
    let weights = run_dir.join(&meta.weights);
    arch.load_weights(&map, &weights, false)
        .map_err(|e| invalid(&weights, e))?;
    Ok((model, map, meta))
}

/// Load the optimiser state named by `meta`.
pub fn load_optimizer_state(
    run_dir: &Path,
    meta: &CheckpointMeta,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let path = run_dir.join(&meta.optimizer_state);
    candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| invalid(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_a_diverged_epoch_read_back() {
        let m = EpochMetrics {
            epoch: 3,
            train_loss: f64::NAN,
            train_acc: 0.25,
            val_loss: f64::NAN,
            val_acc: 0.5,
            seconds: 1.0,
            images_per_sec: 10.0,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains("\"train_loss\":null"), "{text}");
        let back: EpochMetrics = serde_json::from_str(&text).unwrap();
        assert!(back.train_loss.is_nan() && back.val_loss.is_nan());
        assert_eq!((back.epoch, back.train_acc, back.val_acc), (3, 0.25, 0.5));
    }
}
