//! Inputs that are not images: labels files and `-` for standard input.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Largest labels file read: tens of thousands of labels fit in far less.
const MAX_TEXT_FILE: u64 = 16 << 20;

/// Whether `path` is `-`, standard input.
pub fn is_stdin(path: &Path) -> bool {
    path == Path::new("-")
}

/// Checks that `flag`'s `path` is a folder: the message says whether it is missing or a
/// file.
pub fn expect_folder(flag: &str, path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("{flag} {}: a file, not a folder", path.display()),
        Err(_) => bail!("{flag} {}: no such folder", path.display()),
    }
}

/// Refuses an output that must be a file when `path` is a folder, suggesting the file
/// `example` in it.
pub fn expect_output_file(flag: &str, path: &Path, example: &str) -> Result<()> {
    if path.is_dir() {
        bail!(
            "{flag} {}: a folder; give the file to write, such as {}",
            path.display(),
            path.join(example).display()
        );
    }
    Ok(())
}

/// Checks that `flag`'s `path` is a file: the message says whether it is missing or a
/// folder.
pub fn expect_file(flag: &str, path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => bail!("{flag} {}: a folder, not a file", path.display()),
        Ok(_) => Ok(()),
        Err(_) => bail!("{flag} {}: no such file", path.display()),
    }
}

/// The text of `path` (`-`: standard input), refused when it is not a regular file,
/// larger than 16 MiB or not UTF-8. `flag` names the option in messages.
pub fn read_text_file(path: &Path, flag: &str) -> Result<String> {
    let (bytes, name) = if is_stdin(path) {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_TEXT_FILE + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("{flag} -: cannot read standard input"))?;
        (bytes, "standard input".to_string())
    } else {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("{flag} {}: cannot read", path.display()))?;
        if !meta.is_file() {
            bail!(
                "{flag} {}: not a regular file (give a text file, or - for standard input)",
                path.display()
            );
        }
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_TEXT_FILE + 1).read_to_end(&mut bytes))
            .with_context(|| format!("{flag} {}: cannot read", path.display()))?;
        (bytes, path.display().to_string())
    };
    if bytes.len() as u64 > MAX_TEXT_FILE {
        bail!("{flag} {name}: larger than 16 MiB; is it the right file?");
    }
    if bytes.contains(&0) {
        bail!("{flag} {name}: binary data, not text; give one label a line");
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{flag} {name}: not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
            e.utf8_error().valid_up_to()
        )
    })?;
    // Editors on Windows start UTF-8 files with a byte-order mark, which is no label's.
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// An image read from standard input into a temporary file, for an input given as `-`;
/// the file is removed when this is dropped.
pub struct StdinImage {
    path: PathBuf,
}

impl StdinImage {
    /// Read standard input (within `--max-file-size`) into a temporary file.
    pub fn read() -> Result<Self> {
        let max = clipscope::data::input_limits().max_file_bytes;
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .take(max + 1)
            .read_to_end(&mut bytes)
            .context("-: cannot read the image from standard input")?;
        if bytes.is_empty() {
            bail!("-: standard input is empty; pipe an image in, e.g. `clipscope classify - < photo.jpg`");
        }
        if bytes.len() as u64 > max {
            bail!("-: standard input is larger than --max-file-size ({max} bytes)");
        }
        let path = std::env::temp_dir().join(format!(
            "clipscope-stdin-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::write(&path, &bytes).with_context(|| {
            format!(
                "cannot write {} for the image on standard input",
                path.display()
            )
        })?;
        Ok(Self { path })
    }

    /// The temporary file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `text` (an error about the image, say) with the temporary file named `-`, as
    /// the user gave it.
    pub fn shown(&self, text: &str) -> String {
        text.replace(&self.path.display().to_string(), "-")
    }
}

/// `text` with the temporary file of an image from standard input, if any, named `-`.
pub fn stdin_shown(text: String, stdin: Option<&StdinImage>) -> String {
    match stdin {
        Some(s) => s.shown(&text),
        None => text,
    }
}

impl Drop for StdinImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Replace an input `-` by an image read from standard input. Refused when the input
/// list (`--inputs -`) also comes from standard input.
pub fn stdin_image_inputs(
    paths: &mut [PathBuf],
    list_from_stdin: bool,
) -> Result<Option<StdinImage>> {
    match paths.iter().filter(|p| is_stdin(p)).count() {
        0 => return Ok(None),
        1 => {}
        _ => bail!("-: standard input can be given only once"),
    }
    if list_from_stdin {
        bail!("-: standard input cannot hold both an image and the --inputs list");
    }
    let image = StdinImage::read()?;
    for p in paths.iter_mut().filter(|p| is_stdin(p)) {
        *p = image.path().to_path_buf();
    }
    Ok(Some(image))
}
