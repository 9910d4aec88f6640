//! HTTP for downloads: one agent with timeouts, resumable fetches into `.part` files, and
//! verification against the size and sha256 the hub lists.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::HubError;

/// Why a request got no usable answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No connection (offline, DNS, refused, timed out).
    Unreachable(String),
    /// The server answered with this HTTP status.
    Status(u16),
}

impl Failure {
    /// The failure as a download error for `url`; `hint` is the next step when the
    /// server cannot be reached at all.
    pub(crate) fn into_error(self, url: &str, hint: &str) -> HubError {
        match self {
            Failure::Unreachable(reason) => HubError::Unreachable {
                url: url.to_string(),
                reason,
                hint: hint.to_string(),
            },
            Failure::Status(code) => HubError::Download {
                url: url.to_string(),
                message: status_message(code),
            },
        }
    }
}

/// An HTTP status in words, with the next step where there is one.
fn status_message(code: u16) -> String {
    match code {
        401 | 403 => {
            format!("access denied (HTTP {code}); set HF_TOKEN to a token that may read it")
        }
        404 => "not found (HTTP 404)".to_string(),
        _ => format!("the server answered HTTP {code}"),
    }
}

/// What the hub says a file should be; unknown fields are not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// Size in bytes.
    pub size: Option<u64>,
    /// sha256 as lower-case hex (the hub lists it for LFS files).
    pub sha256: Option<String>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

/// GET `url`, from byte `from` on when it is not 0; any 2xx answer is returned.
pub(crate) fn get(url: &str, from: u64) -> Result<ureq::http::Response<ureq::Body>, Failure> {
    let mut req = agent().get(url);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        if !token.is_empty() {
            req = req.header("Authorization", &format!("Bearer {token}"));
        }
    }
    if from > 0 {
        req = req.header("Range", &format!("bytes={from}-"));
    }
    let resp = req
        .call()
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        Ok(resp)
    } else {
        Err(Failure::Status(status))
    }
}

/// GET `url` as text (`Ok(None)` when the server answers 404).
pub(crate) fn get_text(url: &str) -> Result<Option<String>, Failure> {
    match get(url, 0) {
        Ok(mut resp) => resp
            .body_mut()
            .read_to_string()
            .map(Some)
            .map_err(|e| Failure::Unreachable(e.to_string())),
        Err(Failure::Status(404)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The temporary file a download of `dest` grows in.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Fetch `url` into `dest`, resuming a `.part` file left by an interrupted attempt (HTTP
/// Range), then checking the size and sha256 in `expect`. The file appears under its
/// name only when complete and verified. A connection lost midway keeps the `.part`
/// file for the next attempt; a file that fails verification is removed.
pub fn fetch_file(
    url: &str,
    dest: &Path,
    expect: &Expected,
    hint: &str,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<(), HubError> {
    let part = part_path(dest);
    let mut have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if expect.size.is_some_and(|size| have > size) {
        have = 0;
    }
    let fail = |message: String| HubError::Download {
        url: url.to_string(),
        message,
    };
    if expect.size != Some(have) || have == 0 {
        let (mut resp, start) = match get(url, have) {
            Ok(resp) => {
                let start = resumed_from(&resp, have);
                (resp, start)
            }
            // The part is as long as the file or longer: start again.
            Err(Failure::Status(416)) => (get(url, 0).map_err(|f| f.into_error(url, hint))?, 0),
            Err(f) => return Err(f.into_error(url, hint)),
        };
        let total = expect
            .size
            .or_else(|| content_length(&resp).map(|n| n + start));
        let mut out = open_part(&part, start)?;
        let mut done = start;
        progress(done, total);
        let mut reader = resp.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(|e| {
                fail(format!(
                    "connection lost after {done} of {} bytes ({e}); run the command again to resume",
                    total.map_or("?".to_string(), |t| t.to_string())
                ))
            })?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(io_error(&part))?;
            done += n as u64;
            progress(done, total);
        }
        out.sync_all().map_err(io_error(&part))?;
        if let Some(total) = total.filter(|&t| done < t) {
            return Err(fail(format!(
                "the server sent {done} of {total} bytes; run the command again to resume"
            )));
        }
    }
    if let Err(message) = verify(&part, expect) {
        let _ = std::fs::remove_file(&part);
        return Err(fail(format!(
            "{message}: the download is corrupt and was removed; run the command again"
        )));
    }
    std::fs::rename(&part, dest).map_err(io_error(dest))
}

/// Where the body of `resp` starts in the file: `asked` for a partial answer (206) that
/// begins there, else 0 (the server sent the whole file).
fn resumed_from(resp: &ureq::http::Response<ureq::Body>, asked: u64) -> u64 {
    if resp.status().as_u16() != 206 {
        return 0;
    }
    let start = resp
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if start == Some(asked) {
        asked
    } else {
        0
    }
}

fn content_length(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    resp.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The `.part` file, cut to `start` bytes and opened to write from there.
fn open_part(part: &Path, start: u64) -> Result<File, HubError> {
    use std::io::{Seek, SeekFrom};
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(part)
        .map_err(io_error(part))?;
    file.set_len(start).map_err(io_error(part))?;
    file.seek(SeekFrom::Start(start)).map_err(io_error(part))?;
    Ok(file)
}

/// Check a downloaded file's size and sha256; the error says what differs.
fn verify(path: &Path, expect: &Expected) -> Result<(), String> {
    let len = std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| e.to_string())?;
    if let Some(size) = expect.size.filter(|&s| s != len) {
        return Err(format!("{len} bytes where the hub lists {size}"));
    }
    if let Some(want) = &expect.sha256 {
        let got = sha256_file(path).map_err(|e| e.to_string())?;
        if !got.eq_ignore_ascii_case(want) {
            return Err(format!("sha256 {got} where the hub lists {want}"));
        }
    }
    Ok(())
}

/// The sha256 of a file as lower-case hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Fetch `url` into `dest` with no expectations beyond the server's Content-Length,
/// resuming an interrupted attempt.
pub fn download_file(
    url: &str,
    dest: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<(), HubError> {
    fetch_file(
        url,
        dest,
        &Expected::default(),
        "check the connection and run the command again",
        progress,
    )
}
