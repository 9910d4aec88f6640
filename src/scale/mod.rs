//! Sharded, resumable jobs for schedulers (Slurm job arrays, Kubernetes Indexed Jobs):
//! a stable split of the input list into shards, outputs streamed to disk that survive
//! a kill and are resumed without losing or repeating an image, and the merge that
//! joins shards and checks that nothing is missing or repeated.
//!
//! A job's inputs are expanded (folders walked in sorted order), duplicates dropped,
//! and shard `I` of `N` takes the `I`-th of `N` contiguous, near-equal runs of that list,
//! so the shards' outputs concatenated in shard order are in the unsharded order. Every
//! output has a manifest beside it naming the command, model, settings, shard and a
//! digest of the whole list: a resume or a merge refuses outputs of another job.
//! See docs/scale.md.

mod inputs;
mod lines;
mod manifest;
mod merge;
mod npy;
mod outputs;
mod shard;

use std::path::PathBuf;

pub use inputs::{read_input_list, JobInputs};
pub use lines::{LineLog, LineSummary};
pub use manifest::Manifest;
pub use merge::{merge_embeddings, merge_results, MergeSummary};
pub use npy::{NpyHeader, NpyRows, Precision};
pub use outputs::{Earlier, EmbeddingShard, ResultsFile, Resumed, ShardFiles, Written};
pub use shard::Shard;

/// What can go wrong setting up, writing, resuming or merging a job's outputs.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// A `--shard` value, or the scheduler's variables behind `--shard auto`, are unusable.
    #[error("--shard {spec}: {why}")]
    Shard {
        /// The value given.
        spec: String,
        /// What is wrong, and what to do.
        why: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file's content is not what it should be (another job's output, damaged, ...).
    #[error("{path}: {message}")]
    Invalid {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong, and what to do.
        message: String,
    },
    /// Shards cannot be merged (one missing, unfinished or repeated, an image twice).
    #[error("{0}")]
    Merge(String),
}

/// `map_err` helper: an I/O error on `path`.
fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ScaleError + '_ {
    move |source| ScaleError::Io {
        path: path.to_path_buf(),
        source,
    }
}
