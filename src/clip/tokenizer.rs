//! CLIP's tokeniser: OpenAI's text clean-up, then byte-level BPE via `tokenizers`.
//!
//! OpenAI's `simple_tokenizer.py` cleans text with `ftfy.fix_text`, unescapes HTML
//! twice, collapses white space and lower-cases before BPE. A Hugging Face
//! `tokenizer.json` only does the last two, so the clean-up is done here first:
//! ftfy's fixes that change ordinary text (curly quotes, Latin ligatures, full-width
//! characters, line breaks, control characters, NFC) are reproduced; its repair of
//! mojibake (text decoded with the wrong code page) is not.

use std::path::Path;

use unicode_normalization::UnicodeNormalization;

use super::ClipError;

/// OpenAI's start-of-text token id.
pub const SOT: u32 = 49406;
/// OpenAI's end-of-text token id; the text embedding is read at its position.
pub const EOT: u32 = 49407;

/// Token ids of one prompt, `SOT ... EOT`, unpadded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// The ids, beginning with SOT and ending with EOT.
    pub ids: Vec<u32>,
    /// Whether the prompt was cut to fit the context.
    pub truncated: bool,
}

impl Tokens {
    /// Index of the first EOT, where CLIP pools the text (an EOT typed inside the prompt
    /// counts, as in OpenAI's `argmax` pooling).
    pub fn eot_index(&self) -> usize {
        self.ids
            .iter()
            .position(|&t| t == EOT)
            .unwrap_or(self.ids.len() - 1)
    }
}

/// CLIP's BPE tokeniser with OpenAI's text clean-up.
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    context: usize,
}

impl ClipTokenizer {
    /// Load a Hugging Face `tokenizer.json` for a model with `context` positions.
    pub fn from_file(path: &Path, context: usize) -> Result<Self, ClipError> {
        let bytes = std::fs::read(path).map_err(|source| ClipError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, context, path)
    }

    /// As [`ClipTokenizer::from_file`], from the file's bytes; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], context: usize, path: &Path) -> Result<Self, ClipError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| ClipError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        for (tok, id) in [("<|startoftext|>", SOT), ("<|endoftext|>", EOT)] {
            if inner.token_to_id(tok) != Some(id) {
                return Err(ClipError::Tokenizer {
                    path: path.to_path_buf(),
                    message: format!("not a CLIP tokenizer: {tok} is not id {id}"),
                });
            }
        }
        Ok(Self { inner, context })
    }

    /// The number of tokens in the vocabulary, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokenise one prompt. Prompts longer than the context are cut, keeping EOT last
    /// (as OpenAI's `tokenize(..., truncate=True)` does); `Tokens::truncated` says so.
    pub fn encode(&self, text: &str) -> Result<Tokens, ClipError> {
        let cleaned = clean_text(text);
        let enc = self
            .inner
            .encode(cleaned.as_str(), false)
            .map_err(|e| ClipError::Tokenize {
                text: text.to_string(),
                message: e.to_string(),
            })?;
        let body = enc.get_ids();
        let room = self.context.saturating_sub(2);
        let truncated = body.len() > room;
        let mut ids = Vec::with_capacity(body.len().min(room) + 2);
        ids.push(SOT);
        ids.extend_from_slice(&body[..body.len().min(room)]);
        ids.push(EOT);
        Ok(Tokens { ids, truncated })
    }
}

/// Token ids of several prompts as one `(B, L)` tensor, each row padded with 0 after its
/// EOT to the longest prompt (at least `min_width`, at most `context`), with the index of
/// each row's EOT. The causal mask keeps padding out of every position up to EOT, where
/// the text tower's output is read, so the width does not change the embeddings.
pub fn id_batch(
    tokens: &[Tokens],
    min_width: usize,
    context: usize,
    device: &candle_core::Device,
) -> candle_core::Result<(candle_core::Tensor, Vec<usize>)> {
    let longest = tokens.iter().map(|t| t.ids.len()).max().unwrap_or(2);
    let width = longest.max(min_width.min(context));
    let mut ids = Vec::with_capacity(tokens.len() * width);
    for t in tokens {
        ids.extend_from_slice(&t.ids);
        ids.extend(std::iter::repeat_n(0u32, width - t.ids.len()));
    }
    let ids = candle_core::Tensor::from_vec(ids, (tokens.len(), width), device)?;
    Ok((ids, tokens.iter().map(Tokens::eot_index).collect()))
}

/// OpenAI's clean-up before BPE: `whitespace_clean(basic_clean(text)).lower()`.
pub fn clean_text(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = htmlize::unescape(htmlize::unescape(fixed.as_str()).as_ref()).into_owned();
    let collapsed = unescaped.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.to_lowercase()
}

/// The parts of `ftfy.fix_text` (ftfy 6, default configuration) that apply to text that
/// was decoded correctly.
fn fix_text(text: &str) -> String {
    // ftfy unescapes HTML itself only when the text holds no tags.
    let text = if text.contains('<') {
        text.to_string()
    } else {
        htmlize::unescape(text).into_owned()
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // fix_line_breaks
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\u{2028}' | '\u{2029}' | '\u{0085}' => out.push('\n'),
            // uncurl_quotes
            '\u{02bc}' | '\u{2018}'..='\u{201b}' => out.push('\''),
            '\u{201c}'..='\u{201f}' => out.push('"'),
            // fix_character_width: ideographic space, then full-width forms by NFKC.
            '\u{3000}' => out.push(' '),
            '\u{ff01}'..='\u{ffef}' => out.extend(std::iter::once(c).nfkc()),
            // remove_control_chars
            c if is_removed_control(c) => {}
            c => match ligature(c) {
                Some(s) => out.push_str(s),
                None => out.push(c),
            },
        }
    }
    out.nfc().collect()
}

/// ftfy's `fix_latin_ligatures` table.
fn ligature(c: char) -> Option<&'static str> {
    Some(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return None,
    })
}

/// ftfy's `CONTROL_CHARS`: characters `remove_control_chars` deletes.
fn is_removed_control(c: char) -> bool {
    matches!(c,
        '\u{0000}'..='\u{0008}' | '\u{000b}' | '\u{000e}'..='\u{001f}' | '\u{007f}'
        | '\u{206a}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffc}'
        | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e007f}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_openai() {
        assert_eq!(clean_text("  A  Photo\tof\n a CAT  "), "a photo of a cat");
        assert_eq!(clean_text("it’s “x”"), "it's \"x\"");
        assert_eq!(clean_text("double &amp;amp; x"), "double & x");
        assert_eq!(clean_text("ＦＵＬＬ"), "full");
        assert_eq!(clean_text("ﬁne"), "fine");
    }
}
