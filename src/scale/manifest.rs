//! The manifest beside every job output: which job and shard wrote it, and whether it
//! finished.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{io_error, ScaleError, Shard};

/// The format of manifests written by this version.
const FORMAT: u32 = 1;

/// What a shard's output is: written when the output is started (`complete: false`)
/// and again when its last result is on disk (`complete: true`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format (1).
    pub format: u32,
    /// The command: `classify` or `embed`.
    pub command: String,
    /// The model's name, as in the results.
    pub model: String,
    /// The settings that shape the results (labels and prompts, precision, ...).
    pub settings: serde_json::Value,
    /// This shard's index, from 0.
    pub shard: usize,
    /// How many shards the job has.
    pub shards: usize,
    /// Inputs in the whole job's list.
    pub list_len: usize,
    /// Digest of the whole job's list (see [`super::JobInputs`]).
    pub list_hash: String,
    /// Position of this shard's first input in the whole list.
    pub first: usize,
    /// Inputs in this shard: the number of results when complete.
    pub items: usize,
    /// Whether every one of this shard's results is on disk.
    pub complete: bool,
}

impl Manifest {
    /// A manifest for an unfinished shard.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        command: &str,
        model: &str,
        settings: serde_json::Value,
        shard: Shard,
        list_len: usize,
        list_hash: &str,
        first: usize,
        items: usize,
    ) -> Self {
        Self {
            format: FORMAT,
            command: command.to_string(),
            model: model.to_string(),
            settings,
            shard: shard.index,
            shards: shard.count,
            list_len,
            list_hash: list_hash.to_string(),
            first,
            items,
            complete: false,
        }
    }

    /// Read a manifest.
    pub fn read(path: &Path) -> Result<Self, ScaleError> {
        let bytes = std::fs::read(path).map_err(io_error(path))?;
        serde_json::from_slice(&bytes).map_err(|e| ScaleError::Invalid {
            path: path.to_path_buf(),
            message: format!("not a clipscope job manifest: {e}"),
        })
    }

    /// Write it atomically (readers see the old manifest or the new one).
    pub fn write(&self, path: &Path) -> Result<(), ScaleError> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| ScaleError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        bytes.push(b'\n');
        crate::util::write_atomic(path, &bytes).map_err(io_error(path))
    }

    /// The first difference between the jobs two manifests describe (shard and progress
    /// aside), as a phrase for an error message; `None` for the same job.
    pub fn job_difference(&self, other: &Manifest) -> Option<String> {
        let differs = |what: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
            Some(format!("{what} differs ({a:?} against {b:?})"))
        };
        if self.format != other.format {
            differs("the manifest format", &self.format, &other.format)
        } else if self.command != other.command {
            differs("the command", &self.command, &other.command)
        } else if self.model != other.model && !same_model_folder(&self.model, &other.model) {
            differs("the model", &self.model, &other.model)
        } else if self.settings != other.settings {
            Some(settings_difference(&self.settings, &other.settings))
        } else if self.list_hash != other.list_hash || self.list_len != other.list_len {
            Some(format!(
                "the input list differs ({} inputs, digest {}, against {} inputs, digest {})",
                self.list_len, self.list_hash, other.list_len, other.list_hash
            ))
        } else if self.shards != other.shards {
            differs("the number of shards", &self.shards, &other.shards)
        } else {
            None
        }
    }

    /// This manifest's shard.
    pub fn shard(&self) -> Shard {
        Shard {
            index: self.shard,
            count: self.shards,
        }
    }
}

/// Whether two model names are one model folder spelled two ways (`/m/vit` and
/// `/m/vit/`, or a relative path from another folder); registry names are not folders.
fn same_model_folder(a: &str, b: &str) -> bool {
    let (a, b) = (Path::new(a), Path::new(b));
    a.is_dir() && b.is_dir() && crate::util::same_path(a, b)
}

/// The command-line option behind a job setting, to name it where the setting differs.
fn flag_of(setting: &str) -> Option<&'static str> {
    Some(match setting {
        "labels" => "--labels",
        "prompts" => "--template or --ensemble",
        "top_k" => "--top-k",
        "abstain" => "--abstain",
        "precision" => "--npy-dtype",
        "model_precision" => "--precision",
        _ => return None,
    })
}

/// The first setting two jobs disagree on, named with both values as JSON.
fn settings_difference(a: &serde_json::Value, b: &serde_json::Value) -> String {
    use serde_json::Value;
    let (Value::Object(a), Value::Object(b)) = (a, b) else {
        return format!("the settings differ ({a} against {b})");
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    // A setting left at its default is not recorded (f32 precision, say).
    let shown = |v: Option<&Value>| v.map_or("the default".to_string(), Value::to_string);
    keys.into_iter()
        .find(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let (x, y) = (shown(a.get(k)), shown(b.get(k)));
            let flag = flag_of(k).map(|f| format!(" ({f})")).unwrap_or_default();
            format!("the setting {k}{flag} differs (the output has {x}, this run {y})")
        })
        .unwrap_or_else(|| "the settings differ".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_round_trips_and_names_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let m = Manifest::new(
            "classify",
            "tiny",
            serde_json::json!({"labels": ["cat"]}),
            Shard { index: 1, count: 3 },
            10,
            "abc",
            3,
            4,
        );
        m.write(&path).unwrap();
        let back = Manifest::read(&path).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.shard(), Shard { index: 1, count: 3 });
        let mut other = m.clone();
        other.shard = 2;
        other.complete = true;
        assert_eq!(m.job_difference(&other), None);
        other.settings = serde_json::json!({"labels": ["dog"]});
        assert_eq!(
            m.job_difference(&other).unwrap(),
            r#"the setting labels (--labels) differs (the output has ["cat"], this run ["dog"])"#
        );
        std::fs::write(&path, b"{").unwrap();
        assert!(Manifest::read(&path)
            .unwrap_err()
            .to_string()
            .contains("not a clipscope"));
    }
}
