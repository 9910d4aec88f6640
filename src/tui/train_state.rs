//! The Train pane's state: the run's options as an editable form, and the live
//! progress of a run (series for the charts, throughput, time left, the log).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent};
use ratatui_textarea::TextArea;

use crate::cnn::checkpoint::EpochMetrics;
use crate::cnn::network::Arch;
use crate::cnn::optim::OptimizerKind;
use crate::cnn::train::{Pretrained, TrainConfig, TrainEvent};

/// One form field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// Data folder.
    Data,
    /// Architecture: resnet18 or vgg16.
    Model,
    /// Starting weights: none, imagenet or a file.
    Pretrained,
    /// Train only the classifier.
    Freeze,
    /// Epochs.
    Epochs,
    /// Batch size.
    BatchSize,
    /// Input size.
    ImageSize,
    /// SGD or AdamW.
    Optimizer,
    /// Learning rate.
    Lr,
    /// Run folder.
    Output,
}

impl Field {
    /// Form order.
    pub const ALL: [Field; 10] = [
        Field::Data,
        Field::Model,
        Field::Pretrained,
        Field::Freeze,
        Field::Epochs,
        Field::BatchSize,
        Field::ImageSize,
        Field::Optimizer,
        Field::Lr,
        Field::Output,
    ];

    /// The label shown in the form.
    pub fn label(self) -> &'static str {
        match self {
            Field::Data => "data folder",
            Field::Model => "model",
            Field::Pretrained => "pretrained",
            Field::Freeze => "freeze backbone",
            Field::Epochs => "epochs",
            Field::BatchSize => "batch size",
            Field::ImageSize => "image size",
            Field::Optimizer => "optimizer",
            Field::Lr => "learning rate",
            Field::Output => "run folder",
        }
    }

    fn is_toggle(self) -> bool {
        matches!(self, Field::Model | Field::Freeze | Field::Optimizer)
    }
}

/// A run in progress (or finished).
#[derive(Clone, Debug, Default)]
pub struct RunProgress {
    /// Whether the run is going.
    pub running: bool,
    /// Training loss per step: (global step, loss).
    pub step_loss: Vec<(f64, f64)>,
    /// Training accuracy per step.
    pub step_acc: Vec<(f64, f64)>,
    /// Per epoch: (global step at its end, metrics).
    pub epochs: Vec<(f64, EpochMetrics)>,
    /// Current epoch and step, steps per epoch, total epochs.
    pub position: (usize, usize, usize, usize),
    /// Latest throughput.
    pub images_per_sec: f64,
    /// When the current run's steps began (for the time left).
    pub started: Option<Instant>,
    /// Steps done in this run (for the time left).
    pub steps_done: usize,
    /// First epoch of this run (1 unless resumed).
    pub first_epoch: usize,
}

impl RunProgress {
    /// Fraction of the run done.
    pub fn fraction(&self) -> f64 {
        let (epoch, step, steps, total) = self.position;
        if steps == 0 || total == 0 {
            return 0.0;
        }
        (((epoch.max(1) - 1) * steps + step) as f64 / (total * steps) as f64).clamp(0.0, 1.0)
    }

    /// Estimated time left, from this run's average step time.
    pub fn time_left(&self) -> Option<Duration> {
        let (epoch, step, steps, total) = self.position;
        let started = self.started?;
        if self.steps_done == 0 {
            return None;
        }
        let per_step = started.elapsed().as_secs_f64() / self.steps_done as f64;
        let remaining = (total * steps).saturating_sub((epoch.max(1) - 1) * steps + step);
        Some(Duration::from_secs_f64(per_step * remaining as f64))
    }
}

/// The Train pane.
pub struct TrainState {
    /// Field values as text (toggles hold their current choice).
    pub values: Vec<String>,
    /// The selected field.
    pub selected: usize,
    /// The field being edited, with its editor.
    pub editing: Option<TextArea<'static>>,
    /// The current or last run.
    pub progress: RunProgress,
    /// Log lines, oldest first.
    pub log: Vec<String>,
}

impl Default for TrainState {
    fn default() -> Self {
        Self {
            values: vec![
                String::new(),
                "resnet18".into(),
                "imagenet".into(),
                "no".into(),
                "10".into(),
                "32".into(),
                "224".into(),
                "sgd".into(),
                "0.01".into(),
                "runs/resnet18".into(),
            ],
            selected: 0,
            editing: None,
            progress: RunProgress::default(),
            log: vec!["Choose a data folder (Enter edits a field), then F5 to start.".into()],
        }
    }
}

impl TrainState {
    fn value(&self, f: Field) -> &str {
        let i = Field::ALL.iter().position(|x| *x == f).unwrap_or(0);
        &self.values[i]
    }

    /// Set a field's text.
    pub fn set(&mut self, f: Field, value: &str) {
        if let Some(i) = Field::ALL.iter().position(|x| *x == f) {
            self.values[i] = value.to_string();
        }
    }

    /// A key while the Train pane has focus. Returns true when the key was used.
    pub fn on_key(&mut self, key: KeyEvent) -> bool {
        if let Some(editor) = self.editing.as_mut() {
            match key.code {
                KeyCode::Enter => {
                    let text = editor.lines().join("").trim().to_string();
                    self.values[self.selected] = text;
                    self.editing = None;
                }
                KeyCode::Esc => self.editing = None,
                _ => {
                    editor.input(key);
                }
            }
            return true;
        }
        match key.code {
            KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down => self.selected = (self.selected + 1).min(Field::ALL.len() - 1),
            KeyCode::Enter | KeyCode::Char(' ') => {
                let field = Field::ALL[self.selected];
                if field.is_toggle() {
                    let v = &mut self.values[self.selected];
                    *v = match (field, v.as_str()) {
                        (Field::Model, "resnet18") => "vgg16".into(),
                        (Field::Model, _) => "resnet18".into(),
                        (Field::Freeze, "no") => "yes".into(),
                        (Field::Freeze, _) => "no".into(),
                        (Field::Optimizer, "sgd") => "adamw".into(),
                        _ => "sgd".into(),
                    };
                } else {
                    let mut ta = TextArea::new(vec![self.values[self.selected].clone()]);
                    ta.move_cursor(ratatui_textarea::CursorMove::End);
                    ta.set_cursor_line_style(ratatui::style::Style::default());
                    self.editing = Some(ta);
                }
            }
            _ => return false,
        }
        true
    }

    /// Whether keys are being typed into a field.
    pub fn is_editing(&self) -> bool {
        self.editing.is_some()
    }

    /// The run's configuration from the form, or what is wrong with it. `imagenet`
    /// weights are resolved (downloaded) by the training thread.
    pub fn config(&self) -> Result<(TrainConfig, bool), String> {
        let data = self.value(Field::Data);
        if data.is_empty() {
            return Err("choose a data folder first".into());
        }
        let num = |f: Field| -> Result<usize, String> {
            self.value(f)
                .parse::<usize>()
                .map_err(|_| format!("{}: {:?} is not a whole number", f.label(), self.value(f)))
        };
        let lr: f64 = self
            .value(Field::Lr)
            .parse()
            .map_err(|_| format!("learning rate: {:?} is not a number", self.value(Field::Lr)))?;
        let optimizer = if self.value(Field::Optimizer) == "adamw" {
            OptimizerKind::Adamw
        } else {
            OptimizerKind::Sgd
        };
        let pretrained_text = self.value(Field::Pretrained);
        let (pretrained, imagenet) = match pretrained_text {
            "none" => (Pretrained::None, false),
            "imagenet" => (Pretrained::None, true),
            path => (
                Pretrained::File {
                    path: PathBuf::from(path),
                    label: path.to_string(),
                },
                false,
            ),
        };
        Ok((
            TrainConfig {
                arch: Arch::from_name(self.value(Field::Model)).unwrap_or(Arch::Resnet18),
                data: PathBuf::from(data),
                val: None,
                pretrained,
                freeze_backbone: self.value(Field::Freeze) == "yes",
                epochs: num(Field::Epochs)?,
                batch_size: num(Field::BatchSize)?,
                image_size: num(Field::ImageSize)?,
                optimizer,
                lr,
                weight_decay: if optimizer == OptimizerKind::Adamw {
                    0.01
                } else {
                    1e-4
                },
                seed: 0,
                output: PathBuf::from(self.value(Field::Output)),
                resume: false,
                val_fraction: 0.2,
                crop_scale: (0.25, 1.0),
                device: candle_core::Device::Cpu,
            },
            imagenet,
        ))
    }

    /// Add a line to the log (the last 200 are kept).
    pub fn log_line(&mut self, line: impl Into<String>) {
        self.log.push(line.into());
        if self.log.len() > 200 {
            self.log.remove(0);
        }
    }

    /// Record a progress event from the training thread.
    pub fn on_event(&mut self, ev: TrainEvent) {
        let p = &mut self.progress;
        match ev {
            TrainEvent::Ready {
                classes,
                train,
                val,
                skipped,
                first_epoch,
                steps_per_epoch,
            } => {
                p.position = (first_epoch, 0, steps_per_epoch, p.position.3);
                p.first_epoch = first_epoch;
                p.started = Some(Instant::now());
                p.steps_done = 0;
                self.log_line(format!(
                    "{} classes, {train} training and {val} held-out images{}",
                    classes.len(),
                    if skipped > 0 {
                        format!(", {skipped} unreadable skipped")
                    } else {
                        String::new()
                    }
                ));
            }
            TrainEvent::Log(line) => self.log_line(line),
            TrainEvent::Step {
                epoch,
                step,
                steps,
                loss,
                acc,
                images_per_sec,
                ..
            } => {
                let x = ((epoch - 1) * steps + step) as f64;
                p.step_loss.push((x, loss));
                p.step_acc.push((x, acc));
                p.position = (epoch, step, steps, p.position.3);
                p.images_per_sec = images_per_sec;
                p.steps_done += 1;
            }
            TrainEvent::Epoch(m) => {
                let x = (m.epoch * p.position.2) as f64;
                self.log_line(format!(
                    "epoch {}: train loss {:.4} acc {:.3}, val loss {:.4} acc {:.3}, {:.1} img/s",
                    m.epoch, m.train_loss, m.train_acc, m.val_loss, m.val_acc, m.images_per_sec
                ));
                self.progress.epochs.push((x, m));
            }
            TrainEvent::Saved(path) => self.log_line(format!("saved {}", path.display())),
        }
    }

    /// A run is starting with `epochs` epochs.
    pub fn start(&mut self, epochs: usize) {
        self.progress = RunProgress {
            running: true,
            position: (1, 0, 0, epochs),
            ..RunProgress::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::KeyModifiers;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn the_form_edits_toggles_and_builds_a_config() {
        let mut t = TrainState::default();
        assert!(t.config().unwrap_err().contains("data folder"));
        t.on_key(key(KeyCode::Enter));
        assert!(t.is_editing());
        for c in "/data/shapes".chars() {
            t.on_key(key(KeyCode::Char(c)));
        }
        t.on_key(key(KeyCode::Enter));
        t.on_key(key(KeyCode::Down));
        t.on_key(key(KeyCode::Char(' '))); // model: resnet18 -> vgg16
        for _ in 0..6 {
            t.on_key(key(KeyCode::Down));
        }
        t.on_key(key(KeyCode::Char(' '))); // optimizer: sgd -> adamw
        let (cfg, imagenet) = t.config().unwrap();
        assert_eq!(cfg.data, PathBuf::from("/data/shapes"));
        assert_eq!(cfg.arch, Arch::Vgg16);
        assert_eq!(cfg.optimizer, OptimizerKind::Adamw);
        assert!(imagenet);
        t.set(Field::Epochs, "many");
        assert!(t.config().unwrap_err().contains("epochs"));
    }

    #[test]
    fn progress_tracks_steps_epochs_and_time_left() {
        let mut t = TrainState::default();
        t.start(2);
        t.on_event(TrainEvent::Ready {
            classes: vec!["a".into(), "b".into()],
            train: 8,
            val: 2,
            skipped: 0,
            first_epoch: 1,
            steps_per_epoch: 4,
        });
        for s in 1..=4 {
            t.on_event(TrainEvent::Step {
                epoch: 1,
                step: s,
                steps: 4,
                loss: 1.0 / s as f64,
                acc: 0.5,
                lr: 0.1,
                images_per_sec: 10.0,
            });
        }
        assert_eq!(t.progress.step_loss.len(), 4);
        assert!((t.progress.fraction() - 0.5).abs() < 1e-9);
        assert!(t.progress.time_left().is_some());
    }
}
