//! Text from outside (pastes, keys, file names, error messages) made safe for the label
//! editor and the screen: line breaks become lines, other control characters never
//! reach the editor or the terminal.

/// Whether `c` is a control character that must not reach the terminal: C0 controls
/// (below 0x20), DEL and the C1 controls (0x80 to 0x9f).
pub fn is_unsafe_control(c: char) -> bool {
    c.is_control()
}

/// Pasted text as editor lines: terminals send a paste's line breaks as carriage
/// returns, so CR, LF and CRLF all end a line; a tab becomes a space (labels are one
/// line each); every other control character is dropped.
pub fn paste_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\n' => out.push('\n'),
            '\t' => out.push(' '),
            c if is_unsafe_control(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Pasted text for a one-line field (the path prompt): the first line, cleaned.
pub fn paste_one_line(text: &str) -> String {
    paste_lines(text.trim_start_matches(['\r', '\n']))
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

pub use crate::util::printable;

/// `text` cut to at most `width` characters by eliding its middle, so that both the
/// start (what failed) and the end (why) stay readable.
pub fn elide_middle(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_string();
    }
    if width < 5 {
        return text.chars().take(width).collect();
    }
    let keep = width - 1;
    let head = keep / 2;
    let tail = keep - head;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(count - tail).collect();
    format!("{start}…{end}")
}

/// `text` fitted to `width` characters: first each long path or URL in it is cut to
/// its last component (`…/LICENSE.md:`), which keeps the file's name and the reason
/// that follows; then, if still too long, the middle is elided.
pub fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let shortened: Vec<String> = text
        .split(' ')
        .map(|word| match word.rfind('/') {
            Some(i) if word.chars().count() > 24 && i + 1 < word.len() => {
                format!("…/{}", &word[i + 1..])
            }
            _ => word.to_string(),
        })
        .collect();
    elide_middle(&shortened.join(" "), width)
}

/// `text` cut to at most `width` terminal columns and padded with spaces to exactly that
/// many: a wide character (CJK, most emoji) takes two columns, so counting characters
/// would push the columns after it out of line.
pub fn fit_columns(text: &str, width: usize) -> String {
    use unicode_width::UnicodeWidthChar;
    let mut out = String::with_capacity(width);
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width {
            break;
        }
        used += w;
        out.push(c);
    }
    out.extend(std::iter::repeat_n(' ', width - used));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn wide_characters_take_two_columns() {
        use unicode_width::UnicodeWidthStr;
        for label in [
            "猫bell",
            "un cercle rouge 🔴 tab",
            "a photo of 東京",
            "plain",
        ] {
            for width in [3, 8, 20] {
                let fitted = fit_columns(label, width);
                assert_eq!(fitted.width(), width, "{fitted:?}");
                assert!(fitted.trim_end().len() <= label.len());
            }
        }
        assert_eq!(fit_columns("猫bell", 8), "猫bell  ");
        assert_eq!(fit_columns("東京", 3), "東 ");
    }

    #[test]
    fn every_line_break_makes_a_line() {
        assert_eq!(paste_lines("cat\rdog\r\nfox\nowl"), "cat\ndog\nfox\nowl");
        assert_eq!(paste_lines("a\r\r\nb"), "a\n\nb");
    }

    #[test]
    fn control_characters_never_pass() {
        let hostile = "red\x1b[2J car\x07\x00\x7f\u{9b}31m\u{85}\tx";
        let clean = paste_lines(hostile);
        assert_eq!(clean, "red[2J car31m x");
        assert!(!clean.chars().any(|c| c.is_control() && c != '\n'));
        assert_eq!(paste_one_line("\r/tmp/a b.png\r\n/tmp/c"), "/tmp/a b.png");
        assert_eq!(printable("a\x1bb\u{9b}"), "a\u{fffd}b\u{fffd}");
        assert!(matches!(printable("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn eliding_keeps_both_ends() {
        let msg =
            "downloading https://huggingface.co/openai/x/config.json: failed to lookup address";
        let short = elide_middle(msg, 40);
        assert_eq!(short.chars().count(), 40);
        assert!(short.starts_with("downloading"));
        assert!(short.ends_with("lookup address"));
        assert_eq!(elide_middle("short", 40), "short");
        assert_eq!(elide_middle("abcdef", 3), "abc");
        let notice = "/work/photos/holiday/2024/LICENSE.md: not a readable image";
        assert_eq!(fit(notice, 60), notice);
        assert_eq!(fit(notice, 40), "…/LICENSE.md: not a readable image");
    }
}
