//! Graphics-protocol detection that never loses a key.
//!
//! ratatui-image's own query (`Picker::from_query_stdio`) reads stdin on a thread that
//! discards whatever the user types meanwhile, and stays blocked on stdin for good when
//! the terminal never answers, eating later keys. Here the query is written once, stdin is
//! read with `poll` and a deadline (in raw mode, before the event reader starts), the
//! answers are parsed, and every other byte is handed back as typed input.
//!
//! The query asks for kitty graphics support (`ESC _G...`), the primary device
//! attributes (`ESC [c`, whose parameter 4 means sixel), the cell size in pixels
//! (`ESC [16t`) and a device status report (`ESC [5n`), which every terminal answers and
//! which marks the end of the answers.

use ratatui_image::picker::ProtocolType;

/// What the terminal said, and what the user typed meanwhile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detected {
    /// The best protocol the terminal claims (None: none answered).
    pub protocol: Option<ProtocolType>,
    /// Cell size in pixels (width, height), if reported.
    pub cell_size: Option<(u16, u16)>,
    /// Bytes that were not part of an answer: the user's keys.
    pub typed: Vec<u8>,
    /// Whether the status report arrived (the terminal answers queries).
    pub answered: bool,
}

/// The query bytes.
pub const QUERY: &str = "\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\\x1b[c\x1b[16t\x1b[5n";

/// Parse terminal answers out of `bytes`. Complete escape sequences that are answers
/// are consumed; everything else is kept as typed input. Returns whether the status
/// report (the end marker) was seen.
pub fn parse(bytes: &[u8], out: &mut Detected) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != 0x1b {
            out.typed.push(bytes[i]);
            i += 1;
            continue;
        }
        let rest = &bytes[i..];
        if let Some(body) = rest.strip_prefix(b"\x1b_G") {
            // APC answer to the kitty query, terminated by ST (ESC \).
            if let Some(end) = body.windows(2).position(|w| w == b"\x1b\\") {
                if body[..end].windows(2).any(|w| w == b"OK") {
                    out.protocol = Some(ProtocolType::Kitty);
                }
                i += 3 + end + 2;
                continue;
            }
        } else if let Some(body) = rest.strip_prefix(b"\x1b[") {
            // CSI: parameters then one final byte in 0x40..=0x7e.
            if let Some(end) = body.iter().position(|b| (0x40..=0x7e).contains(b)) {
                let params = std::str::from_utf8(&body[..end]).unwrap_or("");
                let len = 2 + end + 1;
                match body[end] {
                    b'c' if params.starts_with('?') => {
                        let sixel = params[1..].split(';').any(|p| p == "4");
                        if sixel && out.protocol.is_none() {
                            out.protocol = Some(ProtocolType::Sixel);
                        }
                        i += len;
                        continue;
                    }
                    b't' if params.starts_with("6;") => {
                        let mut it = params[2..].split(';').map(|v| v.parse::<u16>().ok());
                        if let (Some(Some(h)), Some(Some(w))) = (it.next(), it.next()) {
                            if w > 0 && h > 0 {
                                out.cell_size = Some((w, h));
                            }
                        }
                        i += len;
                        continue;
                    }
                    b'n' if params == "0" || params == "3" => {
                        out.answered = true;
                        return true;
                    }
                    _ => {}
                }
            }
        }
        // An escape sequence that is no answer: a key the user pressed (arrows...).
        out.typed.push(bytes[i]);
        i += 1;
    }
    false
}

/// Write the query and collect answers until the status report or `timeout`.
/// Call in raw mode, before anything else reads stdin.
#[cfg(unix)]
pub fn query(timeout: std::time::Duration) -> std::io::Result<Detected> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    let mut stdout = std::io::stdout();
    stdout.write_all(QUERY.as_bytes())?;
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
    if !out.answered {
        out = Detected::default();
        parse(&raw, &mut out);
    }
    Ok(out)
}

/// Without `poll`, no query: the caller falls back to half-blocks.
#[cfg(not(unix))]
pub fn query(_timeout: std::time::Duration) -> std::io::Result<Detected> {
    Ok(Detected::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kitty_answer_wins_and_keys_survive() {
        let mut d = Detected::default();
        let done = parse(
            b"ab\x1b_Gi=31;OK\x1b\\\x1b[?62;4;22c\x1b[6;20;10tc\x1b[0n",
            &mut d,
        );
        assert!(done && d.answered);
        assert_eq!(d.protocol, Some(ProtocolType::Kitty));
        assert_eq!(d.cell_size, Some((10, 20)));
        assert_eq!(d.typed, b"abc");
    }

    #[test]
    fn sixel_from_device_attributes() {
        let mut d = Detected::default();
        assert!(parse(b"\x1b[?64;1;4c\x1b[0n", &mut d));
        assert_eq!(d.protocol, Some(ProtocolType::Sixel));
    }

    #[test]
    fn no_graphics_and_partial_answers() {
        let mut d = Detected::default();
        assert!(!parse(b"x\x1b[?1;2c\x1b[A", &mut d));
        assert_eq!(d.protocol, None);
        assert_eq!(d.typed, b"x\x1b[A");
    }
}
