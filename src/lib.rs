//! clipscope: zero-shot image classification with OpenAI's CLIP, faithful to the
//! reference implementation, from the command line and the terminal.
//!
//! The library holds all the logic; the `clipscope` binary is a thin layer over it.

pub mod clip;
pub mod cnn;
pub mod data;
#[doc(hidden)]
pub mod fuzz;
pub mod hub;
pub mod scale;
pub mod study;
pub mod tui;
pub mod util;
