//! The comparison study's numerical core: classification metrics, the linear probe and
//! few-shot curves on frozen CLIP embeddings, and the study's PNG plots. Pure functions:
//! the `compare` command and the app call them with results they have computed.

pub mod compare;
pub mod imagenette;
pub mod metrics;
pub mod plots;
pub mod probe;
pub mod report;

pub use compare::{compare, CompareConfig, Report, StudyError, StudyEvent};
pub use report::write_outputs;
