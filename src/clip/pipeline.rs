//! The folder pipeline: many image files to embeddings, the one way `classify`,
//! `embed` and sharded jobs turn files into embeddings.
//!
//! Worker threads read each file, look its content up in the [`EmbeddingCache`], and
//! otherwise decode and preprocess it, while the calling thread runs the image tower on
//! batches of [`IMAGE_BATCH`] in input order. Workers take inputs only up to a window
//! ahead of the next one to leave the pipeline, so memory stays bounded (at most
//! `4 x IMAGE_BATCH` preprocessed pictures) however long the list. Results reach the
//! caller's callback one at a time, in input order, on the calling thread, so they can
//! be streamed to disk as they come.
//!
//! Batches hold the inputs that need the model, consecutive in input order, exactly as
//! [`Clip::embed_images`] would batch them: on the same files and without the cache,
//! the embeddings are bit for bit the ones of decoding everything and calling it.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Condvar, Mutex, MutexGuard};

use candle_core::Tensor;

use super::cache::{ContentKey, EmbeddingCache};
use super::engine::{Clip, Embedding, IMAGE_BATCH};
use super::preprocess::{center_crop_rgb, normalize_chw, PreprocessConfig};
use super::zeroshot::{LabelSet, PromptStyle};
use super::ClipError;
use crate::data::{decode_image, read_image_file, ImageError};

/// Inputs that workers may prepare ahead of the next one to leave the pipeline: the
/// batch the model is running plus two more.
const WINDOW: usize = 3 * IMAGE_BATCH;

/// How the pipeline runs.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Threads that read, decode and preprocess images while the model runs. `0` does
    /// that work on the calling thread between batches, with nothing overlapped.
    pub decode_threads: usize,
    /// The on-disk cache to read embeddings from and store new ones in, if any.
    pub cache: Option<EmbeddingCache>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            decode_threads: default_decode_threads(),
            cache: None,
        }
    }
}

/// One decoding thread per core, at most 8: decoding is a small part of the work per
/// image beside the model, and threads waiting for the window cost nothing.
pub fn default_decode_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// What a run of the pipeline did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Images the model embedded.
    pub embedded: usize,
    /// Images whose embeddings came from the cache.
    pub cached: usize,
    /// Inputs that failed (unreadable, not an image, or failed before the pipeline).
    pub failed: usize,
    /// Forward passes of the image tower.
    pub batches: usize,
}

/// One input's embedding, or why it has none.
pub type ImageOutcome = Result<Embedding, ImageError>;

/// Embed image files: `on_result(i, outcome)` is called once for every `inputs[i]`, in
/// order. An error returned by the callback, or a model failure, stops the pipeline and
/// is returned; an input that cannot be read or decoded is an `Err` outcome in its place
/// and the others go on.
pub fn embed_images<E: From<ClipError>>(
    clip: &Clip,
    inputs: &[PathBuf],
    opts: &PipelineOptions,
    on_result: impl FnMut(usize, ImageOutcome) -> Result<(), E>,
) -> Result<PipelineStats, E> {
    let mut sink = InOrder {
        clip,
        cache: opts.cache.as_ref(),
        on_result,
        waiting: Vec::new(),
        pixels_waiting: 0,
        stats: PipelineStats::default(),
    };
    let prepare = |i: usize| prepare(&inputs[i], clip.preprocess_config(), opts.cache.as_ref());
    if opts.decode_threads == 0 {
        for i in 0..inputs.len() {
            sink.push(i, prepare(i))?;
        }
    } else {
        prepare_on_threads(inputs.len(), opts.decode_threads, &prepare, |i, p| {
            sink.push(i, p)
        })?;
    }
    sink.finish()
}

/// As [`embed_images`], for inputs some of which already failed (a path that does not
/// exist, a folder that cannot be listed, as [`crate::data::collect_images`] returns
/// them): those are passed to `on_result` as errors in their places.
pub fn embed_expanded<E: From<ClipError>>(
    clip: &Clip,
    inputs: Vec<Result<PathBuf, ImageError>>,
    opts: &PipelineOptions,
    mut on_result: impl FnMut(usize, ImageOutcome) -> Result<(), E>,
) -> Result<PipelineStats, E> {
    let mut paths = Vec::with_capacity(inputs.len());
    let mut places = Vec::with_capacity(inputs.len());
    let mut failed = VecDeque::new();
    for (i, input) in inputs.into_iter().enumerate() {
        match input {
            Ok(p) => {
                paths.push(p);
                places.push(i);
            }
            Err(e) => failed.push_back((i, e)),
        }
    }
    let failed_before = failed.len();
    let mut stats = embed_images(clip, &paths, opts, |j, outcome| {
        pass_failed_before(&mut failed, places[j], &mut on_result)?;
        on_result(places[j], outcome)
    })?;
    pass_failed_before(&mut failed, usize::MAX, &mut on_result)?;
    stats.failed += failed_before;
    Ok(stats)
}

/// Hand on the failed inputs placed before `place`.
fn pass_failed_before<E>(
    failed: &mut VecDeque<(usize, ImageError)>,
    place: usize,
    on_result: &mut impl FnMut(usize, ImageOutcome) -> Result<(), E>,
) -> Result<(), E> {
    while let Some((i, e)) = failed.pop_front() {
        if i > place {
            failed.push_front((i, e));
            break;
        }
        on_result(i, Err(e))?;
    }
    Ok(())
}

/// Embed image files and collect the outcomes in input order.
pub fn embed_all(
    clip: &Clip,
    inputs: &[PathBuf],
    opts: &PipelineOptions,
) -> Result<Vec<ImageOutcome>, ClipError> {
    let mut out = Vec::with_capacity(inputs.len());
    embed_images(clip, inputs, opts, |_, outcome| {
        out.push(outcome);
        Ok::<(), ClipError>(())
    })?;
    Ok(out)
}

/// Labels and their embeddings, with each prompt's text embedding read from the cache
/// when there and stored in it when computed.
pub fn label_set(
    clip: &Clip,
    labels: &[String],
    style: &PromptStyle,
    cache: Option<&EmbeddingCache>,
) -> Result<LabelSet, ClipError> {
    let Some(cache) = cache else {
        return LabelSet::build(clip, labels, style);
    };
    LabelSet::build_with(labels, style, |prompts| {
        let keys: Vec<ContentKey> = prompts.iter().map(|p| ContentKey::of_prompt(p)).collect();
        let mut found: Vec<Option<Embedding>> = keys.iter().map(|k| cache.get(k)).collect();
        let missing: Vec<String> = prompts
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(p, _)| p.clone())
            .collect();
        let mut computed = clip.embed_texts(&missing)?.into_iter();
        for (slot, key) in found.iter_mut().zip(&keys) {
            if slot.is_none() {
                let e = computed.next().unwrap_or_default();
                store(cache, key, &e);
                *slot = Some(e);
            }
        }
        Ok(found.into_iter().map(Option::unwrap_or_default).collect())
    })
}

/// Store an entry; a cache that cannot be written only costs speed, so say so once
/// per process and go on.
fn store(cache: &EmbeddingCache, key: &ContentKey, embedding: &[f32]) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Err(e) = cache.put(key, embedding) {
        WARNED.call_once(|| {
            tracing::warn!(
                "cannot write the embedding cache in {}: {e} (going on without storing)",
                cache.dir().display()
            )
        });
    }
}

/// An input made ready for the model, or found not to need it.
enum Prepared {
    /// The embedding was in the cache.
    Cached(Embedding),
    /// The preprocessed picture (CHW floats), and its cache key when caching.
    Pixels(Vec<f32>, Option<ContentKey>),
    /// The input cannot be embedded.
    Failed(ImageError),
}

/// Read, look up, decode and preprocess one file. A panic inside a decoder is that
/// file's error, not the job's end.
fn prepare(path: &Path, cfg: &PreprocessConfig, cache: Option<&EmbeddingCache>) -> Prepared {
    catch_unwind(AssertUnwindSafe(|| {
        let bytes = match read_image_file(path) {
            Ok(b) => b,
            Err(e) => return Prepared::Failed(e),
        };
        // Before the cache, so that a lower limit also refuses pictures seen before.
        if let Err(e) = crate::data::check_pixel_limit(path, &bytes) {
            return Prepared::Failed(e);
        }
        let key = cache.map(|_| ContentKey::of_image(&bytes));
        if let Some(hit) = cache.zip(key.as_ref()).and_then(|(c, k)| c.get(k)) {
            return Prepared::Cached(hit);
        }
        match decode_image(path, &bytes) {
            Ok(img) => Prepared::Pixels(
                normalize_chw(&center_crop_rgb(&img, cfg.image_size), cfg),
                key,
            ),
            Err(e) => Prepared::Failed(e),
        }
    }))
    .unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        Prepared::Failed(ImageError::Crashed {
            path: path.to_path_buf(),
            message,
        })
    })
}

/// Run `prepare(i)` for `i` in `0..len` on `threads` threads, handing the results to
/// `take` in order of `i` on this thread. Workers stay within [`WINDOW`] of the next
/// input `take` is waiting for.
fn prepare_on_threads<E>(
    len: usize,
    threads: usize,
    prepare: &(dyn Fn(usize) -> Prepared + Sync),
    mut take: impl FnMut(usize, Prepared) -> Result<(), E>,
) -> Result<(), E> {
    let gate = Gate::new(WINDOW);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(usize, Prepared)>();
        for _ in 0..threads.min(len) {
            let (tx, gate) = (tx.clone(), &gate);
            scope.spawn(move || {
                while let Some(i) = gate.take(len) {
                    if tx.send((i, prepare(i))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // However this returns, workers must not wait on the gate for ever.
        let _close = CloseOnDrop(&gate);
        let mut early: HashMap<usize, Prepared> = HashMap::new();
        for next in 0..len {
            let prepared = loop {
                if let Some(p) = early.remove(&next) {
                    break p;
                }
                match rx.recv() {
                    Ok((i, p)) if i == next => break p,
                    Ok((i, p)) => {
                        early.insert(i, p);
                    }
                    // Every worker is gone: only a panic outside `prepare` does that.
                    Err(_) => panic!("the decoding threads stopped before input {next}"),
                }
            };
            gate.allow_until(next + 1 + WINDOW);
            take(next, prepared)?;
        }
        Ok(())
    })
}

/// Hands out input indices in order, never past a limit that the consumer moves on.
struct Gate {
    state: Mutex<GateState>,
    moved: Condvar,
}

struct GateState {
    next: usize,
    limit: usize,
    closed: bool,
}

impl Gate {
    fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(GateState {
                next: 0,
                limit,
                closed: false,
            }),
            moved: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // The state is three plain fields, consistent between statements.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next index below `len`, waiting while it is past the limit; `None` when all
    /// are taken or the gate is closed.
    fn take(&self, len: usize) -> Option<usize> {
        let mut s = self.lock();
        loop {
            if s.closed || s.next >= len {
                return None;
            }
            if s.next < s.limit {
                s.next += 1;
                return Some(s.next - 1);
            }
            s = self.moved.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn allow_until(&self, limit: usize) {
        self.lock().limit = limit;
        self.moved.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.moved.notify_all();
    }
}

struct CloseOnDrop<'a>(&'a Gate);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The in-order end of the pipeline: collects inputs that need the model into batches
/// and passes every outcome on in input order.
struct InOrder<'a, F> {
    clip: &'a Clip,
    cache: Option<&'a EmbeddingCache>,
    on_result: F,
    /// Inputs waiting for the batch they are in or behind, in input order.
    waiting: Vec<(usize, Prepared)>,
    pixels_waiting: usize,
    stats: PipelineStats,
}

impl<F, E> InOrder<'_, F>
where
    F: FnMut(usize, ImageOutcome) -> Result<(), E>,
    E: From<ClipError>,
{
    fn push(&mut self, index: usize, prepared: Prepared) -> Result<(), E> {
        let needs_model = matches!(prepared, Prepared::Pixels(..));
        if !needs_model && self.pixels_waiting == 0 {
            return self.pass_on(index, prepared, &mut std::iter::empty());
        }
        self.waiting.push((index, prepared));
        if needs_model {
            self.pixels_waiting += 1;
            if self.pixels_waiting == IMAGE_BATCH {
                self.run_batch()?;
            }
        }
        Ok(())
    }

    /// Embed the waiting pictures in one forward pass and pass every waiting input on.
    fn run_batch(&mut self) -> Result<(), E> {
        let mut embeddings = self.embed_waiting()?.into_iter();
        self.pixels_waiting = 0;
        for (index, prepared) in std::mem::take(&mut self.waiting) {
            self.pass_on(index, prepared, &mut embeddings)?;
        }
        Ok(())
    }

    fn embed_waiting(&mut self) -> Result<Vec<Embedding>, ClipError> {
        if self.pixels_waiting == 0 {
            return Ok(Vec::new());
        }
        let s = self.clip.preprocess_config().image_size;
        let mut data = Vec::with_capacity(self.pixels_waiting * 3 * s * s);
        for (_, prepared) in &self.waiting {
            if let Prepared::Pixels(pixels, _) = prepared {
                data.extend_from_slice(pixels);
            }
        }
        let pixels = Tensor::from_vec(data, (self.pixels_waiting, 3, s, s), self.clip.device())?;
        self.stats.batches += 1;
        self.clip.embed_pixels(&pixels)
    }

    /// Hand one input's outcome to the callback; a picture takes the next embedding.
    fn pass_on(
        &mut self,
        index: usize,
        prepared: Prepared,
        embeddings: &mut dyn Iterator<Item = Embedding>,
    ) -> Result<(), E> {
        let outcome = match prepared {
            Prepared::Pixels(_, key) => {
                let e = embeddings.next().ok_or_else(|| {
                    ClipError::Compute(candle_core::Error::Msg(
                        "the image tower returned fewer embeddings than pictures".into(),
                    ))
                })?;
                if let Some((cache, key)) = self.cache.zip(key) {
                    store(cache, &key, &e);
                }
                self.stats.embedded += 1;
                Ok(e)
            }
            Prepared::Cached(e) => {
                self.stats.cached += 1;
                Ok(e)
            }
            Prepared::Failed(e) => {
                self.stats.failed += 1;
                Err(e)
            }
        };
        (self.on_result)(index, outcome)
    }

    fn finish(mut self) -> Result<PipelineStats, E> {
        self.run_batch()?;
        Ok(self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order_of(len: usize, threads: usize) -> Vec<usize> {
        let mut seen = Vec::new();
        // Later inputs finish first, so the threads' results arrive out of order.
        let prepare = |i: usize| {
            std::thread::sleep(std::time::Duration::from_micros(
                ((len - i) % 7) as u64 * 200,
            ));
            Prepared::Cached(vec![i as f32])
        };
        prepare_on_threads(len, threads, &prepare, |i, p| {
            let Prepared::Cached(e) = p else {
                unreachable!()
            };
            assert_eq!(e[0] as usize, i);
            seen.push(i);
            Ok::<(), ()>(())
        })
        .unwrap();
        seen
    }

    #[test]
    fn threads_hand_results_over_in_input_order() {
        for threads in [1, 2, 5] {
            assert_eq!(order_of(120, threads), (0..120).collect::<Vec<_>>());
        }
        assert!(order_of(0, 3).is_empty());
    }

    #[test]
    fn workers_stay_within_the_window() {
        let taken = std::sync::atomic::AtomicUsize::new(0);
        let prepare = |i: usize| {
            taken.fetch_max(i, std::sync::atomic::Ordering::SeqCst);
            Prepared::Cached(Vec::new())
        };
        let mut max_ahead = 0;
        prepare_on_threads(200, 4, &prepare, |i, _| {
            // Let the workers run as far ahead as the gate lets them.
            std::thread::sleep(std::time::Duration::from_micros(300));
            let ahead = taken.load(std::sync::atomic::Ordering::SeqCst) - i;
            max_ahead = max_ahead.max(ahead);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert!(max_ahead <= WINDOW, "{max_ahead} ahead");
        assert!(
            max_ahead >= WINDOW / 2,
            "workers barely ran ahead: {max_ahead}"
        );
    }

    #[test]
    fn an_error_from_the_consumer_stops_the_workers() {
        let prepare = |_: usize| Prepared::Cached(Vec::new());
        let r = prepare_on_threads(10_000, 3, &prepare, |i, _| {
            if i == 5 {
                Err("stop")
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err("stop"));
    }
}
