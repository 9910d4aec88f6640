//! The terminal app: rendering with ratatui's TestBackend, and the real binary driven in
//! a pseudo-terminal as a person would (type a label, see it scored, Ctrl-C).

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clipscope::clip::Prediction;
use clipscope::tui::app::{App, DecodedImage};
use clipscope::tui::graphics::encoder::Done;
use clipscope::tui::graphics::{self, Graphics};
use clipscope::tui::keymap::Keymap;
use clipscope::tui::ui;
use clipscope::tui::worker::{Request, Response};
use common::fixtures;
use ratatui::backend::TestBackend;
use ratatui::layout::{Position, Rect};
use ratatui::Terminal;

fn screen_text(terminal: &Terminal<TestBackend>) -> String {
    let buf = terminal.backend().buffer();
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Draw a frame; the picture is prepared in line (the app does it on its encoder thread).
fn draw(terminal: &mut Terminal<TestBackend>, app: &mut App) {
    let size = terminal.size().unwrap();
    let layout = ui::layout(Rect::from((Position::ORIGIN, size)), app);
    if let Some(job) = layout.image_area.and_then(|a| app.picture_job(a.as_size())) {
        let result = graphics::prepare(&job.image, job.area, &app.graphics);
        app.on_picture_prepared(Done {
            picture: job.picture,
            area: job.area,
            result,
            encode_ms: 0.0,
        });
    }
    terminal.draw(|f| ui::draw(f, app)).unwrap();
}

/// An app showing `image` (a fixture name), decoded and ready to draw.
fn app_with_image(keymap: &str, labels: &str, image: &str) -> (App, u64) {
    let mut app = App::new(
        Keymap::builtin(keymap).unwrap(),
        Graphics::halfblocks(),
        labels,
    );
    let path = fixtures().join("images").join(image);
    let img = clipscope::data::load_image(&path).unwrap();
    app.open(path.clone()).unwrap();
    let reqs = app.on_image_decoded(path, Ok(DecodedImage::new(img)), Instant::now());
    let generation = reqs
        .iter()
        .find_map(|r| match r {
            Request::Score { generation, .. } => Some(*generation),
            _ => None,
        })
        .unwrap_or(0);
    (app, generation)
}

#[test]
fn classify_pane_renders_image_labels_and_probabilities() {
    let (mut app, generation) = app_with_image("default", "cat,astronaut", "chelsea.png");
    let now = Instant::now();
    let path = fixtures().join("images/chelsea.png");
    app.on_response(
        Response::ModelReady {
            source: clipscope::hub::ModelSource::Dir(fixtures().join("tiny-clip")),
            name: "tiny".into(),
            device: "cpu".into(),
            load_ms: 1.0,
        },
        now,
    );
    app.on_response(
        Response::Scores {
            generation,
            path,
            predictions: vec![
                Prediction {
                    label: "cat".into(),
                    probability: 0.8734,
                },
                Prediction {
                    label: "astronaut".into(),
                    probability: 0.1266,
                },
            ],
            compute_ms: 3.0,
        },
        now + Duration::from_millis(42),
    );
    let mut terminal = Terminal::new(TestBackend::new(140, 45)).unwrap();
    draw(&mut terminal, &mut app);
    let text = screen_text(&terminal);
    assert!(text.contains("Classify") && text.contains("Train") && text.contains("Results"));
    assert!(text.contains("chelsea.png"), "image title");
    let cat_row = text.lines().find(|l| l.contains("87.34%")).unwrap();
    assert!(cat_row.contains("cat") && cat_row.contains('█'));
    assert!(text
        .lines()
        .any(|l| l.contains("astronaut") && l.contains("12.66%")));
    let status = text.lines().last().unwrap();
    assert!(status.contains("tiny on cpu") && status.contains("update 42 ms"));
    assert!(status.contains("halfblocks"));
    // The image is drawn with half-blocks somewhere on the left.
    assert!(text
        .lines()
        .any(|l| l.chars().take(70).any(|c| c == '▀' || c == '▄')));

    // The help overlay lists bindings from the active keymap.
    app.show_help = true;
    draw(&mut terminal, &mut app);
    let text = screen_text(&terminal);
    assert!(text.contains("Ctrl-O") && text.contains("open an image"));

    // The Results pane's Session view lists the session's classification.
    app.show_help = false;
    app.pane = clipscope::tui::app::Pane::Results;
    app.results
        .show(clipscope::tui::results_state::View::Session);
    draw(&mut terminal, &mut app);
    let text = screen_text(&terminal);
    assert!(text
        .lines()
        .any(|l| l.contains("chelsea.png") && l.contains("cat")));
}

/// The real binary in a 140x45 pseudo-terminal.
struct Pty {
    parser: Arc<Mutex<vt100::Parser>>,
    /// Every byte the app wrote.
    raw: Arc<Mutex<Vec<u8>>>,
    writer: Box<dyn Write + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
}

impl Pty {
    fn spawn(args: &[&str]) -> Self {
        Self::spawn_with(args, &[])
    }

    /// Start the app with extra environment variables.
    fn spawn_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        use portable_pty::{native_pty_system, CommandBuilder, PtySize};
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: 45,
                cols: 140,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_clipscope"));
        cmd.args(args);
        cmd.env("TERM", "xterm-256color");
        cmd.env_remove("TMUX"); // inside tmux the app would not query the terminal
        cmd.env(
            "CLIPSCOPE_CACHE",
            std::env::temp_dir().join("clipscope-tui-test"),
        );
        cmd.env_remove("NO_COLOR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = pair.slave.spawn_command(cmd).unwrap();
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let writer = pair.master.take_writer().unwrap();
        let parser = Arc::new(Mutex::new(vt100::Parser::new(45, 140, 0)));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (p, r) = (parser.clone(), raw.clone());
        std::thread::spawn(move || {
            let _master = pair.master; // keep the pty open while the child runs
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                r.lock().unwrap().extend_from_slice(&buf[..n]);
                p.lock().unwrap().process(&buf[..n]);
            }
        });
        Self {
            parser,
            raw,
            writer,
            child,
        }
    }

    /// How many bytes the app has written so far.
    fn written(&self) -> usize {
        self.raw.lock().unwrap().len()
    }

    /// The bytes written since `from`, once the app has been quiet for 300 ms.
    fn output_since(&self, from: usize) -> Vec<u8> {
        let mut len = self.written();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.written();
            if now == len {
                return self.raw.lock().unwrap()[from..].to_vec();
            }
            len = now;
        }
    }

    fn screen(&self) -> String {
        self.parser.lock().unwrap().screen().contents()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait up to 30 s for the child to exit (a test suite on 2 busy cores can hold an
    /// exiting app up for seconds); `why` is the failure message.
    fn wait_exit(&mut self, why: &str) -> portable_pty::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{why}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
        self.writer.flush().unwrap();
    }
}

fn row_with<'a>(screen: &'a str, label: &str) -> Option<&'a str> {
    screen
        .lines()
        .find(|l| l.contains(label) && l.contains('%') && l.contains("│"))
}

#[test]
fn the_app_scores_typed_labels_live_and_quits_cleanly() {
    let image = fixtures().join("images/chelsea.png").display().to_string();
    let model = fixtures().join("tiny-clip").display().to_string();
    let mut pty = Pty::spawn(&[
        "tui",
        &image,
        "--labels",
        "cat,astronaut",
        "--model-dir",
        &model,
        "--image-protocol",
        "halfblocks",
    ]);
    let s = pty.wait_for("first probabilities", |s| {
        row_with(s, "cat").is_some() && row_with(s, "astronaut").is_some()
    });
    assert!(s.contains("chelsea.png"));
    assert!(pty.parser.lock().unwrap().screen().alternate_screen());

    // Focus starts in the label editor with the cursor after the last label.
    pty.send(b"\rrocket");
    let s = pty.wait_for("the typed label scored", |s| {
        row_with(s, "rocket").is_some()
    });
    let probs: Vec<f64> = ["cat", "astronaut", "rocket"]
        .iter()
        .map(|l| {
            let row = row_with(&s, l).unwrap();
            let pct = row.split_whitespace().find(|w| w.ends_with('%')).unwrap();
            pct.trim_end_matches('%').parse::<f64>().unwrap()
        })
        .collect();
    let total: f64 = probs.iter().sum();
    assert!(
        (total - 100.0).abs() < 0.1,
        "probabilities sum to 100%: {probs:?}"
    );

    // Next image in the folder (PageDown): the title changes and it is scored.
    pty.send(b"\x1b[6~");
    pty.wait_for("the next image", |s| {
        s.contains("chelsea_cmyk.jpg") && row_with(s, "rocket").is_some()
    });

    // A path pasted into the terminal opens; a file that is no image is an error line.
    let license = fixtures().join("images/LICENSE.md").display().to_string();
    pty.send(format!("\x1b[200~{license}\x1b[201~").as_bytes());
    pty.wait_for("the decode error", |s| {
        s.contains("LICENSE.md: not a readable")
    });
    let coffee = fixtures().join("images/coffee.png").display().to_string();
    pty.send(format!("\x1b[200~{coffee}\x1b[201~").as_bytes());
    pty.wait_for("the pasted image", |s| {
        s.contains("coffee.png") && row_with(s, "rocket").is_some()
    });

    let status = quit(&mut pty);
    assert!(status.success(), "exit status {status:?}");
    std::thread::sleep(Duration::from_millis(100));
    let parser = pty.parser.lock().unwrap();
    assert!(
        !parser.screen().alternate_screen(),
        "left the alternate screen"
    );
    assert!(!parser.screen().hide_cursor(), "cursor shown again");
}

/// The app with the tiny model, no image and half-blocks, once it is drawn.
fn open_app_without_image() -> Pty {
    let model = fixtures().join("tiny-clip").display().to_string();
    let pty = Pty::spawn(&[
        "tui",
        "--model-dir",
        &model,
        "--image-protocol",
        "halfblocks",
    ]);
    pty.wait_for("the app", |s| s.contains("Open an image"));
    pty
}

#[test]
fn sigterm_restores_the_terminal() {
    let mut pty = open_app_without_image();
    let pid = pty.child.process_id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    pty.wait_exit("SIGTERM did not end the app");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!pty.parser.lock().unwrap().screen().alternate_screen());
}

/// Ctrl-C, then wait for the app to exit.
fn quit(pty: &mut Pty) -> portable_pty::ExitStatus {
    pty.send(b"\x03");
    pty.wait_exit("the app did not quit")
}

#[test]
fn keys_typed_while_a_silent_terminal_is_queried_are_not_lost() {
    let image = fixtures().join("images/chelsea.png").display().to_string();
    let model = fixtures().join("tiny-clip").display().to_string();
    // vt100 answers no queries: the query times out, half-blocks are used, and the
    // keys typed meanwhile reach the label editor.
    let mut pty = Pty::spawn(&["tui", &image, "--labels", "cat", "--model-dir", &model]);
    pty.send(b"\rdog");
    let s = pty.wait_for("the early label scored", |s| row_with(s, "dog").is_some());
    assert!(s.lines().last().unwrap().contains("halfblocks"), "{s}");
    // and keys typed after start-up still work
    pty.send(b"\rbird");
    pty.wait_for("a later label", |s| row_with(s, "bird").is_some());
    quit(&mut pty);
}

#[test]
fn a_terminal_that_answers_sixel_gets_sixel() {
    let model = fixtures().join("tiny-clip").display().to_string();
    let mut pty = Pty::spawn(&["tui", "--labels", "cat", "--model-dir", &model]);
    std::thread::sleep(Duration::from_millis(200));
    // A key, then the answers of a sixel terminal with 10x20-pixel cells.
    pty.send(b"x\x1b[?62;4;22c\x1b[6;20;10t\x1b[0n");
    let s = pty.wait_for("the status bar", |s| {
        s.lines().any(|l| l.contains("│ sixel │"))
    });
    // The cursor starts on a new line after the given labels; the key typed during the
    // query lands there.
    assert!(s.lines().any(|l| l.contains("│x ")), "{s}");
    quit(&mut pty);
}

#[test]
fn the_train_pane_runs_a_training_and_shows_its_progress() {
    let data = tempfile::tempdir().unwrap();
    clipscope::data::synthetic::make_shapes(data.path(), 6, 32, 1).unwrap();
    let run = tempfile::tempdir().unwrap();
    let mut pty = open_app_without_image();
    pty.send(b"\x1b2"); // Alt-2: the Train pane
    pty.wait_for("the form", |s| {
        s.contains("data folder") && s.contains("no run yet")
    });
    // Edit a field: Enter, clear the line (Home, Ctrl-K), type, Enter.
    let edit = |pty: &mut Pty, value: &str| {
        pty.send(b"\r\x1b[H\x0b");
        pty.send(value.as_bytes());
        pty.send(b"\r");
        std::thread::sleep(Duration::from_millis(100));
    };
    edit(&mut pty, &data.path().display().to_string());
    pty.send(b"\x1b[B\x1b[B"); // Down twice: model (resnet18), pretrained
    edit(&mut pty, "none");
    pty.send(b"\x1b[B\x1b[B"); // epochs
    edit(&mut pty, "2");
    pty.send(b"\x1b[B"); // batch size
    edit(&mut pty, "8");
    pty.send(b"\x1b[B"); // image size
    edit(&mut pty, "32");
    pty.send(b"\x1b[B\x1b[B\x1b[B"); // run folder
    edit(&mut pty, &run.path().display().to_string());
    pty.send(b"\x1b[15~"); // F5: start
    let s = pty.wait_for("the run to finish", |s| s.contains("training finished"));
    assert!(s.contains("epoch 2: train loss"), "{s}");
    assert!(s.contains("Loss") && s.contains("Accuracy"));
    assert!(s.contains("epoch 2/2"), "the gauge: {s}");
    let meta = clipscope::cnn::checkpoint::load_meta(run.path()).unwrap();
    assert_eq!(meta.epochs_done, 2);
    quit(&mut pty);
}

/// A model worker on the tiny fixture CLIP, on the CPU at `precision`, and its replies.
fn tiny_worker(
    precision: clipscope::clip::Precision,
) -> (
    std::sync::mpsc::Sender<Request>,
    tokio::sync::mpsc::UnboundedReceiver<Response>,
) {
    use clipscope::tui::worker::{spawn, WorkerConfig};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let config = WorkerConfig {
        source: clipscope::hub::ModelSource::Dir(fixtures().join("tiny-clip")),
        device: "cpu".into(),
        precision,
        style: clipscope::clip::PromptStyle::default(),
    };
    (spawn(config, tx), rx)
}

#[test]
fn the_worker_skips_requests_superseded_while_it_was_busy() {
    let (worker, mut rx) = tiny_worker(Default::default());
    // Queued while the model loads: only the newest score request is answered.
    let path = fixtures().join("images/chelsea.png");
    let img = clipscope::data::load_image(&path).unwrap();
    worker
        .send(Request::SetImage {
            path,
            image: Arc::new(img),
        })
        .unwrap();
    for (generation, labels) in [(1, "cat"), (2, "cat,dog"), (3, "cat,dog,bird")] {
        let labels = labels.split(',').map(String::from).collect();
        worker.send(Request::Score { generation, labels }).unwrap();
    }
    let mut scores = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        match rx.try_recv() {
            Ok(Response::Scores {
                generation,
                predictions,
                ..
            }) => {
                scores.push((generation, predictions.len()));
                // Give a stale answer time to show up, if there were one.
                std::thread::sleep(Duration::from_millis(300));
                while let Ok(r) = rx.try_recv() {
                    if let Response::Scores {
                        generation,
                        predictions,
                        ..
                    } = r
                    {
                        scores.push((generation, predictions.len()));
                    }
                }
                break;
            }
            Ok(Response::ModelFailed(e)) => panic!("{e}"),
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert_eq!(scores, vec![(3, 3)]);
    worker.send(Request::Shutdown).unwrap();
}

#[test]
fn the_worker_names_a_reduced_precision_with_the_device() {
    let (worker, mut rx) = tiny_worker(clipscope::clip::Precision::Bf16);
    let start = Instant::now();
    let mut device = None;
    while device.is_none() && start.elapsed() < Duration::from_secs(20) {
        match rx.try_recv() {
            Ok(Response::ModelReady { device: d, .. }) => device = Some(d),
            Ok(Response::ModelFailed(e)) => panic!("{e}"),
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    // The status bar shows this string after the model's name.
    assert_eq!(device.as_deref(), Some("cpu, bf16"));
    worker.send(Request::Shutdown).unwrap();
}

#[test]
fn the_classify_pane_redraws_at_any_size() {
    let (mut app, _) = app_with_image("vim", "cat", "tall.png");
    for (w, h) in [(140, 45), (80, 24), (200, 60), (30, 10), (12, 5)] {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        draw(&mut terminal, &mut app);
        let text = screen_text(&terminal);
        if w >= 80 {
            assert!(text.contains("tall.png"), "{w}x{h}:\n{text}");
        }
    }
}

/// How often `needle` occurs in `haystack`.
fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// How many sixel pictures (`ESC P` parameters `q`) are in the app's output.
fn sixels(out: &[u8]) -> usize {
    out.windows(2)
        .enumerate()
        .filter(|(_, w)| *w == b"\x1bP")
        .filter(|(i, _)| {
            let params = out[i + 2..]
                .iter()
                .take_while(|b| b.is_ascii_digit() || **b == b';');
            out.get(i + 2 + params.count()) == Some(&b'q')
        })
        .count()
}

/// The app on a fixture image with the tiny model and labels, drawing with `protocol`.
fn spawn_app(image: &str, labels: &str, protocol: &str, env: &[(&str, &str)]) -> Pty {
    let image = fixtures().join("images").join(image).display().to_string();
    let model = fixtures().join("tiny-clip").display().to_string();
    Pty::spawn_with(
        &[
            "tui",
            &image,
            "--labels",
            labels,
            "--model-dir",
            &model,
            "--image-protocol",
            protocol,
        ],
        env,
    )
}

#[test]
fn a_sixel_picture_is_sent_once_and_again_only_when_the_screen_changes() {
    let mut pty = spawn_app("chelsea.png", "cat", "sixel", &[]);
    pty.wait_for("first probabilities", |s| row_with(s, "cat").is_some());
    // One picture, sent as bands of a few rows each.
    let bands = sixels(&pty.output_since(0));
    assert!(bands > 1, "{bands} sixel bands");

    // Typing echoes the key without the picture: a few hundred bytes, not kilobytes.
    let from = pty.written();
    pty.send(b"x");
    pty.wait_for("the typed key", |s| s.lines().any(|l| l.contains("│x ")));
    let typed = pty.output_since(from);
    assert_eq!(sixels(&typed), 0);
    assert!(typed.len() < 2000, "{} bytes for one key", typed.len());

    // The help over the picture: the picture goes (the screen is cleared) and comes
    // back, whole, when the help closes.
    let from = pty.written();
    pty.send(b"\x1bOP"); // F1
    pty.wait_for("the help", |s| s.contains("Keys (default keymap)"));
    let opened = pty.output_since(from);
    assert!(count(&opened, b"\x1b[2J") >= 1 && sixels(&opened) == 0);
    let from = pty.written();
    pty.send(b"\x1b");
    std::thread::sleep(Duration::from_millis(100));
    pty.send(b"\x1b[1;5D"); // a key after Esc, so that Esc is not read as Alt
    pty.wait_for("the help gone", |s| !s.contains("Keys (default keymap)"));
    let closed = pty.output_since(from);
    assert_eq!(sixels(&closed), bands, "the picture drawn again");

    // Another pane and back: cleared, then the picture once more.
    let from = pty.written();
    pty.send(b"\x1b2");
    pty.wait_for("the Train pane", |s| s.contains("no run yet"));
    std::thread::sleep(Duration::from_millis(100));
    pty.send(b"\x1b1");
    pty.wait_for("the Classify pane", |s| row_with(s, "cat").is_some());
    let back = pty.output_since(from);
    assert!(count(&back, b"\x1b[2J") >= 1);
    assert_eq!(sixels(&back), bands);
    quit(&mut pty);
}

#[test]
fn kitty_0_26_gets_direct_placement_not_placeholders() {
    let image = fixtures().join("images/coffee.png").display().to_string();
    let model = fixtures().join("tiny-clip").display().to_string();
    let mut pty = Pty::spawn(&["tui", &image, "--labels", "cat", "--model-dir", &model]);
    std::thread::sleep(Duration::from_millis(200));
    // What kitty 0.26.5 answers (recorded under Xvfb).
    pty.send(
        b"\x1b_Gi=31;OK\x1b\\\x1b[?62;c\x1bP>|kitty(0.26.5)\x1b\\\x1b[6;18;9t\
          \x1b]11;rgb:0000/0000/0000\x1b\\\x1b[0n",
    );
    let s = pty.wait_for("the status bar", |s| {
        s.lines().any(|l| l.contains("kitty (direct)"))
    });
    assert!(
        s.contains("kitty(0.26.5) draws no Unicode placeholders"),
        "{s}"
    );
    pty.wait_for("first probabilities", |s| row_with(s, "cat").is_some());
    let out = pty.output_since(0);
    assert_eq!(count(&out, b"\x1b_Ga=t,"), 1, "pixels transmitted once");
    assert_eq!(count(&out, b"\x1b_Ga=p,"), 1, "placed once");
    assert_eq!(
        count(&out, "\u{10EEEE}".as_bytes()),
        0,
        "no placeholder cells"
    );
    // Leaving frees the picture.
    let from = pty.written();
    quit(&mut pty);
    let end = pty.output_since(from);
    assert!(
        count(&end, b"a=d,d=I") == 1,
        "{}",
        String::from_utf8_lossy(&end)
    );
}

#[test]
fn the_help_wraps_inside_its_box_on_a_narrow_screen() {
    let (mut app, _) = app_with_image("default", "cat", "chelsea.png");
    app.show_help = true;
    let mut terminal = Terminal::new(TestBackend::new(50, 40)).unwrap();
    draw(&mut terminal, &mut app);
    let text = screen_text(&terminal);
    // The last line of the help, longer than the box, is wrapped, not cut.
    assert!(text.contains("Paste or drop an image path"), "{text}");
    assert!(text.contains("score them."), "{text}");
    let box_rows: Vec<&str> = text.lines().filter(|l| l.contains('│')).collect();
    assert!(box_rows.iter().all(|l| l.chars().count() == 50));
}

#[test]
fn with_no_color_the_screen_has_no_colours_but_the_picture() {
    for no_color in [true, false] {
        let env: &[(&str, &str)] = if no_color { &[("NO_COLOR", "1")] } else { &[] };
        let mut pty = spawn_app("chelsea.png", "cat,dog", "halfblocks", env);
        pty.wait_for("first probabilities", |s| row_with(s, "dog").is_some());
        let parser = pty.parser.lock().unwrap();
        let screen = parser.screen();
        let mut coloured = 0;
        // Everything right of the image pane: tabs, labels, probabilities, status bar.
        for row in 0..45 {
            for col in 78..140 {
                let cell = screen.cell(row, col).unwrap();
                if cell.fgcolor() != vt100::Color::Default
                    || cell.bgcolor() != vt100::Color::Default
                {
                    coloured += 1;
                }
            }
        }
        // The picture's half blocks, left of that, keep their colours either way
        // (crossterm drops every colour under NO_COLOR unless told otherwise).
        let picture = (1..40)
            .flat_map(|row| (1..70).map(move |col| (row, col)))
            .filter(|&(row, col)| {
                let cell = screen.cell(row, col).unwrap();
                matches!(cell.fgcolor(), vt100::Color::Rgb(..))
                    || matches!(cell.bgcolor(), vt100::Color::Rgb(..))
            })
            .count();
        // The status bar is reverse video of the terminal's own colours either way.
        let status = screen.cell(44, 100).unwrap();
        assert!(status.inverse());
        assert_eq!(status.bgcolor(), vt100::Color::Default);
        drop(parser);
        assert!(picture > 100, "the picture in colour: {picture} cells");
        if no_color {
            assert_eq!(coloured, 0, "cells in colour with NO_COLOR");
        } else {
            assert!(coloured > 0, "colours without NO_COLOR");
        }
        quit(&mut pty);
    }
}

/// The nice value of each thread of `pid`, by thread name.
#[cfg(target_os = "linux")]
fn thread_nice_values(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = entry.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: state is field 3, nice 19.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        if let Some(nice) = rest.split_whitespace().nth(16) {
            out.push((name.trim().to_string(), nice.parse().unwrap()));
        }
    }
    out
}

#[cfg(target_os = "linux")]
#[test]
fn model_and_picture_threads_run_below_the_ui() {
    let mut pty = spawn_app("chelsea.png", "cat", "halfblocks", &[]);
    pty.wait_for("first probabilities", |s| row_with(s, "cat").is_some());
    let threads = thread_nice_values(pty.child.process_id().unwrap());
    let nice = |prefix: &str| {
        threads
            .iter()
            .find(|(name, _)| name.starts_with(prefix))
            .map(|(_, n)| *n)
    };
    let ui = threads.iter().find(|(name, _)| name == "clipscope");
    assert_eq!(ui.map(|(_, n)| *n), Some(0), "the UI thread: {threads:?}");
    assert_eq!(nice("clipscope-model"), Some(10), "{threads:?}");
    assert_eq!(nice("clipscope-pict"), Some(10), "{threads:?}");
    quit(&mut pty);
}

/// The real binary in real terminals (xterm, kitty, Konsole, tmux) under Xvfb, with
/// screenshots checked at every step: `tests/terminals/matrix.py`. Opt-in, as it needs
/// those programs and takes minutes: `CLIPSCOPE_TERMINAL_TESTS=1 cargo test --test tui
/// real_terminals` (`=latency` also times keys typed after PgDn with both cores busy).
#[test]
fn real_terminals_draw_pictures_right() {
    let Some(mode) = std::env::var_os("CLIPSCOPE_TERMINAL_TESTS") else {
        eprintln!("skipped: set CLIPSCOPE_TERMINAL_TESTS=1 to run the terminal matrix");
        return;
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/terminals/matrix.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script)
        .args(["--bin", env!("CARGO_BIN_EXE_clipscope")]);
    if mode == "latency" {
        cmd.arg("--latency");
    }
    let status = cmd.status().expect("python3 runs");
    assert!(status.success(), "the terminal matrix failed: {status}");
}

#[test]
fn a_panic_puts_the_terminal_back_before_the_message_is_printed() {
    let model = fixtures().join("tiny-clip").display().to_string();
    let mut pty = Pty::spawn_with(
        &[
            "tui",
            "--model-dir",
            &model,
            "--image-protocol",
            "halfblocks",
        ],
        &[(clipscope::tui::DEBUG_PANIC_VAR, "1")],
    );
    let status = pty.wait_exit("the app did not end after its panic");
    assert!(!status.success());
    let raw = pty.output_since(0);
    let entered = find(&raw, b"\x1b[?1049h").expect("entered the alternate screen");
    let left = find(&raw, b"\x1b[?1049l").expect("left the alternate screen");
    let message = find(&raw, b"panicked").expect("the panic message");
    assert!(
        entered < left && left < message,
        "the screen is restored ({left}) before the message ({message})"
    );
    for restore in [&b"\x1b[?2004l"[..], b"\x1b[?25h"] {
        let at = find(&raw, restore).expect("bracketed paste off, cursor shown");
        assert!(at < message);
    }
    let parser = pty.parser.lock().unwrap();
    assert!(!parser.screen().alternate_screen());
    assert!(parser
        .screen()
        .contents()
        .contains(clipscope::tui::DEBUG_PANIC_VAR));
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn the_worker_loads_another_model_on_its_own_thread_after_a_failure() {
    use clipscope::clip::PromptStyle;
    use clipscope::hub::ModelSource;
    use clipscope::tui::worker::{spawn, Configure, WorkerConfig};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let missing = std::env::temp_dir().join("clipscope-no-such-model-dir");
    let worker = spawn(
        WorkerConfig {
            source: ModelSource::Dir(missing.clone()),
            device: "cpu".into(),
            precision: Default::default(),
            style: PromptStyle::default(),
        },
        tx,
    );
    let path = fixtures().join("images/chelsea.png");
    let img = clipscope::data::load_image(&path).unwrap();
    let requests = [
        Request::SetImage {
            path,
            image: Arc::new(img),
        },
        Request::Configure(Configure {
            source: Some(ModelSource::Dir(fixtures().join("tiny-clip"))),
            style: Some(PromptStyle::Template("{}".into())),
        }),
        Request::Score {
            generation: 7,
            labels: vec!["cat".into(), "dog".into()],
        },
    ];
    for r in requests {
        worker.send(r).unwrap();
    }
    let (mut failed, mut ready, mut scored) = (None, false, None);
    let start = Instant::now();
    while scored.is_none() && start.elapsed() < Duration::from_secs(30) {
        match rx.try_recv() {
            Ok(Response::ModelFailed(e)) => failed = Some(e),
            Ok(Response::ModelReady { .. }) => ready = true,
            Ok(Response::Scores {
                generation,
                predictions,
                ..
            }) => scored = Some((generation, predictions.len())),
            Ok(Response::Failed { message, .. }) => panic!("{message}"),
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let failed = failed.expect("the first model failed");
    assert!(failed.contains("clipscope-no-such-model-dir"), "{failed}");
    assert!(ready, "the second model loaded");
    assert_eq!(scored, Some((7, 2)));
    worker.send(Request::Shutdown).unwrap();
}
