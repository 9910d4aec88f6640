//! The large-job side of `classify` and `embed`: inputs from lists, shards, the
//! pipeline's options, and outputs streamed to disk with `--output`, resumable.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use clipscope::clip::pipeline::{self, default_decode_threads, PipelineOptions};
use clipscope::clip::{Clip, EmbeddingCache, ModelFiles};
use clipscope::data::{collect_images, ImageError};
use clipscope::hub::DownloadOptions;
use clipscope::scale::{
    read_input_list, Earlier, EmbeddingShard, JobInputs, Manifest, Precision, ResultsFile, Shard,
    Written,
};

use super::args::JobArgs;
use super::{Classifier, EXIT_OK, EXIT_SOME_FAILED};

/// Check the job options before anything expensive; the shard asked for.
pub fn checked_shard(job: &JobArgs) -> Result<Option<Shard>> {
    check_decode_threads(job)?;
    job.shard
        .as_deref()
        .map(|spec| Shard::parse(spec, job.shard_count))
        .transpose()
        .map_err(Into::into)
}

/// The paths on the command line, then those of `--inputs`.
pub fn input_paths(positional: &[PathBuf], job: &JobArgs) -> Result<Vec<PathBuf>> {
    let mut paths = positional.to_vec();
    if let Some(list) = &job.input_list {
        paths.extend(read_input_list(list).context("cannot read the --inputs list")?);
    }
    Ok(paths)
}

/// Decoding threads and the cache as asked. A cache that cannot be opened (a read-only
/// home on a cluster node, say) only costs speed: say so and go on without it.
pub fn pipeline_options(job: &JobArgs, clip: &Clip, files: &ModelFiles) -> PipelineOptions {
    let decode_threads = job.decode_threads.unwrap_or_else(default_decode_threads);
    let cache = if job.no_cache {
        None
    } else {
        DownloadOptions::from_env()
            .map_err(|e| e.to_string())
            .and_then(|o| {
                EmbeddingCache::open(&o.cache_root, files, clip).map_err(|e| e.to_string())
            })
            .inspect_err(|e| tracing::warn!("embedding cache off: {e}"))
            .ok()
    };
    PipelineOptions {
        decode_threads,
        cache,
    }
}

/// Refuse a number of decoding threads that would only exhaust the machine, before the
/// model loads.
pub fn check_decode_threads(job: &JobArgs) -> Result<()> {
    match job.decode_threads {
        Some(n) if n > MAX_DECODE_THREADS => {
            bail!("--decode-threads {n}: expected 0 to {MAX_DECODE_THREADS}")
        }
        _ => Ok(()),
    }
}

/// More decoding threads than this cannot help: the model is the bottleneck long before.
const MAX_DECODE_THREADS: usize = 256;

/// The expanded inputs and their names, for output on standard output: as given, or
/// with `--shard` the shard's part of the job's list.
pub fn expand(
    paths: &[PathBuf],
    shard: Option<Shard>,
) -> (Vec<Result<PathBuf, ImageError>>, Vec<String>) {
    match shard {
        Some(shard) => {
            let mut inputs = JobInputs::expand(paths);
            let all = inputs.len();
            inputs.keep_shard(&shard);
            if inputs.items.is_empty() {
                tracing::warn!("shard {shard} holds none of the {all} input(s)");
            }
            (inputs.items, inputs.names)
        }
        None => {
            let items = collect_images(paths);
            let names = items
                .iter()
                .map(|item| match item {
                    Ok(p) => p.display().to_string(),
                    Err(e) => e.path().display().to_string(),
                })
                .collect();
            (items, names)
        }
    }
}

impl JobArgs {
    /// What to do with results an earlier run left in `--output`.
    pub fn earlier(&self) -> Earlier {
        Earlier::from_flags(self.resume, self.force)
    }

    /// Whether `--inputs -` reads the list from standard input.
    pub fn list_from_stdin(&self) -> bool {
        self.input_list
            .as_deref()
            .is_some_and(super::input::is_stdin)
    }
}

/// Refuse, before the model loads, a `--output` (a results file, or with `embeddings`
/// a folder of shards) whose shard holds an earlier run's results unasked.
pub fn check_output(
    out: Option<&Path>,
    embeddings: bool,
    shard: Option<Shard>,
    job: &JobArgs,
) -> Result<()> {
    let Some(out) = out else {
        return Ok(());
    };
    if super::input::is_stdin(out) {
        bail!("--output -: a job writes files (results and a manifest beside them); leave out --output to print the results on standard output");
    }
    if embeddings {
        clipscope::util::check_output_is_folder(out, "--output").map_err(anyhow::Error::msg)?;
        let shard = shard.unwrap_or(Shard::WHOLE);
        EmbeddingShard::check_earlier(out, &shard, job.earlier())?;
    } else {
        super::input::expect_output_file("--output", out, "results.jsonl")?;
        let json_lines = out
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("json"));
        if !json_lines {
            tracing::warn!(
                "--output {}: results are written as JSON lines whatever the file's name (--format does not apply to jobs); .jsonl says so",
                out.display()
            );
        }
        ResultsFile::check_earlier(out, job.earlier())?;
    }
    Ok(())
}

/// A shard of a job whose results go to disk.
pub struct Job<'a> {
    clip: &'a Clip,
    paths: Vec<PathBuf>,
    shard: Shard,
    settings: serde_json::Value,
    earlier: Earlier,
    opts: &'a PipelineOptions,
}

impl<'a> Job<'a> {
    /// A job over `paths` (the whole shard when `shard` is `None`).
    pub fn new(
        clip: &'a Clip,
        paths: Vec<PathBuf>,
        shard: Option<Shard>,
        settings: serde_json::Value,
        earlier: Earlier,
        opts: &'a PipelineOptions,
    ) -> Self {
        Self {
            clip,
            paths,
            shard: shard.unwrap_or(Shard::WHOLE),
            settings,
            earlier,
            opts,
        }
    }

    /// This shard's inputs and the manifest of its output.
    fn plan(&self, command: &str) -> (JobInputs, Manifest) {
        let mut inputs = JobInputs::expand(&self.paths);
        let (list_len, list_hash) = (inputs.len(), inputs.list_hash.clone());
        let first = inputs.keep_shard(&self.shard);
        let manifest = Manifest::new(
            command,
            self.clip.name(),
            self.settings.clone(),
            self.shard,
            list_len,
            &list_hash,
            first,
            inputs.len(),
        );
        (inputs, manifest)
    }

    /// `classify --output FILE.jsonl`.
    pub fn classify_to_file(self, classifier: &Classifier, out: &Path) -> Result<u8> {
        let (mut inputs, manifest) = self.plan("classify");
        let (mut file, resumed) = ResultsFile::open(out, manifest, self.earlier)?;
        let before = resumed.done.len();
        inputs.drop_done(&resumed.done);
        let JobInputs { items, names, .. } = inputs;
        pipeline::embed_expanded(self.clip, items, self.opts, |i, outcome| {
            let result = classifier.result(names[i].clone(), outcome);
            super::report_failures(result.error.as_deref().into_iter());
            file.push(&result, result.error.is_some())?;
            Ok::<(), anyhow::Error>(())
        })?;
        let written = file.finish()?;
        self.report(out, written, before)
    }

    /// `embed --output DIR`.
    pub fn embed_to_dir(self, out: &Path, precision: Precision) -> Result<u8> {
        let (mut inputs, manifest) = self.plan("embed");
        let dim = self.clip.config().projection_dim;
        let (mut shard, resumed) =
            EmbeddingShard::open(out, manifest, dim, precision, self.earlier)?;
        let before = resumed.done.len();
        inputs.drop_done(&resumed.done);
        let JobInputs { items, names, .. } = inputs;
        pipeline::embed_expanded(self.clip, items, self.opts, |i, outcome| {
            match outcome {
                Ok(e) => shard.push(&names[i], Ok(&e))?,
                Err(e) => {
                    let error = e.to_string();
                    super::report_failures(std::iter::once(error.as_str()));
                    shard.push(&names[i], Err(&error))?
                }
            }
            Ok::<(), anyhow::Error>(())
        })?;
        let written = shard.finish()?;
        self.report(out, written, before)
    }

    /// One line on stderr for the scheduler's log (none under `-q`), and the exit status.
    fn report(&self, out: &Path, written: Written, before: usize) -> Result<u8> {
        if !super::log::quiet() {
            eprintln!(
                "clipscope: shard {}: {} in {} ({} from an earlier run), {} failed",
                self.shard,
                clipscope::util::count(written.items, "input"),
                out.display(),
                before,
                written.failed
            );
        }
        Ok(if written.failed > 0 {
            EXIT_SOME_FAILED
        } else {
            EXIT_OK
        })
    }
}
