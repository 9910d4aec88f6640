#![no_main]
//! See `clipscope::fuzz::config`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| clipscope::fuzz::config(data));
