//! The Results pane's state: the study report being browsed (`report.json`, written by
//! `clipscope compare`), the reports found on disk, which view, model and misclassified
//! image is selected, and the session's own classifications.
//!
//! Reading and checking a report ([`load_report`]) and looking for reports
//! ([`find_reports`]) touch the disk: the event loop runs them on a blocking thread.

use std::path::{Path, PathBuf};

use super::app::Picture;
use crate::study::compare::Report;

/// The report file inside a report folder.
pub const REPORT_FILE: &str = "report.json";

/// The Results pane's views, in the order the view keys step through them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    /// Every model's headline numbers, and the selected model's per-class table.
    #[default]
    Models,
    /// The selected model's confusion matrix as a heat map.
    Confusion,
    /// CLIP's accuracy under each prompt variant (and the probe, when there is one).
    Prompts,
    /// The misclassified images, one at a time, with every model's answer.
    Errors,
    /// The classifications made in the Classify pane since the app started.
    Session,
    /// The reports found on disk, to pick one.
    Reports,
}

impl View {
    /// All views in order.
    pub const ALL: [View; 6] = [
        View::Models,
        View::Confusion,
        View::Prompts,
        View::Errors,
        View::Session,
        View::Reports,
    ];

    /// Its name in the view bar.
    pub fn title(self) -> &'static str {
        match self {
            View::Models => "Models",
            View::Confusion => "Confusion",
            View::Prompts => "Prompts",
            View::Errors => "Errors",
            View::Session => "Session",
            View::Reports => "Reports",
        }
    }

    fn step(self, forward: bool) -> Self {
        let n = Self::ALL.len();
        let i = Self::ALL.iter().position(|v| *v == self).unwrap_or(0);
        Self::ALL[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }]
    }
}

/// A report read from disk and checked, with what the pane derives from it once.
#[derive(Clone, Debug)]
pub struct LoadedReport {
    /// The report folder.
    pub dir: PathBuf,
    /// The report.
    pub report: Report,
    /// Indices into `report.predictions` of the images some model got wrong, in order.
    pub errors: Vec<usize>,
}

impl LoadedReport {
    /// Where a test image of the report is: `data` as written (relative to the folder
    /// `compare` ran in, usually this one), else relative to the report folder's parent
    /// and to the report folder (a report moved together with its data).
    pub fn image_path(&self, relative: &str) -> PathBuf {
        let data = Path::new(&self.report.data);
        let candidates = [
            Some(data.join(relative)),
            self.dir.parent().map(|p| p.join(data).join(relative)),
            Some(self.dir.join(data).join(relative)),
        ];
        let first = data.join(relative);
        candidates
            .into_iter()
            .flatten()
            .find(|p| p.is_file())
            .unwrap_or(first)
    }
}

/// The images some model got wrong: indices into `report.predictions`.
pub fn misclassified(report: &Report) -> Vec<usize> {
    report
        .predictions
        .iter()
        .enumerate()
        .filter(|(_, p)| p.answers.iter().any(|(class, _)| *class != p.truth))
        .map(|(i, _)| i)
        .collect()
}

/// Why a report cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not a report `compare` wrote.
    #[error("{path}: not a clipscope report ({message}); make one with clipscope compare")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Read and check a report: `path` is a report folder or its `report.json`. The checks
/// make every index the pane follows (classes, models) safe to use.
pub fn load_report(path: &Path) -> Result<LoadedReport, ReportError> {
    let (dir, file) = if path.is_dir() {
        (path.to_path_buf(), path.join(REPORT_FILE))
    } else {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        (dir.to_path_buf(), path.to_path_buf())
    };
    let text = std::fs::read_to_string(&file).map_err(|source| ReportError::Io {
        path: file.clone(),
        source,
    })?;
    let invalid = |message: String| ReportError::Invalid {
        path: file.clone(),
        message,
    };
    let report: Report = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    check_report(&report).map_err(invalid)?;
    let errors = misclassified(&report);
    Ok(LoadedReport {
        dir,
        report,
        errors,
    })
}

/// Every class and model index in the report points at something.
fn check_report(r: &Report) -> Result<(), String> {
    let (classes, models) = (r.classes.len(), r.models.len());
    for m in &r.models {
        let square =
            m.confusion.len() == classes && m.confusion.iter().all(|row| row.len() == classes);
        if !square {
            return Err(format!(
                "{}: confusion matrix is not {classes}x{classes}",
                m.name
            ));
        }
    }
    for p in &r.predictions {
        if p.truth >= classes {
            return Err(format!("{}: class {} out of range", p.image, p.truth));
        }
        if p.answers.len() != models {
            return Err(format!(
                "{}: {} answers for {models} models",
                p.image,
                p.answers.len()
            ));
        }
        if p.answers.iter().any(|(c, _)| *c >= classes) {
            return Err(format!("{}: predicted class out of range", p.image));
        }
    }
    Ok(())
}

/// Report folders under `root`: `root` itself and its subfolders holding a
/// `report.json`, newest first.
pub fn find_reports(root: &Path) -> Vec<PathBuf> {
    let subfolders = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir());
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::iter::once(root.to_path_buf())
        .chain(subfolders)
        .filter_map(|dir| {
            let modified = std::fs::metadata(dir.join(REPORT_FILE))
                .and_then(|m| m.modified())
                .ok()?;
            Some((modified, dir))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    found.into_iter().map(|(_, dir)| dir).collect()
}

/// What the Results pane asks the event loop to do off the UI thread.
#[derive(Clone, Debug, PartialEq)]
pub enum ResultsEffect {
    /// Look for reports under this folder.
    FindReports(PathBuf),
    /// Read this report folder (or file).
    LoadReport(PathBuf),
    /// Decode this test image for the step-through.
    DecodeImage(PathBuf),
}

/// The Results pane.
#[derive(Default)]
pub struct ResultsState {
    /// The view shown.
    pub view: View,
    /// Report folders found on disk.
    pub found: Vec<PathBuf>,
    /// The selected row of `found`.
    pub found_selected: usize,
    /// The report shown.
    pub loaded: Option<LoadedReport>,
    /// The report being read.
    pub loading: Option<PathBuf>,
    /// One line about the last load (why it failed), shown in the pane.
    pub message: Option<String>,
    /// The selected model (index into the report's models).
    pub model: usize,
    /// The position in the list of misclassified images.
    pub error: usize,
    /// The picture of the misclassified image shown.
    pub picture: Option<Picture>,
    /// The file that picture (or `picture_error`) is of.
    pub picture_path: Option<PathBuf>,
    /// Why that file could not be shown.
    pub picture_error: Option<String>,
    /// The image being decoded for it.
    pub decoding: Option<PathBuf>,
}

impl ResultsState {
    /// Ask for a report to be read; the answer comes to [`ResultsState::on_loaded`].
    pub fn load(&mut self, path: PathBuf) -> ResultsEffect {
        self.loading = Some(path.clone());
        self.message = Some(format!("reading {}…", path.display()));
        ResultsEffect::LoadReport(path)
    }

    /// A report was read (or failed to be). Returns an image to decode when the
    /// step-through is on screen.
    pub fn on_loaded(
        &mut self,
        path: PathBuf,
        result: Result<LoadedReport, String>,
    ) -> Option<ResultsEffect> {
        if self.loading.as_ref() != Some(&path) {
            return None; // another report was asked for since
        }
        self.loading = None;
        match result {
            Err(message) => {
                self.message = Some(message);
                None
            }
            Ok(loaded) => {
                self.message = None;
                self.loaded = Some(loaded);
                self.model = 0;
                self.error = 0;
                self.picture = None;
                self.picture_path = None;
                self.picture_error = None;
                if self.view == View::Reports {
                    self.view = View::Models;
                }
                self.image_to_show()
            }
        }
    }

    /// Reports were found on disk.
    pub fn on_found(&mut self, found: Vec<PathBuf>) {
        self.found = found;
        self.found_selected = self.found_selected.min(self.found.len().saturating_sub(1));
    }

    /// The next or previous view.
    pub fn step_view(&mut self, forward: bool) -> Option<ResultsEffect> {
        self.view = self.view.step(forward);
        self.image_to_show()
    }

    /// Show `view`.
    pub fn show(&mut self, view: View) -> Option<ResultsEffect> {
        self.view = view;
        self.image_to_show()
    }

    /// The next or previous row: a report in the Reports view, else a model.
    pub fn step_row(&mut self, forward: bool) {
        let (selected, n) = match (&self.view, &self.loaded) {
            (View::Reports, _) => (&mut self.found_selected, self.found.len()),
            (_, Some(l)) => (&mut self.model, l.report.models.len()),
            (_, None) => return,
        };
        if n > 0 {
            *selected = if forward {
                (*selected + 1) % n
            } else {
                (*selected + n - 1) % n
            };
        }
    }

    /// The next or previous misclassified image (wrapping), in the Errors view.
    pub fn step_error(&mut self, forward: bool) -> Option<ResultsEffect> {
        let n = self.loaded.as_ref().map_or(0, |l| l.errors.len());
        // From another view the first key shows the image in view, without stepping.
        let stepping = self.view == View::Errors;
        self.view = View::Errors;
        if n > 0 && stepping {
            self.error = if forward {
                (self.error + 1) % n
            } else {
                (self.error + n - 1) % n
            };
        }
        self.image_to_show()
    }

    /// Enter: in the Reports view, read the selected report.
    pub fn choose(&mut self) -> Option<ResultsEffect> {
        if self.view != View::Reports {
            return None;
        }
        let path = self.found.get(self.found_selected)?.clone();
        Some(self.load(path))
    }

    /// The misclassified image in view: its index into the report's predictions.
    pub fn current_error(&self) -> Option<usize> {
        self.loaded.as_ref()?.errors.get(self.error).copied()
    }

    /// The file of the misclassified image in view.
    pub fn current_error_path(&self) -> Option<PathBuf> {
        let loaded = self.loaded.as_ref()?;
        let p = loaded.report.predictions.get(self.current_error()?)?;
        Some(loaded.image_path(&p.image))
    }

    /// Whether the step-through's picture is on screen.
    pub fn shows_picture(&self) -> bool {
        self.view == View::Errors && self.current_error().is_some()
    }

    /// The image to decode for the view, unless it is shown or being decoded.
    fn image_to_show(&mut self) -> Option<ResultsEffect> {
        if !self.shows_picture() {
            return None;
        }
        let path = self.current_error_path()?;
        if self.decoding.as_ref() == Some(&path) || self.picture_path.as_ref() == Some(&path) {
            return None;
        }
        self.decoding = Some(path.clone());
        Some(ResultsEffect::DecodeImage(path))
    }

    /// The step-through's image was decoded (or failed to be); `picture` is made by the
    /// app, which numbers pictures. Returns whether it was the one wanted.
    pub fn on_image(&mut self, path: &Path, picture: Result<Picture, String>) -> bool {
        if self.decoding.as_deref() != Some(path) {
            return false; // the user stepped on since
        }
        self.decoding = None;
        self.picture_path = Some(path.to_path_buf());
        match picture {
            Ok(p) => {
                self.picture = Some(p);
                self.picture_error = None;
            }
            Err(message) => {
                self.picture = None;
                self.picture_error = Some(message);
            }
        }
        true
    }
}
