//! `clipscope models list` and `models download`: the registry's CLIP models and CNN
//! weights, whether each is in the cache, and fetching one by name.

use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;

use clipscope::hub::{self, DownloadOptions, HubError, Registry};

use super::args::{ListFormat, ModelsAction};
use super::EXIT_OK;

/// Widest description that keeps a `models list` line within 100 columns.
const DESCRIPTION_WIDTH: usize = 65;

/// One row of `models list` (the JSON schema of `models list --format json`).
#[derive(Serialize)]
struct Row {
    name: String,
    /// `clip` or `cnn`.
    kind: &'static str,
    default: bool,
    cached: bool,
    size_mb: u32,
    repo: String,
    revision: String,
    description: String,
    /// Where the model is (or will be) in the cache.
    path: String,
}

#[derive(Serialize)]
struct Listing {
    cache: String,
    models: Vec<Row>,
}

/// Run a `models` action.
pub fn models(action: &ModelsAction) -> Result<u8> {
    let registry = Registry::builtin()?;
    let opts = DownloadOptions::from_env()?;
    match action {
        ModelsAction::List { format } => {
            let listing = listing(&registry, &opts);
            let mut out = std::io::stdout().lock();
            match format {
                ListFormat::Text => write_text(&mut out, &listing)?,
                ListFormat::Json => {
                    serde_json::to_writer_pretty(&mut out, &listing)?;
                    writeln!(out)?;
                }
            }
        }
        ModelsAction::Download { name } => download(&registry, &opts, name)?,
    }
    Ok(EXIT_OK)
}

fn listing(registry: &Registry, opts: &DownloadOptions) -> Listing {
    let clip = registry.models.iter().map(|m| {
        let dir = hub::model_cache_dir(m, opts);
        Row {
            name: m.name.clone(),
            kind: "clip",
            default: m.name == registry.default,
            cached: hub::is_cached(m, opts),
            size_mb: m.size_mb,
            repo: m.repo.clone(),
            revision: m.revision.clone(),
            description: m.description.clone(),
            path: dir.display().to_string(),
        }
    });
    let cnn = registry.cnn.iter().map(|c| {
        let path = hub::cnn_weights_path(c, opts);
        Row {
            name: c.name.clone(),
            kind: "cnn",
            default: false,
            cached: path.is_file(),
            size_mb: c.size_mb,
            repo: c.repo.clone(),
            revision: c.revision.clone(),
            description: c.description.clone(),
            path: path.display().to_string(),
        }
    });
    let demo = std::iter::once(Row {
        name: hub::DEMO_MODEL.to_string(),
        kind: "clip",
        default: false,
        cached: true,
        size_mb: 8,
        repo: String::new(),
        revision: String::new(),
        description: "built in: a toy CLIP for coloured shapes, offline (models/demo)".into(),
        path: "(built into the binary)".into(),
    });
    Listing {
        cache: opts.cache_root.join("models").display().to_string(),
        models: demo.chain(clip).chain(cnn).collect(),
    }
}

fn write_text(out: &mut impl Write, listing: &Listing) -> Result<()> {
    writeln!(
        out,
        "{:<13} {:<4} {:<6} {:>7}  DESCRIPTION",
        "NAME", "KIND", "STATUS", "SIZE"
    )?;
    for row in &listing.models {
        let name = if row.default {
            format!("{}*", row.name)
        } else {
            row.name.clone()
        };
        writeln!(
            out,
            "{name:<13} {:<4} {:<6} {:>4} MB  {}",
            row.kind,
            match (row.name == hub::DEMO_MODEL, row.cached) {
                (true, _) => "built",
                (false, true) => "cached",
                (false, false) => "-",
            },
            row.size_mb,
            fit(&row.description, DESCRIPTION_WIDTH)
        )?;
    }
    writeln!(out, "\n* the default model. cache: {}", listing.cache)?;
    Ok(())
}

/// `text` cut to `width` characters, with an ellipsis when cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Download a CLIP model or a CNN's weights by name.
fn download(registry: &Registry, opts: &DownloadOptions, name: &str) -> Result<()> {
    if name == hub::DEMO_MODEL {
        println!("demo is built into clipscope: nothing to download (use --model demo)");
        return Ok(());
    }
    let mut progress = super::log::download_progress();
    if let Ok(entry) = registry.find(name) {
        let dir = hub::ensure_model(entry, opts, &mut progress)
            .with_context(|| format!("cannot download {}", entry.name))?;
        println!("{} is in {}", entry.name, dir.display());
        return Ok(());
    }
    if let Ok(entry) = registry.find_cnn(name) {
        let path = hub::ensure_cnn_weights(entry, opts, &mut progress)
            .with_context(|| format!("cannot download the {} weights", entry.name))?;
        println!("{} weights are in {}", entry.name, path.display());
        return Ok(());
    }
    let known: Vec<&str> = registry
        .models
        .iter()
        .map(|m| m.name.as_str())
        .chain(registry.cnn.iter().map(|c| c.name.as_str()))
        .collect();
    Err(HubError::UnknownModel {
        name: name.to_string(),
        known: known.join(", "),
    }
    .into())
}
