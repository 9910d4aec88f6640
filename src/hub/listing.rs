//! Which revision of a Hugging Face repository to download, from the Hub's API.
//!
//! `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true` lists a revision's files
//! (`siblings`, each with `rfilename`, `size` and, for files in LFS, `lfs.sha256` and
//! `lfs.size`); `GET {endpoint}/api/models/{repo}/refs?include_prs=1` lists the branches
//! and the pull-request refs (`pullRequests[].ref`, e.g. `refs/pr/15`). Several OpenAI
//! CLIP repositories keep `model.safetensors` only on a pull-request ref, with
//! `pytorch_model.bin` on `main`, so the revision is chosen here at download time:
//! the registry's revision, then `main`, then the pull-request refs (newest first), the
//! first that has `model.safetensors`; failing that, the first that has
//! `pytorch_model.bin` (converted after the download).

use serde::Deserialize;

use super::http::{self, Expected};
use super::HubError;

pub use crate::clip::weights::{PYTORCH_BIN, SAFETENSORS};
/// Pull-request refs looked at, newest first, before giving up on safetensors.
const MAX_PR_REFS: usize = 20;

/// A file to fetch: from which revision, what the hub says about it, and its name.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedFile {
    /// The name in the repository.
    pub name: String,
    /// The revision it comes from.
    pub revision: String,
    /// Size and sha256, where the hub listed them.
    pub expect: Expected,
}

/// The files of one download, the weights first.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// What to fetch.
    pub files: Vec<PlannedFile>,
}

impl Plan {
    /// Whether the weights come as a PyTorch pickle that needs converting.
    pub fn needs_conversion(&self) -> bool {
        self.files.iter().any(|f| f.name == PYTORCH_BIN)
    }
}

#[derive(Deserialize)]
struct RevisionInfo {
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

#[derive(Deserialize)]
struct Refs {
    #[serde(default, rename = "pullRequests")]
    pull_requests: Vec<GitRef>,
}

#[derive(Deserialize)]
struct GitRef {
    #[serde(rename = "ref")]
    reference: String,
}

/// One revision's files with what the hub says about each.
type Listing = Vec<(String, Expected)>;

/// Revisions such as `refs/pr/15` travel as one path segment.
pub fn encode_revision(rev: &str) -> String {
    rev.replace('/', "%2F")
}

/// The URL of `file` at `revision`.
pub fn file_url(endpoint: &str, repo: &str, revision: &str, file: &str) -> String {
    format!(
        "{endpoint}/{repo}/resolve/{}/{file}",
        encode_revision(revision)
    )
}

/// A revision's files (`Ok(None)`: the hub knows no such revision, or has no API).
fn listing(endpoint: &str, repo: &str, rev: &str, hint: &str) -> Result<Option<Listing>, HubError> {
    let url = format!(
        "{endpoint}/api/models/{repo}/revision/{}?blobs=true",
        encode_revision(rev)
    );
    let Some(text) = http::get_text(&url).map_err(|f| f.into_error(&url, hint))? else {
        return Ok(None);
    };
    let info: RevisionInfo = serde_json::from_str(&text).map_err(|e| HubError::Download {
        url: url.clone(),
        message: format!("not a file listing: {e}"),
    })?;
    Ok(Some(
        info.siblings
            .into_iter()
            .map(|s| {
                let expect = Expected {
                    size: s.lfs.as_ref().map(|l| l.size).or(s.size),
                    sha256: s.lfs.map(|l| l.sha256.to_ascii_lowercase()),
                };
                (s.rfilename, expect)
            })
            .collect(),
    ))
}

/// The repository's pull-request refs, newest first (none when the hub does not say).
fn pr_refs(endpoint: &str, repo: &str) -> Vec<String> {
    let url = format!("{endpoint}/api/models/{repo}/refs?include_prs=1");
    let Ok(Some(text)) = http::get_text(&url) else {
        return Vec::new();
    };
    let Ok(refs) = serde_json::from_str::<Refs>(&text) else {
        return Vec::new();
    };
    let mut prs: Vec<(u64, String)> = refs
        .pull_requests
        .into_iter()
        .filter_map(|r| {
            let n = r.reference.strip_prefix("refs/pr/")?.parse().ok()?;
            Some((n, r.reference))
        })
        .collect();
    prs.sort_by_key(|p| std::cmp::Reverse(p.0));
    prs.into_iter().map(|(_, r)| r).take(MAX_PR_REFS).collect()
}

fn has(listing: &Listing, file: &str) -> bool {
    listing.iter().any(|(name, _)| name == file)
}

/// Decide what to download for `files` of `repo` (whose weights file is
/// `model.safetensors`), starting from the registry's `revision`. `hint` ends the
/// message when the hub cannot be reached.
pub fn plan(
    endpoint: &str,
    repo: &str,
    revision: &str,
    files: &[String],
    hint: &str,
) -> Result<Plan, HubError> {
    let mut listed: Vec<(String, Listing)> = Vec::new();
    let mut tried: Vec<String> = Vec::new();
    let mut candidates = vec![revision.to_string()];
    if revision != "main" {
        candidates.push("main".to_string());
    }
    let mut looked_at_prs = false;
    let mut i = 0;
    while i < candidates.len() {
        let rev = candidates[i].clone();
        i += 1;
        match listing(endpoint, repo, &rev, hint)? {
            None => tried.push(format!("{rev} (not found)")),
            Some(l) if has(&l, SAFETENSORS) => {
                listed.insert(0, (rev.clone(), l));
                return choose(repo, &rev, SAFETENSORS, files, &listed);
            }
            Some(l) => {
                tried.push(format!("{rev} (no {SAFETENSORS})"));
                listed.push((rev, l));
            }
        }
        if i == candidates.len() && !looked_at_prs {
            looked_at_prs = true;
            if listed.is_empty() {
                // No listing at all: a plain file mirror without the API. Fetch the
                // registry's files from its revision, checked by length only.
                return Ok(unlisted(revision, files));
            }
            candidates.extend(
                pr_refs(endpoint, repo)
                    .into_iter()
                    .filter(|r| !candidates.contains(r))
                    .collect::<Vec<_>>(),
            );
        }
    }
    if let Some(pos) = listed.iter().position(|(_, l)| has(l, PYTORCH_BIN)) {
        let entry = listed.remove(pos);
        let rev = entry.0.clone();
        listed.insert(0, entry);
        return choose(repo, &rev, PYTORCH_BIN, files, &listed);
    }
    Err(HubError::NoWeights {
        repo: repo.to_string(),
        tried: tried.join(", "),
    })
}

/// The registry's files from its revision, with nothing known about them.
fn unlisted(revision: &str, files: &[String]) -> Plan {
    Plan {
        files: files
            .iter()
            .map(|name| PlannedFile {
                name: name.clone(),
                revision: revision.to_string(),
                expect: Expected::default(),
            })
            .collect(),
    }
}

/// The plan once the weights (`weights` at `rev`) are found: each other file from the
/// first listing that has it, the weights' revision first.
fn choose(
    repo: &str,
    rev: &str,
    weights: &str,
    files: &[String],
    listed: &[(String, Listing)],
) -> Result<Plan, HubError> {
    let mut planned = Vec::with_capacity(files.len());
    let mut ordered: Vec<&String> = files.iter().filter(|f| *f == SAFETENSORS).collect();
    ordered.extend(files.iter().filter(|f| *f != SAFETENSORS));
    for file in ordered {
        let name = if file == SAFETENSORS { weights } else { file };
        let found = listed.iter().find_map(|(r, l)| {
            l.iter()
                .find(|(n, _)| n == name)
                .map(|(_, e)| (r.clone(), e.clone()))
        });
        let Some((revision, expect)) = found else {
            return Err(HubError::NoFile {
                repo: repo.to_string(),
                file: name.to_string(),
                revision: rev.to_string(),
            });
        };
        planned.push(PlannedFile {
            name: name.to_string(),
            revision,
            expect,
        });
    }
    Ok(Plan { files: planned })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_travel_as_one_segment() {
        assert_eq!(
            file_url("http://h", "o/r", "refs/pr/15", "config.json"),
            "http://h/o/r/resolve/refs%2Fpr%2F15/config.json"
        );
    }

    #[test]
    fn a_plan_takes_each_file_from_the_first_listing_that_has_it() {
        let e = |s: u64| Expected {
            size: Some(s),
            sha256: None,
        };
        let listed = vec![
            (
                "refs/pr/8".to_string(),
                vec![("model.safetensors".to_string(), e(10))],
            ),
            (
                "main".to_string(),
                vec![
                    ("config.json".to_string(), e(1)),
                    ("pytorch_model.bin".to_string(), e(9)),
                ],
            ),
        ];
        let files = vec!["config.json".to_string(), "model.safetensors".to_string()];
        let plan = choose("o/r", "refs/pr/8", SAFETENSORS, &files, &listed).unwrap();
        assert_eq!(plan.files[0].name, "model.safetensors");
        assert_eq!(plan.files[0].revision, "refs/pr/8");
        assert_eq!(plan.files[1].revision, "main");
        assert!(!plan.needs_conversion());
        let missing = vec!["tokenizer.json".to_string()];
        let err = choose("o/r", "main", SAFETENSORS, &missing, &listed).unwrap_err();
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
    }
}
