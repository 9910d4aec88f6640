#![no_main]
//! See `clipscope::fuzz::checkpoint_json`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| clipscope::fuzz::checkpoint_json(data));
