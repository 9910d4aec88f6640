#![no_main]
//! See `clipscope::fuzz::labels`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| clipscope::fuzz::labels(data));
