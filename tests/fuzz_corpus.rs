//! Every committed fuzz seed (and every input a fuzzing run once found, kept under
//! `fuzz/regressions/`) goes through the fuzz targets' code on stable: what the fuzzers
//! start from, and what they found, stays covered by the ordinary test run.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let mut count = 0;
    for dir in ["fuzz/seeds", "fuzz/regressions"] {
        let Ok(entries) = std::fs::read_dir(Path::new(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            eprintln!("{}", path.display());
            run(&bytes);
            count += 1;
        }
    }
    assert!(count > 0, "no seeds for the fuzz target {target}");
}

#[test]
fn image_seeds_decode_or_fail_cleanly() {
    replay("image", clipscope::fuzz::image);
}

#[test]
fn label_seeds_parse_and_tokenise() {
    replay("labels", clipscope::fuzz::labels);
}

#[test]
fn config_seeds_parse_or_fail_cleanly() {
    replay("config", clipscope::fuzz::config);
}

#[test]
fn checkpoint_seeds_parse_or_fail_cleanly() {
    replay("checkpoint_json", clipscope::fuzz::checkpoint_json);
}

#[test]
fn safetensors_seeds_load_or_fail_cleanly() {
    replay("safetensors", clipscope::fuzz::safetensors);
}
