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

    /// The prompts for one label.
    pub fn prompts(&self, label: &str) -> Vec<String> {
        match self {
            Self::Template(t) => vec![t.replace("{}", label)],
            Self::Ensemble { templates, .. } => {
                templates.iter().map(|t| t.replace("{}", label)).collect()
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

/// Split user input into labels: commas or new lines separate them; blanks are dropped.
pub fn parse_labels(text: &str) -> Vec<String> {
    text.split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
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
