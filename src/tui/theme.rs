//! The app's styles, readable on light and dark terminal themes and without colour
//! when `NO_COLOR` is set (<https://no-color.org>).
//!
//! Bars that must stand out (the status bar, the selected tab) use reverse video of the
//! terminal's own colours, which reads on any theme; a colour never appears as a
//! background behind the terminal's default foreground (black on black on a light
//! theme). Pictures keep their colours: they are content, not decoration.

use ratatui::style::{Color, Modifier, Style};

/// The app's styles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Theme {
    /// Whether colours may be used.
    pub color: bool,
}

impl Default for Theme {
    fn default() -> Self {
        Self { color: true }
    }
}

impl Theme {
    /// Colours unless `NO_COLOR` is set to anything but the empty string.
    pub fn from_env() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self { color: !no_color }
    }

    /// Text in colour `c` (plain without colours).
    pub fn fg(self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    /// The status bar: reverse video of the terminal's colours.
    pub fn status(self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }

    /// An error in the status bar: bold, on red when colours are allowed.
    pub fn status_error(self) -> Style {
        self.status()
            .add_modifier(Modifier::BOLD)
            .patch(self.fg(Color::Red))
    }

    /// Something pending in the status bar (model loading).
    pub fn status_busy(self) -> Style {
        self.status().add_modifier(Modifier::BOLD)
    }

    /// The selected tab or form row: set colours on both sides, or reverse video.
    pub fn selected(self) -> Style {
        if self.color {
            Style::default().fg(Color::Black).bg(Color::Cyan)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }

    /// A confusion-matrix cell holding `share` of its row: on the diagonal (right
    /// answers) in greens, elsewhere in reds, darker for more. Colours are set on both
    /// sides (the 256-colour ramp), so the cell reads on light and dark themes; without
    /// colour, dim, plain, bold and reverse video mark the same four levels.
    pub fn heat(self, share: f64, diagonal: bool) -> Style {
        let level = match share {
            s if s <= 0.0 => 0,
            s if s < 0.25 => 1,
            s if s < 0.6 => 2,
            _ => 3,
        };
        if !self.color {
            return match level {
                0 => Style::default().add_modifier(Modifier::DIM),
                1 => Style::default(),
                2 => Style::default().add_modifier(Modifier::BOLD),
                _ => Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
            };
        }
        // xterm-256 greens and reds, light to dark; black text on the light ones.
        const GREENS: [u8; 3] = [151, 77, 28];
        const REDS: [u8; 3] = [224, 210, 160];
        match level {
            0 => self.dim(),
            l => {
                let bg = if diagonal { GREENS[l - 1] } else { REDS[l - 1] };
                let fg = if l == 3 { Color::White } else { Color::Black };
                Style::default().fg(fg).bg(Color::Indexed(bg))
            }
        }
    }

    /// Secondary text (hints).
    pub fn dim(self) -> Style {
        if self.color {
            Style::default().fg(Color::DarkGray)
        } else {
            Style::default().add_modifier(Modifier::DIM)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_colour_only_modifiers_remain() {
        let t = Theme { color: false };
        for style in [
            t.fg(Color::Green),
            t.status(),
            t.status_error(),
            t.status_busy(),
            t.selected(),
            t.dim(),
            t.heat(0.0, true),
            t.heat(0.1, false),
            t.heat(0.5, true),
            t.heat(1.0, true),
        ] {
            assert_eq!((style.fg, style.bg), (None, None), "{style:?}");
        }
        assert!(t.selected().add_modifier.contains(Modifier::REVERSED));
    }

    #[test]
    fn the_status_bar_never_sets_one_colour_against_the_default_other() {
        let t = Theme::default();
        for style in [t.status(), t.status_busy()] {
            assert_eq!((style.fg, style.bg), (None, None));
            assert!(style.add_modifier.contains(Modifier::REVERSED));
        }
    }

    #[test]
    fn heat_cells_set_both_colours_or_none() {
        let t = Theme::default();
        for share in [0.1, 0.3, 0.9] {
            for diagonal in [true, false] {
                let style = t.heat(share, diagonal);
                assert!(
                    style.fg.is_some() && style.bg.is_some(),
                    "{share} {diagonal}"
                );
            }
        }
        assert_ne!(t.heat(0.9, true).bg, t.heat(0.9, false).bg);
        assert_ne!(t.heat(0.1, true).bg, t.heat(0.9, true).bg);
    }
}
