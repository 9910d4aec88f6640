#![no_main]
//! See `clipscope::fuzz::safetensors`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| clipscope::fuzz::safetensors(data));
