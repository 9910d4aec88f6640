//! Keymaps: TOML files that bind keys to actions by name.
//!
//! ```toml
//! [bindings]
//! "ctrl-o" = "open_image"
//! "f1" = "help"
//! ```
//!
//! Keys are `ctrl-`, `alt-` and `shift-` prefixes on a character or a named key (`tab`,
//! `backtab`, `enter`, `esc`, `up`, `down`, `left`, `right`, `pageup`, `pagedown`,
//! `home`, `end`, `f1`..`f12`). The built-in sets live in `keymaps/`; a user file
//! `keymap.toml` in clipscope's config folder is applied on top of the chosen set.
//! Ctrl-C always quits, whatever the keymap says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::action::Action;

const DEFAULT_TOML: &str = include_str!("../../keymaps/default.toml");
const VIM_TOML: &str = include_str!("../../keymaps/vim.toml");

/// A key with its modifiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The key.
    pub code: KeyCode,
    /// Ctrl, Alt, Shift (Shift is folded into characters).
    pub mods: KeyModifiers,
}

/// Why a keymap could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeymapError {
    /// The file could not be read.
    #[error("keymap {path}: cannot read it ({source}); give a keymap file, or default or vim")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TOML is malformed or names an unknown key or action.
    #[error("keymap {name}: {message}")]
    Invalid {
        /// The keymap's name or file.
        name: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeymapFile {
    #[serde(default)]
    bindings: BTreeMap<String, String>,
}

/// Key bindings, in a stable order for the help overlay.
#[derive(Clone, Debug)]
pub struct Keymap {
    /// Which set (and overrides) this is.
    pub name: String,
    bindings: Vec<(Key, Action)>,
}

impl Key {
    fn normalize(code: KeyCode, mods: KeyModifiers) -> Self {
        let mut mods = mods & (KeyModifiers::CONTROL | KeyModifiers::ALT | KeyModifiers::SHIFT);
        let code = match code {
            // Shift is already in the character; terminals disagree on reporting it.
            KeyCode::Char(c) => {
                mods.remove(KeyModifiers::SHIFT);
                KeyCode::Char(if mods.is_empty() {
                    c
                } else {
                    c.to_ascii_lowercase()
                })
            }
            KeyCode::BackTab => {
                mods.remove(KeyModifiers::SHIFT);
                KeyCode::BackTab
            }
            other => other,
        };
        Self { code, mods }
    }

    /// The key pressed in a terminal event.
    pub fn from_event(ev: &KeyEvent) -> Self {
        Self::normalize(ev.code, ev.modifiers)
    }

    /// Parse `ctrl-o`, `f1`, `?`, `alt-right`...
    pub fn parse(text: &str) -> Option<Self> {
        let mut mods = KeyModifiers::NONE;
        let mut rest = text;
        loop {
            let lower = rest.to_ascii_lowercase();
            let (m, len) = if lower.starts_with("ctrl-") {
                (KeyModifiers::CONTROL, 5)
            } else if lower.starts_with("alt-") {
                (KeyModifiers::ALT, 4)
            } else if lower.starts_with("shift-") {
                (KeyModifiers::SHIFT, 6)
            } else {
                break;
            };
            if rest.len() == len {
                break; // a lone "-" after a prefix is not a key
            }
            mods |= m;
            rest = &rest[len..];
        }
        let named = match rest.to_ascii_lowercase().as_str() {
            "tab" => Some(KeyCode::Tab),
            "backtab" => Some(KeyCode::BackTab),
            "enter" => Some(KeyCode::Enter),
            "esc" => Some(KeyCode::Esc),
            "space" => Some(KeyCode::Char(' ')),
            "up" => Some(KeyCode::Up),
            "down" => Some(KeyCode::Down),
            "left" => Some(KeyCode::Left),
            "right" => Some(KeyCode::Right),
            "pageup" => Some(KeyCode::PageUp),
            "pagedown" => Some(KeyCode::PageDown),
            "home" => Some(KeyCode::Home),
            "end" => Some(KeyCode::End),
            f if f.len() >= 2 && f.starts_with('f') => f[1..]
                .parse::<u8>()
                .ok()
                .filter(|n| (1..=12).contains(n))
                .map(KeyCode::F),
            _ => None,
        };
        let code = match named {
            Some(c) => c,
            None => {
                let mut chars = rest.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => KeyCode::Char(c),
                    _ => return None,
                }
            }
        };
        Some(Self::normalize(code, mods))
    }

    /// Whether this key types a character (no Ctrl or Alt): such bindings do not apply
    /// while the user is typing in an editor.
    pub fn is_typing(&self) -> bool {
        matches!(self.code, KeyCode::Char(_))
            && !self
                .mods
                .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.mods.contains(KeyModifiers::CONTROL) {
            write!(f, "Ctrl-")?;
        }
        if self.mods.contains(KeyModifiers::ALT) {
            write!(f, "Alt-")?;
        }
        if self.mods.contains(KeyModifiers::SHIFT) {
            write!(f, "Shift-")?;
        }
        match self.code {
            KeyCode::Char(' ') => write!(f, "Space"),
            KeyCode::Char(c) if self.mods.is_empty() => write!(f, "{c}"),
            KeyCode::Char(c) => write!(f, "{}", c.to_ascii_uppercase()),
            KeyCode::F(n) => write!(f, "F{n}"),
            KeyCode::BackTab => write!(f, "Shift-Tab"),
            KeyCode::PageUp => write!(f, "PgUp"),
            KeyCode::PageDown => write!(f, "PgDn"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// A TOML error on one line: where (line and column) and what, with the form a keymap
/// takes (toml's own message spreads over several lines with a drawing of the spot).
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let place = e.span().map(|span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("line {line}, column {column}: ")
    });
    format!(
        "{}{}; a keymap holds a [bindings] table of \"key\" = \"action\" lines (see keymaps/default.toml)",
        place.unwrap_or_default(),
        e.message().trim()
    )
}

impl Keymap {
    /// Parse a keymap from TOML.
    pub fn parse(name: &str, text: &str) -> Result<Self, KeymapError> {
        let mut map = Self {
            name: name.to_string(),
            bindings: Vec::new(),
        };
        map.apply(name, text)?;
        Ok(map)
    }

    /// Add the bindings of another TOML text on top of these (a key bound again takes
    /// the new action; `"none"` unbinds it).
    pub fn apply(&mut self, name: &str, text: &str) -> Result<(), KeymapError> {
        let invalid = |message: String| KeymapError::Invalid {
            name: name.to_string(),
            message,
        };
        let file: KeymapFile = toml::from_str(text).map_err(|e| invalid(toml_problem(text, &e)))?;
        for (key_text, action_name) in file.bindings {
            let key = Key::parse(&key_text)
                .ok_or_else(|| invalid(format!("unknown key {key_text:?}")))?;
            self.bindings.retain(|(k, _)| *k != key);
            if action_name == "none" {
                continue;
            }
            let action = Action::from_name(&action_name).ok_or_else(|| {
                let known: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
                invalid(format!(
                    "unknown action {action_name:?} for {key_text:?} (known: {}, or none to unbind)",
                    known.join(", ")
                ))
            })?;
            self.bindings.push((key, action));
        }
        Ok(())
    }

    /// A built-in set: `default` or `vim`.
    pub fn builtin(name: &str) -> Result<Self, KeymapError> {
        let text = match name {
            "default" => DEFAULT_TOML,
            "vim" => VIM_TOML,
            other => {
                return Err(KeymapError::Invalid {
                    name: other.to_string(),
                    message: "no such built-in keymap (default, vim)".into(),
                })
            }
        };
        Self::parse(name, text)
    }

    /// A built-in set, with `keymap.toml` from `config_dir` applied on top if present.
    /// `name` may also be a keymap file (such as `keymaps/vim.toml`), applied on top of
    /// the default set.
    pub fn load(name: &str, config_dir: Option<&Path>) -> Result<Self, KeymapError> {
        let file = Path::new(name);
        let mut map = if name.ends_with(".toml") || file.is_file() {
            let text = std::fs::read_to_string(file).map_err(|source| KeymapError::Io {
                path: file.to_path_buf(),
                source,
            })?;
            let mut map = Self::builtin("default")?;
            map.apply(name, &text)?;
            map.name = name.to_string();
            map
        } else {
            Self::builtin(name)?
        };
        if let Some(path) = config_dir
            .map(|d| d.join("keymap.toml"))
            .filter(|p| p.is_file())
        {
            let text = std::fs::read_to_string(&path).map_err(|source| KeymapError::Io {
                path: path.clone(),
                source,
            })?;
            map.apply(&path.display().to_string(), &text)?;
            map.name = format!("{name} + {}", path.display());
        }
        Ok(map)
    }

    /// The action bound to a key event. While `typing`, character keys go to the
    /// editor instead.
    pub fn action_for(&self, ev: &KeyEvent, typing: bool) -> Option<Action> {
        let key = Key::from_event(ev);
        if typing && key.is_typing() {
            return None;
        }
        self.bindings
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, a)| *a)
    }

    /// The keys bound to an action.
    pub fn keys_for(&self, action: Action) -> Vec<Key> {
        self.bindings
            .iter()
            .filter(|(_, a)| *a == action)
            .map(|(k, _)| *k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keymap_file_can_be_named_instead_of_a_builtin_set() {
        let from_file = Keymap::load("keymaps/vim.toml", None).unwrap();
        let builtin = Keymap::builtin("vim").unwrap();
        let j = ev(KeyCode::Char('j'), KeyModifiers::NONE);
        assert_eq!(
            from_file.action_for(&j, false),
            builtin.action_for(&j, false)
        );
        assert!(Keymap::load("keymaps/nope.toml", None).is_err());
    }

    #[test]
    fn a_broken_keymap_says_where_what_and_how_on_one_line() {
        let err = |text: &str| Keymap::parse("k.toml", text).unwrap_err().to_string();
        let malformed = err("[bindings]\n\"ctrl-o\" = open_image\n");
        assert!(
            malformed.contains("line 2, column 12") && malformed.contains("[bindings]"),
            "{malformed}"
        );
        assert!(!malformed.contains('\n'), "{malformed}");
        let unknown = err("[bindings]\n\"ctrl-o\" = \"open_imag\"\n");
        assert!(
            unknown.contains("known: quit,") && unknown.contains("open_image"),
            "{unknown}"
        );
        let extra = err("[extra]\nx = 1\n");
        assert!(extra.contains("extra"), "{extra}");
        let missing = Keymap::load("nonexist.toml", None).unwrap_err().to_string();
        assert!(
            missing.starts_with("keymap nonexist.toml: cannot read it"),
            "{missing}"
        );
    }

    fn ev(code: KeyCode, mods: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, mods)
    }

    #[test]
    fn builtin_keymaps_parse_and_bind_every_action() {
        for name in ["default", "vim"] {
            let map = Keymap::builtin(name).unwrap();
            for a in Action::ALL {
                assert!(!map.keys_for(a).is_empty(), "{name}: {} unbound", a.name());
            }
        }
    }

    #[test]
    fn keys_parse_and_print() {
        let k = Key::parse("ctrl-o").unwrap();
        assert_eq!(k.code, KeyCode::Char('o'));
        assert_eq!(k.to_string(), "Ctrl-O");
        assert_eq!(Key::parse("F1").unwrap().code, KeyCode::F(1));
        assert_eq!(Key::parse("alt-right").unwrap().mods, KeyModifiers::ALT);
        assert_eq!(Key::parse("-").unwrap().code, KeyCode::Char('-'));
        assert!(
            Key::parse("ctrl-").is_none()
                || Key::parse("ctrl-").unwrap().code == KeyCode::Char('-')
        );
        assert!(Key::parse("hyper-x").is_none());
        assert!(Key::parse("f13").is_none());
    }

    #[test]
    fn typing_keys_go_to_the_editor() {
        let map = Keymap::parse(
            "t",
            "[bindings]\n\"?\" = \"help\"\n\"ctrl-o\" = \"open_image\"",
        )
        .unwrap();
        let q = ev(KeyCode::Char('?'), KeyModifiers::SHIFT);
        assert_eq!(map.action_for(&q, false), Some(Action::Help));
        assert_eq!(map.action_for(&q, true), None);
        let o = ev(KeyCode::Char('o'), KeyModifiers::CONTROL);
        assert_eq!(map.action_for(&o, true), Some(Action::OpenImage));
    }

    #[test]
    fn overrides_replace_and_unbind() {
        let mut map = Keymap::builtin("default").unwrap();
        map.apply(
            "user",
            "[bindings]\n\"ctrl-o\" = \"none\"\n\"ctrl-y\" = \"open_image\"",
        )
        .unwrap();
        assert_eq!(
            map.keys_for(Action::OpenImage),
            vec![Key::parse("ctrl-y").unwrap()]
        );
        let err = map
            .apply("user", "[bindings]\n\"ctrl-y\" = \"fly\"")
            .unwrap_err();
        assert!(err.to_string().contains("fly"));
    }
}
