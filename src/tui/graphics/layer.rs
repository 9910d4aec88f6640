//! What escape-sequence pictures are on the screen, and what a frame must write so that
//! exactly the wanted one is: nothing while it stays (typing never re-sends a picture),
//! the picture once when it appears, and when one must go (an image or a pane change,
//! the help overlay over it), a full clear for sixel and iTerm2 (text written over a
//! picture erases only those cells, and ratatui never rewrites the cells it skipped for
//! it) or a delete command for kitty pictures (Konsole and kitty keep pictures above
//! text; kitty also frees a picture's pixels on a clear, so a clear would force the
//! pixels to be sent again).

use ratatui::layout::{Rect, Size};

use super::kitty;
use super::EscapePicture;

/// The escape picture a frame wants on the screen.
pub struct Wanted<'a> {
    /// Where, in cells.
    pub rect: Rect,
    /// The picture.
    pub picture: &'a EscapePicture,
}

/// What to write around one frame.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Clear the whole screen before drawing (and redraw every cell).
    pub clear: bool,
    /// Bytes to write before the frame (kitty deletes).
    pub before: String,
    /// A picture to write after the frame, with the cursor at the rectangle's corner.
    pub after: Option<(Rect, String)>,
}

/// The terminal's graphics as far as the app wrote them.
#[derive(Debug, Default)]
pub struct Layer {
    /// The picture on the screen and where.
    shown: Option<(u64, Rect)>,
    /// The terminal size at the last frame.
    size: Option<Size>,
    /// The kitty image whose pixels the terminal holds.
    held: Option<u32>,
}

impl Layer {
    /// Plan a frame of `size` that should show `wanted` (or no escape picture).
    pub fn plan(&mut self, size: Size, wanted: Option<Wanted<'_>>) -> Plan {
        let mut plan = Plan::default();
        // ratatui clears the screen itself when the size changes, and kitty frees the
        // pixels of pictures on a clear.
        if self.size.is_some_and(|s| s != size) {
            self.shown = None;
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
            self.shown = None;
        }
        if let Some(w) = wanted.filter(|w| self.shown != Some((w.picture.serial, w.rect))) {
            let mut bytes = String::new();
            if let Some(id) = w.picture.kitty_id.filter(|id| self.held != Some(*id)) {
                if let Some(old) = self.held.replace(id) {
                    bytes.push_str(&kitty::free(old));
                }
                bytes.push_str(&w.picture.setup);
            }
            bytes.push_str(&w.picture.show);
            plan.after = Some((w.rect, bytes));
            self.shown = Some((w.picture.serial, w.rect));
        }
        plan
    }

    /// What to write when the app ends: remove and free a kitty picture.
    pub fn finish(&mut self) -> String {
        self.shown = None;
        match self.held.take() {
            Some(id) => format!("{}{}", kitty::DELETE_PLACEMENTS, kitty::free(id)),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sixel(serial: u64, show: &str) -> EscapePicture {
        EscapePicture {
            serial,
            setup: String::new(),
            show: show.into(),
            size: Size::new(10, 5),
            kitty_id: None,
        }
    }

    fn kitty_picture(id: u32) -> EscapePicture {
        EscapePicture {
            serial: u64::from(id),
            setup: format!("T{id}"),
            show: format!("P{id}"),
            size: Size::new(10, 5),
            kitty_id: Some(id),
        }
    }

    const SIZE: Size = Size::new(80, 24);
    const AT: Rect = Rect::new(1, 2, 10, 5);

    #[test]
    fn a_picture_is_sent_once_and_a_change_clears_the_screen() {
        let mut layer = Layer::default();
        let a = sixel(1, "A");
        let wanted = |p| {
            Some(Wanted {
                rect: AT,
                picture: p,
            })
        };
        // Appearing over clean cells: no clear, the picture after the frame.
        let plan = layer.plan(SIZE, wanted(&a));
        assert_eq!(plan.after, Some((AT, "A".to_string())));
        assert!(!plan.clear);
        // Typing: same picture, nothing to write.
        assert_eq!(layer.plan(SIZE, wanted(&a)), Plan::default());
        // Hidden (help over it, another pane): the screen is cleared.
        let plan = layer.plan(SIZE, None);
        assert!(plan.clear && plan.after.is_none());
        assert_eq!(layer.plan(SIZE, None), Plan::default());
        // Back: drawn again.
        assert!(layer.plan(SIZE, wanted(&a)).after.is_some());
        // Another picture: clear, then draw it.
        let b = sixel(2, "B");
        let plan = layer.plan(SIZE, wanted(&b));
        assert!(plan.clear);
        assert_eq!(plan.after, Some((AT, "B".to_string())));
        // A resize: ratatui clears by itself; the picture is drawn again.
        let plan = layer.plan(Size::new(100, 30), wanted(&b));
        assert!(!plan.clear);
        assert!(plan.after.is_some());
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
        assert_eq!(layer.plan(SIZE, w(&a)).after.unwrap().1, "T5P5");
        let plan = layer.plan(SIZE, None);
        assert_eq!(plan.before, kitty::DELETE_PLACEMENTS);
        assert!(!plan.clear, "a clear would free the pixels in kitty");
        // Shown again: placed, not transmitted.
        assert_eq!(layer.plan(SIZE, w(&a)).after.unwrap().1, "P5");
        let b = kitty_picture(6);
        let plan = layer.plan(SIZE, w(&b));
        assert_eq!(plan.after.unwrap().1, format!("{}T6P6", kitty::free(5)));
        // After a resize (ratatui clears the screen) the pixels are sent again.
        let plan = layer.plan(Size::new(90, 30), w(&b));
        assert_eq!(plan.before, kitty::free(6));
        assert_eq!(plan.after.unwrap().1, "T6P6");
        assert!(layer.finish().ends_with(&kitty::free(6)));
    }
}
