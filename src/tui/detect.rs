//! Asking the terminal what it is, without losing a key.
//!
//! ratatui-image's own query (`Picker::from_query_stdio`) reads stdin on a thread that
//! discards whatever the user types meanwhile, and stays blocked on stdin for good when
//! the terminal never answers, eating later keys. Here the query is written once, stdin is
//! read with `poll` and a deadline (in raw mode, before the event reader starts), the
//! answers are parsed, and every other byte is handed back as typed input.
//!
//! The query asks for kitty graphics support (`ESC _G...`), the primary device
//! attributes (`ESC [c`, whose parameter 4 means sixel), the terminal's name and version
//! (XTVERSION, `ESC [>q`: kitty answers `kitty(0.26.5)`), the cell size in pixels
//! (`ESC [16t`), the background colour (`OSC 11`) and a device status report
//! (`ESC [5n`), which every terminal answers and which marks the end of the answers.
//! Inside tmux the whole query is wrapped for passthrough, so that the terminal around
//! tmux answers rather than tmux.

/// What the terminal said, and what the user typed meanwhile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detected {
    /// The terminal answered the kitty graphics query with OK.
    pub kitty_graphics: bool,
    /// The device attributes list sixel graphics.
    pub sixel: bool,
    /// The terminal's name and version, as XTVERSION reports it (`kitty(0.26.5)`).
    pub terminal: Option<String>,
    /// Cell size in pixels (width, height), if reported.
    pub cell_size: Option<(u16, u16)>,
    /// The default background colour, if reported.
    pub background: Option<[u8; 3]>,
    /// Bytes that were not part of an answer: the user's keys.
    pub typed: Vec<u8>,
    /// Whether the status report arrived (the terminal answers queries).
    pub answered: bool,
}

/// The query bytes.
pub const QUERY: &str =
    "\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\\x1b[c\x1b[>0q\x1b[16t\x1b]11;?\x1b\\\x1b[5n";

/// Wrap escape sequences for tmux's passthrough: `ESC P tmux; ... ESC \` with every
/// escape inside doubled (tmux would otherwise end the passthrough at the first `ESC \`
/// of the payload).
pub fn tmux_wrap(sequence: &str) -> String {
    let mut out = String::with_capacity(sequence.len() + sequence.len() / 64 + 16);
    out.push_str("\x1bPtmux;");
    for c in sequence.chars() {
        if c == '\x1b' {
            out.push('\x1b');
        }
        out.push(c);
    }
    out.push_str("\x1b\\");
    out
}

/// The end of a string terminated by ST (`ESC \`) or BEL, if complete: (body, length
/// including the terminator).
fn string_end(body: &[u8]) -> Option<(&[u8], usize)> {
    let st = body.windows(2).position(|w| w == b"\x1b\\");
    let bel = body.iter().position(|b| *b == 0x07);
    match (st, bel) {
        (Some(s), Some(b)) if b < s => Some((&body[..b], b + 1)),
        (Some(s), _) => Some((&body[..s], s + 2)),
        (None, Some(b)) => Some((&body[..b], b + 1)),
        (None, None) => None,
    }
}

/// One colour channel of an X11 `rgb:` spec (1 to 4 hex digits), scaled to 8 bits.
fn channel(hex: &str) -> Option<u8> {
    let digits = hex.len() as u32;
    if !(1..=4).contains(&digits) {
        return None;
    }
    let value = u32::from_str_radix(hex, 16).ok()?;
    let max = 16u32.pow(digits) - 1;
    Some(((value * 255 + max / 2) / max) as u8)
}

/// `rgb:RRRR/GGGG/BBBB` to an RGB triple.
fn parse_rgb(spec: &str) -> Option<[u8; 3]> {
    let mut parts = spec.strip_prefix("rgb:")?.split('/');
    let rgb = [
        channel(parts.next()?)?,
        channel(parts.next()?)?,
        channel(parts.next()?)?,
    ];
    parts.next().is_none().then_some(rgb)
}

/// Parse one answer at the start of `rest` (which starts with ESC); returns its length,
/// or None when `rest` does not start with a complete answer.
fn parse_answer(rest: &[u8], out: &mut Detected) -> Option<usize> {
    if let Some(body) = rest.strip_prefix(b"\x1b_G") {
        // APC answer to the kitty query.
        let (text, len) = string_end(body)?;
        if text.windows(2).any(|w| w == b"OK") {
            out.kitty_graphics = true;
        }
        return Some(3 + len);
    }
    if let Some(body) = rest.strip_prefix(b"\x1bP>|") {
        // DCS answer to XTVERSION.
        let (text, len) = string_end(body)?;
        out.terminal = Some(String::from_utf8_lossy(text).trim().to_string());
        return Some(4 + len);
    }
    if let Some(body) = rest.strip_prefix(b"\x1b]11;") {
        let (text, len) = string_end(body)?;
        out.background = parse_rgb(&String::from_utf8_lossy(text));
        return Some(5 + len);
    }
    let body = rest.strip_prefix(b"\x1b[")?;
    // CSI: parameters then one final byte in 0x40..=0x7e.
    let end = body.iter().position(|b| (0x40..=0x7e).contains(b))?;
    let params = std::str::from_utf8(&body[..end]).unwrap_or("");
    let len = 2 + end + 1;
    match body[end] {
        b'c' if params.starts_with('?') => {
            out.sixel |= params[1..].split(';').any(|p| p == "4");
            Some(len)
        }
        b't' if params.starts_with("6;") => {
            let mut it = params[2..].split(';').map(|v| v.parse::<u16>().ok());
            if let (Some(Some(h)), Some(Some(w))) = (it.next(), it.next()) {
                if w > 0 && h > 0 {
                    out.cell_size = Some((w, h));
                }
            }
            Some(len)
        }
        b'n' if params == "0" || params == "3" => {
            out.answered = true;
            Some(len)
        }
        _ => None,
    }
}

/// Parse terminal answers out of `bytes`. Complete escape sequences that are answers
/// are consumed; everything else is kept as typed input. Returns whether the status
/// report (the end marker) was seen.
pub fn parse(bytes: &[u8], out: &mut Detected) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0x1b {
            if let Some(len) = parse_answer(&bytes[i..], out) {
                i += len;
                if out.answered {
                    return true;
                }
                continue;
            }
        }
        // Not an answer: a key the user pressed (letters, arrows...).
        out.typed.push(bytes[i]);
        i += 1;
    }
    false
}

/// Write the query (wrapped for tmux's passthrough when `tmux`) and collect answers
/// until the status report or `timeout`. Call in raw mode, before anything else reads
/// stdin.
#[cfg(unix)]
pub fn query(timeout: std::time::Duration, tmux: bool) -> std::io::Result<Detected> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    let mut stdout = std::io::stdout();
    let query = if tmux {
        tmux_wrap(QUERY)
    } else {
        QUERY.to_string()
    };
    stdout.write_all(query.as_bytes())?;
    stdout.flush()?;
    let fd = std::io::stdin().as_raw_fd();
    let deadline = Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut out = Detected::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        let mut buf = [0u8; 256];
        // SAFETY: reading into a buffer of the stated length.
        let read = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if read <= 0 {
            break;
        }
        raw.extend_from_slice(&buf[..read as usize]);
        out = Detected::default();
        if parse(&raw, &mut out) {
            break;
        }
    }
    Ok(out)
}

/// Without `poll`, no query: the caller falls back to half-blocks.
#[cfg(not(unix))]
pub fn query(_timeout: std::time::Duration, _tmux: bool) -> std::io::Result<Detected> {
    Ok(Detected::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kitty_answers_and_keys_survive() {
        let mut d = Detected::default();
        let done = parse(
            b"ab\x1b_Gi=31;OK\x1b\\\x1b[?62;c\x1bP>|kitty(0.26.5)\x1b\\\x1b[6;18;9tc\
              \x1b]11;rgb:0000/0000/0000\x1b\\\x1b[0n",
            &mut d,
        );
        assert!(done && d.answered);
        assert!(d.kitty_graphics && !d.sixel);
        assert_eq!(d.terminal.as_deref(), Some("kitty(0.26.5)"));
        assert_eq!(d.cell_size, Some((9, 18)));
        assert_eq!(d.background, Some([0, 0, 0]));
        assert_eq!(d.typed, b"abc");
    }

    #[test]
    fn sixel_from_device_attributes_and_a_light_background() {
        // xterm 379 started with -ti vt340, as recorded under Xvfb.
        let mut d = Detected::default();
        assert!(parse(
            b"\x1b[?63;1;2;4;6;9;15;16;22;28c\x1bP>|XTerm(379)\x1b\\\
              \x1b]11;rgb:ffff/ffff/ffff\x1b\\\x1b[0n",
            &mut d
        ));
        assert!(d.sixel && !d.kitty_graphics);
        assert_eq!(d.terminal.as_deref(), Some("XTerm(379)"));
        assert_eq!(d.background, Some([255, 255, 255]));
        assert_eq!(d.cell_size, None);
    }

    #[test]
    fn konsole_answers_kitty_and_sixel_and_a_bel_terminated_colour() {
        let mut d = Detected::default();
        assert!(parse(
            b"\x1b_Gi=31;OK\x1b\\\x1b[?62;1;4c\x1bP>|Konsole 22.12.3\x1b\\\
              \x1b[6;17;8t\x1b]11;rgb:2323/2626/2727\x07\x1b[0n",
            &mut d
        ));
        assert!(d.kitty_graphics && d.sixel);
        assert_eq!(d.terminal.as_deref(), Some("Konsole 22.12.3"));
        assert_eq!(d.background, Some([0x23, 0x26, 0x27]));
    }

    #[test]
    fn no_graphics_and_partial_answers() {
        let mut d = Detected::default();
        assert!(!parse(b"x\x1b[?1;2c\x1b[A\x1bP>|unfinished", &mut d));
        assert!(!d.sixel && !d.kitty_graphics);
        assert_eq!(d.typed, b"x\x1b[A\x1bP>|unfinished");
    }

    #[test]
    fn colour_channels_of_any_width_scale_to_8_bits() {
        assert_eq!(parse_rgb("rgb:f/8/0"), Some([255, 136, 0]));
        assert_eq!(parse_rgb("rgb:ff/80/00"), Some([255, 128, 0]));
        assert_eq!(parse_rgb("rgb:ffff/8080/0000"), Some([255, 128, 0]));
        assert_eq!(parse_rgb("rgb:fffff/0/0"), None);
        assert_eq!(parse_rgb("#ffffff"), None);
    }

    #[test]
    fn tmux_wrapping_doubles_every_escape() {
        let wrapped = tmux_wrap("\x1bPq#0;2;0;0;0-\x1b\\");
        assert_eq!(wrapped, "\x1bPtmux;\x1b\x1bPq#0;2;0;0;0-\x1b\x1b\\\x1b\\");
        // The payload holds no lone ESC that could end the passthrough early.
        let inner = &wrapped[7..wrapped.len() - 2];
        assert!(inner.split("\x1b\x1b").all(|part| !part.contains('\x1b')));
    }
}
