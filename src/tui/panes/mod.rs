//! One module per pane; each draws from the app state.

pub mod classify;
pub mod results;
pub mod train;
