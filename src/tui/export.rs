//! Export of this session's classifications (the Results pane's Session table) and the
//! probabilities on screen, as CSV and JSON, each written atomically.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::app::ResultEntry;
use crate::clip::zeroshot::Prediction;
use crate::util::write_atomic;

/// The JSON document: every classification of the session, oldest first, and the
/// probabilities on screen.
#[derive(Serialize)]
struct ExportDoc<'a> {
    session: Vec<EntryJson<'a>>,
    current: Option<EntryJson<'a>>,
}

#[derive(Serialize)]
struct EntryJson<'a> {
    image: String,
    latency_ms: Option<f64>,
    predictions: &'a [Prediction],
}

/// The probabilities on screen, for the export.
pub struct Current<'a> {
    /// The image.
    pub image: &'a Path,
    /// Its predictions, most probable first.
    pub predictions: &'a [Prediction],
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Nothing has been classified yet.
    #[error("nothing to export yet: open an image and type labels first")]
    Empty,
    /// A file could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The CSV could not be formed.
    #[error("csv: {0}")]
    Csv(#[from] csv::Error),
}

/// The CSV: one row per label per classification (`source` is `session` or `current`).
fn to_csv(history: &[ResultEntry], current: Option<&Current>) -> Result<Vec<u8>, ExportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "source",
        "image",
        "rank",
        "label",
        "probability",
        "latency_ms",
    ])?;
    let session = history.iter().map(|e| {
        (
            "session",
            e.path.as_path(),
            &e.predictions[..],
            Some(e.latency_ms),
        )
    });
    let now = current.map(|c| ("current", c.image, c.predictions, None));
    for (source, image, predictions, latency) in session.chain(now) {
        for (rank, p) in predictions.iter().enumerate() {
            w.write_record([
                source.to_string(),
                image.display().to_string(),
                (rank + 1).to_string(),
                p.label.clone(),
                p.probability.to_string(),
                latency.map(|l| format!("{l:.1}")).unwrap_or_default(),
            ])?;
        }
    }
    w.into_inner()
        .map_err(|e| ExportError::Csv(e.into_error().into()))
}

fn to_json(history: &[ResultEntry], current: Option<&Current>) -> Vec<u8> {
    let doc = ExportDoc {
        session: history
            .iter()
            .map(|e| EntryJson {
                image: e.path.display().to_string(),
                latency_ms: Some(e.latency_ms),
                predictions: &e.predictions,
            })
            .collect(),
        current: current.map(|c| EntryJson {
            image: c.image.display().to_string(),
            latency_ms: None,
            predictions: c.predictions,
        }),
    };
    let mut bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Write `<stem>.csv` and `<stem>.json` into `dir`; returns both paths.
pub fn export(
    dir: &Path,
    stem: &str,
    history: &[ResultEntry],
    current: Option<&Current>,
) -> Result<[PathBuf; 2], ExportError> {
    if history.is_empty() && current.is_none() {
        return Err(ExportError::Empty);
    }
    let csv_path = dir.join(format!("{stem}.csv"));
    let json_path = dir.join(format!("{stem}.json"));
    let write = |path: &Path, bytes: &[u8]| {
        write_atomic(path, bytes).map_err(|source| ExportError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    write(&csv_path, &to_csv(history, current)?)?;
    write(&json_path, &to_json(history, current))?;
    Ok([csv_path, json_path])
}

/// A file name stem that sorts by time: `clipscope-results-<unix seconds>`.
pub fn stem_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("clipscope-results-{secs}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pred(label: &str, probability: f64) -> Prediction {
        Prediction {
            label: label.into(),
            probability,
        }
    }

    #[test]
    fn the_session_and_the_current_probabilities_are_written_as_csv_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let history = vec![ResultEntry {
            path: "a, b.png".into(),
            predictions: vec![pred("cat", 0.75), pred("dog", 0.25)],
            latency_ms: 12.0,
        }];
        let preds = [pred("dog", 0.5), pred("cat", 0.5)];
        let current = Current {
            image: Path::new("c.png"),
            predictions: &preds,
        };
        let [csv, json] = export(dir.path(), "out", &history, Some(&current)).unwrap();
        let text = std::fs::read_to_string(&csv).unwrap();
        assert_eq!(
            text,
            "source,image,rank,label,probability,latency_ms\n\
             session,\"a, b.png\",1,cat,0.75,12.0\n\
             session,\"a, b.png\",2,dog,0.25,12.0\n\
             current,c.png,1,dog,0.5,\n\
             current,c.png,2,cat,0.5,\n"
        );
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(doc["session"][0]["predictions"][0]["label"], "cat");
        assert_eq!(doc["current"]["image"], "c.png");
        // Only the two files: no temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert!(matches!(
            export(dir.path(), "x", &[], None),
            Err(ExportError::Empty)
        ));
        let missing = dir.path().join("no/such/dir");
        let err = export(&missing, "x", &history, None).unwrap_err();
        assert!(err.to_string().contains("no/such/dir"), "{err}");
    }
}
