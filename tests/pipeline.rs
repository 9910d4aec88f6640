//! The folder pipeline on the tiny fixture model: the same embeddings as decoding every
//! image and calling the engine, in input order, failures in place, and the on-disk
//! cache hit or missed as the files say.

mod common;

use std::path::{Path, PathBuf};

use clipscope::clip::pipeline::{self, embed_all, embed_expanded, PipelineOptions};
use clipscope::clip::{Clip, EmbeddingCache, PromptStyle};
use clipscope::data::{collect_images, load_image, ImageError};
use common::{fixtures, load_tiny};

fn fixture_images() -> Vec<PathBuf> {
    collect_images(&[fixtures().join("images")])
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

fn bits(e: &[f32]) -> Vec<u32> {
    e.iter().map(|v| v.to_bits()).collect()
}

fn with_cache(clip: &Clip, root: &Path, decode_threads: usize) -> PipelineOptions {
    PipelineOptions {
        decode_threads,
        cache: Some(
            EmbeddingCache::open(
                root,
                &clipscope::clip::ModelFiles::from_dir(&fixtures().join("tiny-clip"), "tiny")
                    .unwrap(),
                clip,
            )
            .unwrap(),
        ),
    }
}

fn run(
    clip: &Clip,
    inputs: &[PathBuf],
    opts: &PipelineOptions,
) -> (Vec<Vec<u32>>, pipeline::PipelineStats) {
    let mut out = Vec::new();
    let stats = pipeline::embed_images(clip, inputs, opts, |i, outcome| {
        assert_eq!(i, out.len(), "results in input order");
        out.push(bits(&outcome.unwrap()));
        Ok::<(), clipscope::clip::ClipError>(())
    })
    .unwrap();
    (out, stats)
}

#[test]
fn embeddings_are_bit_for_bit_those_of_decoding_everything_first() {
    let clip = load_tiny();
    // Twice over, so that there is more than one batch.
    let once = fixture_images();
    let paths: Vec<PathBuf> = once.iter().chain(&once).cloned().collect();
    assert!(
        paths.len() > clipscope::clip::IMAGE_BATCH,
        "{}",
        paths.len()
    );
    // The path the CLI took before the pipeline: decode all, then the engine's batches.
    let decoded: Vec<_> = paths.iter().map(|p| load_image(p).unwrap()).collect();
    let refs: Vec<_> = decoded.iter().collect();
    let want: Vec<Vec<u32>> = clip
        .embed_images(&refs)
        .unwrap()
        .iter()
        .map(|e| bits(e))
        .collect();
    for threads in [0, 1, 3] {
        let opts = PipelineOptions {
            decode_threads: threads,
            cache: None,
        };
        let (got, stats) = run(&clip, &paths, &opts);
        assert_eq!(got, want, "{threads} decoding threads");
        assert_eq!(stats.embedded, paths.len());
        assert_eq!(
            stats.batches,
            paths.len().div_ceil(clipscope::clip::IMAGE_BATCH)
        );
    }
}

#[test]
fn a_second_run_reads_the_cache_and_a_changed_file_misses_it() {
    let clip = load_tiny();
    let cache_root = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for p in fixture_images().iter().take(5) {
        let copy = dir.path().join(p.file_name().unwrap());
        std::fs::copy(p, &copy).unwrap();
        paths.push(copy);
    }
    let opts = with_cache(&clip, cache_root.path(), 2);
    let (first, stats) = run(&clip, &paths, &opts);
    assert_eq!((stats.embedded, stats.cached), (5, 0));

    let (second, stats) = run(&clip, &paths, &opts);
    assert_eq!(second, first);
    assert_eq!(
        (stats.embedded, stats.cached, stats.batches),
        (0, 5, 0),
        "the model ran"
    );

    // New bytes under the same name: only that file goes to the model again.
    std::fs::copy(fixtures().join("images/rocket.jpg"), &paths[2]).unwrap();
    let (third, stats) = run(&clip, &paths, &opts);
    assert_eq!((stats.embedded, stats.cached), (1, 4));
    assert_ne!(third[2], first[2]);
    assert_eq!(third[0], first[0]);

    // Without the cache, the model runs for every file.
    let (_, stats) = run(
        &clip,
        &paths,
        &PipelineOptions {
            decode_threads: 2,
            cache: None,
        },
    );
    assert_eq!(stats.embedded, 5);
}

#[test]
fn cached_embeddings_equal_computed_ones_bit_for_bit() {
    let clip = load_tiny();
    let cache_root = tempfile::tempdir().unwrap();
    let paths = fixture_images();
    let opts = with_cache(&clip, cache_root.path(), 1);
    let (computed, _) = run(
        &clip,
        &paths,
        &PipelineOptions {
            decode_threads: 1,
            cache: None,
        },
    );
    run(&clip, &paths, &opts);
    let (cached, stats) = run(&clip, &paths, &opts);
    assert_eq!(stats.embedded, 0);
    assert_eq!(cached, computed);
}

#[test]
fn prompt_embeddings_come_from_the_cache_in_a_new_process() {
    let cache_root = tempfile::tempdir().unwrap();
    let labels: Vec<String> = ["cat", "dog", "red car"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let style = PromptStyle::ensemble("imagenet7").unwrap();
    let first = {
        let clip = load_tiny();
        let opts = with_cache(&clip, cache_root.path(), 1);
        let set = pipeline::label_set(&clip, &labels, &style, opts.cache.as_ref()).unwrap();
        assert_eq!(clip.cached_prompts(), 21, "computed by the model");
        set
    };
    // A fresh model (as a new process has): nothing in its memory, all from disk.
    let clip = load_tiny();
    let opts = with_cache(&clip, cache_root.path(), 1);
    let second = pipeline::label_set(&clip, &labels, &style, opts.cache.as_ref()).unwrap();
    assert_eq!(clip.cached_prompts(), 0, "the text tower ran");
    let direct = clipscope::clip::LabelSet::build(&clip, &labels, &style).unwrap();
    for ((a, b), c) in first
        .embeddings
        .iter()
        .zip(&second.embeddings)
        .zip(&direct.embeddings)
    {
        assert_eq!(bits(a), bits(b));
        assert_eq!(bits(a), bits(c));
    }
}

#[test]
fn failed_inputs_keep_their_places() {
    let clip = load_tiny();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.png");
    std::fs::write(&bad, b"not a picture").unwrap();
    let good = fixtures().join("images/chelsea.png");
    let inputs = vec![
        Err(ImageError::Missing {
            path: dir.path().join("gone.jpg"),
        }),
        Ok(good.clone()),
        Ok(bad.clone()),
        Ok(good.clone()),
        Err(ImageError::Missing {
            path: dir.path().join("gone2.jpg"),
        }),
    ];
    let mut seen = Vec::new();
    let stats = embed_expanded(&clip, inputs, &PipelineOptions::default(), |i, outcome| {
        seen.push((i, outcome.map_err(|e| e.path().to_path_buf())));
        Ok::<(), clipscope::clip::ClipError>(())
    })
    .unwrap();
    assert_eq!(
        seen.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(
        seen[0].1.as_ref().unwrap_err(),
        &dir.path().join("gone.jpg")
    );
    assert_eq!(seen[2].1.as_ref().unwrap_err(), &bad);
    assert_eq!(seen[1].1.as_ref().unwrap(), seen[3].1.as_ref().unwrap());
    assert_eq!((stats.embedded, stats.failed), (2, 3));
    let all = embed_all(&clip, &[good, bad], &PipelineOptions::default()).unwrap();
    assert!(all[0].is_ok() && all[1].is_err());
}

#[test]
fn half_precision_embeddings_stay_near_f32_and_are_cached_apart() {
    use clipscope::clip::{ModelFiles, Precision};
    let files = ModelFiles::from_dir(&fixtures().join("tiny-clip"), "tiny").unwrap();
    let paths = fixture_images();
    let decoded: Vec<_> = paths.iter().map(|p| load_image(p).unwrap()).collect();
    let refs: Vec<_> = decoded.iter().collect();
    let embed = |p: Precision| {
        let clip = files.load_with(candle_core::Device::Cpu, p).unwrap();
        assert_eq!(clip.precision(), p);
        let images = clip.embed_images(&refs).unwrap();
        let texts = clip
            .embed_texts(&["a photo of a cat.".to_string()])
            .unwrap();
        (clip, images, texts)
    };
    let (f32_clip, want, want_text) = embed(Precision::F32);
    let cache_root = tempfile::tempdir().unwrap();
    let key = |c: &Clip| EmbeddingCache::open(cache_root.path(), &files, c).unwrap();
    for p in [Precision::Bf16, Precision::F16] {
        let (clip, got, got_text) = embed(p);
        let pairs = got.iter().zip(&want).chain(got_text.iter().zip(&want_text));
        for (g, w) in pairs {
            let cos: f32 = g.iter().zip(w).map(|(a, b)| a * b).sum();
            assert!(cos > 0.999, "{p}: cosine {cos} against f32");
        }
        assert_ne!(got, want, "{p} rounds the weights");
        assert_ne!(
            key(&clip).dir(),
            key(&f32_clip).dir(),
            "{p} shares f32's cache"
        );
    }
}
