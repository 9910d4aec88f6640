//! Zero-shot classification: prompts from labels, prompt ensembles, and probabilities.

use super::engine::{Clip, Embedding};
use super::templates::{IMAGENET7, IMAGENET80};
use super::ClipError;

/// The default prompt template. The CLIP paper (section 3.1.4) found that
/// "A photo of a {label}." adds 1.3 points of ImageNet accuracy over the bare label.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// How labels become prompts.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptStyle {
    /// One template; `{}` is replaced by the label (`{}` alone: the label as typed).
    Template(String),
    /// Several templates whose normalised text embeddings are averaged per label.
    Ensemble {
        /// The ensemble's name, as given to `--ensemble`.
        name: String,
        /// Its templates.
        templates: Vec<String>,
    },
}

impl Default for PromptStyle {
    fn default() -> Self {
        Self::Template(DEFAULT_TEMPLATE.to_string())
    }
}

impl PromptStyle {
    /// A single template; it must contain `{}`.
    pub fn template(t: &str) -> Result<Self, ClipError> {
        if t.contains("{}") {
            Ok(Self::Template(t.to_string()))
        } else {
            Err(ClipError::Template(t.to_string()))
        }
    }

    /// A named ensemble: `imagenet80` (OpenAI's 80 templates) or `imagenet7` (their
    /// 7-template subset).
    pub fn ensemble(name: &str) -> Result<Self, ClipError> {
        let templates: &[&str] = match name {
            "imagenet80" => &IMAGENET80,
            "imagenet7" => &IMAGENET7,
            other => return Err(ClipError::Ensemble(other.to_string())),
        };
        Ok(Self::Ensemble {
            name: name.to_string(),
            templates: templates.iter().map(|t| t.to_string()).collect(),
        })
    }

    /// The prompts for one label (see [`fill_template`]).
    pub fn prompts(&self, label: &str) -> Vec<String> {
        match self {
            Self::Template(t) => vec![fill_template(t, label)],
            Self::Ensemble { templates, .. } => {
                templates.iter().map(|t| fill_template(t, label)).collect()
            }
        }
    }

    /// A short description for reports: the template, or `ensemble:NAME`.
    pub fn describe(&self) -> String {
        match self {
            Self::Template(t) => t.clone(),
            Self::Ensemble { name, .. } => format!("ensemble:{name}"),
        }
    }
}

/// Articles a label may start with; the template's own article before `{}` is then
/// dropped, so "a photo of a {}." with "a red car" reads "a photo of a red car.".
const ARTICLES: [&str; 3] = ["a", "an", "the"];

/// `template` with `{}` replaced by `label`. A label that already starts with an article
/// ("a", "an", "the") replaces the article just before `{}` instead of doubling it; the
/// label is otherwise used exactly as typed, and `{}` alone gives the label unchanged.
pub fn fill_template(template: &str, label: &str) -> String {
    let Some((before, after)) = template.split_once("{}") else {
        return template.to_string();
    };
    let before = match (leading_article(label), trailing_article(before)) {
        (Some(_), Some(cut)) => &before[..cut],
        _ => before,
    };
    // A second `{}` (unusual) gets the label as typed.
    format!("{before}{label}{}", after.replace("{}", label))
}

/// The article a label starts with, if any (case-insensitive, followed by a space).
fn leading_article(label: &str) -> Option<&'static str> {
    let first = label.split_whitespace().next()?;
    let rest_follows = label.trim_start().len() > first.len();
    ARTICLES
        .into_iter()
        .find(|a| rest_follows && first.eq_ignore_ascii_case(a))
}

/// Where the article that ends `text` (as "… a " before `{}`) starts.
fn trailing_article(text: &str) -> Option<usize> {
    let trimmed = text.strip_suffix(' ')?;
    let word_start = trimmed.rfind(' ').map_or(0, |i| i + 1);
    let word = &trimmed[word_start..];
    ARTICLES
        .iter()
        .any(|a| word.eq_ignore_ascii_case(a))
        .then_some(word_start)
}

/// Split user input into labels: commas or new lines separate them; blanks are dropped.
/// A label holding a comma is written in double quotes (`"cat, sitting",dog`; `""`
/// inside quotes is a literal quote), as in CSV.
pub fn parse_labels(text: &str) -> Vec<String> {
    let mut labels = Vec::new();
    for line in text.lines() {
        labels.extend(split_quoted(&without_controls(line)));
    }
    labels.retain(|l| !l.is_empty());
    labels
}

/// The first line of `text` whose double quote, opened at the start of a label, is
/// never closed: [`parse_labels`] then takes the rest of the line as one label, which
/// the command line reports (the app, parsing as one types, does not).
pub fn unclosed_quote(text: &str) -> Option<&str> {
    text.lines().find(|line| split(line).1)
}

/// `text` with control characters (tabs, escapes, carriage returns, C1 codes) made
/// spaces: they mean nothing to the tokenizer and would garble a terminal that shows
/// the label.
fn without_controls(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// One label a line, commas included (a labels file): blank lines are dropped.
pub fn parse_label_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| without_controls(l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Split one line at commas outside double quotes, trimming each part.
fn split_quoted(line: &str) -> Vec<String> {
    split(line).0
}

/// [`split_quoted`]'s parts, and whether a quote was left open at the end.
fn split(line: &str) -> (Vec<String>, bool) {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' if quoted || current.trim().is_empty() => quoted = !quoted,
            ',' if !quoted => parts.push(std::mem::take(&mut current).trim().to_string()),
            _ => current.push(c),
        }
    }
    parts.push(current.trim().to_string());
    (parts, quoted)
}

/// Labels with repeats removed (the first kept, compared after trimming and ignoring
/// case), and the repeats that were dropped. Scoring a label twice would split its
/// probability between the copies.
pub fn dedupe_labels(labels: Vec<String>) -> (Vec<String>, Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for label in labels {
        if seen.insert(label.trim().to_lowercase()) {
            kept.push(label);
        } else {
            dropped.push(label);
        }
    }
    (kept, dropped)
}

/// The labels as typed and one embedding per label.
#[derive(Clone, Debug)]
pub struct LabelSet {
    /// Labels as the user typed them.
    pub labels: Vec<String>,
    /// One normalised embedding per label (the ensemble mean, renormalised).
    pub embeddings: Vec<Embedding>,
}

impl LabelSet {
    /// Embed every label's prompts; an ensemble is averaged in embedding space as in
    /// OpenAI's notebook: normalise each prompt's embedding, average, normalise again.
    pub fn build(clip: &Clip, labels: &[String], style: &PromptStyle) -> Result<Self, ClipError> {
        Self::build_with(labels, style, |prompts| clip.embed_texts(prompts))
    }

    /// As [`LabelSet::build`], with the prompts' embeddings from `embed_prompts` (which
    /// returns one normalised embedding per prompt, in order): the folder pipeline reads
    /// them from its on-disk cache first.
    pub fn build_with(
        labels: &[String],
        style: &PromptStyle,
        embed_prompts: impl FnOnce(&[String]) -> Result<Vec<Embedding>, ClipError>,
    ) -> Result<Self, ClipError> {
        if labels.is_empty() {
            return Err(ClipError::NoLabels);
        }
        let per_label: Vec<Vec<String>> = labels.iter().map(|l| style.prompts(l)).collect();
        let flat: Vec<String> = per_label.iter().flatten().cloned().collect();
        let flat_emb = embed_prompts(&flat)?;
        let mut embeddings = Vec::with_capacity(labels.len());
        let mut at = 0;
        for prompts in &per_label {
            embeddings.push(mean_normalized(&flat_emb[at..at + prompts.len()]));
            at += prompts.len();
        }
        Ok(Self {
            labels: labels.to_vec(),
            embeddings,
        })
    }
}

fn mean_normalized(rows: &[Embedding]) -> Embedding {
    if rows.len() == 1 {
        return rows[0].clone();
    }
    let dim = rows.first().map_or(0, Vec::len);
    let mut mean = vec![0f32; dim];
    for r in rows {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v;
        }
    }
    let n = rows.len() as f32;
    mean.iter_mut().for_each(|m| *m /= n);
    let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        mean.iter_mut().for_each(|m| *m /= norm);
    }
    mean
}

/// One label's probability for one image.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// The label as typed.
    pub label: String,
    /// Softmax probability over the label set.
    pub probability: f64,
}

/// Softmax of `scale * cos(image, label)` over the labels, in the labels' order.
pub fn probabilities(image: &[f32], labels: &LabelSet, scale: f32) -> Vec<f64> {
    let logits: Vec<f64> = labels
        .embeddings
        .iter()
        .map(|t| f64::from(scale * dot(image, t)))
        .collect();
    softmax(&logits)
}

/// Predictions sorted by probability, highest first (ties keep the labels' order).
pub fn classify(image: &[f32], labels: &LabelSet, scale: f32) -> Vec<Prediction> {
    let probs = probabilities(image, labels, scale);
    let mut out: Vec<Prediction> = labels
        .labels
        .iter()
        .zip(probs)
        .map(|(l, p)| Prediction {
            label: l.clone(),
            probability: p,
        })
        .collect();
    out.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_split_on_commas_and_newlines() {
        assert_eq!(
            parse_labels(" cat, dog\n\nred car ,,"),
            vec!["cat", "dog", "red car"]
        );
    }

    #[test]
    fn quoted_labels_keep_their_commas() {
        assert_eq!(
            parse_labels(r#""cat, sitting", dog,"say ""hi""""#),
            vec!["cat, sitting", "dog", r#"say "hi""#]
        );
        assert_eq!(parse_labels("it's, 5\" nail"), vec!["it's", "5\" nail"]);
        assert_eq!(unclosed_quote("it's, 5\" nail\n\"a, b\",c"), None);
        assert_eq!(
            unclosed_quote("dog\n\"cat, sitting,dog"),
            Some("\"cat, sitting,dog")
        );
        assert_eq!(
            parse_labels("red\x1b[2J car\t,\u{9b}x"),
            vec!["red [2J car", "x"]
        );
        assert_eq!(parse_label_lines("a, b\r\n\n  c  \n"), vec!["a, b", "c"]);
    }

    #[test]
    fn an_article_in_the_label_replaces_the_templates() {
        let t = "a photo of a {}.";
        assert_eq!(fill_template(t, "a cat"), "a photo of a cat.");
        assert_eq!(fill_template(t, "An owl"), "a photo of An owl.");
        assert_eq!(
            fill_template(t, "the Eiffel tower"),
            "a photo of the Eiffel tower."
        );
        assert_eq!(fill_template(t, "cat"), "a photo of a cat.");
        // Words that merely start like an article, and a lone article, are labels.
        assert_eq!(fill_template(t, "anteater"), "a photo of a anteater.");
        assert_eq!(fill_template(t, "a"), "a photo of a a.");
        assert_eq!(fill_template("{}", "a cat"), "a cat");
        assert_eq!(
            fill_template("itap of a {}.", "the dog"),
            "itap of the dog."
        );
        assert_eq!(
            fill_template("a photo of my {}.", "a dog"),
            "a photo of my a dog."
        );
    }

    #[test]
    fn repeated_labels_are_dropped_once() {
        let (kept, dropped) = dedupe_labels(vec!["Cat".into(), "dog".into(), "cat ".into()]);
        assert_eq!(kept, vec!["Cat", "dog"]);
        assert_eq!(dropped, vec!["cat "]);
    }

    #[test]
    fn template_needs_a_placeholder() {
        assert!(PromptStyle::template("a photo").is_err());
        assert_eq!(
            PromptStyle::template("{}").unwrap().prompts("Cat"),
            vec!["Cat"]
        );
        assert_eq!(
            PromptStyle::default().prompts("cat"),
            vec!["a photo of a cat."]
        );
    }

    #[test]
    fn ensembles_have_their_sizes() {
        assert_eq!(
            PromptStyle::ensemble("imagenet80")
                .unwrap()
                .prompts("x")
                .len(),
            80
        );
        assert_eq!(
            PromptStyle::ensemble("imagenet7")
                .unwrap()
                .prompts("x")
                .len(),
            7
        );
        assert!(PromptStyle::ensemble("nope").is_err());
    }

    #[test]
    fn softmax_sums_to_one_and_is_stable() {
        let p = softmax(&[1000.0, 1001.0, 999.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p[1] > p[0] && p[0] > p[2]);
    }

    #[test]
    fn mean_is_renormalised() {
        let m = mean_normalized(&[vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert!((m[0] - m[1]).abs() < 1e-7 && (m[0] * m[0] + m[1] * m[1] - 1.0).abs() < 1e-6);
    }
}
