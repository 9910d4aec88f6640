//! What escape-sequence pictures are on the screen, and what a frame must write so that
//! exactly the wanted one is: nothing while it stays (typing never re-sends a picture),
//! the picture once when it appears, and when one must go (an image or a pane change,
//! the help overlay over it), a full clear for sixel and iTerm2 (text written over a
//! picture erases only those cells, and ratatui never rewrites the cells it skipped for
//! it) or a delete command for kitty pictures (Konsole and kitty keep pictures above
//! text; kitty also frees a picture's pixels on a clear, so a clear would force the
//! pixels to be sent again).

use std::collections::VecDeque;

use ratatui::layout::{Position, Rect, Size};

use super::kitty;
use super::EscapePicture;

/// The escape picture a frame wants on the screen.
pub struct Wanted<'a> {
    /// Where, in cells.
    pub rect: Rect,
    /// The picture.
    pub picture: &'a EscapePicture,
}

/// What to do around one frame.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Clear the whole screen before drawing (and redraw every cell).
    pub clear: bool,
    /// Bytes to write before the frame (kitty deletes).
    pub before: String,
}

/// The terminal's graphics as far as the app wrote them.
#[derive(Debug, Default)]
pub struct Layer {
    /// The picture on the screen (or being written) and where.
    shown: Option<(u64, Rect)>,
    /// The terminal size at the last frame.
    size: Option<Size>,
    /// The kitty image whose pixels the terminal holds.
    held: Option<u32>,
    /// Pieces of the shown picture not written yet, with the cursor position for each.
    pending: VecDeque<(Position, String)>,
}

impl Layer {
    /// Plan a frame of `size` that should show `wanted` (or no escape picture); the
    /// picture's pieces are then taken one at a time with [`Layer::next_piece`].
    pub fn plan(&mut self, size: Size, wanted: Option<Wanted<'_>>) -> Plan {
        let mut plan = Plan::default();
        // ratatui clears the screen itself when the size changes, and kitty frees the
        // pixels of pictures on a clear.
        if self.resizes_to(size) {
            self.forget_shown();
            if let Some(old) = self.held.take() {
                plan.before.push_str(&kitty::free(old));
            }
        }
        self.size = Some(size);
        let target = wanted.as_ref().map(|w| (w.picture.serial, w.rect));
        if self.shown.is_some() && self.shown != target {
            if self.held.is_some() {
                // A kitty picture goes by command; a clear would free its pixels too.
                plan.before.push_str(kitty::DELETE_PLACEMENTS);
            } else {
                plan.clear = true;
            }
            self.forget_shown();
        }
        if let Some(w) = wanted.filter(|w| self.shown != Some((w.picture.serial, w.rect))) {
            let mut setup = String::new();
            if let Some(id) = w.picture.kitty_id.filter(|id| self.held != Some(*id)) {
                if let Some(old) = self.held.replace(id) {
                    setup.push_str(&kitty::free(old));
                }
                setup.push_str(&w.picture.setup);
            }
            for (i, (row, piece)) in w.picture.pieces.iter().enumerate() {
                let at = Position::new(w.rect.x, w.rect.y + row);
                let bytes = if i == 0 {
                    format!("{setup}{piece}")
                } else {
                    piece.clone()
                };
                self.pending.push_back((at, bytes));
            }
            self.shown = Some((w.picture.serial, w.rect));
        }
        plan
    }

    fn forget_shown(&mut self) {
        self.shown = None;
        self.pending.clear();
    }

    /// The next piece of picture to write, and where the cursor must be for it.
    pub fn next_piece(&mut self) -> Option<(Position, String)> {
        self.pending.pop_front()
    }

    /// Whether pieces of a picture are still to be written.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether the terminal's size differs from the last frame's (ratatui then clears
    /// the screen).
    pub fn resizes_to(&self, size: Size) -> bool {
        self.size.is_some_and(|s| s != size)
    }

    /// What to write when the app ends: remove and free a kitty picture.
    pub fn finish(&mut self) -> String {
        self.forget_shown();
        match self.held.take() {
            Some(id) => format!("{}{}", kitty::DELETE_PLACEMENTS, kitty::free(id)),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sixel(serial: u64, bands: &[&str]) -> EscapePicture {
        EscapePicture {
            serial,
            setup: String::new(),
            pieces: bands
                .iter()
                .enumerate()
                .map(|(i, b)| (i as u16 * 3, b.to_string()))
                .collect(),
            size: Size::new(10, 5),
            kitty_id: None,
        }
    }

    fn kitty_picture(id: u32) -> EscapePicture {
        EscapePicture {
            serial: u64::from(id),
            setup: format!("T{id}"),
            pieces: vec![(0, format!("P{id}"))],
            size: Size::new(10, 5),
            kitty_id: Some(id),
        }
    }

    const SIZE: Size = Size::new(80, 24);
    const AT: Rect = Rect::new(1, 2, 10, 5);

    fn drain(layer: &mut Layer) -> Vec<(Position, String)> {
        std::iter::from_fn(|| layer.next_piece()).collect()
    }

    #[test]
    fn a_picture_is_sent_once_and_a_change_clears_the_screen() {
        let mut layer = Layer::default();
        let a = sixel(1, &["A1", "A2"]);
        let wanted = |p| {
            Some(Wanted {
                rect: AT,
                picture: p,
            })
        };
        // Appearing over clean cells: no clear; the bands after the frame, in order,
        // each at its own row.
        assert_eq!(layer.plan(SIZE, wanted(&a)), Plan::default());
        assert!(layer.busy());
        assert_eq!(
            drain(&mut layer),
            [
                (Position::new(1, 2), "A1".to_string()),
                (Position::new(1, 5), "A2".to_string())
            ]
        );
        // Typing: same picture, nothing to write.
        assert_eq!(layer.plan(SIZE, wanted(&a)), Plan::default());
        assert!(!layer.busy());
        // Hidden (help over it, another pane): the screen is cleared.
        let plan = layer.plan(SIZE, None);
        assert!(plan.clear && !layer.busy());
        assert_eq!(layer.plan(SIZE, None), Plan::default());
        // Back: drawn again.
        layer.plan(SIZE, wanted(&a));
        assert_eq!(drain(&mut layer).len(), 2);
        // Another picture while the first is still being written: clear, and only the
        // new one's bands remain.
        let b = sixel(2, &["B1", "B2"]);
        layer.plan(SIZE, wanted(&a));
        let plan = layer.plan(SIZE, wanted(&b));
        assert!(plan.clear);
        let pieces: Vec<String> = drain(&mut layer).into_iter().map(|(_, s)| s).collect();
        assert_eq!(pieces, ["B1", "B2"]);
        // A resize: ratatui clears by itself; the picture is drawn again.
        let plan = layer.plan(Size::new(100, 30), wanted(&b));
        assert!(!plan.clear);
        assert!(layer.busy());
    }

    #[test]
    fn kitty_pixels_are_transmitted_once_and_freed_when_replaced() {
        let mut layer = Layer::default();
        let a = kitty_picture(5);
        let w = |p| {
            Some(Wanted {
                rect: AT,
                picture: p,
            })
        };
        let bytes = |layer: &mut Layer| layer.next_piece().unwrap().1;
        layer.plan(SIZE, w(&a));
        assert_eq!(bytes(&mut layer), "T5P5");
        let plan = layer.plan(SIZE, None);
        assert_eq!(plan.before, kitty::DELETE_PLACEMENTS);
        assert!(!plan.clear, "a clear would free the pixels in kitty");
        // Shown again: placed, not transmitted.
        layer.plan(SIZE, w(&a));
        assert_eq!(bytes(&mut layer), "P5");
        let b = kitty_picture(6);
        layer.plan(SIZE, w(&b));
        assert_eq!(bytes(&mut layer), format!("{}T6P6", kitty::free(5)));
        // After a resize (ratatui clears the screen) the pixels are sent again.
        let plan = layer.plan(Size::new(90, 30), w(&b));
        assert_eq!(plan.before, kitty::free(6));
        assert_eq!(bytes(&mut layer), "T6P6");
        assert!(layer.finish().ends_with(&kitty::free(6)));
    }
}
