//! The model and template picker: a popup listing the registry's models, the demo model,
//! model folders found in the cache, and the prompt templates and ensembles. Choosing
//! an entry asks the worker to load the model (or switch the prompt style) on its own
//! thread; the app then scores again.

use std::path::Path;

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState};
use ratatui::Frame;

use super::text::printable;
use super::theme::Theme;
use super::worker::Configure;
use crate::clip::zeroshot::DEFAULT_TEMPLATE;
use crate::clip::PromptStyle;
use crate::hub::{self, ModelSource, Registry, DEMO_MODEL};

/// One line of the picker.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// What the line says.
    pub text: String,
    /// What choosing it changes.
    pub change: Configure,
}

/// The picker's state.
#[derive(Clone, Debug)]
pub struct Picker {
    /// The lines, models first, then prompt styles.
    pub entries: Vec<Entry>,
    /// The highlighted line.
    pub selected: usize,
}

/// What a key did to the picker.
#[derive(Debug, PartialEq)]
pub enum PickerOutcome {
    /// Still open.
    Open,
    /// Closed without a choice.
    Closed,
    /// Closed with this choice.
    Chosen(Entry),
}

fn model_entry(text: String, source: ModelSource) -> Entry {
    Entry {
        text,
        change: Configure {
            source: Some(source),
            style: None,
        },
    }
}

fn style_entry(text: String, style: PromptStyle) -> Entry {
    Entry {
        text,
        change: Configure {
            source: None,
            style: Some(style),
        },
    }
}

/// Model folders under `<cache>/models` that the registry does not name (models a user
/// put there, or fine-tuned ones): any folder with a `config.json`.
fn other_cached_folders(cache_root: &Path, registry: &Registry) -> Vec<std::path::PathBuf> {
    let known: Vec<String> = registry.models.iter().map(|m| m.cache_name()).collect();
    let Ok(entries) = std::fs::read_dir(cache_root.join("models")) else {
        return Vec::new();
    };
    let mut dirs: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().to_string());
            !name.is_some_and(|n| known.contains(&n))
        })
        .collect();
    dirs.sort();
    dirs
}

/// Every choice: the demo model, the registry's models (cached or to download), other
/// cached model folders, then the default template, the label as typed, the ensembles,
/// and `current` when it is none of those.
pub fn entries(current: &PromptStyle) -> Vec<Entry> {
    entries_with(current, hub::DownloadOptions::from_env().ok())
}

/// [`entries`] with the cache in `opts` (none: every registry model to download).
pub fn entries_with(current: &PromptStyle, opts: Option<hub::DownloadOptions>) -> Vec<Entry> {
    let mut out = vec![model_entry(
        format!("model  {DEMO_MODEL}  (built in: a toy trained on drawn shapes)"),
        ModelSource::Named(Some(DEMO_MODEL.into())),
    )];
    if let Ok(registry) = Registry::builtin() {
        for m in &registry.models {
            let state = match &opts {
                Some(o) if hub::is_cached(m, o) => "cached".to_string(),
                _ => format!("download {} MB", m.size_mb),
            };
            out.push(model_entry(
                format!("model  {}  ({state})", m.name),
                ModelSource::Named(Some(m.name.clone())),
            ));
        }
        if let Some(o) = &opts {
            for dir in other_cached_folders(&o.cache_root, &registry) {
                out.push(model_entry(
                    format!("model  {}  (cached folder)", dir.display()),
                    ModelSource::Dir(dir),
                ));
            }
        }
    }
    let mut styles = vec![
        PromptStyle::Template(DEFAULT_TEMPLATE.into()),
        PromptStyle::Template("{}".into()),
    ];
    styles.extend(
        ["imagenet7", "imagenet80"]
            .map(PromptStyle::ensemble)
            .into_iter()
            .flatten(),
    );
    if !styles.contains(current) {
        styles.push(current.clone());
    }
    for style in styles {
        let kind = match style {
            PromptStyle::Template(_) => "template",
            PromptStyle::Ensemble { .. } => "ensemble",
        };
        let text = match &style {
            PromptStyle::Ensemble { name, templates } => {
                format!("{kind}  {name}  ({} templates)", templates.len())
            }
            PromptStyle::Template(t) => format!("{kind}  \"{t}\""),
        };
        out.push(style_entry(text, style));
    }
    out
}

/// Offer the model folder `dir` (the one in use, given with `--model-dir`) after the
/// other models, unless it is listed already.
pub fn add_folder(entries: &mut Vec<Entry>, dir: &Path) {
    let source = ModelSource::Dir(dir.to_path_buf());
    if entries
        .iter()
        .any(|e| e.change.source.as_ref() == Some(&source))
    {
        return;
    }
    let at = entries
        .iter()
        .position(|e| e.change.source.is_none())
        .unwrap_or(entries.len());
    entries.insert(
        at,
        model_entry(format!("model  {}  (folder)", dir.display()), source),
    );
}

impl Picker {
    /// A picker over `entries`, starting at the first.
    pub fn new(entries: Vec<Entry>) -> Self {
        Self {
            entries,
            selected: 0,
        }
    }

    /// The same picker with the model in use highlighted, when it is one of its lines
    /// (a registry model by any of its names, a folder by its path).
    pub fn at_model(mut self, current: Option<&ModelSource>) -> Self {
        let Some(current) = current else {
            return self;
        };
        // The lines name registry models by their own names: the current model's,
        // found once, is what an alias picked.
        let name = crate::hub::source_name(current).ok();
        let is_current = |e: &Entry| match &e.change.source {
            Some(ModelSource::Named(Some(n))) if name.as_ref() == Some(n) => true,
            Some(source) => source == current,
            None => false,
        };
        if let Some(i) = self.entries.iter().position(is_current) {
            self.selected = i;
        }
        self
    }

    /// Up and Down (or k and j) move, Enter chooses, Esc or q closes.
    pub fn on_key(&mut self, key: KeyEvent) -> PickerOutcome {
        let n = self.entries.len().max(1);
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.selected = (self.selected + n - 1) % n,
            KeyCode::Down | KeyCode::Char('j') => self.selected = (self.selected + 1) % n,
            KeyCode::Home => self.selected = 0,
            KeyCode::End => self.selected = n - 1,
            KeyCode::Enter => {
                return match self.entries.get(self.selected) {
                    Some(e) => PickerOutcome::Chosen(e.clone()),
                    None => PickerOutcome::Closed,
                }
            }
            KeyCode::Esc | KeyCode::Char('q') => return PickerOutcome::Closed,
            _ => {}
        }
        PickerOutcome::Open
    }

    /// Where the popup goes on `screen`: centred, as tall as its lines allow.
    pub fn area(&self, screen: Rect) -> Rect {
        let width = 76.min(screen.width);
        let height = (self.entries.len() as u16 + 2).min(screen.height);
        Rect {
            x: screen.x + (screen.width - width) / 2,
            y: screen.y + (screen.height - height) / 2,
            width,
            height,
        }
    }

    /// Draw the popup centred in `screen`, with `current` (the model's name and the
    /// prompt style) in its title.
    pub fn draw(&self, f: &mut Frame, screen: Rect, theme: Theme, current: &str) {
        let area = self.area(screen);
        let items: Vec<ListItem> = self
            .entries
            .iter()
            .map(|e| ListItem::new(Line::from(printable(&e.text).into_owned())))
            .collect();
        let block = Block::default()
            .borders(Borders::ALL)
            .title(format!(" Model and prompts (now: {}) ", printable(current)))
            .title_bottom(Line::from(Span::raw(
                " ↑↓ move, Enter loads/uses, Esc closes ",
            )));
        let list = List::new(items)
            .block(block)
            .highlight_style(theme.selected())
            .highlight_symbol("▶ ");
        let mut state = ListState::default().with_selected(Some(self.selected));
        f.render_widget(Clear, area);
        f.render_stateful_widget(list, area, &mut state);
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
    fn lists_the_demo_the_registry_and_every_prompt_style() {
        let custom = PromptStyle::Template("a sketch of {}".into());
        let all = entries(&custom);
        let texts: Vec<&str> = all.iter().map(|e| e.text.as_str()).collect();
        assert!(texts[0].starts_with("model  demo"));
        let registry = Registry::builtin().unwrap();
        for m in &registry.models {
            assert!(
                texts.iter().any(|t| t.contains(&m.name)),
                "{} missing",
                m.name
            );
        }
        for want in [
            "template  \"a photo of a {}.\"",
            "template  \"{}\"",
            "ensemble  imagenet80",
            "a sketch of {}",
        ] {
            assert!(
                texts.iter().any(|t| t.contains(want)),
                "{want} missing: {texts:?}"
            );
        }
    }

    #[test]
    fn cached_folders_that_the_registry_does_not_name_are_offered() {
        let cache = tempfile::tempdir().unwrap();
        let mine = cache.path().join("models/my-finetune");
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::write(mine.join("config.json"), "{}").unwrap();
        std::fs::create_dir_all(cache.path().join("models/empty")).unwrap();
        let found = other_cached_folders(cache.path(), &Registry::builtin().unwrap());
        assert_eq!(found, std::slice::from_ref(&mine));
        let mut all = entries_with(&PromptStyle::default(), None);
        let n = all.len();
        add_folder(&mut all, &mine);
        add_folder(&mut all, &mine);
        assert_eq!(all.len(), n + 1, "listed once");
        let at = all
            .iter()
            .position(|e| e.text.contains("my-finetune"))
            .unwrap();
        assert!(all[at + 1].change.source.is_none(), "after the models");
    }

    #[test]
    fn the_model_in_use_is_highlighted_by_any_of_its_names() {
        let dir = std::path::PathBuf::from("/models/mine");
        let mut all = entries_with(&PromptStyle::default(), None);
        add_folder(&mut all, &dir);
        let picker = Picker::new(all.clone()).at_model(Some(&ModelSource::Dir(dir)));
        assert!(all[picker.selected].text.contains("/models/mine"));
        let alias = ModelSource::Named(Some("b32".into()));
        let picker = Picker::new(all.clone()).at_model(Some(&alias));
        assert!(
            all[picker.selected].text.contains("ViT-B/32"),
            "{}",
            all[picker.selected].text
        );
        assert_eq!(Picker::new(all).at_model(None).selected, 0);
    }

    #[test]
    fn keys_move_wrap_and_choose() {
        let mut p = Picker::new(entries(&PromptStyle::default()));
        assert_eq!(p.on_key(key(KeyCode::Up)), PickerOutcome::Open);
        assert_eq!(p.selected, p.entries.len() - 1, "wraps to the last");
        p.on_key(key(KeyCode::Down));
        let PickerOutcome::Chosen(e) = p.on_key(key(KeyCode::Enter)) else {
            panic!("Enter chooses")
        };
        assert_eq!(
            e.change.source,
            Some(ModelSource::Named(Some("demo".into())))
        );
        assert_eq!(p.on_key(key(KeyCode::Esc)), PickerOutcome::Closed);
    }
}
