#![no_main]
//! See `clipscope::fuzz::image`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| clipscope::fuzz::image(data));
