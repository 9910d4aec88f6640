//! The picture encoder: a thread that scales pictures and encodes them for the terminal
//! (sixel encoding of a pane-sized photo takes tens of milliseconds), so that the UI
//! thread only ever copies finished bytes. Only the newest request is worked on: a
//! picture superseded while the thread was busy is never encoded.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use image::DynamicImage;
use ratatui::layout::Size;
use tokio::sync::mpsc::UnboundedSender;

use super::{prepare, Graphics, Prepared};

/// A picture to prepare for an area.
pub struct Job {
    /// Which picture (the app's serial number for the image on screen).
    pub picture: u64,
    /// The image, already reduced to a display copy.
    pub image: Arc<DynamicImage>,
    /// The area it must fit, in cells.
    pub area: Size,
}

/// A prepared picture, or why it could not be.
pub struct Done {
    /// The job's picture.
    pub picture: u64,
    /// The job's area.
    pub area: Size,
    /// The picture.
    pub result: Result<Prepared, String>,
    /// Time spent encoding.
    pub encode_ms: f64,
}

/// Start the encoder thread for this terminal's graphics.
pub fn spawn(graphics: Graphics, out: UnboundedSender<Done>) -> Sender<Job> {
    let (tx, rx) = mpsc::channel();
    let started = std::thread::Builder::new()
        .name("clipscope-pictures".into())
        .spawn(move || {
            super::super::lower_thread_priority();
            run(&graphics, &rx, &out)
        });
    if let Err(e) = started {
        tracing::error!("cannot start the picture encoder: {e}");
    }
    tx
}

fn run(graphics: &Graphics, rx: &Receiver<Job>, out: &UnboundedSender<Done>) {
    while let Ok(first) = rx.recv() {
        // Only the newest request matters.
        let Some(job) = std::iter::once(first).chain(rx.try_iter()).last() else {
            continue;
        };
        let start = Instant::now();
        let result = prepare(&job.image, job.area, graphics);
        let done = Done {
            picture: job.picture,
            area: job.area,
            result,
            encode_ms: start.elapsed().as_secs_f64() * 1e3,
        };
        if out.send(done).is_err() {
            return;
        }
    }
}
