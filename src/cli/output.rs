//! Output formats: the same result structs rendered as text, JSON or CSV.
//! The JSON structs are the documented schema (see docs/cli.md).

use std::io::Write;

use serde::Serialize;

use clipscope::clip::Prediction;
use clipscope::util::{bar, printable};

/// `classify` output.
#[derive(Debug, Serialize)]
pub struct ClassifyReport {
    /// Model name.
    pub model: String,
    /// How labels became prompts (a template, or `ensemble:NAME`); none for a CNN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompts: Option<String>,
    /// The abstain threshold (`--abstain`), when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abstain: Option<f64>,
    /// One result per input image, in input order.
    pub results: Vec<ImageResult>,
}

/// One image's predictions, or why it failed.
#[derive(Debug, Serialize)]
pub struct ImageResult {
    /// The path as given (or as found in a folder).
    pub image: String,
    /// With `--abstain`: the top label, or "none of these" when its probability is
    /// below the threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Predictions, most probable first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Vec<Prediction>>,
    /// The error, naming the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `embed` output.
#[derive(Debug, Serialize)]
pub struct EmbedReport {
    /// Model name.
    pub model: String,
    /// One item per input.
    pub items: Vec<EmbedItem>,
}

/// One embedded image or text.
#[derive(Debug, Serialize)]
pub struct EmbedItem {
    /// The image path, for image items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The text as given, for text items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The prompt that was embedded (the text through the template).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The L2-normalised embedding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    /// The error, naming the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Width of the probability bars in the text table.
const BAR_WIDTH: usize = 24;

/// Write a classify report in the chosen format.
pub fn write_classify(
    report: &ClassifyReport,
    format: super::args::Format,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use super::args::Format;
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, report)?;
            writeln!(out)?;
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            // The answer column only with --abstain, so the usual header stays as it was.
            let with_answer = report.abstain.is_some();
            let mut header = vec!["image", "rank", "label", "probability", "error"];
            if with_answer {
                header.push("answer");
            }
            w.write_record(&header)?;
            for r in &report.results {
                let rows: Vec<Vec<String>> = match (&r.predictions, &r.error) {
                    (Some(preds), _) => preds
                        .iter()
                        .enumerate()
                        .map(|(i, p)| {
                            vec![
                                r.image.clone(),
                                (i + 1).to_string(),
                                p.label.clone(),
                                format!("{:.6}", p.probability),
                                String::new(),
                            ]
                        })
                        .collect(),
                    (None, err) => vec![vec![
                        r.image.clone(),
                        String::new(),
                        String::new(),
                        String::new(),
                        err.clone().unwrap_or_default(),
                    ]],
                };
                for mut row in rows {
                    if with_answer {
                        row.push(r.answer.clone().unwrap_or_default());
                    }
                    w.write_record(&row)?;
                }
            }
            w.flush()?;
        }
        Format::Text => {
            write!(out, "model {}", report.model)?;
            if let Some(p) = &report.prompts {
                write!(out, "  prompts {p}")?;
            }
            match report.abstain {
                Some(p) => writeln!(out, "  abstain below {}%", threshold_percent(p))?,
                None => writeln!(out)?,
            }
            for r in &report.results {
                writeln!(out)?;
                // A file name or label can hold an escape sequence: not for the terminal.
                let image = printable(&r.image);
                match (&r.predictions, &r.error) {
                    (Some(preds), _) => {
                        match &r.answer {
                            Some(a) => writeln!(out, "{image}  answer: {}", printable(a))?,
                            None => writeln!(out, "{image}")?,
                        }
                        for p in preds {
                            writeln!(
                                out,
                                "  {:>6.2}%  {}  {}",
                                p.probability * 100.0,
                                bar(p.probability, BAR_WIDTH),
                                printable(&p.label)
                            )?;
                        }
                    }
                    // Reported on stderr, as ripgrep reports files it cannot read.
                    (None, _) => writeln!(out, "{image}  failed (the error is on stderr)")?,
                }
            }
        }
    }
    Ok(())
}

/// Write an embed report as JSON, CSV or a readable summary.
pub fn write_embed(
    report: &EmbedReport,
    format: super::args::Format,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use super::args::Format;
    match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            let dim = report
                .items
                .iter()
                .find_map(|i| i.embedding.as_ref().map(Vec::len))
                .unwrap_or(0);
            let mut header = vec!["kind".to_string(), "input".to_string(), "error".to_string()];
            header.extend((0..dim).map(|i| format!("e{i}")));
            w.write_record(&header)?;
            for item in &report.items {
                let (kind, input) = match (&item.image, &item.text) {
                    (Some(p), _) => ("image", p.as_str()),
                    (None, Some(t)) => ("text", t.as_str()),
                    (None, None) => ("", ""),
                };
                let mut row = vec![
                    kind.to_string(),
                    input.to_string(),
                    item.error.clone().unwrap_or_default(),
                ];
                match &item.embedding {
                    Some(e) => row.extend(e.iter().map(|v| v.to_string())),
                    // Empty values, so that every row has the header's fields.
                    None => row.resize(header.len(), String::new()),
                }
                w.write_record(&row)?;
            }
            w.flush()?;
        }
        Format::Json => {
            serde_json::to_writer(&mut *out, report)?;
            writeln!(out)?;
        }
        Format::Text => write_embed_text(report, out)?,
    }
    Ok(())
}

/// Values of an embedding shown in the text summary.
const SHOWN_VALUES: usize = 4;

/// One line per item: kind, input, dimension and the first values (the whole vector is
/// for `--format json|csv` or `--output`).
fn write_embed_text(report: &EmbedReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "model {}  (L2-normalised embeddings)", report.model)?;
    for item in &report.items {
        let (kind, input) = match (&item.image, &item.text) {
            (Some(p), _) => ("image", p.as_str()),
            (None, Some(t)) => ("text", t.as_str()),
            (None, None) => ("", ""),
        };
        let input = printable(input);
        match (&item.embedding, &item.error) {
            (Some(e), _) => {
                let head: Vec<String> = e
                    .iter()
                    .take(SHOWN_VALUES)
                    .map(|v| format!("{v:+.4}"))
                    .collect();
                let more = if e.len() > SHOWN_VALUES { ", …" } else { "" };
                writeln!(
                    out,
                    "{kind:<5}  {input}  {}-d  [{}{more}]",
                    e.len(),
                    head.join(", ")
                )?;
            }
            (None, err) => writeln!(
                out,
                "{kind:<5}  {input}  failed: {}",
                printable(err.as_deref().unwrap_or(""))
            )?,
        }
    }
    Ok(())
}

/// A probability threshold as a percentage with two decimals, or as many more (up to six)
/// as it takes to show it: `--abstain 0.9999999` must not read "100.00%".
fn threshold_percent(p: f64) -> String {
    // Adding 0 turns -0 (`--abstain -0`) into 0, which prints without a sign.
    let six = format!("{:.6}", p * 100.0 + 0.0);
    let (whole, decimals) = six.split_once('.').unwrap_or((&six, ""));
    let kept = decimals.trim_end_matches('0');
    format!("{whole}.{kept:0<2}")
}

#[cfg(test)]
mod tests {
    use super::threshold_percent;

    #[test]
    fn thresholds_show_the_decimals_they_need() {
        assert_eq!(threshold_percent(0.5), "50.00");
        assert_eq!(threshold_percent(0.125), "12.50");
        assert_eq!(threshold_percent(0.9999999), "99.99999");
        assert_eq!(threshold_percent(1.0), "100.00");
        assert_eq!(threshold_percent(-0.0), "0.00");
    }
}
